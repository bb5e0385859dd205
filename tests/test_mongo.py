"""Mongo mode's own details, and the places where FerretDB (the test server) differs from MongoDB."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from gridfs import GridFSBucket
from gridfs.errors import CorruptGridFile
from pymongo import ASCENDING, IndexModel
from pymongo.errors import AutoReconnect

from images import mongo
from images.documents import MongoDocuments
from images.storage import Leftover
from tests.helpers import GRIDFS_CHUNK, blob, name_of
from tests.samples import image_bytes

pytestmark = pytest.mark.parametrize("store", ["mongo"], indirect=True)


def is_ferretdb(db) -> bool:
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def test_indexes_are_created_and_creating_them_again_is_harmless(store):
    for _ in range(2):  # as a second worker process would
        mongo._indexed.clear()
        MongoDocuments().ensure_indexes()
    info = store.mongo_db["images"].index_information()
    assert info["model_newest"]["key"] == [("model_id", 1), ("uploaded_at", -1), ("_id", -1)]
    assert info["model_sha256"]["unique"] is True
    assert info["sha256"]["key"] == [("sha256", 1)]


def test_batch_index_creation_differs_on_ferretdb(store):
    """FerretDB 1.24.2 drops the connection when one createIndexes names several indexes that all
    exist; MongoDB treats it as a no-op. mongo.ensure_indexes creates them one at a time, which is
    right on both. If this starts passing on FerretDB, the workaround can go."""
    collection = store.mongo_db["probe"]
    indexes = [IndexModel([("a", ASCENDING)], name="a"), IndexModel([("b", ASCENDING)], name="b")]
    collection.create_indexes(indexes)
    if is_ferretdb(store.mongo_db):
        with pytest.raises(AutoReconnect):
            collection.create_indexes(indexes)
    else:
        collection.create_indexes(indexes)


@pytest.mark.parametrize("size", [0, 1, GRIDFS_CHUNK, 4 * GRIDFS_CHUNK + 1, 9 * GRIDFS_CHUNK - 7])
def test_blobs_are_gridfs_files_that_any_driver_reads(store, size):
    """The storage writes GridFS by hand (a few chunks per insert): what it writes must be what the
    GridFS spec says, so pymongo's own GridFSBucket (and any other driver) reads it back."""
    data = blob(size)
    name = store.storage.save(name_of(data), ContentFile(data))
    assert GridFSBucket(store.mongo_db).open_download_stream_by_name(name).read() == data
    doc = store.mongo_db["fs.files"].find_one({"filename": name})
    assert (doc["length"], doc["chunkSize"]) == (size, GRIDFS_CHUNK)
    chunks = list(store.mongo_db["fs.chunks"].find({"files_id": doc["_id"]}, sort=[("n", 1)]))
    assert [chunk["n"] for chunk in chunks] == list(range(-(-size // GRIDFS_CHUNK)))
    assert all(len(chunk["data"]) == GRIDFS_CHUNK for chunk in chunks[:-1])
    info = store.mongo_db["fs.chunks"].index_information()
    assert any(index["key"] == [("files_id", 1), ("n", 1)] and index.get("unique") for index in info.values())


def test_chunks_that_the_server_yields_out_of_order_are_read_in_order(store):
    """The reader asks for chunks without a sort (see GridFSReader) and checks each one's `n`. Chunks
    inserted last to first come back in that order from FerretDB's unsorted scan (MongoDB walks its
    index instead): the reader then asks for them sorted, and reads every byte and range right."""
    data = blob(5 * GRIDFS_CHUNK + 11)
    name = store.storage.save(name_of(data), ContentFile(data))
    chunks = store.mongo_db["fs.chunks"]
    doc = store.mongo_db["fs.files"].find_one({"filename": name})
    stored = list(chunks.find({"files_id": doc["_id"]}, {"_id": 0}, sort=[("n", 1)]))
    chunks.delete_many({"files_id": doc["_id"]})
    for chunk in reversed(stored):
        chunks.insert_one(chunk)
    with store.storage.open(name) as reader:
        assert reader.read() == data
        reader.seek(2 * GRIDFS_CHUNK - 3)
        assert reader.read(GRIDFS_CHUNK) == data[2 * GRIDFS_CHUNK - 3 : 3 * GRIDFS_CHUNK - 3]


def test_a_blob_missing_its_first_chunk_answers_503_and_one_missing_a_later_chunk_breaks_off(store, client):
    """Before the first byte, chunks the storage cannot give whole are the JSON 503 every storage
    failure gets; after it, the body breaks off (a live server then closes the connection:
    tests/test_faults.py), never a whole-looking short one."""
    data = image_bytes("PNG", (400, 300), compress_level=0)  # over the hot cache's 256 KB: streamed
    image = client.post("/upload", {"file": SimpleUploadedFile("a.png", data), "model_id": "m"}).json()
    doc = store.mongo_db["fs.files"].find_one({"filename": image["sha256"]})
    store.mongo_db["fs.chunks"].delete_one({"files_id": doc["_id"], "n": 1})
    response = client.get(f"/images/{image['image_id']}/content")
    assert response.status_code == 200
    with pytest.raises(CorruptGridFile):
        b"".join(response.streaming_content)

    store.mongo_db["fs.chunks"].delete_one({"files_id": doc["_id"], "n": 0})
    response = client.get(f"/images/{image['image_id']}/content")
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    assert response.json()["error"] == "storage_unavailable"


def test_the_unique_index_builds_beside_legacy_records(store):
    """The Flask service's records share model_ids and lack a sha256. MongoDB builds `model_sha256`
    beside them because it is partial; FerretDB 1.24 has no partial indexes (NotImplemented), so
    mongo.ensure_indexes makes a plain one there, which lets documents lacking the fields repeat.
    If FerretDB starts accepting the filter, the fallback can go."""
    store.mongo_db["images"].insert_many(
        [{"image_id": str(n), "model_id": "m", "filename": "x"} for n in "ab"]
    )
    MongoDocuments().ensure_indexes()
    info = store.mongo_db["images"].index_information()["model_sha256"]
    assert info["unique"] is True
    if is_ferretdb(store.mongo_db):
        assert "partialFilterExpression" not in info
    else:
        assert info["partialFilterExpression"] == {"sha256": {"$exists": True}}


def test_an_index_an_earlier_version_made_with_other_options_is_kept(store, caplog):
    """MongoDB refuses an index whose name exists with other options (IndexOptionsConflict), which
    would fail every write that ensures the indexes; the old one is kept, with a warning. FerretDB
    1.24 answers ok and keeps the old one silently."""
    keys = [("model_id", ASCENDING), ("sha256", ASCENDING)]
    store.mongo_db["images"].create_index(keys, name="model_sha256")
    MongoDocuments().ensure_indexes()
    assert "unique" not in store.mongo_db["images"].index_information()["model_sha256"]
    if not is_ferretdb(store.mongo_db):
        assert "model_sha256 exists with other options; kept as it is" in caplog.text


def test_a_deleted_blobs_chunks_wait_for_the_purge_delay(store, monkeypatch):
    """A download that opened the blob keeps reading for `purge_delay`; after it, the chunks go."""
    storage, chunks = store.storage, store.mongo_db["fs.chunks"]
    data = blob(1000)
    name = storage.save(name_of(data), ContentFile(data))
    storage.delete(name)
    assert chunks.count_documents({}) == 1
    monkeypatch.setattr(storage, "purge_delay", timedelta(0))
    storage.purge()
    assert chunks.count_documents({}) == 0
    assert store.mongo_db["fs.deleted"].count_documents({}) == 0


def test_of_two_copies_of_a_blob_the_lowest_id_is_read(store):
    """Two concurrent saves of one name may both leave a files document; `_write` keeps the one
    with the lowest _id, so reads take that one even when it was inserted last."""
    data = blob(1000)
    name = store.storage.save(name_of(data), ContentFile(data))
    first = store.mongo_db["fs.files"].find_one({"filename": name})
    older = ObjectId.from_datetime(first["_id"].generation_time - timedelta(days=1))
    other = bytes(reversed(data))
    store.mongo_db["fs.chunks"].insert_one({"files_id": older, "n": 0, "data": other})
    store.mongo_db["fs.files"].insert_one({**first, "_id": older})
    with store.storage.open(name) as f:
        assert f.read() == other


def test_chunks_without_a_files_document_are_a_leftover_dated_by_their_last_chunk(store):
    """An upload cut off before GridFS wrote its files document (which it writes last)."""
    files_id = ObjectId()
    chunks = [{"_id": ObjectId(), "files_id": files_id, "n": n, "data": b"x"} for n in range(2)]
    store.mongo_db["fs.chunks"].insert_many(chunks)
    assert list(store.storage.leftovers()) == [Leftover(str(files_id), chunks[1]["_id"].generation_time)]


def test_a_last_unpin_that_finds_another_closing_leaves_the_blob_to_it(store):
    """Another process's closing mark on the name (it sees the same pins): this unpin retries for a
    moment (50 x 10 ms), then leaves the blob, and the mark, to that closing."""
    data = blob(1000)
    holder = str(ObjectId())
    assert not store.storage.pin(name_of(data), holder)
    name = store.storage.save(name_of(data), ContentFile(data))
    mark = {"_id": name, "by": ObjectId(), "at": datetime.now(UTC)}
    store.mongo_db["fs.closing"].insert_one(mark)
    assert store.storage.unpin(name, holder) is False
    assert store.storage.exists(name)
    assert store.mongo_db["fs.closing"].find_one({"_id": name})["by"] == mark["by"]


def test_upserts_of_one_new_id_at_once_all_succeed(store):
    """Two workers recording one new derivative (or setting one model's first cover) at once: each
    upsert can find no document, and then the second insert collides. FerretDB answers that with a
    duplicate key error, which once reached a client as a 500 (the stress test's derivative)."""
    collection = store.mongo_db["races"]
    ids = [f"id-{n}" for n in range(60)]
    start = threading.Barrier(4)

    def race(worker: int) -> None:
        start.wait()
        for _id in ids:
            mongo.upsert(collection, _id, {"by": worker})

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(race, worker) for worker in range(4)]:
            future.result()
    assert collection.count_documents({}) == len(ids)
