"""The Flask service's data, which this service replaces in the same MongoDB database.

That service kept each upload as a GridFS file in the bucket `fs` (named by the client's filename)
and a document `{image_id: str(<the GridFS file's _id>), model_id, filename}` in `images`. Those
documents have no sha256, so the document manager leaves them out (documents.CURRENT) until
`manage.py adopt_legacy` turns them into records of today's shape. What it cannot adopt is set aside
in `images_set_aside`, with its GridFS file left as it is: neither adopt_legacy nor fsck deletes it.
"""

import logging

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database

log = logging.getLogger(__name__)

LEGACY = {"sha256": {"$exists": False}}  # the complement of documents.CURRENT
SET_ASIDE = "images_set_aside"
# adopt_legacy's journal of the legacy files whose files documents it is replacing by blobs' ones;
# GridFSStorage.leftovers leaves their chunks alone meanwhile.
RENAMING = "fs.renaming"
ADOPT = "python manage.py adopt_legacy"
IN_BATCH = 10_000


def records(database: Database) -> Collection:
    return database["images"]


def count(database: Database) -> int:
    return records(database).count_documents(LEGACY)


def warn_at_start(database: Database) -> None:
    """One warning at start-up while legacy records wait, saying what to run: they are not served."""
    if waiting := count(database):
        log.warning(
            "%d record(s) of the Flask service are in %s.images; they are not served until adopted: "
            "run `%s --dry-run`, then `%s` (README: Replacing the Flask service)",
            waiting,
            database.name,
            ADOPT,
            ADOPT,
        )


def file_id(record: dict) -> ObjectId | None:
    """The GridFS file's `_id` that a legacy record names, if its image_id is one."""
    image_id = record.get("image_id")
    return ObjectId(image_id) if isinstance(image_id, str) and ObjectId.is_valid(image_id) else None


def held_file_names(database: Database, bucket: str = "fs") -> set[str]:
    """The names of the GridFS files that legacy or set-aside records hold, which fsck must leave
    alone: not blobs of this service (a name may be any client's filename, shared by other files,
    and GridFSStorage deletes by name), but the only copy of bytes not adopted yet."""
    ids = [
        found
        for collection in (records(database), database[SET_ASIDE])
        for doc in collection.find(LEGACY, {"image_id": 1})
        if (found := file_id(doc)) is not None
    ]
    files = database[f"{bucket}.files"]
    names: set[str] = set()
    for start in range(0, len(ids), IN_BATCH):  # a query must stay under 16 MB
        names.update(files.distinct("filename", {"_id": {"$in": ids[start : start + IN_BATCH]}}))
    return names
