"""Blob storages for image bytes: Django `Storage` classes, so the rest of the code never asks which.

Both are content-addressed: a blob's name is a hex digest of its bytes (the sha256 for originals), so
a name that exists already holds the same bytes and saving it again is a no-op. Both write the bytes
somewhere invisible first and publish them in one atomic step, so a crash mid-write never leaves a
readable half-blob under a real name. What an unfinished write leaves behind is listed by
`leftovers()`, so that `manage.py fsck` can remove it once it is stale.

The life of a blob, one invariant for both storages: *a blob is removed only when no record refers
to it, and no upload that was answered 2xx can lose its blob.* Every record holds a pin on its blob
(`pin(name, holder)` with its image_id), taken before the record is written, and gives it back with
`unpin()` after the record is gone; the blob goes with its last pin, in one step that a new pin
makes fail. So the check "is it still needed?" and the removal cannot be split by an upload, which
a standalone MongoDB (no multi-document transactions) could not otherwise promise. We chose pins
kept with the blob over a sweeper that deletes after a grace period because a pin is exact: a delete
frees the bytes at once, and no grace period guards an acknowledged upload (the one window of timing
left is a GridFS closing mark taken over as stale: see `GridFSStorage._wait_for_closing`).

Pins live beside the blob: in GridFS, one document per pin in `<bucket>.pins`, and a closing mark
per name in `<bucket>.closing` while an unpin decides (only inserts and deletes by `_id`, which are
atomic everywhere; see `GridFSStorage.pin`); on disk, one empty file per pin under
`.refs/ab/cd/<name>/`, changed under a per-shard `flock`. A blob written before pins existed is
*untracked*: pinning it succeeds, and nothing unpins it away; `fsck --repair` starts tracking it.

A GridFSStorage with a `cache_dir` keeps local copies of the large blobs it has read whole (see
`LocalCopies`): FerretDB decodes every chunk per query, so a 10 MB read costs it 0.4 s or more where
a file costs nothing. A name's bytes never change, so a copy is never stale.
"""

import contextlib
import copy
import fcntl
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from bson import Int64, ObjectId
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage
from django.utils.deconstruct import deconstructible
from gridfs.errors import CorruptGridFile
from pymongo import ASCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.errors import CursorNotFound, DuplicateKeyError, PyMongoError
from pymongo.read_preferences import ReadPreference

from . import mongo
from .hotcache import BlobCache

log = logging.getLogger(__name__)

BLOB_NAME = re.compile(r"[0-9a-f]{4}[0-9A-Za-z_.-]*\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")  # an original's name: its bytes' sha256
HOLDER = re.compile(r"[0-9A-Za-z_~-]{1,64}\Z")  # an image_id, or fsck's TRACKING: a file and a field name
TRACKING = "~tracking"  # the pin fsck holds while it starts tracking an untracked blob
Pins = dict[str, datetime]  # holder: when it pinned


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


def _pin_doc(name: str, holder: str) -> dict:
    return {"_id": f"{name}/{holder}", "name": name, "at": datetime.now(UTC)}


def _check_holder(holder: str) -> None:
    if not HOLDER.match(holder):
        raise SuspiciousFileOperation(f"{holder!r} cannot hold a pin")


class ContentAddressedMixin:
    """Names are digests of content: never renamed on collision, and saved once.

    Pins (see the module's doc): `pin(name, holder, missing=False) -> bool` (False: no such blob
    yet; the pin holds the name, so save the bytes next, or unpin; `missing`: the caller found no
    such blob just before and saves it whatever the answer, so the pin need not look: one round trip
    less in GridFS, and saving a blob that another writer saved meanwhile is harmless),
    `pin_many([(name, holder), ...]) -> set` (the names that exist, for a bulk command's batch),
    `unpin(name, holder) -> bool` (True: that was the last pin, and the blob is gone),
    `pins(name) -> Pins | None` (None: untracked), and `track(name)` for fsck.
    """

    def in_store(self) -> "ContentAddressedMixin":
        """This storage reading the store itself, never a local copy (GridFSStorage's): what fsck
        checks. A storage without copies is that already."""
        return self

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        if not is_blob_name(name):
            raise SuspiciousFileOperation(f"{name!r} is not a blob name")
        return name

    def _save(self, name: str, content: File) -> str:
        if not self.exists(name):
            self._write(name, content)
        return name

    def save_new(self, name: str, content: File) -> None:
        """Writes a blob that a pin has just found missing, without `save`'s own `exists` check: one
        round trip less per new upload in GridFS. Should another writer win the race, writing the
        same name twice is harmless (content-addressed; GridFS keeps one copy)."""
        self._write(self.get_available_name(name), content)

    def pin_many(self, pins: list[tuple[str, str]]) -> set[str]:
        """`pin` for each `(name, holder)`: the names that exist (a bulk command's batches)."""
        return {name for name, holder in pins if self.pin(name, holder)}


