"""The document manager: image records, kept in MongoDB's `images` collection or in Django's database.

Both managers take and return the same `ImageRecord`s and order pages the same way (newest first,
keyset on `(uploaded_at, image_id)`), so a page costs the same at record 100 as at record 100,000.
"""

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol

from bson import ObjectId
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.db.models import F, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from . import mongo
from .models import StoredImage


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    model_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    width: int
    height: int
    uploaded_at: datetime
    uploaded_by: str | None = None  # the API key's name or the token's `sub`; None in open mode
    label: str | None = None  # which view of the model this is ("front", "top"); several may share one


# A position in the newest-first order: the (uploaded_at, image_id) of the last record seen.
Position = tuple[datetime, str]


class DuplicateImage(Exception):
    """A record with the same `(model_id, sha256)` exists already."""


class Documents(Protocol):
    def insert(self, record: ImageRecord) -> None:
        """Raises `DuplicateImage` if `(model_id, sha256)` exists."""

    def insert_many(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """`insert` for each, in one command where the store has one: those not inserted because
        their image_id or `(model_id, sha256)` exists."""

    def get(self, image_id: str) -> ImageRecord | None: ...

    def find(self, model_id: str, sha256: str) -> ImageRecord | None: ...

    def with_contents(self, sha256s: list[str]) -> list[ImageRecord]:
        """Every record, of any model, of any of these bytes."""

    def page(
        self,
        model_id: str | None,
        after: Position | None,
        limit: int,
        matching: str | None = None,
        label: str | None = None,
    ) -> list[ImageRecord]:
        """Up to `limit` records, newest first, strictly after `after`; `matching` keeps those whose
        filename contains it (ignoring case) or whose sha256 starts with it (the admin's search);
        `label` those with that label."""

    def get_many(self, image_ids: list[str]) -> list[ImageRecord]:
        """The records of these ids that exist, in one query (a batch lookup's covers)."""

    def newest_of(self, model_ids: list[str]) -> dict[str, ImageRecord]:
        """Each model's newest record, in one query; models without images are left out."""

    def count(self, model_id: str | None = None) -> int: ...

    def delete(self, image_id: str) -> ImageRecord | None:
        """The deleted record; None if there was none, or a concurrent delete of it won."""

    def references(self, sha256: str) -> bool:
        """Whether any record still needs the blob `sha256`."""

    def set_dimensions(self, image_id: str, width: int, height: int) -> None:
        """fsck --repair correcting what the bytes show."""

    def set_label(self, image_id: str, label: str | None) -> ImageRecord | None:
        """Sets (None: clears) the label; the record as it was before, or None if there is none."""


def iter_records(docs: Documents, model_id: str | None = None, batch: int = 1000) -> Iterator[ImageRecord]:
    """Every record (of `model_id`), newest first, a page at a time, so memory stays flat at any size."""
    after: Position | None = None
    while records := docs.page(model_id, after, batch):
        yield from records
        after = (records[-1].uploaded_at, records[-1].image_id)


def new_image_id() -> str:
    """Time-ordered, unique across processes, and the same format in both modes."""
    return str(ObjectId())


# A record in today's shape always has its sha256. The Flask service's records (images/legacy.py) do
# not: every read leaves them out until `manage.py adopt_legacy` turns them into records like these.
CURRENT = {"sha256": {"$exists": True}}


class MongoDocuments:
    INDEXES = [
        IndexModel(
            [("model_id", ASCENDING), ("uploaded_at", DESCENDING), ("_id", DESCENDING)],
            name="model_newest",
        ),
        # Partial: legacy records share a model_id and lack a sha256, which a plain unique index
        # counts as a duplicate null and so would not build beside them.
        IndexModel(
            [("model_id", ASCENDING), ("sha256", ASCENDING)],
            name="model_sha256",
            unique=True,
            partialFilterExpression=CURRENT,
        ),
        IndexModel([("sha256", ASCENDING)], name="sha256"),
        IndexModel([("uploaded_at", DESCENDING), ("_id", DESCENDING)], name="newest"),
        IndexModel(
            [("model_id", ASCENDING), ("label", ASCENDING), ("uploaded_at", DESCENDING), ("_id", DESCENDING)],
            name="model_label_newest",
        ),
    ]

    def __init__(self, database: Database | None = None) -> None:
        """`database` reaches a MongoDB other than the configured one (a storage migration's)."""
        database = mongo.get_database() if database is None else database
        self.collection: Collection = database["images"]

    def ensure_indexes(self) -> None:
        mongo.ensure_indexes(self.collection, self.INDEXES)

    @staticmethod
    def _record(doc: dict) -> ImageRecord:
        doc["image_id"] = str(doc.pop("_id"))
        # Fields this version does not know (written by other tools) are left out, not fatal.
        return ImageRecord(**{k: v for k, v in doc.items() if k in ImageRecord.__dataclass_fields__})

    @staticmethod
    def _doc(record: ImageRecord) -> dict:
        doc = asdict(record)
        doc["_id"] = ObjectId(doc.pop("image_id"))
        return doc

    def insert(self, record: ImageRecord) -> None:
        self.ensure_indexes()
        try:
            self.collection.insert_one(self._doc(record))
        except DuplicateKeyError as exc:
            raise DuplicateImage from exc

    def insert_many(self, records: list[ImageRecord]) -> list[ImageRecord]:
        self.ensure_indexes()
        left_out = mongo.insert_new(self.collection, [self._doc(record) for record in records])
        return [records[index] for index in left_out]

    def get(self, image_id: str) -> ImageRecord | None:
        if not ObjectId.is_valid(image_id):
            return None
        # By _id alone, the one filter FerretDB looks up rather than scans for; legacy ones are dropped here.
        doc = self.collection.find_one({"_id": ObjectId(image_id)})
        return self._record(doc) if doc and "sha256" in doc else None

    def find(self, model_id: str, sha256: str) -> ImageRecord | None:
        doc = self.collection.find_one({"model_id": model_id, "sha256": sha256})
        return doc and self._record(doc)

    def with_contents(self, sha256s: list[str]) -> list[ImageRecord]:
        return [self._record(doc) for doc in self.collection.find({"sha256": {"$in": sha256s}})]

    def page(
        self,
        model_id: str | None,
        after: Position | None,
        limit: int,
        matching: str | None = None,
        label: str | None = None,
    ) -> list[ImageRecord]:
        conditions: list[dict] = []
        if model_id is not None:
            conditions.append({"model_id": model_id})
        if label is not None:
            conditions.append({"label": label})
        if after is not None:
            at, image_id = after
            conditions.append(
                {
                    "$or": [
                        {"uploaded_at": {"$lt": at}},
                        {"uploaded_at": at, "_id": {"$lt": ObjectId(image_id)}},
                    ]
                }
            )
        if matching:
            escaped = re.escape(matching)
            conditions.append(
                {
                    "$or": [
                        {"filename": {"$regex": escaped, "$options": "i"}},
                        {"sha256": {"$regex": f"^{escaped.lower()}"}},
                    ]
                }
            )
        # A single condition stays a plain filter, which every server plans best.
        query = conditions[0] if len(conditions) == 1 else {"$and": conditions} if conditions else {}
        cursor = (
            self.collection.find({**query, **CURRENT}).sort([("uploaded_at", -1), ("_id", -1)]).limit(limit)
        )
        return [self._record(doc) for doc in cursor]

    def count(self, model_id: str | None = None) -> int:
        return self.collection.count_documents(
            CURRENT if model_id is None else {"model_id": model_id, **CURRENT}
        )

    def delete(self, image_id: str) -> ImageRecord | None:
        if not ObjectId.is_valid(image_id):
            return None
        # Not find_one_and_delete: FerretDB answers it with the document to every concurrent caller.
        doc = self.collection.find_one({"_id": ObjectId(image_id), **CURRENT})
        if doc is None or self.collection.delete_one({"_id": doc["_id"]}).deleted_count != 1:
            return None
        return self._record(doc)

    def references(self, sha256: str) -> bool:
        return self.collection.find_one({"sha256": sha256}, {"_id": 1}) is not None

    def set_dimensions(self, image_id: str, width: int, height: int) -> None:
        self.collection.update_one({"_id": ObjectId(image_id)}, {"$set": {"width": width, "height": height}})

    def set_label(self, image_id: str, label: str | None) -> ImageRecord | None:
        if not ObjectId.is_valid(image_id):
            return None
        # By _id alone (see `get`); the record before the change, to forget the old label's newest.
        doc = self.collection.find_one_and_update({"_id": ObjectId(image_id)}, {"$set": {"label": label}})
        return self._record(doc) if doc and "sha256" in doc else None

    def get_many(self, image_ids: list[str]) -> list[ImageRecord]:
        ids = [ObjectId(i) for i in image_ids if ObjectId.is_valid(i)]
        return (
            [self._record(doc) for doc in self.collection.find({"_id": {"$in": ids}, **CURRENT})]
            if ids
            else []
        )

    def newest_of(self, model_ids: list[str]) -> dict[str, ImageRecord]:
        """One aggregation, in which MongoDB reads one index entry per model (model_newest). FerretDB
        1.24 implements no `$first` (only `$count` and `$sum` accumulators): there, and once known in
        this process, one find of the models' records instead, which reads all of them."""
        match = {"model_id": {"$in": model_ids}, **CURRENT}
        newest_first = [("model_id", 1), ("uploaded_at", -1), ("_id", -1)]
        if self.collection.database.client not in _WITHOUT_FIRST:
            pipeline = [
                {"$match": match},
                {"$sort": dict(newest_first)},
                {"$group": {"_id": "$model_id", "doc": {"$first": "$$ROOT"}}},
            ]
            try:
                return {g["_id"]: self._record(g["doc"]) for g in self.collection.aggregate(pipeline)}
            except OperationFailure as exc:
                if exc.code != NOT_IMPLEMENTED:
                    raise
                _WITHOUT_FIRST.add(self.collection.database.client)
        newest: dict[str, ImageRecord] = {}
        for doc in self.collection.find(match).sort(newest_first):
            newest.setdefault(doc["model_id"], self._record(doc))
        return newest


NOT_IMPLEMENTED = 238  # MongoDB's error code, which FerretDB answers for what it lacks
_WITHOUT_FIRST: set = set()  # the clients of servers without `$group`'s `$first` (see newest_of)


class SQLDocuments:
    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        """`using` reaches a database other than Django's default (a storage migration's)."""
        self.using = using

    @property
    def rows(self) -> QuerySet[StoredImage]:
        return StoredImage.objects.using(self.using)

    @staticmethod
    def _record(row: StoredImage) -> ImageRecord:
        return ImageRecord(**{f: getattr(row, f) for f in ImageRecord.__dataclass_fields__})

    def insert(self, record: ImageRecord) -> None:
        try:
            with transaction.atomic(using=self.using):
                self.rows.create(**asdict(record))
        except IntegrityError as exc:
            raise DuplicateImage from exc

    def insert_many(self, records: list[ImageRecord]) -> list[ImageRecord]:
        clashed = []
        for record in records:
            try:
                self.insert(record)
            except DuplicateImage:
                clashed.append(record)
        return clashed

    def get(self, image_id: str) -> ImageRecord | None:
        row = self.rows.filter(image_id=image_id).first()
        return row and self._record(row)

    def find(self, model_id: str, sha256: str) -> ImageRecord | None:
        row = self.rows.filter(model_id=model_id, sha256=sha256).first()
        return row and self._record(row)

    def with_contents(self, sha256s: list[str]) -> list[ImageRecord]:
        return [self._record(row) for row in self.rows.filter(sha256__in=sha256s)]

    def page(
        self,
        model_id: str | None,
        after: Position | None,
        limit: int,
        matching: str | None = None,
        label: str | None = None,
    ) -> list[ImageRecord]:
        rows = self.rows.order_by("-uploaded_at", "-image_id")
        if model_id is not None:
            rows = rows.filter(model_id=model_id)
        if label is not None:
            rows = rows.filter(label=label)
        if matching:
            rows = rows.filter(Q(filename__icontains=matching) | Q(sha256__startswith=matching.lower()))
        if after is not None:
            at, image_id = after
            rows = rows.filter(Q(uploaded_at__lt=at) | Q(uploaded_at=at, image_id__lt=image_id))
        return [self._record(row) for row in rows[:limit]]

    def count(self, model_id: str | None = None) -> int:
        return (self.rows if model_id is None else self.rows.filter(model_id=model_id)).count()

    def delete(self, image_id: str) -> ImageRecord | None:
        row = self.rows.filter(image_id=image_id).first()
        if row is None:
            return None
        deleted, _ = self.rows.filter(image_id=image_id).delete()
        return self._record(row) if deleted else None  # a concurrent delete took it first

    def references(self, sha256: str) -> bool:
        return self.rows.filter(sha256=sha256).exists()

    def set_dimensions(self, image_id: str, width: int, height: int) -> None:
        self.rows.filter(image_id=image_id).update(width=width, height=height)

    def set_label(self, image_id: str, label: str | None) -> ImageRecord | None:
        with transaction.atomic(using=self.using):
            before = self.get(image_id)
            self.rows.filter(image_id=image_id).update(label=label)
        return before

    def get_many(self, image_ids: list[str]) -> list[ImageRecord]:
        return [self._record(row) for row in self.rows.filter(image_id__in=image_ids)]

    def newest_of(self, model_ids: list[str]) -> dict[str, ImageRecord]:
        # One query: each model's rows numbered newest first (a window function), the first kept.
        newest_first = Window(
            RowNumber(),
            partition_by=[F("model_id")],
            order_by=[F("uploaded_at").desc(), F("image_id").desc()],
        )
        rows = self.rows.filter(model_id__in=model_ids).annotate(rank=newest_first).filter(rank=1)
        return {row.model_id: self._record(row) for row in rows}
