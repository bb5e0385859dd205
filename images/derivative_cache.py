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
from django.db import IntegrityError, transaction
from django.db.models import Sum
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from . import leases, mongo
from .models import DerivativeUse
from .storage import image_storage

# `derivatives.Spec.name`: `<sha256>_<w>x<h>_<fit>_q<quality>.<format>`; a base (`_base.jpg`) never matches.
DERIVATIVE_NAME = re.compile(r"[0-9a-f]{64}_\d+x\d+_[a-z]+_q\d+\.[a-z]+")
EVICTION_LEASE = "derivative-cache-eviction"
BATCH = 100
INDEXES = [IndexModel([("used_at", ASCENDING)], name="used_at")]


def _grace() -> timedelta:
    return timedelta(seconds=settings.HOT_CACHE_SECONDS + 1)


def _collection():
    collection = mongo.get_database()["derivative_uses"]
    mongo.ensure_indexes(collection, INDEXES)
    return collection


def made(name: str, size: int) -> None:
    """Records a derivative just stored, then removes the least recently used if over the cap."""
    now = datetime.now(UTC)
    if settings.MONGO:
        _collection().update_one({"_id": name}, {"$set": {"size": size, "used_at": now}}, upsert=True)
    else:
        DerivativeUse.objects.update_or_create(name=name, defaults={"size": size, "used_at": now})
    evict()


def used(name: str) -> None:
    """Records that a derivative (which exists) was asked for; one made before rows existed gets
    its row now."""
    now = datetime.now(UTC)
    if settings.MONGO:
        found = _collection().update_one({"_id": name}, {"$set": {"used_at": now}}).matched_count
    else:
        found = DerivativeUse.objects.filter(name=name).update(used_at=now)
    if found:
        return
    try:
        size = image_storage().size(name)
    except FileNotFoundError:
        return  # removed meanwhile: the caller gets a 404 and may ask again
    try:
        if settings.MONGO:
            _collection().insert_one({"_id": name, "size": size, "used_at": now})
        else:
            with transaction.atomic():
                DerivativeUse.objects.create(name=name, size=size, used_at=now)
    except (DuplicateKeyError, IntegrityError):
        pass  # another worker recorded it at the same moment


def forget(name: str) -> None:
    """Drops the row of a derivative deleted with its original, so that it stops counting."""
    if settings.MONGO:
        _collection().delete_one({"_id": name})
    else:
        DerivativeUse.objects.filter(name=name).delete()


def total() -> int:
    """What the recorded derivatives occupy, in bytes."""
    if settings.MONGO:
        found = list(_collection().aggregate([{"$group": {"_id": None, "total": {"$sum": "$size"}}}]))
        return int(found[0]["total"]) if found else 0
    return DerivativeUse.objects.aggregate(total=Sum("size"))["total"] or 0


def _least_recently_used(before: datetime) -> list[tuple[str, int, datetime]]:
    if settings.MONGO:
        docs = _collection().find({"used_at": {"$lt": before}}).sort("used_at", ASCENDING).limit(BATCH)
        return [(doc["_id"], doc["size"], doc["used_at"]) for doc in docs]
    rows = DerivativeUse.objects.filter(used_at__lt=before).order_by("used_at")[:BATCH]
    return [(row.name, row.size, row.used_at) for row in rows]


def _forget_unused(name: str, used_at: datetime) -> bool:
    """Deletes the row if nobody used the derivative since `used_at`; whether it did."""
    if settings.MONGO:
        return _collection().delete_one({"_id": name, "used_at": used_at}).deleted_count == 1
    return DerivativeUse.objects.filter(name=name, used_at=used_at).delete()[0] == 1


def evict() -> int:
    """Removes least recently used derivatives until they occupy at most DERIVATIVE_CACHE_MB;
    how many bytes it removed. Does nothing while another process is at it."""
    cap = settings.DERIVATIVE_CACHE_MB * 1024 * 1024
    excess = total() - cap
    if excess <= 0:
        return 0
    removed = 0
    with leases.holding(EVICTION_LEASE, 60) as mine:
        while mine and removed < excess:
            batch = _least_recently_used(datetime.now(UTC) - _grace())
            for name, size, used_at in batch:
                if not DERIVATIVE_NAME.fullmatch(name) or not _forget_unused(name, used_at):
                    continue
                image_storage().delete(name)
                removed += size
                if removed >= excess:
                    break
            if len(batch) < BATCH:
                break  # everything left was used within the grace
    return removed
