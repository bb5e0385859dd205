"""The life of a blob (images/storage.py): a blob goes only with its last pin, so no upload answered
2xx loses its bytes to a delete, and each image is deleted once. In both modes, through the service
code and against the real service; the long stress run is in tests/test_stress.py."""

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pymongo
import pytest
import requests
from django.core.files.base import ContentFile

from images import derivatives, services
from images.backend import get_backend
from tests import servers
from tests.helpers import (
    TIMEOUT,
    Live,
    drop_pin,
    new_model_id,
    spec,
    stored_image,
    untrack,
    upload,
    upload_to,
)
from tests.samples import image_bytes

FAR_PAST_GRACE = ["--grace", "0"]


def at_once(*calls):
    """Runs the calls in threads released together; returns their results in order."""
    barrier = threading.Barrier(len(calls))

    def released(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


def test_a_delete_racing_an_upload_of_the_same_bytes_never_loses_it(live: Live) -> None:
    """Issue 13's lost upload: model A holds the bytes; B uploads them while A's image is deleted.
    B's answer was 201, then its content 404 in 6 of 12 rounds before blobs kept pins."""
    for round_ in range(12):
        data = image_bytes("PNG", (40, 30), seed=9000 + round_)
        first = upload_to(live.url, data, new_model_id("race-a"))
        assert first.status_code == 201, first.text
        deleted, second = at_once(
            partial(requests.delete, f"{live.url}/images/{first.json()['image_id']}", timeout=TIMEOUT),
            partial(upload_to, live.url, data, new_model_id("race-b")),
        )
        assert (deleted.status_code, second.status_code) == (204, 201), second.text
        content = requests.get(second.json()["url"], timeout=TIMEOUT)
        assert (content.status_code, content.content) == (200, data), round_
    report = servers.fsck(live_env(live))
    assert not [p for p in report["problems"] if p["kind"] not in servers.RECLAIMABLE], report


def live_env(live: Live) -> dict[str, str]:
    env = {"DATA_DIR": str(live.data_dir)}
    if live.mongo_db is not None:
        client: pymongo.MongoClient = live.mongo_db.client
        host, port = client.address
        env.update(MONGO_URI=f"mongodb://{host}:{port}/", MONGO_DB=live.mongo_db.name)
    return env


def test_concurrent_deletes_of_one_image_answer_204_once(live: Live) -> None:
    for round_ in range(3):
        response = upload_to(live.url, image_bytes("PNG", (20, 20), seed=9100 + round_), "deletes")
        url = f"{live.url}/images/{response.json()['image_id']}"
        answers = at_once(*[partial(requests.delete, url, timeout=TIMEOUT)] * 6)
        assert sorted(a.status_code for a in answers) == [204, 404, 404, 404, 404, 404], round_


def test_a_derivative_made_while_its_image_is_deleted_is_not_left_behind(store, client, monkeypatch):
    """The delete sweeps the derivatives that exist; the one being made is deleted by its maker,
    which answers as for a deleted image."""
    record = stored_image(client, image_bytes("PNG", (300, 200), seed=9200))
    real_make = derivatives._make

    def make_while_deleted(*args):
        made = real_make(*args)
        services.delete_image(record.image_id)
        return made

    monkeypatch.setattr(derivatives, "_make", make_while_deleted)
    with pytest.raises(FileNotFoundError):
        derivatives.ensure(record, spec(128))
    assert store.blob_names() == []


def test_a_failed_record_write_gives_its_pin_back(store, client, monkeypatch):
    data = image_bytes("PNG", (30, 30), seed=9300)
    docs = type(get_backend().records)

    def failing_insert(self, record):
        raise OSError("the record store failed")

    monkeypatch.setattr(docs, "insert", failing_insert)
    with pytest.raises(OSError):
        services.add_image(ContentFile(data, "a.png"), "m1")
    monkeypatch.undo()
    assert store.blob_names() == []


def test_fsck_gives_back_stale_pins_and_pins_unpinned_records(store, client, settings):
    from django.core.management import call_command

    kept = upload(client, image_bytes("PNG", (30, 30), seed=9400), model_id="kept").json()
    lost = image_bytes("PNG", (30, 30), seed=9401)
    name = services.sha256_of(ContentFile(lost))
    store.storage.save(name, ContentFile(lost))
    assert store.storage.pin(name, "6b0000000000000000000001")  # an upload cut off before its record
    drop_pin(store, kept["sha256"], kept["image_id"])  # a pin lost, say in a restore from backup
    call_command("fsck", "--repair", *FAR_PAST_GRACE)
    assert not store.storage.exists(name)
    assert set(store.storage.pins(kept["sha256"])) == {kept["image_id"]}
    call_command("fsck", *FAR_PAST_GRACE)  # clean: exits 0


def test_an_untracked_blob_is_tracked_by_fsck_then_freed_by_its_last_delete(store, client):
    from django.core.management import call_command

    data = image_bytes("PNG", (30, 30), seed=9500)
    a = upload(client, data, model_id="a").json()
    b = upload(client, data, model_id="b").json()
    untrack(store, a["sha256"])  # as written before blobs kept pins
    assert client.delete(f"/images/{a['image_id']}").status_code == 204
    assert store.storage.exists(a["sha256"])  # untracked blobs are never unpinned away
    call_command("fsck", "--repair", *FAR_PAST_GRACE)
    assert set(store.storage.pins(a["sha256"])) == {b["image_id"], "~tracking"}
    call_command("fsck", "--repair", *FAR_PAST_GRACE)  # a later run: fsck's own pin is old now
    assert set(store.storage.pins(a["sha256"])) == {b["image_id"]}
    assert client.delete(f"/images/{b['image_id']}").status_code == 204
    assert store.blob_names() == []


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_mongo_commands_per_operation_are_pinned(store, client, mongo_commands):
    """FerretDB is slow per round trip, so each operation's count is fixed here: a change that adds
    one must say so. Indexes are made once per process, so a first upload warms them up."""
    upload(client, image_bytes("PNG", (20, 20), seed=9600), model_id="warm-up")
    data = image_bytes("PNG", (20, 20), seed=9601)

    def count(action) -> list[str]:
        mongo_commands.names.clear()
        action()
        return list(mongo_commands.names)

    new = count(lambda: upload(client, data, model_id="m1"))
    # find (model, sha256); pin: insert, closing?, exists?; save: exists?, chunks, files, other
    # copies?; the record
    assert new == ["find", "insert", "find", "find", "find", "insert", "insert", "find", "insert"], new
    shared = count(lambda: upload(client, data, model_id="m2"))
    assert shared == ["find", "insert", "find", "find", "insert"], shared
    image_id = shared and get_backend().records.find("m2", services.sha256_of(ContentFile(data))).image_id
    kept = count(lambda: client.delete(f"/images/{image_id}"))
    assert kept == ["find", "delete", "delete", "insert", "find", "delete"], kept


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_a_closing_mark_left_by_a_dead_process_is_taken_over(store):
    """An unpin killed while it held a name's closing mark: the next pin of that name waits out
    CLOSING_STALE, not forever, removes the mark and finds the blob still there (the dead closing
    deleted nothing); a fresh mark is waited for instead."""
    from datetime import UTC, datetime, timedelta

    from bson import ObjectId

    storage = store.storage
    data = image_bytes("PNG", (30, 30), seed=9700)
    name = services.sha256_of(ContentFile(data))
    storage.save(name, ContentFile(data))
    stale = datetime.now(UTC) - storage.CLOSING_STALE - timedelta(seconds=1)
    storage.closing.insert_one({"_id": name, "by": ObjectId(), "at": stale})
    assert storage.pin(name, "6b0000000000000000000002") is True
    assert storage.closing.find_one({"_id": name}) is None
    assert storage.unpin(name, "6b0000000000000000000002") is True
    assert not storage.exists(name)