@deconstructible(path="images.storage.BlobFileSystemStorage")
class BlobFileSystemStorage(ContentAddressedMixin, FileSystemStorage):
    """Blobs as files under `location`, fanned out as `ab/cd/<name>`.

    A blob is written to `location/.tmp/`, fsynced, then renamed into place, so it appears whole or
    not at all.
    """

    TEMP_DIR = ".tmp"
    REFS_DIR = ".refs"
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

    def _refs(self, name: str) -> str:
        return os.path.join(self.location, self.REFS_DIR, name[:2], name[2:4], name)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[str]:
        """Holds the lock of the blob's shard of pins, a folder (so no lock file is ever left), which
        every process on this machine sees; yields the blob's pins' folder."""
        shard = os.path.join(self.location, self.REFS_DIR, name[:2])
        os.makedirs(shard, exist_ok=True)
        fd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._refs(name)
        finally:
            os.close(fd)

    def pin(self, name: str, holder: str, missing: bool = False) -> bool:
        _check_holder(holder)
        with self._locked(name) as refs:
            exists = not missing and os.path.exists(self.path(name))
            if exists and not os.path.isdir(refs):
                return True  # untracked: nothing unpins it away
            _write_pin(refs, holder)
            return exists

    def unpin(self, name: str, holder: str) -> bool:
        _check_holder(holder)
        with self._locked(name) as refs:
            try:
                os.unlink(os.path.join(refs, holder))
                if os.listdir(refs):
                    return False
            except FileNotFoundError:
                return False  # not pinned by `holder` (untracked, or unpinned already)
            _unlink_quietly(self.path(name))
            os.rmdir(refs)  # after the blob: a crash in between leaves an empty folder, no blob without pins
            return True

    def pins(self, name: str) -> Pins | None:
        refs = self._refs(name)
        try:
            entries = list(os.scandir(refs))
        except FileNotFoundError:
            return None
        return {e.name: datetime.fromtimestamp(e.stat().st_mtime, UTC) for e in entries}

    def track(self, name: str) -> None:
        with self._locked(name) as refs:
            if os.path.exists(self.path(name)) and not os.path.isdir(refs):
                _write_pin(refs, TRACKING)

    def delete(self, name: str) -> None:
        """Removes the blob whatever pins it (derivatives have none); originals go through unpin."""
        with self._locked(name) as refs:
            super().delete(name)
            shutil.rmtree(refs, ignore_errors=True)

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files in `.tmp` of writes still running, or cut off before their rename."""
        return files_in(os.path.join(self.location, self.TEMP_DIR))

    def delete_leftover(self, name: str) -> None:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise SuspiciousFileOperation(f"{name!r} is not a temporary file's name")
        _unlink_quietly(os.path.join(self.location, self.TEMP_DIR, name))

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
            with self._locked(name) as refs:  # not between an unpin's removal of blob and folder
                os.makedirs(refs, exist_ok=True)  # tracked from its first instant
                os.replace(temp, final)
        except BaseException:
            os.unlink(temp)
            raise
        _fsync_dir(os.path.dirname(final))


def _write_pin(refs: str, holder: str) -> None:
    """An empty file named by the holder in the blob's pins' folder, durable before it counts: a pin
    lost in a crash could let another unpin remove the blob."""
    os.makedirs(refs, exist_ok=True)
    with open(os.path.join(refs, holder), "w"):
        pass
    _fsync_dir(refs)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pieces(content: File, size: int) -> Iterator[bytes]:
    """`content`'s bytes in pieces of exactly `size`, but the last: GridFS chunks are all full but one."""
    pending = bytearray()
    for data in content.chunks(size):
        pending += data
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


