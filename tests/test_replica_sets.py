"""Replica sets: the URI's options reach pymongo untouched, and blob reads may go to secondaries
(MONGO_BLOB_READ_PREFERENCE), falling back to the primary for a blob a secondary lacks.

A lagging secondary is played by a second database that holds part of the blob (or none of it):
FerretDB is a single server, and the fallback only needs "not found here, found there".
"""

import hashlib
import os
import uuid
from collections.abc import Iterator

import pymongo
import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from pymongo.database import Database
from pymongo.read_preferences import Nearest, Primary, ReadPreference, SecondaryPreferred

from images import mongo
from images.documents import MongoDocuments
from images.storage import GridFSStorage

REPLICA_SET_URI = (
    "mongodb://db1:27017,db2:27017,db3:27017/?replicaSet=rs0&readPreference=secondaryPreferred"
    "&readConcernLevel=majority&w=majority&wtimeoutMS=5000&retryWrites=true&tls=true"
)


def test_uri_options_reach_pymongo_untouched(settings) -> None:
    settings.MONGO = {"URI": REPLICA_SET_URI, "DB": "images_db"}
    settings.MONGO_TIMEOUT_MS = 1500
    client = mongo.get_client()  # connect=False: nothing is contacted
    try:
        assert client.options.replica_set_name == "rs0"
        assert client.options.retry_writes is True
        assert client.options.pool_options._ssl_context is not None  # tls=true (no public accessor)
        # Only the timeouts are ours (MONGO_TIMEOUT_MS), and they win over the URI's.
        assert client.options.server_selection_timeout == 1.5
        assert client.options.pool_options.socket_timeout == 2.5
        # Records, and every collection the storage uses, inherit the URI's read and write settings.
        records = MongoDocuments().collection
        storage = GridFSStorage()
        for collection in (records, storage.files, storage.chunks, storage.deleted):
            assert collection.read_preference == SecondaryPreferred()
            assert collection.read_concern.level == "majority"
            assert collection.write_concern.document == {"w": "majority", "wtimeout": 5000}
        # Blob reads keep them too unless MONGO_BLOB_READ_PREFERENCE says otherwise.
        assert [db.read_preference for db in storage._blob_sources()] == [SecondaryPreferred()]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", [Nearest()]),  # the URI's
        ("primary", [Primary()]),
        ("secondaryPreferred", [SecondaryPreferred(), Primary()]),
        ("SECONDARYPREFERRED", [SecondaryPreferred(), Primary()]),
        ("secondary", [ReadPreference.SECONDARY, Primary()]),
    ],
)
def test_blob_sources(settings, name: str, expected: list) -> None:
    """Where blobs are looked for, in turn: the setting's read preference, then the primary."""
    settings.MONGO = {"URI": "mongodb://db1,db2/?replicaSet=rs0&readPreference=nearest", "DB": "images_db"}
    storage = GridFSStorage(blob_read_preference=name)
    try:
        assert [db.read_preference for db in storage._blob_sources()] == expected
    finally:
        mongo.get_client().close()


def test_a_bad_blob_read_preference_is_refused(settings) -> None:
    settings.MONGO_BLOB_READ_PREFERENCE = "secondaryFirst"
    assert [e.id for e in run_checks() if e.id.startswith("images.")] == ["images.E002"]
    with pytest.raises(ImproperlyConfigured, match="secondaryFirst"):
        GridFSStorage(blob_read_preference="secondaryFirst")


@pytest.fixture
def databases(mongo_uri: str) -> Iterator[tuple[Database, Database]]:
    """A primary's database and a lagging secondary's (another database on the same server)."""
    client = pymongo.MongoClient(mongo_uri, tz_aware=True)
    names = [f"test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        yield client[names[0]], client[names[1]]
    finally:
        for name in names:
            client.drop_database(name)
        client.close()


def lagging_storage(monkeypatch: pytest.MonkeyPatch, primary: Database, secondary: Database) -> GridFSStorage:
    storage = GridFSStorage(database=primary, blob_read_preference="secondaryPreferred")
    monkeypatch.setattr(storage, "_blob_sources", lambda: [secondary, primary])
    return storage


def save(storage: GridFSStorage, data: bytes) -> str:
    return storage.save(hashlib.sha256(data).hexdigest(), ContentFile(data))


def test_a_blob_the_secondary_lacks_is_read_from_the_primary(databases, monkeypatch) -> None:
    primary, secondary = databases
    storage = lagging_storage(monkeypatch, primary, secondary)
    data = os.urandom(300_000)
    name = save(storage, data)
    assert storage.size(name) == len(data)
    with storage.open(name) as file:
        assert file.read() == data
    with pytest.raises(FileNotFoundError):
        storage.open("ab" * 32)


def test_chunks_the_secondary_lacks_are_read_from_the_primary(databases, monkeypatch) -> None:
    """The files document has arrived on the secondary, but not all of its chunks (reads of one blob
    may go to different secondaries)."""
    primary, secondary = databases
    storage = lagging_storage(monkeypatch, primary, secondary)
    data = os.urandom(700_000)  # three chunks of 255 KiB
    name = save(storage, data)
    doc = primary["fs.files"].find_one({"filename": name})
    secondary["fs.files"].insert_one(doc)
    secondary["fs.chunks"].insert_one(primary["fs.chunks"].find_one({"files_id": doc["_id"], "n": 0}))
    with storage.open(name) as file:
        assert file.read(1000) == data[:1000]
        assert file.file.chunks.database.name == secondary.name  # the first chunk came from there
        assert file.read() == data[1000:]
        assert file.file.chunks.database.name == primary.name


def test_the_secondary_copy_is_read_when_it_is_whole(databases, monkeypatch) -> None:
    primary, secondary = databases
    storage = lagging_storage(monkeypatch, primary, secondary)
    data = os.urandom(10_000)
    name = save(storage, data)
    doc = primary["fs.files"].find_one({"filename": name})
    secondary["fs.files"].insert_one(doc)
    secondary["fs.chunks"].insert_many(primary["fs.chunks"].find({"files_id": doc["_id"]}))
    primary["fs.chunks"].delete_many({"files_id": doc["_id"]})  # so that only the secondary can answer
    with storage.open(name) as file:
        assert file.read() == data


def test_blob_reads_work_on_a_single_server_with_a_secondary_preference(databases) -> None:
    """A standalone server (or FerretDB) answers any read preference, so the setting is safe there."""
    storage = GridFSStorage(database=databases[0], blob_read_preference="secondaryPreferred")
    data = os.urandom(20_000)
    name = save(storage, data)
    assert storage.size(name) == len(data)
    with storage.open(name) as file:
        assert file.read() == data
