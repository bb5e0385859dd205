"""Where the derivative cache (images/derivative_cache.py) keeps one row per derivative: its name,
its size, and when it was last asked for. The SQL table `derivative_uses`, or the MongoDB collection
of that name, beside the records, so every worker and instance sees the same ones. The backend
(images/backend.py) gives the one of its mode; the cache's rules are all in derivative_cache.py.
"""

import contextlib
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Sum
from pymongo import ASCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from . import mongo
from .models import DerivativeUse

# (name, size, used_at) of one derivative
Use = tuple[str, int, datetime]


class SQLDerivativeUses:
    def made(self, name: str, size: int, at: datetime) -> None:
        DerivativeUse.objects.update_or_create(name=name, defaults={"size": size, "used_at": at})

    def touch(self, name: str, at: datetime) -> bool:
        """Records a use of a derivative that has a row; whether it had one."""
        return DerivativeUse.objects.filter(name=name).update(used_at=at) > 0

    def add(self, name: str, size: int, at: datetime) -> None:
        """A row for a derivative made before rows existed; nothing if another worker added it."""
        with contextlib.suppress(IntegrityError), transaction.atomic():
            DerivativeUse.objects.create(name=name, size=size, used_at=at)

    def forget(self, name: str) -> None:
        DerivativeUse.objects.filter(name=name).delete()

    def total(self) -> int:
        return DerivativeUse.objects.aggregate(total=Sum("size"))["total"] or 0

    def least_recently_used(self, before: datetime, limit: int) -> list[Use]:
        rows = DerivativeUse.objects.filter(used_at__lt=before).order_by("used_at")[:limit]
        return [(row.name, row.size, row.used_at) for row in rows]

    def forget_unused(self, name: str, used_at: datetime) -> bool:
        """Deletes the row if nobody used the derivative since `used_at`; whether it did."""
        return DerivativeUse.objects.filter(name=name, used_at=used_at).delete()[0] == 1


class MongoDerivativeUses:
    INDEXES = [IndexModel([("used_at", ASCENDING)], name="used_at")]

    def __init__(self, database: Database) -> None:
        self._collection = database["derivative_uses"]

    @property
    def collection(self) -> Collection:
        mongo.ensure_indexes(self._collection, self.INDEXES)
        return self._collection

    def made(self, name: str, size: int, at: datetime) -> None:
        mongo.upsert(self.collection, name, {"size": size, "used_at": at})  # racing another's `add`

    def touch(self, name: str, at: datetime) -> bool:
        return self.collection.update_one({"_id": name}, {"$set": {"used_at": at}}).matched_count > 0

    def add(self, name: str, size: int, at: datetime) -> None:
        with contextlib.suppress(DuplicateKeyError):
            self.collection.insert_one({"_id": name, "size": size, "used_at": at})

    def forget(self, name: str) -> None:
        self.collection.delete_one({"_id": name})

    def total(self) -> int:
        found = list(self.collection.aggregate([{"$group": {"_id": None, "total": {"$sum": "$size"}}}]))
        return int(found[0]["total"]) if found else 0

    def least_recently_used(self, before: datetime, limit: int) -> list[Use]:
        docs = self.collection.find({"used_at": {"$lt": before}}).sort("used_at", ASCENDING).limit(limit)
        return [(doc["_id"], doc["size"], doc["used_at"]) for doc in docs]

    def forget_unused(self, name: str, used_at: datetime) -> bool:
        return self.collection.delete_one({"_id": name, "used_at": used_at}).deleted_count == 1
