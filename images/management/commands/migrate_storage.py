"""`manage.py migrate_storage --to mongo|embedded`: copies every record, blob, derivative and cover
across.

Both sides are built explicitly, whatever mode the settings select: the Mongo side from --mongo-uri
and --mongo-db (else the MONGO_* settings), the embedded side from --data-dir (else DATA_DIR, or the
configured store when the settings select embedded mode). Each blob's sha256 is checked in the
target before its record is written there, so a record in the target means a finished copy: run
again after an interruption, the command skips those. Covers follow the records: each whose image
is in the target is set there as in the source (with when it was chosen). The source is left
untouched, unless --delete-source, which deletes from the source what is verified in the target,
once all is copied.
"""

from pathlib import Path

from django.conf import settings
from django.core.files.storage import Storage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from pymongo import MongoClient
from pymongo.errors import ConfigurationError

from images.backend import Backend, EmbeddedBackend, MongoBackend, get_backend
from images.bulk import Progress, Tally
from images.covers import with_images
from images.documents import DuplicateImage, ImageRecord, iter_records
from images.services import release_blob, sha256_of
from images.storage import BlobFileSystemStorage, GridFSStorage

COPIED, PRESENT, FAILED = "copied", "present", "failed"
# Where settings.py keeps the embedded mode's data under DATA_DIR.
BLOBS_DIR, RECORDS_DB = "blobs", "imageservice.sqlite3"


def embedded_store(data_dir: str | None, target: bool) -> Backend:
    """The embedded side: the configured backend, or one built on --data-dir (or DATA_DIR)."""
    configured = get_backend()
    if data_dir is None and configured.name == EmbeddedBackend.name:
        return configured
    root = Path(data_dir).resolve() if data_dir else settings.DATA_DIR
    alias = sqlite_alias(root / RECORDS_DB)
    storage = BlobFileSystemStorage(location=str(root / BLOBS_DIR))
    store = EmbeddedBackend(f"the embedded store in {root}", root, alias, storage)
    if target:
        store.ensure_schema()
    return store


def sqlite_alias(path: Path) -> str:
    """A Django database alias for the SQLite file at `path`: the default one, or one added now."""
    if path == Path(settings.DATABASES[DEFAULT_DB_ALIAS]["NAME"]):
        return DEFAULT_DB_ALIAS
    alias = f"embedded:{path}"
    if alias not in connections.settings:
        path.parent.mkdir(parents=True, exist_ok=True)
        connections.settings[alias] = {**connections.settings[DEFAULT_DB_ALIAS], "NAME": str(path)}
    return alias


def mongo_store(uri: str | None, db: str | None) -> Backend:
    """The Mongo side: the configured backend, or one built on --mongo-uri/--mongo-db (or MONGO_*)."""
    configured = get_backend()
    if uri is None and db is None and configured.name == MongoBackend.name:
        return configured
    given = settings.MONGO or {}
    uri = uri or given.get("URI")
    if not uri:
        raise CommandError("No MongoDB: set MONGO_URI (or MONGO_HOST...), or pass --mongo-uri.")
    client = MongoClient(uri, tz_aware=True, appname="image-service migrate_storage")
    try:
        database = client[db] if db else client[given["DB"]] if given else client.get_database()
    except ConfigurationError as exc:
        client.close()
        raise CommandError("No MongoDB database: pass --mongo-db, or name it in the URI.") from exc
    label = f"the MongoDB database {database.name}"
    return MongoBackend(label, database, GridFSStorage(database=database), client)


def same_image(a: ImageRecord, b: ImageRecord) -> bool:
    """Not full equality: MongoDB keeps uploaded_at to the millisecond, SQLite to the microsecond."""
    return (a.model_id, a.sha256) == (b.model_id, b.sha256)


def derivatives_of(storage: Storage, sha256: str) -> list[str]:
    """An original's derivatives: their names are `<sha256>_<parameters>` (images/derivatives.py)."""
    return storage.names_starting(f"{sha256}_")


class Damaged(Exception):
    """A blob that cannot be copied whole: gone from the source, or not the bytes it should be."""


