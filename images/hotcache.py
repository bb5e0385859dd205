"""Per-process caches for the hot read path, so a popular small image costs no query and no disk.

- `TTLCache` keeps answers for a few seconds: records by id (a record's bytes never change; its label
  can, and it can be deleted), a model's cover or newest record, API key checks. A write forgets its
  own entries at once; other workers may serve a deleted image or an old label or cover for at most
  HOT_CACHE_SECONDS, which is far less than the year that `immutable` lets any cache in front keep
  the bytes anyway.
- `BlobCache` keeps the bytes of small blobs, least recently used first out, within HOT_CACHE_MB.
  Blob names are content-addressed, so cached bytes are never stale.
- `AnswerCache` keeps whole answers of the content endpoints (headers, and the blob whose bytes are
  the body) for the WSGI layer in imageservice/wsgi.py, which sends them again without Django. An
  answer holds what its request read from the caches above (`tracking`), and is sent again only
  while each of those entries is still cached as it was: a delete, an upload that changes a model's
  newest, or an entry's expiry makes the next request go through Django again.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .backend import get_backend

T = TypeVar("T")
MAX_ENTRIES = 50_000

# What the request being answered read from the caches, while `tracking` is on: (cache, key, value).
Read = tuple["TTLCache", Hashable, object]
MISSING = object()  # what `TTLCache.peek` gives for a key it does not hold
_reads: ContextVar[list[Read] | None] = ContextVar("hotcache_reads", default=None)


@contextmanager
def tracking() -> Iterator[list[Read]]:
    """Collects what the caches answer meanwhile (in this thread), for an `Answer`'s `reads`."""
    reads: list[Read] = []
    token = _reads.set(reads)
    try:
        yield reads
    finally:
        _reads.reset(token)


def _track(cache: "TTLCache", key: Hashable, value: object) -> None:
    reads = _reads.get()
    if reads is not None:
        reads.append((cache, key, value))


def still_cached(reads: list[Read]) -> bool:
    """Whether every one of `reads` is still cached, as the same object."""
    return all(cache.peek(key) is value for cache, key, value in reads)


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
            _track(self, key, hit[1])
            return hit[1]  # type: ignore[return-value]
        value = compute()
        seconds = self._seconds()
        if seconds > 0 and keep(value):
            with self._lock:
                if len(self._items) >= MAX_ENTRIES:
                    self._items.clear()
                self._items[key] = (now + seconds, value)
        _track(self, key, value)  # an answer that relied on a value not kept is never sent again
        return value

    def peek(self, key: Hashable) -> object:
        """The cached value, or MISSING: never computes."""
        hit = self._items.get(key)
        return hit[1] if hit and hit[0] > time.monotonic() else MISSING

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
        if (data := self.peek(name)) is not None:
            return data
        data = read()
        limit = settings.HOT_CACHE_MB * 1024 * 1024
        with self._lock:
            if name not in self._items:
                self._items[name] = data
                self._bytes += len(data)
            while self._bytes > limit and self._items:
                self._bytes -= len(self._items.popitem(last=False)[1])
            return self._items.get(name, data)

    def peek(self, name: str) -> bytes | None:
        """The cached bytes (now the most recently used), or None: never reads the storage."""
        with self._lock:
            data = self._items.get(name)
            if data is not None:
                self._items.move_to_end(name)
            return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass(frozen=True)
class Answer:
    """A content endpoint's answer as Django sent it, less its X-Request-ID (at `request_id_at`),
    with what the log line and the metrics need. The body is the blob `blob`'s bytes, or empty."""

    status: str  # "200 OK"
    status_code: int
    headers: tuple[tuple[str, str], ...]
    request_id_at: int
    blob: str | None
    size: int  # Content-Length, as logged
    endpoint: str
    path: str
    image_id: str | None
    reads: tuple[Read, ...]


class AnswerCache:
    """Answers by request (see imageservice/wsgi.py's `answer_key`); each a few hundred bytes, the
    body staying in `blobs`."""

    MAX_ANSWERS = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Hashable, Answer] = {}

    def get(self, key: Hashable) -> Answer | None:
        """The answer, if everything it read is still cached as it was."""
        answer = self._items.get(key)
        if answer is None or not still_cached(answer.reads):
            return None
        return answer

    def put(self, key: Hashable, answer: Answer) -> None:
        with self._lock:
            if len(self._items) >= self.MAX_ANSWERS:
                self._items.clear()
            self._items[key] = answer

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


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
answers = AnswerCache()


def clear() -> None:
    records.clear()
    blobs.clear()
    answers.clear()


@receiver(setting_changed)
def _forget_answers(**kwargs) -> None:
    """An answer holds headers that settings made (CORS, caching, security): tests change them."""
    answers.clear()
