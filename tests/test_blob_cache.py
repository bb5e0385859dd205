"""Mongo mode's local copies of large blobs (images/storage.py `LocalCopies`), against real FerretDB:
a blob read whole is copied to a file, read from it next without MongoDB, and never copied wrong.
"""

import contextlib
import io
import json
import os
import time
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from images import hotcache
from images.documents import new_image_id
from images.hotcache import BlobCache
from images.storage import GridFSStorage
from tests.helpers import blob, body, name_of, upload
from tests.samples import noise_jpeg

pytestmark = pytest.mark.parametrize("store", ["mongo"], indirect=True)

LARGE = BlobCache.MAX_BLOB + 1000  # just over what the hot cache keeps in memory: two GridFS chunks


def files_in(cache_dir: Path) -> list[str]:
    """Everything in the cache's folder, copies and temporary files alike."""
    return sorted(os.listdir(cache_dir)) if cache_dir.exists() else []


def saved(storage, size: int = LARGE, seed: int = 0) -> tuple[str, bytes]:
    data = blob(size, seed)
    return storage.save(name_of(data), ContentFile(data)), data


def read_whole(storage, name: str) -> bytes:
    with storage.open(name) as file:
        return file.read()


def test_a_whole_read_leaves_a_copy_read_next_with_no_command(store, blob_cache, mongo_commands):
    name, data = saved(store.storage)
    small, _ = saved(store.storage, BlobCache.MAX_BLOB, seed=1)
    assert read_whole(store.storage, name) == data
    assert read_whole(store.storage, small) == blob(BlobCache.MAX_BLOB, 1)
    assert files_in(blob_cache) == [name]  # the small one is the hot cache's
    copy = blob_cache / name
    os.utime(copy, (time.time() - 600, time.time() - 600))
    mongo_commands.clear()
    with store.storage.open(name) as file:
        assert os.fstat(file.fileno()).st_size == len(data)  # a real file: the server sendfile()s it
        file.seek(LARGE - 1500)
        assert file.read(1000) == data[-1500:-500]
        file.seek(0)
        assert file.read() == data
    assert store.storage.size(name) == len(data)
    assert mongo_commands.commands == []
    assert copy.stat().st_mtime > time.time() - 60  # opened: now the most recently used


def test_a_range_or_a_read_given_up_midway_leaves_no_copy(store, blob_cache):
    name, data = saved(store.storage)
    with store.storage.open(name) as file:  # a Range: seeks past the start
        file.seek(1000)
        assert file.read() == data[1000:]
    with store.storage.open(name) as file:  # a client gone before the last byte
        assert file.read(LARGE - 1) == data[:-1]
    with store.storage.open(name) as file:  # read from the start, then a seek elsewhere
        assert file.read(1000) == data[:1000]
        file.seek(5000)
        assert file.read() == data[5000:]
    derivative = store.storage.save(f"{name}_base.jpg", ContentFile(data))  # no sha256 to check it by
    with store.storage.open(derivative) as file:  # every byte once, but not in order (Pillow seeks)
        file.seek(1000)
        assert file.read() == data[1000:]
        file.seek(0)
        assert file.read(1000) == data[:1000]
    assert files_in(blob_cache) == []  # no copy, and no temporary file left
    assert read_whole(store.storage, name) == data
    assert files_in(blob_cache) == [name]


def test_bytes_that_do_not_hash_to_their_name_are_never_copied(store, blob_cache):
    data = blob(LARGE)
    wrong = store.storage.save(name_of(b"other bytes"), ContentFile(data))
    assert read_whole(store.storage, wrong) == data
    assert files_in(blob_cache) == []
    derivative = store.storage.save(f"{name_of(data)}_base.jpg", ContentFile(data))  # not a sha256
    assert read_whole(store.storage, derivative) == data
    assert files_in(blob_cache) == [derivative]


def test_a_blob_deleted_or_unpinned_away_loses_its_copy(store, blob_cache):
    name, data = saved(store.storage)
    read_whole(store.storage, name)
    store.storage.delete(name)
    assert files_in(blob_cache) == []
    with pytest.raises(FileNotFoundError):
        store.storage.open(name)
    holders = [new_image_id(), new_image_id()]
    assert store.storage.pin(name, holders[0]) is False
    assert store.storage.pin(name, holders[1]) is False
    store.storage.save(name, ContentFile(data))
    read_whole(store.storage, name)
    assert store.storage.unpin(name, holders[0]) is False  # a pin is left: the blob and its copy stay
    assert files_in(blob_cache) == [name]
    assert store.storage.unpin(name, holders[1]) is True
    assert files_in(blob_cache) == []