class GridFSReader(io.RawIOBase):
    """A GridFS file's bytes as a seekable file that reads a few chunks per round trip.

    pymongo's GridOut asks for all the remaining chunks in one cursor: MongoDB caps each batch at
    16 MiB, but FerretDB does not, and a batch past its 48 MB message limit breaks a download of
    about 40 MB or more mid-body. Chunks are checked as GridOut checks them: one that is missing or
    cut short raises CorruptGridFile.

    The cursor asks for no sort: MongoDB walks the `files_id, n` index and yields the chunks in
    order anyway, but FerretDB sorts in its own memory, so it read all of a 100 MB blob before the
    first batch (2.5 s alone, 6 s for each of four downloads at once: past the socket timeout), where
    unsorted it streams batches of 0.1-0.4 s for the same total. Each chunk's `n` is checked, and one
    out of order (a server that yields another order) makes the reader ask for a sorted cursor.
    """

    CHUNKS_PER_BATCH = 16  # 4 MB at GridFS's default chunk size

    def __init__(self, chunks: Collection, file_document: dict, fallback: Collection | None = None) -> None:
        """`fallback` is where to read chunks that `chunks` lacks: the primary, when `chunks` reads
        from secondaries (MONGO_BLOB_READ_PREFERENCE), which may not have all of a new blob yet."""
        super().__init__()
        self.chunks = chunks
        self.fallback = fallback
        self.file_id = file_document["_id"]
        self.size = int(file_document["length"])
        self.chunk_size = int(file_document["chunkSize"])
        self.position = 0
        self._cursor: Cursor | None = None
        self._cursor_next = 0  # the chunk number the cursor yields next
        self._sorted = False  # whether the cursor asks the server to sort by `n`
        self._chunk_number = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        """Exactly `size` bytes unless the end comes first, like a file on disk (Pillow relies on it)."""
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        parts = []
        while self.position < end:
            number, offset = divmod(self.position, self.chunk_size)
            piece = self._chunk_data(number)[offset : offset + end - self.position]
            parts.append(piece)
            self.position += len(piece)
        return b"".join(parts)

    def _chunk_data(self, number: int) -> bytes:
        if number != self._chunk_number:
            doc = self._fetch(number)
            if not self._whole(doc, number) and not self._sorted:  # out of order, or missing
                self._close_cursor()
                self._sorted = True
                doc = self._fetch(number)
            if not self._whole(doc, number) and self.fallback is not None:
                self._close_cursor()
                self.chunks, self.fallback = self.fallback, None
                doc = self._fetch(number)
            if not self._whole(doc, number):
                self._close_cursor()
                raise CorruptGridFile(f"chunk #{number} of {self.file_id} is missing or cut short")
            self._chunk_number, self._chunk = number, bytes(doc["data"])
            self._cursor_next = number + 1
        return self._chunk

    def _whole(self, doc: dict | None, number: int) -> bool:
        expected = min(self.chunk_size, self.size - number * self.chunk_size)
        return doc is not None and doc["n"] == number and len(doc["data"]) == expected

    def _fetch(self, number: int) -> dict | None:
        for attempt in (1, 2):
            if self._cursor is None or self._cursor_next != number:  # first read, or after a seek
                self._close_cursor()
                query = {"files_id": self.file_id, "n": {"$gte": number}}
                sort = [("n", 1)] if self._sorted else None
                self._cursor = self.chunks.find(query, sort=sort, batch_size=self.CHUNKS_PER_BATCH)
                self._cursor_next = number
            try:
                return next(self._cursor, None)
            except CursorNotFound:  # idle past the server's cursor timeout: start again from here
                self._cursor = None
                if attempt == 2:
                    raise
        return None

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def close(self) -> None:
        self._close_cursor()
        super().close()


