"""One conformance suite that every blob storage must pass, run against each configured backend.

The rest of the service only ever talks to `storages["images"]`, so it relies on exactly these
properties: content-addressed names, whole-or-nothing writes, seekable reads and idempotent saves.
"""

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.base import ContentFile

from images.documents import new_image_id
from images.storage import BlobFileSystemStorage
from tests.helpers import GRIDFS_CHUNK, blob, name_of, untrack

THREADS = 8


def read_back(storage, name: str) -> bytes:
    with storage.open(name) as f:
        return f.read()


class Interrupted(Exception):
    """Stands for a client that disconnects halfway through an upload."""


class FailingFile(File):
    """Yields one chunk (more than a GridFS chunk, so something reaches the backend), then fails."""

    def __init__(self, first_chunk: bytes):
        super().__init__(io.BytesIO(first_chunk), "failing")
        self.first_chunk = first_chunk

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        yield self.first_chunk
        raise Interrupted


def test_save_returns_the_name_and_reads_back(store) -> None:
    data = blob(1000)
    name = name_of(data)
    assert store.storage.save(name, ContentFile(data)) == name
    assert read_back(store.storage, name) == data
    assert store.storage.size(name) == len(data)
    assert store.blob_names() == [name]


def test_exists_and_delete(store) -> None:
    data = blob(100)
    name = name_of(data)
    assert not store.storage.exists(name)
    store.storage.save(name, ContentFile(data))
    assert store.storage.exists(name)
    store.storage.delete(name)
    assert not store.storage.exists(name)
    assert store.blob_names() == []


def test_deleting_a_missing_name_is_harmless(store) -> None:
    """Removing the last record deletes its blob; a retry or a race must not turn that into an error."""
    store.storage.delete(name_of(b"never saved"))
    data = blob(10)
    store.storage.save(name_of(data), ContentFile(data))
    store.storage.delete(name_of(data))
    store.storage.delete(name_of(data))
    assert store.blob_names() == []


def test_opening_a_missing_name_raises_file_not_found(store) -> None:
    """The views map FileNotFoundError, whatever the backend, so it must be that exception."""
    with pytest.raises(FileNotFoundError):
        store.storage.open(name_of(b"missing"))


def test_seek_and_ranged_reads_across_chunk_boundaries(store) -> None:
    """Range requests seek the storage's own file; GridFS must stitch its 255 KiB chunks correctly."""
    data = blob(1_000_000)
    name = name_of(data)
    store.storage.save(name, ContentFile(data))
    assert store.storage.size(name) == len(data)
    with store.storage.open(name) as f:
        for start, length in [
            (0, 100),
            (GRIDFS_CHUNK - 10, 100),  # straddles the first chunk boundary
            (2 * GRIDFS_CHUNK - 1, 2),
            (3 * GRIDFS_CHUNK, GRIDFS_CHUNK + 7),  # one whole chunk and a bit of the next
            (500_000, 1),
        ]:
            f.seek(start)
            assert f.read(length) == data[start : start + length], start
        f.seek(len(data) - 5)
        assert f.read(100) == data[-5:]
        assert f.read(100) == b""
        f.seek(GRIDFS_CHUNK)
        assert f.read() == data[GRIDFS_CHUNK:]


def test_saving_an_existing_name_again_is_a_no_op(store) -> None:
    """Names are digests: a second save must neither copy nor overwrite what is there."""
    data = blob(5000)
    name = name_of(data)
    assert store.storage.save(name, ContentFile(data)) == name
    assert store.storage.save(name, ContentFile(data)) == name
    assert store.storage.save(name, ContentFile(b"different bytes")) == name
    assert store.blob_names() == [name]
    assert read_back(store.storage, name) == data


@pytest.mark.parametrize("name", ["../x", "a/b", "ABC", "", "../" + name_of(b"x"), name_of(b"x") + "/.."])
def test_invalid_names_are_refused(store, name: str) -> None:
    """A blob name ends up in a path (or a query): anything but a digest could escape or collide."""
    with pytest.raises(SuspiciousFileOperation):
        store.storage.save(name, ContentFile(b"data"))
    assert store.blob_names() == []


def test_a_failed_save_leaves_nothing_behind(store) -> None:
    """No temp file, no orphan GridFS chunk, and the caller sees the failure."""
    name = name_of(b"never completes")
    with pytest.raises(Interrupted):
        store.storage.save(name, FailingFile(blob(GRIDFS_CHUNK + 1000)))
    assert store.blob_names() == []
    assert not store.storage.exists(name)


