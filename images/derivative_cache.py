"""Keeps what derivatives occupy under DERIVATIVE_CACHE_MB by removing the least recently used.

Each derivative has a row (the SQL table `derivative_uses`, or the MongoDB collection of that name,
beside the records, so every worker and instance sees the same ones): its name, its size, and when
it was last asked for. `derivatives.ensure` reports each make and each use (a hit on a worker's hot
cache skips `ensure`, so a use is seen at least once per HOT_CACHE_SECONDS per worker). After a make
that takes the total over the cap, one process at a time (a lease) removes derivatives, least
recently used first, until it is under again.

Only derivatives can go, never an original or a base: a row's name must have a derivative's form,
and nothing else ever gets a row. A derivative used within EVICTION_GRACE seconds stays, since a
worker may still hold its size in its hot cache and be about to open it; one being read already is
safe anyway (an open file keeps its bytes; GridFS keeps a deleted blob's chunks for
GRIDFS_PURGE_DELAY). A row is deleted only if it was not used since it was picked, and the blob
after it. Removed derivatives are simply made again when asked for.
"""

import re
from datetime import UTC, datetime, timedelta

from django.conf import settings

from .backend import get_backend

# `derivatives.Spec.name`: `<sha256>_<w>x<h>_<fit>_q<quality>.<format>`; a base (`_base.jpg`) never matches.
DERIVATIVE_NAME = re.compile(r"[0-9a-f]{64}_\d+x\d+_[a-z]+_q\d+\.[a-z]+")
EVICTION_LEASE = "derivative-cache-eviction"
BATCH = 100


def _grace() -> timedelta:
    return timedelta(seconds=settings.HOT_CACHE_SECONDS + 1)


def made(name: str, size: int) -> None:
    """Records a derivative just stored, then removes the least recently used if over the cap."""
    get_backend().derivative_uses.made(name, size, datetime.now(UTC))
    evict()


def used(name: str, size: int) -> None:
    """Records that a derivative (which exists, of `size` bytes) was asked for; one made before
    rows existed gets its row now."""
    backend, now = get_backend(), datetime.now(UTC)
    if not backend.derivative_uses.touch(name, now):
        backend.derivative_uses.add(name, size, now)  # nothing if another worker just did


def forget(name: str) -> None:
    """Drops the row of a derivative deleted with its original, so that it stops counting."""
    get_backend().derivative_uses.forget(name)


def total() -> int:
    """What the recorded derivatives occupy, in bytes."""
    return get_backend().derivative_uses.total()


def evict() -> int:
    """Removes least recently used derivatives until they occupy at most DERIVATIVE_CACHE_MB;
    how many bytes it removed. Does nothing while another process is at it."""
    cap = settings.DERIVATIVE_CACHE_MB * 1024 * 1024
    excess = total() - cap
    if excess <= 0:
        return 0
    removed = 0
    backend = get_backend()
    with backend.leases.holding(EVICTION_LEASE, 60) as mine:
        while mine and removed < excess:
            batch = backend.derivative_uses.least_recently_used(datetime.now(UTC) - _grace(), BATCH)
            for name, size, used_at in batch:
                if not DERIVATIVE_NAME.fullmatch(name):
                    continue
                if not backend.derivative_uses.forget_unused(name, used_at):
                    continue
                backend.blobs.delete(name)
                removed += size
                if removed >= excess:
                    break
            if len(batch) < BATCH:
                break  # everything left was used within the grace
    return removed