def test_eviction_keeps_the_copies_under_the_cap_least_recently_used_out_first(store, tmp_path):
    cache_dir = tmp_path / "copies"
    storage = GridFSStorage(cache_dir=str(cache_dir), cache_mb=1)
    sizes = [300 * 1024, 256 * 1024 + 100, 320 * 1024, 320 * 1024]  # the first three fit in 1 MiB
    names = [saved(storage, size, seed)[0] for seed, size in enumerate(sizes)]
    for age, name in zip((300, 200, 100), names[:3], strict=False):
        read_whole(storage, name)
        os.utime(cache_dir / name, (time.time() - age, time.time() - age))
    stale, fresh = cache_dir / "tmp-cut-off", cache_dir / "tmp-being-written"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh.write_bytes(b"x")
    storage.open(names[0]).close()  # the oldest copy is used: the second is the least recent now
    assert storage.size(names[1]) == sizes[1]  # sizing is no use
    read_whole(storage, names[3])
    # 1.17 MiB: the second goes, which leaves 0.92 MiB, over 90% of the cap: the third goes too
    assert files_in(cache_dir) == sorted([names[0], names[3], fresh.name])
    assert read_whole(storage, names[2]) == blob(sizes[2], 2)  # from GridFS, and copied again:
    assert files_in(cache_dir) == sorted([names[0], names[2], names[3], fresh.name])  # 0.92 MiB stay


def test_no_copies_at_0_mb_and_a_copy_that_fails_never_fails_the_read(store, tmp_path):
    storage = GridFSStorage(cache_dir=str(tmp_path / "copies"), cache_mb=0)  # BLOB_CACHE_MB=0
    name, data = saved(storage)
    assert read_whole(storage, name) == data
    assert not (tmp_path / "copies").exists()
    (tmp_path / "not-a-folder").write_bytes(b"")
    unwritable = GridFSStorage(cache_dir=str(tmp_path / "not-a-folder"))
    assert read_whole(unwritable, name) == data


def test_a_large_image_read_twice_through_the_api_is_the_same_bytes(store, blob_cache, client):
    data = noise_jpeg((640, 480))
    assert len(data) > BlobCache.MAX_BLOB
    image_id = upload(client, data, model_id="large").json()["image_id"]
    url = f"/images/{image_id}/content"
    first = client.get(url)
    assert body(first) == data
    assert files_in(blob_cache) == [name_of(data)]
    hotcache.clear()
    second = client.get(url)
    assert (second.status_code, body(second), second["ETag"]) == (200, data, first["ETag"])
    ranged = client.get(url, HTTP_RANGE="bytes=100000-100999")
    assert (ranged.status_code, ranged["Content-Range"]) == (206, f"bytes 100000-100999/{len(data)}")
    assert body(ranged) == data[100000:101000]
    assert body(client.get("/image/large")) == data
    for response in (first, second, ranged):
        response.close()


@pytest.mark.parametrize("name", ["../outside", ".."])
def test_a_name_that_is_no_blobs_never_reaches_a_file_outside_the_cache(store, blob_cache, name):
    blob_cache.mkdir()
    (blob_cache.parent / "outside").write_bytes(blob(LARGE))
    with pytest.raises(FileNotFoundError):
        store.storage.open(name)
    with pytest.raises(FileNotFoundError):
        store.storage.size(name)


def test_fsck_checks_the_store_never_a_local_copy(store, blob_cache, client):
    """A blob damaged in GridFS is found though a good copy would hide it, and a copy damaged on
    this disk is not reported as the store's damage (a repair would act on GridFS)."""
    data = noise_jpeg((640, 480))
    image_id = upload(client, data, model_id="large").json()["image_id"]
    name = name_of(data)
    assert read_whole(store.storage, name) == data and files_in(blob_cache) == [name]
    (blob_cache / name).write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    report = fsck_deep()
    assert (report["clean"], report["problems"]) == (True, []), report
    (blob_cache / name).write_bytes(data)
    last_chunk = store.mongo_db["fs.chunks"].find_one({"n": 1})  # two chunks; the copy keeps both
    flipped = last_chunk["data"][:-1] + bytes([last_chunk["data"][-1] ^ 0xFF])
    store.mongo_db["fs.chunks"].update_one({"_id": last_chunk["_id"]}, {"$set": {"data": flipped}})
    report = fsck_deep()
    assert [(p["kind"], p["subject"]) for p in report["problems"]] == [("sha256_mismatch", name)], image_id


def fsck_deep() -> dict:
    out = io.StringIO()
    with contextlib.suppress(CommandError):  # fsck fails when it finds damage
        call_command("fsck", "--deep", "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())
