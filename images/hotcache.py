"""Per-process caches for the hot read path, so a popular small image costs no query and no disk.

- `TTLCache` keeps answers for a few seconds: records by id (a record never changes, it can only be
  deleted), a model's newest record, API key checks. A delete forgets its own entries at once; other
  workers may serve a deleted image for at most HOT_CACHE_SECONDS, which is far less than the year
  that `immutable` lets any cache in front keep it anyway.
- `BlobCache` keeps the bytes of small blobs, least recently used first out, within HOT_CACHE_MB.
  Blob names are content-addressed, so cached bytes are never stale.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Literal, TypeVar

from django.conf import settings

from .backend import get_backend

T = TypeVar("T")
MAX_ENTRIES = 50_000


class TTLCache:
    def __init__(self, seconds: Callable[[], float]):
        self._seconds = seconds
        self._lock = threading.Lock()
        self._items: dict[Hashable, tuple[float, object]] = {}

    def get(self, key: Hashable, compute: Callable[[], T], keep: Callable[[T], bool] = bool) -> T:
        """The cached value, or `compute()`'s, kept only when `keep` says so (misses by default
        are not kept: an id that is unknown now may be one that is being uploaded)."""
        now = time.monotonic()
        hit = self._items.get(key)
        if hit and hit[0] > now:
            return hit[1]  # type: ignore[return-value]
        value = compute()
        seconds = self._seconds()
        if seconds > 0 and keep(value):
            with self._lock:
                if len(self._items) >= MAX_ENTRIES:
                    self._items.clear()
                self._items[key] = (now + seconds, value)
        return value

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class BlobCache:
    MAX_BLOB = 256 * 1024  # larger blobs stream from storage (sendfile), which is as fast for them

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def fits(self, size: int) -> bool:
        return size <= self.MAX_BLOB and size <= settings.HOT_CACHE_MB * 1024 * 1024

    def get(self, name: str, read: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._items.get(name)
            if data is not None:
                self._items.move_to_end(name)
                return data
        data = read()
        limit = settings.HOT_CACHE_MB * 1024 * 1024
        with self._lock:
            if name not in self._items:
                self._items[name] = data
                self._bytes += len(data)
            while self._bytes > limit and self._items:
                self._bytes -= len(self._items.popitem(last=False)[1])
        return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def always(value: object) -> bool:
    """For answers worth keeping even when empty: an unknown API key, "no keys exist yet"."""
    return True


# What a cached answer is: a record by image_id, a model's newest record, a derivative's size (by
# image_id and name), an API key's check (by hash), whether any key is active.
Kind = Literal["record", "newest", "derivative", "key", "any"]


def key(kind: Kind, *parts: Hashable) -> tuple:
    """The one way to name a cached answer. It names the backend too, so that switching stores (as
    tests do) never mixes them."""
    backend = get_backend()
    return (backend.name, backend.where, kind, *parts)


records = TTLCache(lambda: settings.HOT_CACHE_SECONDS)
blobs = BlobCache()


def clear() -> None:
    records.clear()
    blobs.clear()
