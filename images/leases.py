"""Leases: short claims on a name that every worker and instance sees, kept beside the records.

Two identical derivative requests arriving at once, on any two workers, make the derivative once:
the first takes the lease and makes it, the other waits for the blob. A lease expires on its own,
so a worker that dies holding one blocks nobody for long.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from pymongo.errors import DuplicateKeyError

from . import mongo
from .models import Lease


def _acquire_sql(name: str, until: datetime, now: datetime) -> bool:
    try:
        with transaction.atomic():
            Lease.objects.create(name=name, expires_at=until)
        return True
    except IntegrityError:
        return Lease.objects.filter(name=name, expires_at__lt=now).update(expires_at=until) == 1


def _acquire_mongo(name: str, until: datetime, now: datetime) -> bool:
    leases = mongo.get_database()["leases"]
    try:
        # Matches a missing or expired lease; a live one makes the upsert collide on _id.
        leases.update_one(
            {"_id": name, "expires_at": {"$lt": now}}, {"$set": {"expires_at": until}}, upsert=True
        )
        return True
    except DuplicateKeyError:
        return False


def acquire(name: str, seconds: float) -> bool:
    now = datetime.now(UTC)
    until = now + timedelta(seconds=seconds)
    return (_acquire_mongo if settings.MONGO else _acquire_sql)(name, until, now)


def release(name: str) -> None:
    if settings.MONGO:
        mongo.get_database()["leases"].delete_one({"_id": name})
    else:
        Lease.objects.filter(name=name).delete()


@contextmanager
def holding(name: str, seconds: float) -> Iterator[bool]:
    """Yields whether this caller holds the lease; releases it afterwards if so."""
    held = acquire(name, seconds)
    try:
        yield held
    finally:
        if held:
            release(name)
