"""API keys: random secrets shown once, of which only a sha256 is stored.

A key has 256 random bits, so a plain sha256 is as good as a slow password hash here and costs
nothing per request. Keys live beside the records (MongoDB's `api_keys` collection, or the SQL
table), so every instance of the service sees the same keys.

A key's last use is recorded to within a minute (LAST_USED_SECONDS): each worker writes it at most
once a minute per key, and only when the stored time is older than that, so a busy key costs one
small write a minute, not one per request.
"""

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pymongo
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import DuplicateKeyError, PyMongoError

from . import hotcache, mongo
from .models import ApiKey as ApiKeyRow

PREFIX = "isk_"
SCOPES = ("read", "write", "admin")  # each includes the ones before it
# A revoked key keeps working in other workers for at most this long (the verification cache).
CACHE_SECONDS = 10
LAST_USED_SECONDS = 60  # how stale a key's recorded last use may be
# Recording a use is best effort: a MongoDB that hangs delays the request this long at most.
LAST_USED_WRITE_SECONDS = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class KeyInfo:
    """A key as the admin lists it (never its hash)."""

    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyExists(Exception):
    pass


class KeyStore(Protocol):
    WHERE: str  # for people: which store a key must be in to work here

    def add(self, name: str, key_hash: str, scopes: tuple[str, ...]) -> None:
        """Raises KeyExists when the name is taken."""

    def revoke(self, name: str) -> bool: ...

    def find(self, key_hash: str) -> ApiKey | None:
        """The active key with this hash."""

    def any_active(self) -> bool: ...

    def all(self) -> list[KeyInfo]:
        """Every key, revoked ones too (their names stay taken), newest first."""

    def mark_used(self, key_hash: str, at: datetime) -> None:
        """Records a use at `at`, unless one within LAST_USED_SECONDS before it is recorded already."""


class SQLKeyStore:
    WHERE = "the embedded store's api_keys table"

    def add(self, name: str, key_hash: str, scopes: tuple[str, ...]) -> None:
        try:
            with transaction.atomic():
                ApiKeyRow.objects.create(
                    name=name, key_hash=key_hash, scopes=",".join(scopes), created_at=datetime.now(UTC)
                )
        except IntegrityError as exc:
            raise KeyExists(name) from exc

    def revoke(self, name: str) -> bool:
        rows = ApiKeyRow.objects.filter(name=name, revoked_at__isnull=True)
        return rows.update(revoked_at=datetime.now(UTC)) > 0

    def find(self, key_hash: str) -> ApiKey | None:
        row = ApiKeyRow.objects.filter(key_hash=key_hash, revoked_at__isnull=True).first()
        return row and ApiKey(row.name, tuple(row.scopes.split(",")))

    def any_active(self) -> bool:
        return ApiKeyRow.objects.filter(revoked_at__isnull=True).exists()

    def all(self) -> list[KeyInfo]:
        rows = ApiKeyRow.objects.order_by("-created_at")
        return [
            KeyInfo(r.name, tuple(r.scopes.split(",")), r.created_at, r.last_used_at, r.revoked_at)
            for r in rows
        ]

    def mark_used(self, key_hash: str, at: datetime) -> None:
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=at - timedelta(seconds=LAST_USED_SECONDS))
        ApiKeyRow.objects.filter(stale, key_hash=key_hash).update(last_used_at=at)


class MongoKeyStore:
    WHERE = "MongoDB's api_keys collection"
    INDEXES = [
        IndexModel([("name", ASCENDING)], unique=True, name="name"),
        IndexModel([("key_hash", ASCENDING)], unique=True, name="key_hash"),
    ]

    def __init__(self) -> None:
        self.collection = mongo.get_database()["api_keys"]

    def add(self, name: str, key_hash: str, scopes: tuple[str, ...]) -> None:
        mongo.ensure_indexes(self.collection, self.INDEXES)
        doc = {"name": name, "key_hash": key_hash, "scopes": list(scopes), "created_at": datetime.now(UTC)}
        try:
            self.collection.insert_one(doc)
        except DuplicateKeyError as exc:
            raise KeyExists(name) from exc

    def revoke(self, name: str) -> bool:
        result = self.collection.update_one(
            {"name": name, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(UTC)}}
        )
        return result.modified_count > 0

    def find(self, key_hash: str) -> ApiKey | None:
        doc = self.collection.find_one({"key_hash": key_hash, "revoked_at": None})
        return doc and ApiKey(doc["name"], tuple(doc["scopes"]))

    def any_active(self) -> bool:
        return self.collection.find_one({"revoked_at": None}, {"_id": 1}) is not None

    def all(self) -> list[KeyInfo]:
        docs = self.collection.find({}, {"key_hash": 0}).sort("created_at", DESCENDING)
        return [
            KeyInfo(
                d["name"], tuple(d["scopes"]), d["created_at"], d.get("last_used_at"), d.get("revoked_at")
            )
            for d in docs
        ]

    def mark_used(self, key_hash: str, at: datetime) -> None:
        cutoff = at - timedelta(seconds=LAST_USED_SECONDS)
        stale = [{"last_used_at": None}, {"last_used_at": {"$lt": cutoff}}]
        with pymongo.timeout(LAST_USED_WRITE_SECONDS):
            self.collection.update_one({"key_hash": key_hash, "$or": stale}, {"$set": {"last_used_at": at}})


def get_key_store() -> KeyStore:
    return MongoKeyStore() if settings.MONGO else SQLKeyStore()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}")
    return scopes


def create_key(name: str, scopes: tuple[str, ...]) -> str:
    """Stores a new key and returns it: the only time it is ever seen."""
    key = PREFIX + secrets.token_urlsafe(32)
    get_key_store().add(name, hash_key(key), scopes)
    forget_cached()
    return key


def revoke_key(name: str) -> bool:
    """Whether an active key of that name was revoked. Other workers notice within CACHE_SECONDS."""
    revoked = get_key_store().revoke(name)
    forget_cached()
    return revoked


_cache = hotcache.TTLCache(lambda: CACHE_SECONDS)


def verify(key: str) -> ApiKey | None:
    """The active key matching `key`, or None."""
    if not key.startswith(PREFIX):
        return None
    key_hash = hash_key(key)
    # Unknown keys are remembered too, so a flood of bad keys costs no queries.
    found = _cache.get(
        hotcache.scoped("key", key_hash), lambda: get_key_store().find(key_hash), hotcache.always
    )
    if found is not None:
        _note_use(key_hash)
    return found


_marked: dict[str, float] = {}  # key hash: when this process last recorded its use (monotonic)


def _note_use(key_hash: str) -> None:
    """Records the key's use, at most once a minute per key and process; never fails the request."""
    now = time.monotonic()
    if now - _marked.get(key_hash, -LAST_USED_SECONDS) < LAST_USED_SECONDS:
        return
    _marked[key_hash] = now
    try:
        get_key_store().mark_used(key_hash, datetime.now(UTC))
    except (PyMongoError, DatabaseError) as exc:
        log.warning("could not record an API key's use: %s", exc)


def any_active() -> bool:
    return _cache.get(hotcache.scoped("any"), lambda: get_key_store().any_active(), hotcache.always)


def forget_cached() -> None:
    """After this process creates or revokes a key, its own answers are fresh at once."""
    _cache.clear()
    _marked.clear()
