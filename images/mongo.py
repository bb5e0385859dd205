"""The process's MongoDB connection, made lazily.

`MongoClient` is not fork-safe, so nothing connects at import time: the first call in each process
(a gunicorn worker, after the fork) makes the client. Settings are read at call time, so tests can
point it elsewhere with the `settings` fixture.

The URI's options (replicaSet, readPreference, readConcernLevel, w, retryWrites, tls, ...) reach pymongo
untouched: nothing here or in the callers sets a read preference, read concern or write concern. Only
the three timeouts below are set, from MONGO_TIMEOUT_MS, and they win over the URI's.
"""

import contextlib
import logging
import os
import threading
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import pymongo
from django.conf import settings
from pymongo import IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.read_preferences import (
    Nearest,
    Primary,
    PrimaryPreferred,
    Secondary,
    SecondaryPreferred,
    _ServerMode,
)

log = logging.getLogger(__name__)

# How long clean-up after losing MongoDB may wait for it (see `cleanup_deadline`): a server that
# only dropped a connection is found again in milliseconds, while a gone one makes each of an
# upload's clean-ups (the storage's, then the record's) add all of it to the 503's wait. pymongo
# looks for a lost server every 0.5 s (minHeartbeatFrequencyMS), so no shorter wait fails sooner.
CLEANUP_SECONDS = 0.5

_lock = threading.Lock()
_clients: dict[tuple[int, str], MongoClient] = {}


def get_client() -> MongoClient:
    key = (os.getpid(), settings.MONGO["URI"])
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                timeout = settings.MONGO_TIMEOUT_MS
                client = MongoClient(
                    settings.MONGO["URI"],
                    tz_aware=True,
                    connect=False,
                    appname="image-service",
                    # A server that is down must give a 503 within seconds, never a hang.
                    serverSelectionTimeoutMS=timeout,
                    connectTimeoutMS=timeout,
                    socketTimeoutMS=timeout + 1000,  # a server that accepts but hangs
                )
                _clients[key] = client
    return client


def get_database() -> Database:
    return get_client()[settings.MONGO["DB"]]


def location() -> str:
    """Where the records are, for people (the start-up line): the URI's hosts, never its user or
    password, and the database."""
    hosts = urlsplit(settings.MONGO["URI"]).netloc.rpartition("@")[2]
    return f"{hosts}, database {settings.MONGO['DB']}"


# The URI's spelling of each mode (readPreference=...), matched without regard to case.
READ_PREFERENCES: dict[str, _ServerMode] = {
    mode.name.lower(): mode
    for mode in (Primary(), PrimaryPreferred(), Secondary(), SecondaryPreferred(), Nearest())
}


def read_preference(name: str) -> _ServerMode | None:
    """The read preference named `name` ("secondaryPreferred", ...); None for "" (the URI's own)."""
    if not name:
        return None
    try:
        return READ_PREFERENCES[name.lower()]
    except KeyError:
        raise ValueError(
            f"{name!r} is not a read preference; use one of primary, primaryPreferred, secondary, "
            "secondaryPreferred, nearest"
        ) from None


_indexed: set[tuple] = set()


def ensure_indexes(collection: Collection, indexes: list[IndexModel]) -> None:
    """Creates `indexes` once per process (the server treats a repeat as a no-op).

    One at a time: FerretDB 1.24 drops the connection when a single createIndexes command names
    several indexes that all exist already, which MongoDB accepts (see tests/test_mongo.py).
    """
    # A client compares equal to another for the same servers, whichever URI or settings made it.
    key = (os.getpid(), collection.database.client, collection.full_name)
    if key in _indexed:
        return
    with _lock:
        if key not in _indexed:
            for index in indexes:
                _create_index(collection, index)
            _indexed.add(key)


NOT_IMPLEMENTED, INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT = 238, 85, 86
DUPLICATE_KEY = 11000


def insert_new(collection: Collection, docs: list[dict]) -> list[int]:
    """Inserts `docs` in one unordered command: the indexes of those left out because their key
    exists already (any other failure is raised)."""
    if not docs:
        return []
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details["writeErrors"]
        if any(error["code"] != DUPLICATE_KEY for error in errors):
            raise
        return [error["index"] for error in errors]
    return []


def upsert(collection: Collection, _id: object, fields: dict) -> None:
    """Sets `fields` on the document `_id`, inserting it if missing.

    Two upserts of one new `_id` at once (or an upsert and an insert) can both find no document,
    and then the second insert collides. MongoDB 4.2+ retries that itself; FerretDB and older
    servers answer a duplicate key error. Either way the document exists now, so a plain update
    finishes the job.
    """
    try:
        collection.update_one({"_id": _id}, {"$set": fields}, upsert=True)
    except DuplicateKeyError:
        collection.update_one({"_id": _id}, {"$set": fields})


def _create_index(collection: Collection, index: IndexModel) -> None:
    """Creates one index, where the server differs or an older one exists:

    - FerretDB 1.24 has no partial indexes (NotImplemented). Its unique indexes let documents that
      lack the fields repeat, which is what the partial filter is for, so the plain index is right
      there (tests/test_mongo.py). MongoDB never answers NotImplemented to this.
    - An index of the same name or keys made with other options (by an earlier version, before the
      filter) is kept, with a warning, rather than failing every write that ensures the indexes.
    """
    try:
        collection.create_indexes([index])
    except OperationFailure as exc:
        document = index.document
        if exc.code == NOT_IMPLEMENTED and "partialFilterExpression" in document:
            plain = {k: v for k, v in document.items() if k not in ("key", "partialFilterExpression")}
            collection.create_indexes([IndexModel(list(document["key"].items()), **plain)])
        elif exc.code in (INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
            log.warning(
                "%s: index %s exists with other options; kept as it is",
                collection.full_name,
                document["name"],
            )
        else:
            raise


def cleanup_deadline(failure: BaseException) -> AbstractContextManager:
    """How long the clean-up after `failure` may wait for MongoDB: CLEANUP_SECONDS when the failure
    was losing it, since the clean-up would wait out the whole MONGO_TIMEOUT_MS again, and the client
    its 503 with it (what it cannot delete is an orphan, which fsck reclaims); otherwise, as long as
    the clean-up takes."""
    if isinstance(failure, pymongo.errors.ConnectionFailure):
        return pymongo.timeout(CLEANUP_SECONDS)
    return contextlib.nullcontext()
