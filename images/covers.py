"""Covers: the image a model's owner chose to represent it, one per model, kept beside the records.

A cover is its own small record keyed by model_id (`_id` in MongoDB, the primary key in SQLite), so
setting one is a single replace of that key, and a batch of models' covers is one `_id $in` query:
FerretDB looks up `_id` filters and scans for any other. A cover names an image_id; the services
check that it is the model's, and clear it when that image is deleted. The backend
(images/backend.py) gives the one of its mode. The bulk commands carry covers with the records
(export, import, migrate_storage), and fsck clears one whose image is gone.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

from django.db import DEFAULT_DB_ALIAS
from django.db.models import QuerySet
from pymongo.database import Database

from . import mongo
from .documents import Documents
from .models import Cover

BATCH = 500  # covers whose records are looked up in one `_id $in` query


class Covers(Protocol):
    def get(self, model_id: str) -> str | None:
        """The image_id of the model's cover, or None."""

    def many(self, model_ids: list[str]) -> dict[str, str]:
        """{model_id: image_id} of the models that have a cover, in one query."""

    def set(self, model_id: str, image_id: str, set_at: datetime | None = None) -> None:
        """Makes `image_id` the model's cover, replacing any other; `set_at` (default now) is given by
        migrate_storage, which keeps when the cover was chosen."""

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        """Clears the model's cover (only if it is `image_id`, when given); whether there was one."""

    def all(self, limit: int | None = None) -> list[tuple[str, str, datetime]]:
        """Up to `limit` covers (None: every one; one small tuple per model, for the bulk commands) as
        (model_id, image_id, set_at), the latest set first (the admin)."""


class MongoCovers:
    def __init__(self, database: Database) -> None:
        self.collection = database["covers"]

    def get(self, model_id: str) -> str | None:
        doc = self.collection.find_one({"_id": model_id})
        return doc and doc["image_id"]

    def many(self, model_ids: list[str]) -> dict[str, str]:
        return {d["_id"]: d["image_id"] for d in self.collection.find({"_id": {"$in": model_ids}})}

    def set(self, model_id: str, image_id: str, set_at: datetime | None = None) -> None:
        mongo.upsert(self.collection, model_id, {"image_id": image_id, "set_at": set_at or datetime.now(UTC)})

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        query = {"_id": model_id} if image_id is None else {"_id": model_id, "image_id": image_id}
        return self.collection.delete_one(query).deleted_count == 1

    def all(self, limit: int | None = None) -> list[tuple[str, str, datetime]]:
        docs = self.collection.find().sort("set_at", -1).limit(limit or 0)  # 0: no limit
        return [(d["_id"], d["image_id"], d["set_at"]) for d in docs]


class SQLCovers:
    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        """`using` reaches a database other than Django's default (a storage migration's)."""
        self.using = using

    @property
    def rows(self) -> QuerySet[Cover]:
        return Cover.objects.using(self.using)

    def get(self, model_id: str) -> str | None:
        return self.rows.filter(model_id=model_id).values_list("image_id", flat=True).first()

    def many(self, model_ids: list[str]) -> dict[str, str]:
        return dict(self.rows.filter(model_id__in=model_ids).values_list("model_id", "image_id"))

    def set(self, model_id: str, image_id: str, set_at: datetime | None = None) -> None:
        # Not save(): its UPDATE-then-INSERT lets two first covers of one model collide.
        self.rows.update_or_create(
            model_id=model_id, defaults={"image_id": image_id, "set_at": set_at or datetime.now(UTC)}
        )

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        covers = self.rows.filter(model_id=model_id)
        if image_id is not None:
            covers = covers.filter(image_id=image_id)
        return covers.delete()[0] > 0

    def all(self, limit: int | None = None) -> list[tuple[str, str, datetime]]:
        return list(self.rows.order_by("-set_at").values_list("model_id", "image_id", "set_at")[:limit])


def with_images(covers: Covers, records: Documents) -> Iterator[tuple[str, str, datetime, bool]]:
    """Every cover as (model_id, image_id, set_at, whether `records` holds that image for that model),
    the records looked up a batch at a time: fsck finds the dangling ones, migrate_storage copies the
    others (`covers` and `records` may be two stores')."""
    every = covers.all()
    for start in range(0, len(every), BATCH):
        batch = every[start : start + BATCH]
        held = {(r.model_id, r.image_id) for r in records.get_many([image_id for _, image_id, _ in batch])}
        for model_id, image_id, set_at in batch:
            yield model_id, image_id, set_at, (model_id, image_id) in held