class LocalCopies:
    """Local copies of a GridFS bucket's large blobs, plain files in one folder (DATA_DIR/blob-cache),
    the least recently used going first once they take more than `max_bytes`.

    A copy is always right: a name's bytes never change, and a copy is made only from a read of the
    whole blob from its first byte (see `CopyingReader`), whose length and, for an original, sha256
    checked out; it is written to a temporary file (`tmp-…`: no blob name starts so), fsynced, then
    renamed into place, so it is whole or absent, after a crash too, and workers copying the same
    blob at once rename the same bytes. Opening a copy sets its mtime, the LRU order. After each new
    copy, one scan of the folder removes the least recently used copies down to 90% of `max_bytes`
    once they exceed it, and the temporary files of copies cut off (a killed worker) an hour ago.
    Only blobs larger than the hot cache's `BlobCache.MAX_BLOB` are copied: it keeps smaller ones
    in memory.
    """

    TEMP_PREFIX = "tmp-"
    STALE_TEMP = 3600  # seconds: a copy that has not been written to for that long was cut off
    LOW_WATER = 0.9

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, name: str) -> str | None:
        """Where the copy of `name` goes; None for a name that is no blob's (never a path outside)."""
        return os.path.join(self.directory, name) if is_blob_name(name) else None

    def open(self, name: str) -> BinaryIO | None:
        """The copy of `name`, opened as a file (the server can `sendfile` it) and now the most
        recently used; None if there is none, or none that can be read (GridFS is read instead, and
        the copy it tries to make says why in the log)."""
        if (path := self.path(name)) is None:
            return None
        try:
            file = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            return None
        os.utime(file.fileno())  # by descriptor: an eviction meanwhile changes nothing
        return file

    def size(self, name: str) -> int | None:
        if (path := self.path(name)) is None:
            return None
        try:
            return os.stat(path).st_size
        except OSError:  # as in `open`
            return None

    def copying(self, name: str, reader: "GridFSReader") -> io.RawIOBase:
        """`reader`, made to leave a copy if it is read whole; `reader` itself for a blob that is
        not copied (small, larger than the cache, or not a blob's name) or when no temporary file
        can be made (a failure of the copy never fails the read)."""
        if not BlobCache.MAX_BLOB < reader.size <= self.max_bytes or self.path(name) is None:
            return reader
        try:
            os.makedirs(self.directory, exist_ok=True)
            temp = tempfile.NamedTemporaryFile(dir=self.directory, prefix=self.TEMP_PREFIX, delete=False)  # noqa: SIM115
        except OSError as exc:
            log.warning("no local copy of blob %s: %s", name, exc)
            return reader
        return CopyingReader(reader, self, name, temp)

    def keep(self, name: str, temp: BinaryIO) -> None:
        """Makes a finished temporary file the copy of `name`, then evicts if need be."""
        temp.flush()
        os.fsync(temp.fileno())  # whole before it has the name, whatever a crash cuts off
        temp.close()
        os.replace(temp.name, self.path(name))
        self.evict()

    def remove(self, name: str) -> None:
        if path := self.path(name):
            _unlink_quietly(path)

    def evict(self) -> None:
        """One scan: stale temporary files go; above `max_bytes`, the least recently used copies go
        until they take at most LOW_WATER of it."""
        stale = time.time() - self.STALE_TEMP
        copies, total = [], 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:  # removed meanwhile
                    continue
                if entry.name.startswith(self.TEMP_PREFIX):
                    if info.st_mtime < stale:
                        _unlink_quietly(entry.path)
                elif is_blob_name(entry.name):
                    copies.append((info.st_mtime, info.st_size, entry.path))
                    total += info.st_size
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(copies):
            if total <= self.max_bytes * self.LOW_WATER:
                break
            _unlink_quietly(path)
            total -= size


