"""Leases: short claims on a name that every worker and instance sees, kept beside the records.

Two identical derivative requests arriving at once, on any two workers, make the derivative once:
the first takes the lease and makes it, the other waits for the blob. A lease expires on its own,
so a worker that dies holding one blocks nobody for long. The backend (images/backend.py) gives the
one of its mode.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from .models import Lease


class Leases:
    """What both modes share: `holding`, on top of each mode's `acquire` and `release`."""

    def acquire(self, name: str, until: datetime, now: datetime) -> bool:
        """Takes the lease if nobody holds it, or its holder's time ran out before `now`."""
        raise NotImplementedError

    def release(self, name: str) -> None:
        raise NotImplementedError

    @contextmanager
    def holding(self, name: str, seconds: float) -> Iterator[bool]:
        """Yields whether this caller holds the lease; releases it afterwards if so."""
        now = datetime.now(UTC)
        held = self.acquire(name, now + timedelta(seconds=seconds), now)
        try:
            yield held
        finally:
            if held:
                self.release(name)


class SQLLeases(Leases):
    def acquire(self, name: str, until: datetime, now: datetime) -> bool:
        try:
            with transaction.atomic():
                Lease.objects.create(name=name, expires_at=until)
            return True
        except IntegrityError:
            return Lease.objects.filter(name=name, expires_at__lt=now).update(expires_at=until) == 1

    def release(self, name: str) -> None:
        Lease.objects.filter(name=name).delete()


class MongoLeases(Leases):
    def __init__(self, database: Database) -> None:
        self.collection = database["leases"]

    def acquire(self, name: str, until: datetime, now: datetime) -> bool:
        try:
            # Matches a missing or expired lease; a live one makes the upsert collide on _id.
            self.collection.update_one(
                {"_id": name, "expires_at": {"$lt": now}}, {"$set": {"expires_at": until}}, upsert=True
            )
            return True
        except DuplicateKeyError:
            return False

    def release(self, name: str) -> None:
        self.collection.delete_one({"_id": name})