@pytest.mark.parametrize("seed", range(3))
def test_concurrent_saves_of_one_name_leave_one_blob(store, seed: int) -> None:
    """Concurrent uploads of the same image race to store its blob; exactly one copy may remain.

    A few rounds, since which writer finishes first varies from run to run.
    """
    data = blob(600_000, seed)
    name = name_of(data)
    storage = store.storage
    start = threading.Barrier(THREADS)

    def save() -> str:
        start.wait(10)
        return storage.save(name, ContentFile(data))

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(save) for _ in range(THREADS)]
        assert [f.result(timeout=60) for f in futures] == [name] * THREADS
    assert store.blob_names() == [name]
    assert read_back(storage, name) == data


def test_a_reader_keeps_its_bytes_after_a_delete(store) -> None:
    """A download that has started must finish after the image is deleted: a file on disk keeps its
    bytes while it is open, and GridFS keeps a deleted file's chunks until their purge is due.

    The reader seeks back after the delete, so it needs a new cursor: FerretDB's cursors see the
    chunks as they were when the cursor opened, MongoDB's see them go at their next batch.
    """
    data = blob(5 * GRIDFS_CHUNK + 123)
    name = name_of(data)
    store.storage.save(name, ContentFile(data))
    with store.storage.open(name) as reader:
        assert reader.read(GRIDFS_CHUNK + 7) == data[: GRIDFS_CHUNK + 7]
        store.storage.delete(name)
        assert not store.storage.exists(name)
        reader.seek(0)
        assert reader.read() == data
    assert store.blob_names() == []
    store.storage.save(name, ContentFile(data))  # the same bytes again, after their delete
    assert read_back(store.storage, name) == data


# --- Pins: the blob's life (see images/storage.py) ------------------------------------------------

HOLDERS = ["64a0aa000000000000000001", "64a0aa000000000000000002"]


def test_a_blob_goes_with_its_last_pin(store) -> None:
    data = blob(1000, seed=20)
    name = name_of(data)
    assert store.storage.pin(name, HOLDERS[0]) is False  # no blob yet: the pin holds the name
    store.storage.save(name, ContentFile(data))
    assert set(store.storage.pins(name)) == {HOLDERS[0]}
    assert store.storage.pin(name, HOLDERS[1]) is True
    assert set(store.storage.pins(name)) == set(HOLDERS)
    assert store.storage.unpin(name, "64a0aa00000000000000dead") is False  # not a holder
    assert store.storage.unpin(name, HOLDERS[0]) is False  # one pin left
    assert read_back(store.storage, name) == data
    assert store.storage.unpin(name, HOLDERS[0]) is False  # given back already: no effect
    assert store.storage.unpin(name, HOLDERS[1]) is True
    assert not store.storage.exists(name)
    assert store.blob_names() == []  # (GridFS: chunks wait for their purge, accounted for)
    assert store.storage.pin(name, HOLDERS[0]) is False
    assert store.storage.unpin(name, HOLDERS[0]) is True  # a pin of a blob never saved goes too
    assert store.storage.pins(name) == {} or store.storage.pins(name) is None


def test_a_pin_told_the_blob_is_missing_need_not_look_and_a_second_save_keeps_one_copy(store) -> None:
    """An upload that found no blob pins with `missing=True`, then saves whatever the answer. Should
    another writer have saved the blob in between, it is saved again harmlessly: one copy remains,
    whole, held by the pin."""
    data = blob(300 * 1024, seed=23)  # two GridFS chunks
    name = name_of(data)
    store.storage.save(name, ContentFile(data))  # another writer's, after the upload's look
    assert store.storage.pin(name, HOLDERS[0], missing=True) is False
    store.storage.save_new(name, ContentFile(data))
    assert set(store.storage.pins(name)) == {HOLDERS[0]}
    assert store.blob_names() == [name]
    assert read_back(store.storage, name) == data
    assert store.storage.unpin(name, HOLDERS[0]) is True
    assert not store.storage.exists(name)


@pytest.mark.parametrize("holder", ["", "a.b", "$set", "x" * 65, "../x"])
def test_holders_that_are_not_ids_are_refused(store, holder: str) -> None:
    data = blob(10, seed=21)
    store.storage.save(name_of(data), ContentFile(data))
    with pytest.raises(SuspiciousFileOperation):
        store.storage.pin(name_of(data), holder)