def _unlink_quietly(path: str) -> None:
    """For files that are gone already, or that another worker may remove at the same moment."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class CopyingReader(io.RawIOBase):
    """A GridFS reader that, read from byte 0 to its end, leaves a local copy (see `LocalCopies`).

    The bytes go to a temporary file as they are read, one read's worth in memory at a time; at the
    end, if they are the original's sha256 (a name that is one), the file becomes the copy. A seek
    away from where the copy has got to (a Range), an error, or a close before the end deletes the
    temporary file instead; so does a failure to write it (a full disk), which never fails the read.
    """

    def __init__(self, reader: "GridFSReader", copies: LocalCopies, name: str, temp: BinaryIO) -> None:
        super().__init__()
        self.reader = reader
        self.copies = copies
        self.name = name
        self.temp: BinaryIO | None = temp
        self.digest = hashlib.sha256() if SHA256.match(name) else None
        self.copied = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.reader.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self.reader.seek(offset, whence)
        if position != self.copied:
            self._drop()
        return position

    def read(self, size: int | None = -1) -> bytes:
        data = self.reader.read(size)
        if self.temp is not None and data:
            try:
                self.temp.write(data)
                if self.digest is not None:
                    self.digest.update(data)
                self.copied += len(data)
                if self.copied == self.reader.size:
                    self._finish()
            except OSError as exc:
                log.warning("no local copy of blob %s: %s", self.name, exc)
                self._drop()
        return data

    def _finish(self) -> None:
        if self.digest is not None and self.digest.hexdigest() != self.name:
            log.warning("GridFS blob %s does not hash to its name: no local copy made", self.name)
            self._drop()
            return
        temp, self.temp = self.temp, None
        try:
            self.copies.keep(self.name, temp)
        except BaseException:
            temp.close()
            _unlink_quietly(temp.name)
            raise

    def _drop(self) -> None:
        """Deletes the unfinished copy, if any."""
        if self.temp is not None:
            temp, self.temp = self.temp, None
            temp.close()
            _unlink_quietly(temp.name)

    def close(self) -> None:
        self._drop()
        self.reader.close()
        super().close()


@deconstructible(path="images.storage.GridFSStorage")
class GridFSStorage(ContentAddressedMixin, Storage):
    """Blobs in a MongoDB GridFS bucket, one GridFS file per name (its `filename`).

    The files document is inserted only after the last chunk, so a blob becomes visible whole. An
    upload that fails partway deletes the chunks it wrote (fsck reclaims them if it cannot). Concurrent
    saves of the same name can all write; each then keeps only the copy with the lowest `_id`, which
    they all agree on and which readers open, so exactly one copy remains once the last one finishes.

    Deleting removes the files document at once, so nobody opens the blob any more, but keeps its
    chunks for `purge_delay` seconds, listed in `<bucket>.deleted`: a download that opened the blob
    before reads its chunks as it goes, and would break mid-body if they went (a file on disk keeps
    its bytes while it is open; GridFS does not). Each delete purges the chunks that are due; a
    delete cut off in between leaves chunks that fsck reclaims.

    With a `cache_dir`, the large blobs it reads whole are copied there (`LocalCopies`), and read
    from there next time; a blob it deletes loses its copy too.
    """

    LEFTOVER_KIND = "orphan_chunks"
    CLOSING_STALE = timedelta(seconds=10)
    CHUNK_SIZE = 255 * 1024  # GridFS's default
    CHUNKS_PER_INSERT = 4  # about 1 MB in memory at a time, whatever the blob's size
    # The GridFS spec's indexes, as drivers create them.
    FILES_INDEXES = [IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)])]
    CHUNKS_INDEXES = [IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)]
    PINS_INDEXES = [IndexModel([("name", ASCENDING)])]
    DELETED_INDEXES = [IndexModel([("deleted_at", ASCENDING)])]  # `purge` looks for the due ones

    def __init__(
        self,
        bucket_name: str = "fs",
        database: Database | None = None,
        purge_delay: float = 3600,
        blob_read_preference: str = "",
        cache_dir: str = "",
        cache_mb: int = 2048,
    ) -> None:
        """`database` reaches a MongoDB other than the configured one (a storage migration's).

        `blob_read_preference` (MONGO_BLOB_READ_PREFERENCE), when set, is where opening and sizing
        a blob read, instead of the URI's read preference: blobs never change, so a secondary's copy
        is as good as the primary's, and one that a secondary has not replicated yet is read from
        the primary. Everything else (exists, writes, deletes, listings) keeps the URI's.

        `cache_dir` (the settings give DATA_DIR/blob-cache) is where local copies of large blobs go,
        within `cache_mb` MiB (BLOB_CACHE_MB; 0 keeps none). Empty, the default, keeps none: so a
        storage made by hand, such as a storage migration's, has none unless it is given one.
        """
        self.bucket_name = bucket_name
        self.copies = LocalCopies(cache_dir, cache_mb * 1024 * 1024) if cache_dir and cache_mb > 0 else None
        self._database = database
        self.purge_delay = timedelta(seconds=purge_delay)
        try:
            self.blob_read_preference = mongo.read_preference(blob_read_preference)
        except ValueError as exc:
            raise ImproperlyConfigured(f"MONGO_BLOB_READ_PREFERENCE: {exc}") from None

    @property
    def database(self) -> Database:
        # The configured one is looked up at use, not here: its client is made after gunicorn forks.
        return mongo.get_database() if self._database is None else self._database

    @property
    def files(self) -> Collection:
        return self.database[f"{self.bucket_name}.files"]

    @property
    def chunks(self) -> Collection:
        return self.database[f"{self.bucket_name}.chunks"]

    @property
    def pin_docs(self) -> Collection:
        """One document per pin, `_id` "<name>/<holder>": inserts and deletes by `_id` are atomic on
        every MongoDB-compatible server (FerretDB's conditional updates and deletes are not)."""
        return self.database[f"{self.bucket_name}.pins"]

    @property
    def closing(self) -> Collection:
        """A name's closing mark, `_id` the name, while an unpin decides whether its blob goes."""
        return self.database[f"{self.bucket_name}.closing"]

    @property
    def deleted(self) -> Collection:
        """Deleted files whose chunks wait for their purge: `_id` is the files `_id`."""
        return self.database[f"{self.bucket_name}.deleted"]

    def _write(self, name: str, content: File) -> None:
        """Writes the chunks a few at a time, then the files document, in the GridFS spec's order.

        pymongo's GridIn holds up to 48 MB of chunks before it inserts them, so a worker would grow
        with the image (a 100 MB upload by 130 MB); this holds CHUNKS_PER_INSERT chunks at a time.
        """
        mongo.ensure_indexes(self.files, self.FILES_INDEXES)
        mongo.ensure_indexes(self.chunks, self.CHUNKS_INDEXES)
        file_id, length, batch = ObjectId(), 0, []
        try:
            for number, data in enumerate(_pieces(content, self.CHUNK_SIZE)):
                batch.append({"files_id": file_id, "n": number, "data": data})
                length += len(data)
                if len(batch) == self.CHUNKS_PER_INSERT:
                    self.chunks.insert_many(batch)
                    batch = []
            if batch:
                self.chunks.insert_many(batch)
            self.files.insert_one(
                {
                    "_id": file_id,
                    "filename": name,
                    "length": Int64(length),
                    "chunkSize": self.CHUNK_SIZE,
                    "uploadDate": datetime.now(UTC),
                    "metadata": {"pinned": True},  # its pins are kept (see `pin`) from its first instant
                }
            )
        except BaseException as failure:
            with contextlib.suppress(PyMongoError), mongo.cleanup_deadline(failure):
                self.chunks.delete_many({"files_id": file_id})  # what it cannot delete, fsck reclaims
            raise
        # Delete every copy but the lowest `_id`, not just our own: a writer that started earlier (so
        # has a lower `_id`) may finish after us, and it alone then sees both copies. Pins belong to
        # the name, not to a copy.
        for doc in self.files.find({"filename": name}, {"_id": 1}).sort("_id", 1).skip(1):
            self._delete_file(doc["_id"])

    def pin(self, name: str, holder: str, missing: bool = False) -> bool:
        """The pin is written, then the name's closing mark is looked for: an `unpin` writes its mark,
        then looks for pins, and deletes the blob before it removes its mark. So either that unpin
        sees this pin and keeps the blob, or this sees its mark and waits for it to go; from then on
        no unpin can remove the blob, whether it exists now or is saved next."""
        _check_holder(holder)
        self._add_pin(name, holder)
        self._wait_for_closing(name)
        return not missing and self.exists(name)

    def pin_many(self, pins: list[tuple[str, str]]) -> set[str]:
        """`pin` for many names in three commands whatever their number (on FerretDB each filter
        but `_id` scans its collection): all the pins, then any closing marks of those names, each
        waited out, then the names that exist."""
        for _, holder in pins:
            _check_holder(holder)
        if not pins:
            return set()
        mongo.ensure_indexes(self.pin_docs, self.PINS_INDEXES)
        mongo.insert_new(self.pin_docs, [_pin_doc(name, holder) for name, holder in pins])  # or pinned
        names = sorted({name for name, _ in pins})
        for mark in self.closing.find({"_id": {"$in": names}}, {"_id": 1}):
            self._wait_for_closing(mark["_id"])
        return set(self.files.distinct("filename", {"filename": {"$in": names}}))

    def _add_pin(self, name: str, holder: str) -> None:
        mongo.ensure_indexes(self.pin_docs, self.PINS_INDEXES)
        with contextlib.suppress(DuplicateKeyError):  # pinned already
            self.pin_docs.insert_one(_pin_doc(name, holder))

    def unpin(self, name: str, holder: str) -> bool:
        _check_holder(holder)
        if self.pin_docs.delete_one({"_id": f"{name}/{holder}"}).deleted_count != 1:
            return False  # not pinned by `holder`, or a concurrent unpin of it won
        if not self._close(name):
            return False
        self._forget_copy(name)
        self.purge()
        return True

    def _close(self, name: str) -> bool:
        """Deletes the blob if no pin holds it, under the name's closing mark: True if it is gone.
        False if another closing holds the mark (it sees the same pins, and a closing that fails is
        fsck's), or if an untracked copy stays."""
        mark = {"_id": name, "by": ObjectId()}
        for _ in range(50):
            try:
                self.closing.insert_one({**mark, "at": datetime.now(UTC)})
                break
            except DuplicateKeyError:
                time.sleep(0.01)
        else:
            return False
        try:
            removed = self._delete_unpinned(name, mark)
        except BaseException as failure:
            # Quick when MongoDB was lost (the client's 503 waits on it); a mark left here is taken
            # over once CLOSING_STALE old.
            with contextlib.suppress(PyMongoError), mongo.cleanup_deadline(failure):
                self.closing.delete_one(mark)
            raise
        self.closing.delete_one(mark)
        return removed

    def _delete_unpinned(self, name: str, mark: dict) -> bool:
        if self.pin_docs.find_one({"name": name}, {"_id": 1}) is not None:
            return False
        # Untracked copies (written before pins were kept) are never deleted here: see `track`.
        untracked = False
        for doc in self.files.find({"filename": name}, {"metadata.pinned": 1}):
            if not (doc.get("metadata") or {}).get("pinned"):
                untracked = True
                continue
            if self.closing.find_one(mark, {"_id": 1}) is None:
                return False  # paused past CLOSING_STALE, and taken for dead: the blob stays
            self._delete_file(doc["_id"])
        return not untracked

    def _wait_for_closing(self, name: str) -> None:
        """Until the name's closing mark goes. A closing takes milliseconds, so a mark older than
        CLOSING_STALE is taken for one left by a process that died while closing, and removed; a
        closing that was only paused that long finds its mark gone before each delete, and stops.
        That check and the delete after it are the design's one window of timing."""
        while (mark := self.closing.find_one({"_id": name})) is not None:
            if mark["at"] < datetime.now(UTC) - self.CLOSING_STALE:
                self.closing.delete_one({"_id": name, "by": mark.get("by")})
            else:
                time.sleep(0.01)

    def pins(self, name: str) -> Pins | None:
        files = list(self.files.find({"filename": name}, {"metadata": 1}))
        if any(not (doc.get("metadata") or {}).get("pinned") for doc in files):
            return None
        found = self.pin_docs.find({"name": name})
        return {doc["_id"].partition("/")[2]: doc["at"] for doc in found}

    def track(self, name: str) -> None:
        with contextlib.suppress(DuplicateKeyError):
            self.pin_docs.insert_one(_pin_doc(name, TRACKING))
        self.files.update_many({"filename": name}, {"$set": {"metadata.pinned": True}})

    def _blob_sources(self) -> list[Database]:
        """Where a blob is looked for, in turn: with the blob read preference, then on the primary."""
        database = self.database
        if self.blob_read_preference is None:
            return [database]
        chosen = database.with_options(read_preference=self.blob_read_preference)
        if self.blob_read_preference == ReadPreference.PRIMARY:
            return [chosen]
        return [chosen, database.with_options(read_preference=ReadPreference.PRIMARY)]

    def _find_blob(self, name: str, projection: dict | None = None) -> tuple[dict, Database, Database | None]:
        """The blob's files document, the database view it was found in, and the one to turn to for
        chunks that this one lacks (None: none left)."""
        sources = self._blob_sources()
        for index, database in enumerate(sources):
            # The lowest `_id` is the copy a concurrent save keeps (see `_write`), so read that one.
            files = database[f"{self.bucket_name}.files"]
            doc = files.find_one({"filename": name}, projection, sort=[("_id", 1)])
            if doc is not None:
                return doc, database, sources[index + 1] if index + 1 < len(sources) else None
        raise FileNotFoundError(name)

    def _open(self, name: str, mode: str = "rb") -> File:
        """The blob's local copy if there is one, without any MongoDB command: that is safe because
        a copy is never stale (names are content hashes) and a blob is deleted only once no record
        names it, while every read looks its record up first. (Another instance's delete leaves
        this copy until eviction, but no record leads to it; a record that this worker's hot cache
        still holds leads to it, as it leads to hot-cached bytes, for HOT_CACHE_SECONDS at most.)
        Else the GridFS file, copied locally if it is read whole."""
        if self.copies is not None and (local := self.copies.open(name)) is not None:
            return File(local, name)
        doc, database, fallback = self._find_blob(name)
        chunks = f"{self.bucket_name}.chunks"
        reader = GridFSReader(database[chunks], doc, None if fallback is None else fallback[chunks])
        return File(reader if self.copies is None else self.copies.copying(name, reader), name)

    def in_store(self) -> "GridFSStorage":
        """A twin without local copies: a copy damaged on this disk is not the store's damage, and a
        blob damaged in GridFS must not hide behind a good copy."""
        twin = copy.copy(self)
        twin.copies = None
        return twin

    def exists(self, name: str) -> bool:
        return self.files.find_one({"filename": name}, {"_id": 1}) is not None

    def size(self, name: str) -> int:
        """From the local copy if there is one, without any MongoDB command (see `_open`)."""
        if self.copies is not None and (size := self.copies.size(name)) is not None:
            return size
        return self._find_blob(name, {"length": 1})[0]["length"]

    def delete(self, name: str) -> None:
        for doc in self.files.find({"filename": name}, {"_id": 1}):
            self._delete_file(doc["_id"])
        self._forget_copy(name)
        self.purge()

    def _forget_copy(self, name: str) -> None:
        """Removes this instance's copy of a blob just deleted; other instances' copies are left to
        their eviction, since no record leads to them any more."""
        if self.copies is not None:
            self.copies.remove(name)

    def _delete_file(self, file_id: Any) -> None:
        """Its chunks are listed for a purge first, then the files document goes: cut off in
        between, the blob is still whole (an orphan for fsck), never chunks nobody will purge."""
        mongo.ensure_indexes(self.deleted, self.DELETED_INDEXES)
        with contextlib.suppress(DuplicateKeyError):  # listed already by a concurrent delete
            self.deleted.insert_one({"_id": file_id, "deleted_at": datetime.now(UTC)})
        self.files.delete_one({"_id": file_id})

    def purge(self) -> None:
        """Deletes the chunks of the files deleted more than `purge_delay` ago."""
        due = datetime.now(UTC) - self.purge_delay
        mongo.ensure_indexes(self.deleted, self.DELETED_INDEXES)
        for entry in self.deleted.find({"deleted_at": {"$lte": due}}, {"_id": 1}):
            # A files document still there means its delete was cut off: the blob stays whole.
            if self.files.find_one({"_id": entry["_id"]}, {"_id": 1}) is None:
                self.chunks.delete_many({"files_id": entry["_id"]})
            self.deleted.delete_one({"_id": entry["_id"]})

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
        document last), or a deleted file's whose purge is overdue (dated by its delete). Those still
        waiting for their purge, and those whose files document is being replaced (listed in
        `<bucket>.renaming`, see images/legacy.py), are not leftovers."""
        file_ids = {doc["_id"] for doc in self.files.find({}, {"_id": 1})}
        # Files documents being replaced in place (adopt_legacy's journal), read after the files:
        # a document missing above is either listed here still, or back by `delete_leftover`'s check.
        file_ids |= {doc["_id"] for doc in self.database[f"{self.bucket_name}.renaming"].find({}, {"_id": 1})}
        deleted = {doc["_id"]: doc["deleted_at"] for doc in self.deleted.find()}
        due = datetime.now(UTC) - self.purge_delay
        for group in self.chunks.aggregate([{"$group": {"_id": "$files_id"}}]):
            files_id = group["_id"]
            if files_id in file_ids:
                continue
            if files_id in deleted:
                if deleted[files_id] <= due:
                    yield Leftover(str(files_id), deleted[files_id])
                continue
            last = self.chunks.find_one({"files_id": files_id}, {"_id": 1}, sort=[("_id", -1)])
            if last is not None:  # not removed meanwhile
                yield Leftover(str(files_id), last["_id"].generation_time)

    def delete_leftover(self, name: str) -> None:
        files_id = ObjectId(name)
        if self.files.find_one({"_id": files_id}, {"_id": 1}) is None:  # its upload did not finish since
            self.chunks.delete_many({"files_id": files_id})
            self.deleted.delete_one({"_id": files_id})
