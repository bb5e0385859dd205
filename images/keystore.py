"""Where API keys are stored: MongoDB's `api_keys` collection, or the embedded store's SQL table,
beside the records. Only a key's sha256 is ever stored. The backend (images/backend.py) gives the
one of its mode; what a key is and how it is checked is images/apikeys.py's.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pymongo
from django.db import IntegrityError, transaction
from django.db.models import Q
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from . import mongo
from .models import ApiKey as ApiKeyRow

LAST_USED_SECONDS = 60  # how stale a key's recorded last use may be
# Recording a use is best effort: a MongoDB that hangs delays the request this long at most.
LAST_USED_WRITE_SECONDS = 1.0


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

    def __init__(self, database: Database) -> None:
        self.collection = database["api_keys"]

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
