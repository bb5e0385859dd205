"""Blob storages for image bytes: Django `Storage` classes, so the rest of the code never asks which.

Both are content-addressed: a blob's name is a hex digest of its bytes (the sha256 for originals), so
a name that exists already holds the same bytes and saving it again is a no-op. Both write the bytes
somewhere invisible first and publish them in one atomic step, so a crash mid-write never leaves a
readable half-blob under a real name. What an unfinished write leaves behind is listed by
`leftovers()`, so that `manage.py fsck` can remove it once it is stale.
"""

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.utils.deconstruct import deconstructible
from gridfs import GridFSBucket, GridOut, NoFile
from pymongo.collection import Collection
from pymongo.database import Database

from . import mongo

BLOB_NAME = re.compile(r"[0-9a-f]{4}[0-9A-Za-z_.-]*\Z")


def image_storage() -> Storage:
    """The configured blob storage (STORAGES["images"]): the only way the rest of the code gets it."""
    return storages["images"]


def is_blob_name(name: str) -> bool:
    return bool(BLOB_NAME.match(name)) and ".." not in name


@dataclass(frozen=True)
class Leftover:
    """Something a write that never finished left behind; `modified`, its last write, shows if it is stale."""

    name: str
    modified: datetime


def files_in(directory: str | Path) -> Iterator[Leftover]:
    """The files directly in `directory` (none if it is missing), for a sweep of temporary files."""
    path = Path(directory)
    for entry in sorted(path.iterdir()) if path.is_dir() else []:
        try:
            info = entry.stat()
        except FileNotFoundError:  # finished and renamed meanwhile
            continue
        if stat.S_ISREG(info.st_mode):
            yield Leftover(entry.name, datetime.fromtimestamp(info.st_mtime, UTC))


def _only_root(path: str) -> None:
    if path not in ("", "."):
        raise FileNotFoundError(f"blobs form one flat namespace; only the root can be listed, not {path!r}")


class ContentAddressedMixin:
    """Names are digests of content: never renamed on collision, and saved once."""

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        if not is_blob_name(name):
            raise SuspiciousFileOperation(f"{name!r} is not a blob name")
        return name

    def _save(self, name: str, content: File) -> str:
        if not self.exists(name):
            self._write(name, content)
        return name