def test_an_untracked_blob_is_never_unpinned_away_until_tracked(store) -> None:
    data = blob(1000, seed=22)
    name = name_of(data)
    store.storage.save(name, ContentFile(data))
    untrack(store, name)
    assert store.storage.pins(name) is None
    assert store.storage.pin(name, HOLDERS[0]) is True  # it exists: an upload may use it
    assert store.storage.unpin(name, HOLDERS[0]) is False
    assert store.storage.exists(name)
    store.storage.track(name)
    assert set(store.storage.pins(name)) == {"~tracking"}
    store.storage.track(name)  # a second call changes nothing
    assert set(store.storage.pins(name)) == {"~tracking"}
    assert store.storage.unpin(name, "~tracking") is True
    assert not store.storage.exists(name)


def unpin_then(barrier: threading.Barrier, storage, name: str, holder: str) -> None:
    barrier.wait()
    storage.unpin(name, holder)


def pin_or_save_then(barrier: threading.Barrier, storage, name: str, holder: str, data: bytes) -> None:
    """What an upload does (images/services.py `hold_blob`)."""
    barrier.wait()
    if not storage.pin(name, holder):
        storage.save(name, ContentFile(data))


@pytest.mark.parametrize("seed", range(3))
def test_a_pin_racing_the_last_unpin_never_loses_the_blob(store, seed: int) -> None:
    """The lost upload of issue 13: B pins (saving if need be) while A's last pin goes. Whatever the
    interleaving, B ends up holding a blob that exists."""
    data = blob(300 * 1024, seed=30 + seed)  # two GridFS chunks
    name = name_of(data)
    storage = store.storage
    for round_ in range(15):
        a, b = f"{round_:024x}", f"{round_ + 1000:024x}"
        storage.save(name, ContentFile(data))
        assert storage.pin(name, a)
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            unpinning = pool.submit(unpin_then, barrier, storage, name, a)
            pinning = pool.submit(pin_or_save_then, barrier, storage, name, b, data)
            unpinning.result(), pinning.result()
        assert set(storage.pins(name)) == {b}
        assert read_back(storage, name) == data
        assert storage.unpin(name, b) is True
        assert not storage.exists(name)


# --- Listing, times and batches, as fsck, the derivatives and adopt_legacy use them ----------------


def test_listdir_and_names_starting_list_the_blobs(store) -> None:
    first, second = blob(100, seed=1), blob(100, seed=2)
    names = sorted(store.storage.save(name_of(d), ContentFile(d)) for d in (first, second))
    assert store.storage.listdir("") == ([], names)
    assert store.storage.names_starting(names[0]) == [names[0]]
    assert store.storage.names_starting(names[1]) == [names[1]]
    assert store.storage.names_starting(name_of(blob(100, seed=9))) == []


def test_get_modified_time_is_the_write_time(store) -> None:
    name = store.storage.save(name_of(blob(100)), ContentFile(blob(100)))
    written = store.storage.get_modified_time(name)
    assert abs((datetime.now(written.tzinfo) - written).total_seconds()) < 600
    with pytest.raises(FileNotFoundError):
        store.storage.get_modified_time(name_of(blob(100, seed=9)))


def test_pin_many_gives_the_names_that_exist(store) -> None:
    data = blob(100)
    name = store.storage.save(name_of(data), ContentFile(data))
    missing = name_of(blob(100, seed=9))
    holders = [new_image_id() for _ in range(3)]
    assert store.storage.pin_many([(name, holders[0]), (missing, holders[1]), (name, holders[2])]) == {name}
    assert set(store.storage.pins(name)) == {holders[0], holders[2]}


def test_the_files_layout_on_disk_is_kept(settings) -> None:
    """Deployments' blobs are at `location/ab/cd/<name>`: a different fan-out would lose them."""
    storage = BlobFileSystemStorage(location="/data")
    name = "ab" + "cd" + "e" * 60
    assert storage.path(name) == f"/data/ab/cd/{name}"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_delete_leftover_refuses_what_is_no_temporary_files_name(tmp_path, name: str) -> None:
    with pytest.raises(SuspiciousFileOperation):
        BlobFileSystemStorage(location=str(tmp_path)).delete_leftover(name)
