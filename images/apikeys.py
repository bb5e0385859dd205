"""API keys: random secrets shown once, of which only a sha256 is stored.

A key has 256 random bits, so a plain sha256 is as good as a slow password hash here and costs
nothing per request. Keys live beside the records (MongoDB's `api_keys` collection, or the SQL
table), so every instance of the service sees the same keys.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from . import hotcache, mongo
from .models import ApiKey as ApiKeyRow

PREFIX = "isk_"
SCOPES = ("read", "write", "admin")  # each includes the ones before it
# A revoked key keeps working in other workers for at most this long (the verification cache).
CACHE_SECONDS = 10


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: tuple[str, ...]


class KeyExists(Exception):
    pass


class KeyStore(Protocol):
    def add(self, name: str, key_hash: str, scopes: tuple[str, ...]) -> None:
        """Raises KeyExists when the name is taken."""

    def revoke(self, name: str) -> bool: ...

    def find(self, key_hash: str) -> ApiKey | None:
        """The active key with this hash."""

    def any_active(self) -> bool: ...


class SQLKeyStore:
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


class MongoKeyStore:
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
    return key


_cache = hotcache.TTLCache(lambda: CACHE_SECONDS)


def verify(key: str) -> ApiKey | None:
    """The active key matching `key`, or None."""
    if not key.startswith(PREFIX):
        return None
    key_hash = hash_key(key)
    # Unknown keys are remembered too, so a flood of bad keys costs no queries.
    return _cache.get(
        hotcache.scoped("key", key_hash), lambda: get_key_store().find(key_hash), hotcache.always
    )


def any_active() -> bool:
    return _cache.get(hotcache.scoped("any"), lambda: get_key_store().any_active(), hotcache.always)


def forget_cached() -> None:
    """After this process creates or revokes a key, its own answers are fresh at once."""
    _cache.clear()
