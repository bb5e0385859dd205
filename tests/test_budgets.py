"""Round-trip budgets: how many commands each operation sends to MongoDB, pinned per operation.

FerretDB is slow per round trip and scans every collection for any filter but `_id`, so one more
command per operation shows in every figure; a count does not depend on the server's speed, so it
is exact on FerretDB and on MONGO_TEST_URI's MongoDB alike. The README's Performance section lists
the same budgets: a change that adds a round trip must change both.
"""

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
        self.commands: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, str(event.command.get(event.command_name))))

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


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_each_operation_keeps_its_round_trip_budget(store, client, mongo_commands):
    """Indexes are made once per process, so a first upload and derivative warm them up."""
    warm = upload(client, image_bytes("PNG", (20, 20), seed=9600), model_id="warm-up").json()["image_id"]
    assert client.get(f"/images/{warm}/content?w=64").status_code == 200
    data = image_bytes("PNG", (20, 20), seed=9601)
    sent = {}

    def count(operation: str, action, status: int, cold: bool = True):
        if cold:
            hotcache.clear()
        mongo_commands.commands.clear()
        response = action()
        assert response.status_code == status, (operation, response.content[:200])
        sent[operation] = list(mongo_commands.commands)
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
    for operation, budget in BUDGETS.items():
        assert sent[operation] == budget, (operation, sent[operation])
