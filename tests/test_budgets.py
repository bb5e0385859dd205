"""Round-trip budgets: how many commands each operation sends to MongoDB, pinned per operation.

FerretDB is slow per round trip and scans every collection for any filter but `_id`, so one more
command per operation shows in every figure; a count does not depend on the server's speed, so it
is exact on FerretDB and on MONGO_TEST_URI's MongoDB alike. The budgets are in tests/budgets.py
(bench/ shows them beside its figures), and the README's Performance section lists them: a change
that adds a round trip must change both.
"""

import os

import pytest

from images import hotcache
from images.storage import GridFSReader
from tests.budgets import BUDGETS
from tests.helpers import CommandCounter, command_call, upload
from tests.samples import image_bytes, noise_jpeg


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
        counter.clear()
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
    # A blob of 5 GridFS chunks read 2 chunks per batch (16 in service): one getMore per batch. Read
    # whole, it leaves a local copy (the `blob_cache` fixture), which the next cold GET reads.
    big = upload(client, noise_jpeg((1150, 800)), model_id="big").json()["image_id"]

    def streamed():
        response = client.get(f"/images/{big}/content")
        b"".join(response.streaming_content)  # the chunks after the first are read as they are sent
        return response

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GridFSReader, "CHUNKS_PER_BATCH", 2)
        count("GET by id, cold, 5 chunks", streamed, 200)
    count("GET by id, cold, blob cached on disk", streamed, 200)
    return sent


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_each_operation_keeps_its_round_trip_budget(store, blob_cache, client, mongo_commands):
    sent = sent_by_operation(client, mongo_commands)
    assert {operation: [command_call(c) for c in sent[operation]] for operation in BUDGETS} == BUDGETS


# What a command sends besides the query itself: not part of what `explain` plans.
SESSION_FIELDS = {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber", "autocommit"}
PLANNED = {"find", "update", "delete", "distinct", "count", "aggregate"}


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


def filters(command: dict) -> list[dict]:
    """The filters a command selects documents by (an aggregation's leading $match)."""
    name = command_call(command)[0]
    if name in ("find", "count", "distinct"):
        return [command.get("filter", command.get("query")) or {}]
    if name in ("update", "delete"):
        return [change["q"] for change in command["updates" if name == "update" else "deletes"]]
    first = command["pipeline"][0] if command.get("pipeline") else {}
    return [first.get("$match", {})]


def leading_keys(mongo_db, collection: str) -> set[str]:
    """The fields that lead some index of a collection (`_id` always, even before the collection
    exists): a filter on one of them is an index scan."""
    return {"_id"} | {index["key"][0][0] for index in mongo_db[collection].index_information().values()}


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_every_query_of_the_budgeted_operations_uses_an_index(store, blob_cache, client, mongo_commands):
    """The queries behind the budgets are answered from indexes, never by a collection scan: the
    budgets count round trips, this keeps each one cheap as data grows. Every filter (or, for an
    unfiltered sorted page, its sort) starts with the leading field of an index that the collection
    has; on a real MongoDB (MONGO_TEST_URI), `explain` must also pick no COLLSCAN. FerretDB plans
    nothing but `_id` lookups, so its explain would say nothing."""
    sent = sent_by_operation(client, mongo_commands)
    explain = bool(os.environ.get("MONGO_TEST_URI"))
    unindexed, scans = [], []
    for operation, commands in sent.items():
        for command in commands:
            name, collection = command_call(command)
            if name not in PLANNED:
                continue
            indexed = leading_keys(store.mongo_db, collection)
            for selector in filters(command):
                fields = set(selector) or set(command.get("sort", {}))
                if not fields & indexed:
                    unindexed.append((operation, name, collection, selector))
            if explain:
                query = {k: v for k, v in command.items() if k not in SESSION_FIELDS}
                stages = winning_stages(store.mongo_db.command("explain", query, verbosity="queryPlanner"))
                if not stages or "COLLSCAN" in stages:
                    scans.append((operation, query, stages))
    assert unindexed == [] and scans == []
