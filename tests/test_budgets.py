"""Round-trip budgets: how many commands each operation sends to MongoDB, pinned per operation.

FerretDB is slow per round trip and scans every collection for any filter but `_id`, so one more
command per operation shows in every figure; a count does not depend on the server's speed, so it
is exact on FerretDB and on MONGO_TEST_URI's MongoDB alike. The budgets are in tests/budgets.py
(bench/ shows them beside its figures), and the README's Performance section lists them: a change
that adds a round trip must change both.
"""

import os

import pymongo
import pytest
from pymongo import monitoring

from images import hotcache, mongo
from images.storage import GridFSReader
from tests.budgets import BUDGETS
from tests.helpers import upload
from tests.samples import image_bytes, noise_jpeg


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[dict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def mongo_commands(store, monkeypatch, settings) -> CommandCounter:
    """Counts the commands the service sends to MongoDB, through its own client."""
    counter = CommandCounter()
    client = pymongo.MongoClient(settings.MONGO["URI"], tz_aware=True, event_listeners=[counter])
    monkeypatch.setattr(mongo, "get_client", lambda: client)
    yield counter
    client.close()


def sent_by_operation(client, counter: CommandCounter) -> dict[str, list[dict]]:
    """Runs every operation of BUDGETS once; returns the commands each one sent. Indexes are made
    once per process, so a first upload, derivative and delete warm them up."""
    warm = upload(client, image_bytes("PNG", (20, 20), seed=9600), model_id="warm-up").json()["image_id"]
    assert client.get(f"/images/{warm}/content?w=64").status_code == 200
    assert client.delete(f"/images/{warm}").status_code == 204
    data = image_bytes("PNG", (20, 20), seed=9601)
    sent = {}

    def count(operation: str, action, status: int, cold: bool = True):
        if cold:
            hotcache.clear()
        counter.commands.clear()
        response = action()
        assert response.status_code == status, (operation, response.content[:200])
        sent[operation] = list(counter.commands)
        return response

    image_id = count("upload new", lambda: upload(client, data, model_id="m1"), 201).json()["image_id"]
    count("upload known", lambda: upload(client, data, model_id="m1"), 200)
    shared = count("upload shared", lambda: upload(client, data, model_id="m2"), 201).json()["image_id"]
    content = f"/images/{image_id}/content"
    count("GET by id, cold", lambda: client.get(content), 200)
    etag = count("GET, hot", lambda: client.get(content), 200, cold=False)["ETag"]
    count("304, hot", lambda: client.get(content, HTTP_IF_NONE_MATCH=etag), 304, cold=False)
    count("GET by model_id, cold", lambda: client.get("/image/m1"), 200)
    count("listing page", lambda: client.get("/images?limit=10"), 200)
    assert client.get(f"{content}?w=64").status_code == 200  # made
    count("derivative hit, cold", lambda: client.get(f"{content}?w=64"), 200)
    count("delete, bytes shared", lambda: client.delete(f"/images/{shared}"), 204)
    count("delete, last", lambda: client.delete(f"/images/{image_id}"), 204)
    # A blob of 5 GridFS chunks read 2 chunks per batch (16 in service): one getMore per batch.
    big = upload(client, noise_jpeg((1150, 800)), model_id="big").json()["image_id"]

    def streamed():
        response = client.get(f"/images/{big}/content")
        b"".join(response.streaming_content)  # the chunks after the first are read as they are sent
        return response

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GridFSReader, "CHUNKS_PER_BATCH", 2)
        count("GET by id, cold, 5 chunks", streamed, 200)
    return sent


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_each_operation_keeps_its_round_trip_budget(store, client, mongo_commands):
    sent = sent_by_operation(client, mongo_commands)
    for operation, budget in BUDGETS.items():
        names = [(command_name(c), collection(c)) for c in sent[operation]]
        assert names == budget, (operation, names)


# What a command sends besides the query itself: not part of what `explain` plans.
SESSION_FIELDS = {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber", "autocommit"}
PLANNED = {"find", "update", "delete", "distinct", "count", "aggregate"}


def command_name(command: dict) -> str:
    return next(iter(command))


def collection(command: dict) -> str:
    """The collection a command works on: a getMore names its cursor first."""
    name = command_name(command)
    return command["collection"] if name == "getMore" else str(command[name])


def winning_stages(explained: object) -> list[str]:
    """Every stage of every winning plan in an explain answer, whatever its nesting."""
    stages: list[str] = []

    def walk(node: object, winning: bool) -> None:
        if isinstance(node, dict):
            if winning and isinstance(node.get("stage"), str):
                stages.append(node["stage"])
            for key, value in node.items():
                walk(value, winning or key in ("winningPlan", "queryPlan"))
        elif isinstance(node, list):
            for value in node:
                walk(value, winning)

    walk(explained, False)
    return stages


@pytest.mark.skipif(
    not os.environ.get("MONGO_TEST_URI"),
    reason="needs MONGO_TEST_URI: FerretDB plans nothing but _id lookups, so its explain says nothing",
)
@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_every_query_of_the_budgeted_operations_uses_an_index(store, client, mongo_commands):
    """On a real MongoDB, the queries behind the budgets are answered from indexes, never by a
    collection scan: the budgets count round trips, this keeps each one cheap as data grows."""
    sent = sent_by_operation(client, mongo_commands)
    scans = []
    for operation, commands in sent.items():
        for command in commands:
            if command_name(command) not in PLANNED:
                continue
            query = {k: v for k, v in command.items() if k not in SESSION_FIELDS}
            explained = store.mongo_db.command("explain", query, verbosity="queryPlanner")
            stages = winning_stages(explained)
            assert stages, (operation, query, explained)
            if "COLLSCAN" in stages:
                scans.append((operation, query))
    assert scans == []
