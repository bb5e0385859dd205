// Initiates the replica set rs0 (docker-compose.yml's mongo-init, run with mongosh against mongo1), then
// waits for a primary. Run again, it finds the set initiated and only waits.
const members = ["mongo1:27017", "mongo2:27017", "mongo3:27017"];

try {
  rs.status();
  print("rs0: initiated already");
} catch (error) {
  if (error.codeName !== "NotYetInitialized") throw error;
  rs.initiate({
    _id: "rs0",
    // mongo1 is preferred as primary; any member can take over.
    members: members.map((host, i) => ({ _id: i, host, priority: i === 0 ? 2 : 1 })),
  });
  print("rs0: initiated with " + members.join(", "));
}

// At most 120 s: the services start once a primary can take writes (w: majority).
for (let second = 0; second < 120; second++) {
  const primary = rs.status().members.find((m) => m.stateStr === "PRIMARY");
  if (primary) {
    print("rs0: primary is " + primary.name);
    quit(0);
  }
  sleep(1000);
}
print("rs0: no primary after 120 s");
quit(1);