@deconstructible(path="images.storage.BlobFileSystemStorage")
class BlobFileSystemStorage(ContentAddressedMixin, FileSystemStorage):
    """Blobs as files under `location`, fanned out as `ab/cd/<name>`.

    A blob is written to `location/.tmp/`, fsynced, then renamed into place, so it appears whole or
    not at all.
    """

    TEMP_DIR = ".tmp"
    LEFTOVER_KIND = "temp_file"

    def path(self, name: str) -> str:
        self.get_available_name(name)
        return os.path.join(self.location, name[:2], name[2:4], name)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """Blobs form one flat namespace whatever the fan-out on disk, so the root lists them all."""
        _only_root(path)
        found = Path(self.location).glob("??/??/*")
        return [], sorted(f.name for f in found if is_blob_name(f.name) and self.path(f.name) == str(f))

    def names_starting(self, prefix: str) -> list[str]:
        """Blobs whose name starts with `prefix` (an original's derivatives), from one shard."""
        shard = os.path.dirname(self.path(prefix))
        return sorted(n for n in os.listdir(shard) if n.startswith(prefix)) if os.path.isdir(shard) else []

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files in `.tmp` of writes still running, or cut off before their rename."""
        return files_in(os.path.join(self.location, self.TEMP_DIR))

    def delete_leftover(self, name: str) -> None:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise SuspiciousFileOperation(f"{name!r} is not a temporary file's name")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.location, self.TEMP_DIR, name))

    def _write(self, name: str, content: File) -> None:
        final = self.path(name)
        temp_dir = os.path.join(self.location, self.TEMP_DIR)
        os.makedirs(temp_dir, exist_ok=True)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=temp_dir, prefix=name[:16] + "-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in content.chunks():
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if self.file_permissions_mode is not None:
                os.chmod(temp, self.file_permissions_mode)
            os.replace(temp, final)
        except BaseException:
            os.unlink(temp)
            raise
        _fsync_dir(os.path.dirname(final))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@deconstructible(path="images.storage.GridFSStorage")
class GridFSStorage(ContentAddressedMixin, Storage):
    """Blobs in a MongoDB GridFS bucket, one GridFS file per name (its `filename`).

    GridFS inserts the files document only after the last chunk, so a blob becomes visible whole. An
    upload that fails partway is aborted, since GridIn leaves its chunks behind otherwise. Concurrent
    saves of the same name can all write; each then keeps only the copy with the lowest `_id`, which
    they all agree on and which readers open, so exactly one copy remains once the last one finishes.
    """

    LEFTOVER_KIND = "orphan_chunks"

    def __init__(self, bucket_name: str = "fs", database: Database | None = None):
        """`database` reaches a MongoDB other than the configured one (a storage migration's)."""
        self.bucket_name = bucket_name
        self._database = database

    @property
    def database(self) -> Database:
        # The configured one is looked up at use, not here: its client is made after gunicorn forks.
        return mongo.get_database() if self._database is None else self._database

    @property
    def bucket(self) -> GridFSBucket:
        return GridFSBucket(self.database, bucket_name=self.bucket_name)

    @property
    def files(self) -> Collection:
        return self.database[f"{self.bucket_name}.files"]

    @property
    def chunks(self) -> Collection:
        return self.database[f"{self.bucket_name}.chunks"]

    def _write(self, name: str, content: File) -> None:
        bucket = self.bucket
        stream = bucket.open_upload_stream(name)
        try:
            for chunk in content.chunks():
                stream.write(chunk)
            stream.close()
        except BaseException:
            stream.abort()
            raise
        # Delete every copy but the lowest `_id`, not just our own: a writer that started earlier (so
        # has a lower `_id`) may finish after us, and it alone then sees both copies.
        for doc in self.files.find({"filename": name}, {"_id": 1}).sort("_id", 1).skip(1):
            self._delete_file(bucket, doc["_id"])

    def _open(self, name: str, mode: str = "rb") -> File:
        # The lowest `_id` is the copy a concurrent save keeps (see `_write`), so read that one.
        doc = self.files.find_one({"filename": name}, sort=[("_id", 1)])
        if doc is None:
            raise FileNotFoundError(name)
        return File(GridOut(self.database[self.bucket_name], file_document=doc), name)

    def exists(self, name: str) -> bool:
        return self.files.find_one({"filename": name}, {"_id": 1}) is not None

    def size(self, name: str) -> int:
        doc = self.files.find_one({"filename": name}, {"length": 1})
        if doc is None:
            raise FileNotFoundError(name)
        return doc["length"]

    def delete(self, name: str) -> None:
        bucket = self.bucket
        for doc in self.files.find({"filename": name}, {"_id": 1}):
            self._delete_file(bucket, doc["_id"])

    @staticmethod
    def _delete_file(bucket: GridFSBucket, file_id: Any) -> None:
        with contextlib.suppress(NoFile):  # deleted meanwhile by someone else
            bucket.delete(file_id)  # files document first, then its chunks

    def get_modified_time(self, name: str) -> Any:
        doc = self.files.find_one({"filename": name}, {"uploadDate": 1})
        if doc is None:
            raise FileNotFoundError(name)
        return doc["uploadDate"]

    get_created_time = get_modified_time

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """Blobs form one flat namespace, so the root lists them all."""
        _only_root(path)
        return [], sorted({doc["filename"] for doc in self.files.find({}, {"filename": 1})})

    def names_starting(self, prefix: str) -> list[str]:
        """Blobs whose name starts with `prefix` (an original's derivatives): an index range scan."""
        query = {"filename": {"$regex": f"^{re.escape(prefix)}"}}
        return sorted(self.files.distinct("filename", query))

    def leftovers(self) -> Iterator[Leftover]:
        """Chunks without a files document: an upload still running or cut off (GridFS writes that
        document last), or a delete cut off between the document and its chunks."""
        file_ids = {doc["_id"] for doc in self.files.find({}, {"_id": 1})}
        for group in self.chunks.aggregate([{"$group": {"_id": "$files_id"}}]):
            if group["_id"] in file_ids:
                continue
            last = self.chunks.find_one({"files_id": group["_id"]}, {"_id": 1}, sort=[("_id", -1)])
            if last is not None:  # not removed meanwhile
                yield Leftover(str(group["_id"]), last["_id"].generation_time)

    def delete_leftover(self, name: str) -> None:
        files_id = ObjectId(name)
        if self.files.find_one({"_id": files_id}, {"_id": 1}) is None:  # its upload did not finish since
            self.chunks.delete_many({"files_id": files_id})
