"""The storage mode, chosen once per process: everything that differs between MongoDB and the
embedded store (SQLite and files under DATA_DIR) is behind one `Backend`, so no other module asks
which mode it is in.

A backend gives the records (the document manager), the models' covers, the API keys, the leases,
the derivative cache's uses, the blobs (Django's `storages["images"]`: the Storage classes stay the
seam for bytes), and the few mode-specific chores around them: a health ping, the deadlines
MongoDB needs, the start-up work.
`get_backend()` builds the configured one from the settings at first use in each process (a
MongoClient must not cross a fork) and again after a test changes those settings, as Django does for
`storages`. `migrate_storage` builds the two sides of a migration explicitly instead.
"""

import contextlib
import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path

import pymongo
from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.core.management import call_command
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.dispatch import receiver
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from . import legacy, mongo
from .covers import Covers, MongoCovers, SQLCovers
from .derivative_uses import MongoDerivativeUses, SQLDerivativeUses
from .documents import Documents, MongoDocuments, SQLDocuments
from .keystore import KeyStore, MongoKeyStore, SQLKeyStore
from .leases import Leases, MongoLeases, SQLLeases

log = logging.getLogger(__name__)

# What a store raises when it fails, in either mode: code that carries on without it (a base not
# kept, a key's use not recorded, a repair that failed) catches these, never one driver's own.
STORE_ERRORS: tuple[type[Exception], ...] = (OSError, PyMongoError, DatabaseError)


class Backend:
    """One mode's stores. `name` ("mongo" or "embedded"), `label` and `where` are for people (the
    start-up line, reports); code outside this module never branches on them."""

    name: str
    records: Documents
    covers: Covers
    keys: KeyStore
    leases: Leases
    derivative_uses: MongoDerivativeUses | SQLDerivativeUses

    def __init__(self, label: str, where: str, blobs: Storage | None) -> None:
        """`blobs` None means Django's `storages["images"]`, the configured one."""
        self.label = label
        self.where = where
        self._blobs = blobs

    @property
    def blobs(self) -> Storage:
        return storages["images"] if self._blobs is None else self._blobs

    def problem(self) -> str | None:
        """Why requests cannot be served now (for /readyz), or None: the stores must answer."""
        raise NotImplementedError

    def lookup_deadline(self) -> AbstractContextManager:
        """One deadline for all of a lookup's store operations (images/deadline.py)."""
        return contextlib.nullcontext()

    def cleanup_deadline(self, failure: BaseException) -> AbstractContextManager:
        """How long the clean-up after `failure` may wait for the store (see images/services.py)."""
        return contextlib.nullcontext()

    def prepare(self) -> None:
        """Start-up work before the workers fork (`manage.py serve`); never fatal."""

    def ensure_schema(self) -> None:
        """Makes the record store ready for writes, as `serve` does at start (bulk commands)."""

    def legacy_file_names(self) -> set[str]:
        """Names of blobs that the Flask service's records hold, which fsck must leave alone."""
        return set()

    def flask_database(self) -> Database | None:
        """The MongoDB database the Flask service's data may be in (adopt_legacy); None if none."""
        return None

    def close(self) -> None:
        """Closes what this backend opened for itself (a migration side's client or database); the
        configured connections stay open for the rest of the process."""

    def disconnect(self) -> None:
        """Drops this process's connection to the store before `serve` starts the workers (a
        MongoClient must not cross a fork: each worker makes its own)."""


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(
        self, label: str, where: Path, using: str = DEFAULT_DB_ALIAS, blobs: Storage | None = None
    ) -> None:
        """`using` and `blobs` reach a store other than the configured one (a storage migration's,
        which uses only the records, covers and blobs)."""
        super().__init__(label, str(where), blobs)
        self.using = using
        self.records = SQLDocuments(using)
        self.covers = SQLCovers(using)
        self.keys = SQLKeyStore()
        self.leases = SQLLeases()
        self.derivative_uses = SQLDerivativeUses()

    def problem(self) -> str | None:
        with connections[self.using].cursor() as cursor:
            cursor.execute("SELECT 1")
        blobs = self.blobs
        if isinstance(blobs, FileSystemStorage):
            os.makedirs(blobs.location, exist_ok=True)
            if not os.access(blobs.location, os.W_OK):
                return f"the blob directory {blobs.location} is not writable"
        return None

    def ensure_schema(self) -> None:
        executor = MigrationExecutor(connections[self.using])
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            call_command("migrate", database=self.using, interactive=False, verbosity=0)

    def close(self) -> None:
        if self.using != DEFAULT_DB_ALIAS:
            connections[self.using].close()


class MongoBackend(Backend):
    name = "mongo"

    def __init__(
        self,
        label: str,
        database: Database | None = None,
        blobs: Storage | None = None,
        client: MongoClient | None = None,
    ) -> None:
        """`database`, `blobs` and `client` (which `close` closes) reach a MongoDB other than the
        configured one (a storage migration's, which uses only the records, covers and blobs)."""
        super().__init__(label, mongo.location() if database is None else database.name, blobs)
        self.database = mongo.get_database() if database is None else database
        self.client = client
        self.records = MongoDocuments(self.database)
        self.covers = MongoCovers(self.database)
        self.keys = MongoKeyStore(self.database)
        self.leases = MongoLeases(self.database)
        self.derivative_uses = MongoDerivativeUses(self.database)

    def problem(self) -> str | None:
        self.database.client.admin.command("ping")
        return None

    def lookup_deadline(self) -> AbstractContextManager:
        # Measured with a stopped FerretDB, without it: 6.3 s at MONGO_TIMEOUT_MS=1000 (see deadline.py).
        return pymongo.timeout(settings.MONGO_TIMEOUT_MS / 1000 + 1)

    def cleanup_deadline(self, failure: BaseException) -> AbstractContextManager:
        return mongo.cleanup_deadline(failure)

    def prepare(self) -> None:
        """Creates the indexes up front and says if the Flask service's records wait for adoption; an
        unreachable server is reported, not fatal (503s follow)."""
        try:
            self.records.ensure_indexes()
            legacy.warn_at_start(self.database)
        except PyMongoError as exc:
            log.warning("MongoDB is not reachable yet (%s); requests will get 503 until it is", exc)

    def legacy_file_names(self) -> set[str]:
        return legacy.held_file_names(self.database)

    def flask_database(self) -> Database | None:
        return self.database

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def disconnect(self) -> None:
        self.database.client.close()


def configured() -> Backend:
    """The backend the settings select: MongoDB when MONGO is set, else the embedded store."""
    if settings.MONGO:
        return MongoBackend("the configured MongoDB")
    return EmbeddedBackend("the configured embedded store", settings.DATA_DIR)


_backend: tuple[int, Backend] | None = None


def get_backend() -> Backend:
    """The configured backend, made once per process."""
    global _backend
    if _backend is None or _backend[0] != os.getpid():
        _backend = (os.getpid(), configured())
    return _backend[1]


@receiver(setting_changed)
def _forget_backend(*, setting: str, **kwargs) -> None:
    """Tests switch modes with the `settings` fixture; the next call builds the new backend."""
    global _backend
    if setting in ("MONGO", "STORAGES", "DATA_DIR", "DATABASES"):
        _backend = None
