"""Round-trip budgets: how many commands each operation sends to MongoDB, pinned per operation.

FerretDB is slow per round trip and scans every collection for any filter but `_id`, so one more
command per operation shows in every figure; a count does not depend on the server's speed, so it
is exact on FerretDB and on MONGO_TEST_URI's MongoDB alike. The README's Performance section lists
the same budgets: a change that adds a round trip must change both.
"""

import os

import pymongo
import pytest
from pymongo import monitoring

from images import hotcache, mongo
from tests.helpers import upload
from tests.samples import image_bytes

# Each operation's commands, in order, as (command, collection). "Cold" means this process's hot
# caches are empty: a hot hit sends nothing.
BUDGETS = {
    # the model's record of these bytes?; pin, closing mark?, blob exists?; chunks, files document,
    # other copies?; the record
    "upload new": [
        ("find", "images"),
        ("insert", "fs.pins"),
        ("find", "fs.closing"),
        ("find", "fs.files"),
        ("insert", "fs.chunks"),
        ("insert", "fs.files"),
        ("find", "fs.files"),
        ("insert", "images"),
    ],
    "upload known": [("find", "images")],  # the same bytes for the same model: 200, nothing written
    "upload shared": [  # bytes that another model's image holds: a pin and a record
        ("find", "images"),
        ("insert", "fs.pins"),
        ("find", "fs.closing"),
        ("find", "fs.files"),
        ("insert", "images"),
    ],
    "GET by id, cold": [("find", "images"), ("find", "fs.files"), ("find", "fs.chunks")],
    "GET by model_id, cold": [("find", "images"), ("find", "fs.files"), ("find", "fs.chunks")],
    "GET, hot": [],
    "304, hot": [],
    "listing page": [("find", "images")],
    # the record; the derivative's size (it exists), its use; its files document and chunks
    "derivative hit, cold": [
        ("find", "images"),
        ("find", "fs.files"),
        ("update", "derivative_uses"),
        ("find", "fs.files"),
        ("find", "fs.chunks"),
    ],
    # the record, then its delete; the pin's delete, under the closing mark: other pins?
    "delete, bytes shared": [
        ("find", "images"),
        ("delete", "images"),
        ("delete", "fs.pins"),
        ("insert", "fs.closing"),
        ("find", "fs.pins"),
        ("delete", "fs.closing"),
    ],
    # ... no other pin: the copies, each listed for its purge and deleted while the mark is still
    # ours; purges due; the derivatives' names, then each one's delete (here one derivative)
    "delete, last": [
        ("find", "images"),
        ("delete", "images"),
        ("delete", "fs.pins"),
        ("insert", "fs.closing"),
        ("find", "fs.pins"),
        ("find", "fs.files"),
        ("find", "fs.closing"),
        ("insert", "fs.deleted"),
        ("delete", "fs.files"),
        ("delete", "fs.closing"),
        ("find", "fs.deleted"),
        ("distinct", "fs.files"),
        ("find", "fs.files"),
        ("insert", "fs.deleted"),
        ("delete", "fs.files"),
        ("find", "fs.deleted"),
        ("delete", "derivative_uses"),
    ],
}


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
    return sent


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_each_operation_keeps_its_round_trip_budget(store, client, mongo_commands):
    sent = sent_by_operation(client, mongo_commands)
    for operation, budget in BUDGETS.items():
        names = [(command_name(c), str(next(iter(c.values())))) for c in sent[operation]]
        assert names == budget, (operation, names)


# What a command sends besides the query itself: not part of what `explain` plans.
SESSION_FIELDS = {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber", "autocommit"}
PLANNED = {"find", "update", "delete", "distinct", "count", "aggregate"}


def command_name(command: dict) -> str:
    return next(iter(command))


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
