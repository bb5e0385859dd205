"""Fixtures that run the same tests in both storage modes, against real servers.

`store` is parametrized over "embedded" (SQLite + files) and "mongo" (FerretDB, or the MongoDB at
MONGO_TEST_URI). Mongo mode never silently disappears: under CI=true a missing server fails the run.
"""

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
from django.core.files.storage import storages

from images.backend import get_backend
from images.storage import BlobFileSystemStorage
from tests import servers

MODES = ["embedded", "mongo"]


@pytest.fixture(scope="session")
def mongo_uri(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-compatible server for the whole session."""
    if uri := os.environ.get("MONGO_TEST_URI"):
        yield uri
        return
    binary = request.getfixturevalue("ferretdb_bin")
    with servers.ferretdb(binary, tmp_path_factory.mktemp("ferretdb")) as uri:
        yield uri


@pytest.fixture(scope="session")
def ferretdb_bin() -> Path:
    """The FerretDB binary. Under CI=true its absence fails the run: Mongo mode never goes quietly."""
    binary = servers.ferretdb_binary()
    if binary is None or not binary.exists():
        message = "FerretDB is not built: run scripts/install-ferretdb (scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@dataclass
class Store:
    """One storage mode, configured into Django's settings, with ways to look behind the API."""

    mode: str
    blob_dir: Path | None = None
    mongo_db: pymongo.database.Database | None = None

    @property
    def storage(self):
        return storages["images"]

    def records(self) -> list:
        return get_backend().records.page(None, None, 10_000)

    def blob_names(self) -> list[str]:
        """Every blob, and every piece of one, that exists in the backend. A deleted GridFS file's
        chunks that wait for their purge (see GridFSStorage) belong to no blob any more."""
        if self.mongo_db is not None:
            files = [d["filename"] for d in self.mongo_db["fs.files"].find()]
            accounted = [d["_id"] for d in self.mongo_db["fs.files"].find()]
            accounted += [d["_id"] for d in self.mongo_db["fs.deleted"].find()]
            orphans = self.mongo_db["fs.chunks"].count_documents({"files_id": {"$nin": accounted}})
            return files + ["<orphan chunk>"] * orphans
        refs = self.blob_dir / BlobFileSystemStorage.REFS_DIR  # pins and their locks, not bytes
        return sorted(p.name for p in self.blob_dir.rglob("*") if p.is_file() and refs not in p.parents)

    def assert_empty(self) -> None:
        assert self.records() == []
        assert self.blob_names() == []


def configure_store(mode: str, settings, tmp_path: Path, request) -> Iterator[Store]:
    if mode == "embedded":
        blob_dir = tmp_path / "blobs"
        settings.MONGO = None
        settings.STORAGES = {
            **settings.STORAGES,
            "images": {
                "BACKEND": "images.storage.BlobFileSystemStorage",
                "OPTIONS": {"location": str(blob_dir)},
            },
        }
        yield Store(mode, blob_dir=blob_dir)
        return
    uri = request.getfixturevalue("mongo_uri")
    name = f"test_{uuid.uuid4().hex[:12]}"
    settings.MONGO = {"URI": uri, "DB": name}
    settings.STORAGES = {
        **settings.STORAGES,
        "images": {"BACKEND": "images.storage.GridFSStorage", "OPTIONS": {"bucket_name": "fs"}},
    }
    client = pymongo.MongoClient(uri, tz_aware=True)
    try:
        yield Store(mode, mongo_db=client[name])
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(params=MODES)
def store(request, settings, tmp_path, db) -> Iterator[Store]:
    """Django's test database is set up in both modes: Django's own tables live there anyway."""
    yield from configure_store(request.param, settings, tmp_path, request)


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Throttle counters and cached key lookups must not carry over from one test to the next."""
    from django.core.cache import cache

    from images import apikeys, hotcache

    cache.clear()
    apikeys.forget_cached()
    hotcache.clear()
    yield