class Migration:
    """Copies one record at a time, with its blob and the blob's derivatives, checked once per run."""

    def __init__(self, source: Backend, target: Backend) -> None:
        self.source, self.target = source, target
        self.verified: set[str] = set()

    def copy(self, record: ImageRecord) -> tuple[str, int, str | None]:
        """The outcome, the bytes copied, and for a failure, why."""
        existing = self.target.records.get(record.image_id)
        if existing is not None:
            if same_image(existing, record):
                return PRESENT, 0, None
            return FAILED, 0, f"the target has another image under its image_id ({existing.model_id})"
        copied = 0
        if record.sha256 not in self.verified:
            try:
                copied = self.copy_blob(record.sha256, expected=record.sha256)
                for name in derivatives_of(self.source.blobs, record.sha256):
                    copied += self.copy_blob(name, expected=None)
            except Damaged as exc:
                return FAILED, 0, str(exc)
            self.verified.add(record.sha256)
        if not self.target.blobs.pin(record.sha256, record.image_id):
            return FAILED, copied, f"blob {record.sha256} went from the target meanwhile"
        try:
            self.target.records.insert(record)
        except DuplicateImage:
            release_blob(self.target.blobs, record.sha256, record.image_id)
            return FAILED, copied, "the target has the same image for this model under another image_id"
        return COPIED, copied, None

    def copy_blob(self, name: str, expected: str | None) -> int:
        """Copies a blob unless the target has it, then checks the target's bytes against `expected`: an
        original's name is its sha256; a derivative's is taken from the source. Returns the bytes copied.
        """
        copied = 0
        try:
            if expected is None:
                with self.source.blobs.open(name) as blob:
                    expected = sha256_of(blob)
            if not self.target.blobs.exists(name):
                with self.source.blobs.open(name) as blob:
                    self.target.blobs.save(name, blob)
                copied = self.target.blobs.size(name)
        except FileNotFoundError as exc:
            raise Damaged(f"{name} is missing in the source (run fsck there)") from exc
        with self.target.blobs.open(name) as blob:
            if sha256_of(blob) != expected:
                if not self.target.records.references(name):
                    self.target.blobs.delete(name)
                raise Damaged(f"{name} is not the bytes it should be (run fsck --deep on both)")
        return copied

    def copy_covers(self) -> Tally:
        """Sets in the target each source cover whose image the target holds (for the same model); a
        cover whose image is not there (not copied, or gone from the source: fsck's dangling_cover) is
        left out, and listed."""
        tally = Tally()
        for model_id, image_id, set_at, held in with_images(self.source.covers, self.target.records):
            if not held:
                tally.add(FAILED, 0, model_id, f"its cover {image_id} is not in the target")
            elif self.target.covers.get(model_id) == image_id:
                tally.add(PRESENT, 0)
            else:
                self.target.covers.set(model_id, image_id, set_at)
                tally.add(COPIED, 0)
        return tally

    def delete_source(self) -> Tally:
        """Deletes each source record that the target holds, then its blob and derivatives once no
        source record needs them."""
        tally = Tally()
        for record in iter_records(self.source.records):
            copy = self.target.records.get(record.image_id)
            if copy is None or not same_image(copy, record) or not self.target.blobs.exists(record.sha256):
                tally.add(FAILED, record.size, record.image_id, "not in the target (new since the copy?)")
                continue
            if self.source.records.delete(record.image_id):
                self.source.covers.clear(record.model_id, record.image_id)  # as services.delete_image
                release_blob(self.source.blobs, record.sha256, record.image_id)
            tally.add(COPIED, record.size)
        return tally


class Command(BaseCommand):
    help = "Copy every record and blob to the other storage mode; the source stays unless --delete-source."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", required=True, choices=["mongo", "embedded"], help="the target mode")
        parser.add_argument("--mongo-uri", help="the Mongo side (default: the MONGO_* settings)")
        parser.add_argument("--mongo-db", help="its database (default: MONGO_DB, or the URI's)")
        parser.add_argument("--data-dir", help="the embedded side's folder (default: DATA_DIR)")
        parser.add_argument(
            "--delete-source",
            action="store_true",
            help="once everything is copied and verified, delete it from the source",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, to: str, delete_source: bool, quiet: bool, **options) -> None:
        mongo = mongo_store(options["mongo_uri"], options["mongo_db"])
        try:
            embedded = embedded_store(options["data_dir"], target=to == "embedded")
            try:
                source, target = (embedded, mongo) if to == "mongo" else (mongo, embedded)
                self.migrate(Migration(source, target), delete_source, quiet)
            finally:
                embedded.close()
        finally:
            mongo.close()

    def migrate(self, migration: Migration, delete_source: bool, quiet: bool) -> None:
        source, target = migration.source, migration.target
        self.stdout.write(f"From {source.label} to {target.label}:")
        tally = Tally()
        interrupted = False
        with Progress(source.records.count(), "migrate", quiet) as progress:
            try:
                for record in iter_records(source.records):
                    outcome, copied, problem = migration.copy(record)
                    tally.add(outcome, record.size, record.image_id, problem)
                    progress.advance(copied)
            except KeyboardInterrupt:
                interrupted = True
        labels = {COPIED: "copied", PRESENT: "already in the target", FAILED: "failed"}
        self.stdout.write("\n".join(tally.summary(labels)))
        if interrupted:
            raise CommandError("Interrupted: run the same command again to resume.", returncode=130)
        covers = migration.copy_covers()
        counts = covers.counts
        lines = [f"Covers: copied {counts[COPIED]}, already set {counts[PRESENT]}, left out {counts[FAILED]}"]
        self.stdout.write("\n".join(lines + [f"  {m}: {problem}" for m, problem in sorted(covers.problems)]))
        if tally.counts[FAILED]:
            raise CommandError(
                f"{tally.counts[FAILED]} record(s) not copied (listed above); the source is kept."
            )
        if delete_source:
            deleted = migration.delete_source()
            self.stdout.write("\n".join(deleted.summary({COPIED: "deleted from the source", FAILED: "kept"})))
            if deleted.counts[FAILED]:
                raise CommandError(f"{deleted.counts[FAILED]} source record(s) kept (listed above).")
