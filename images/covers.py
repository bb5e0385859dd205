"""Covers: the image a model's owner chose to represent it, one per model, kept beside the records.

A cover is its own small record keyed by model_id (`_id` in MongoDB, the primary key in SQLite), so
setting one is a single replace of that key, and a batch of models' covers is one `_id $in` query:
FerretDB looks up `_id` filters and scans for any other. A cover names an image_id; the services
check that it is the model's, and clear it when that image is deleted. The backend
(images/backend.py) gives the one of its mode.
"""

from datetime import UTC, datetime
from typing import Protocol

from pymongo.database import Database

from .models import Cover


class Covers(Protocol):
    def get(self, model_id: str) -> str | None:
        """The image_id of the model's cover, or None."""

    def many(self, model_ids: list[str]) -> dict[str, str]:
        """{model_id: image_id} of the models that have a cover, in one query."""

    def set(self, model_id: str, image_id: str) -> None:
        """Makes `image_id` the model's cover, replacing any other."""

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        """Clears the model's cover (only if it is `image_id`, when given); whether there was one."""

    def all(self, limit: int) -> list[tuple[str, str, datetime]]:
        """Up to `limit` covers as (model_id, image_id, set_at), the latest set first (the admin)."""


class MongoCovers:
    def __init__(self, database: Database) -> None:
        self.collection = database["covers"]

    def get(self, model_id: str) -> str | None:
        doc = self.collection.find_one({"_id": model_id})
        return doc and doc["image_id"]

    def many(self, model_ids: list[str]) -> dict[str, str]:
        return {d["_id"]: d["image_id"] for d in self.collection.find({"_id": {"$in": model_ids}})}

    def set(self, model_id: str, image_id: str) -> None:
        doc = {"image_id": image_id, "set_at": datetime.now(UTC)}
        self.collection.replace_one({"_id": model_id}, doc, upsert=True)

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        query = {"_id": model_id} if image_id is None else {"_id": model_id, "image_id": image_id}
        return self.collection.delete_one(query).deleted_count == 1

    def all(self, limit: int) -> list[tuple[str, str, datetime]]:
        docs = self.collection.find().sort("set_at", -1).limit(limit)
        return [(d["_id"], d["image_id"], d["set_at"]) for d in docs]


class SQLCovers:
    def get(self, model_id: str) -> str | None:
        return Cover.objects.filter(model_id=model_id).values_list("image_id", flat=True).first()

    def many(self, model_ids: list[str]) -> dict[str, str]:
        return dict(Cover.objects.filter(model_id__in=model_ids).values_list("model_id", "image_id"))

    def set(self, model_id: str, image_id: str) -> None:
        Cover(model_id=model_id, image_id=image_id, set_at=datetime.now(UTC)).save()

    def clear(self, model_id: str, image_id: str | None = None) -> bool:
        covers = Cover.objects.filter(model_id=model_id)
        if image_id is not None:
            covers = covers.filter(image_id=image_id)
        return covers.delete()[0] > 0

    def all(self, limit: int) -> list[tuple[str, str, datetime]]:
        return list(Cover.objects.order_by("-set_at").values_list("model_id", "image_id", "set_at")[:limit])
