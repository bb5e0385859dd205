"""`manage.py fsck`: checks the stored bytes against the records and reports every kind of damage;
with --repair, fixes what can be fixed safely.

Kinds of damage:
- missing_blob: a record whose bytes are gone. Nothing can bring them back; --repair deletes such
  a record only with --delete-broken-records (then re-import the image).
- orphan_blob: bytes (a file, or a GridFS file) no record refers to nor pins. Deleted by --repair.
- stale_pin: a pin on a blob (see images/storage.py) that no record holds: an upload cut off after
  pinning, or a delete cut off before unpinning. --repair gives it back (the blob goes with the last).
- unpinned_record: a record whose blob holds no pin for it. --repair pins it.
- untracked_blob: a blob written before blobs kept pins. --repair pins it for its records; fsck's own
  pin on it goes in a later run, once older than --grace.
- orphan_derivative: a derivative (named `<original sha256>_<parameters>`, see images/derivatives.py)
  whose original no record needs any more. Deleted by --repair.
- size_mismatch, sha256_mismatch (with --deep, which re-reads every blob): bytes that are not the
  ones their records describe. Like missing bytes, only --delete-broken-records deletes the records
  (and so the bytes); otherwise a person decides, since damaged bytes may still be worth something.
- The GridFS files of the Flask service's records, adopted or set aside or not yet (images/legacy.py),
  are not blobs: left alone, whatever their names, and counted as legacy_files.
- wrong_dimensions (with --deep): a record whose width and height are not the picture's as shown,
  after EXIF orientation (records stored before uploads applied it). --repair stores the right ones.
- dangling_cover: a model's cover (images/covers.py) whose image is no record of that model: a delete
  cut off between deleting the record and clearing the cover (see services.delete_image). Reads
  already fall back to the model's newest image; --repair clears the cover (only if it still names
  that image, so a cover chosen meanwhile stays).
- temp_file (embedded mode: `<blobs>/.tmp`), orphan_chunks (mongo mode: GridFS chunks without a files
  document), upload_temp_file (spooled uploads in FILE_UPLOAD_TEMP_DIR): what unfinished writes left
  behind. Deleted by --repair.
Orphans and leftovers younger than --grace are left alone (and counted), since an upload may be
writing them right now. --repair never deletes bytes that a record still refers to.

The exit status is 0 when the store is clean, after a --repair that fixed everything too, and 1
when damage remains.
"""

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from gridfs.errors import CorruptGridFile

from images import services
from images.backend import STORE_ERRORS, Backend, get_backend
from images.bulk import human_bytes
from images.covers import with_images
from images.documents import ImageRecord, iter_records
from images.errors import UnprocessableImage
from images.storage import Leftover, files_in
from images.validation import opened, shown_size

BROKEN_RECORDS_FLAG = "--delete-broken-records"
FSCK = "~fsck"  # the pin fsck takes to delete an orphan blob the way a delete does


@dataclass
class Problem:
    kind: str
    subject: str  # an image_id, a blob's name, or a leftover's name
    detail: str
    remedy: str  # what --repair does about it, or else what a person can do
    fix: Callable[[], object] | None = None  # None: --repair leaves it alone
    repaired: bool = False

    def as_json(self) -> dict:
        fields = ("kind", "subject", "detail", "remedy", "repaired")
        return {name: getattr(self, name) for name in fields} | {"repairable": self.fix is not None}

    def line(self, repair: bool) -> str:
        if self.repaired:
            status = f"repaired: {self.remedy}"
        elif self.fix is None:
            status = f"not repaired: {self.remedy}"
        else:
            status = f"--repair will {self.remedy}" if not repair else f"repair failed: {self.remedy}"
        return f"{self.kind:<16} {self.subject}: {self.detail} [{status}]"


class Check:
    """One pass over a store: finds the problems (with their fixes) and counts what it left alone."""

    def __init__(self, backend: Backend, grace: int, delete_broken: bool) -> None:
        # The stores themselves, beneath the services: fsck checks what the services keep true.
        self.backend, self.docs, self.storage = backend, backend.records, backend.blobs.in_store()
        self.cutoff = services.now() - timedelta(seconds=grace)
        self.delete_broken = delete_broken
        self.problems: list[Problem] = []
        self.left_alone = 0
        self.records = 0
        self.blobs: set[str] = set()
        self.users: defaultdict[str, list[str]] = defaultdict(list)  # blob name: image_ids
        self.sizes: dict[str, int] = {}  # blob name: the size its records give
        self.legacy_files: set[str] = set()  # names of the Flask service's files (see images/legacy.py)
        self.dimensions: defaultdict[str, list[tuple[str, int, int]]] = defaultdict(list)  # --deep

    def run(self, deep: bool) -> None:
        # Blobs are listed before records are read: a blob is written before its record, so every
        # record read afterwards has its blob in the list unless the blob really is gone.
        self.blobs = set(self.storage.listdir("")[1])
        self.legacy_files = self.backend.legacy_file_names() & self.blobs
        missing: list[ImageRecord] = []
        for record in iter_records(self.docs):
            self.records += 1
            self.users[record.sha256].append(record.image_id)
            self.sizes[record.sha256] = record.size
            if deep:
                self.dimensions[record.sha256].append((record.image_id, record.width, record.height))
            if record.sha256 not in self.blobs:
                missing.append(record)
        self.missing_blobs(missing)
        self.dangling_covers()
        self.pins()
        self.orphan_blobs()
        if deep:
            self.damaged_blobs()
            self.wrong_dimensions()
        for leftover in self.storage.leftovers():
            self.leftover(self.storage.LEFTOVER_KIND, leftover, self.storage.delete_leftover)
        spool = Path(settings.FILE_UPLOAD_TEMP_DIR)
        for leftover in files_in(spool):
            self.leftover("upload_temp_file", leftover, lambda name: (spool / name).unlink(missing_ok=True))

    def missing_blobs(self, candidates: list[ImageRecord]) -> None:
        for record in candidates:
            if self.docs.get(record.image_id) is None or self.storage.exists(record.sha256):
                continue  # deleted, or its bytes re-saved, since the listing
            detail = f"{record.model_id}/{record.filename} has no bytes (blob {record.sha256})"
            self.broken(Problem("missing_blob", record.image_id, detail, ""), [record.image_id])

    def orphan_blobs(self) -> None:
        for name in sorted(self.blobs - self.users.keys() - self.legacy_files):
            original = name.partition("_")[0]  # a derivative belongs to its original
            if original in self.users or self.docs.references(original):
                continue  # needed, or its record arrived since the listing
            if name == original and self.storage.pins(name) != {}:
                continue  # pinned (an upload under way, or a stale pin), or untracked: see `pins`
            try:
                modified, size = self.storage.get_modified_time(name), self.storage.size(name)
            except FileNotFoundError:
                continue  # deleted since the listing
            if not self.recent(modified):
                kind = "orphan_blob" if name == original else "orphan_derivative"
                detail = f"no record needs it ({human_bytes(size)}, written {modified:%F %T})"
                fix = partial(self.release if name == original else self.storage.delete, name)
                self.problems.append(Problem(kind, name, detail, "delete it", fix))

    def dangling_covers(self) -> None:
        covers = self.backend.covers
        for model_id, image_id, _, held in with_images(covers, self.docs):
            if held or covers.get(model_id) != image_id:
                continue  # its image is there, or the cover was cleared or changed since the listing
            detail = f"names image {image_id}, which is no record of this model"
            fix = partial(covers.clear, model_id, image_id)
            self.problems.append(Problem("dangling_cover", model_id, detail, "clear it", fix))

    def pins(self) -> None:
        """Each record pins its blob, and each pin is a record's (see images/storage.py)."""
        for name in sorted(n for n in self.blobs - self.legacy_files if "_" not in n):
            users = self.users.get(name, [])
            pins = self.storage.pins(name)
            if pins is None:
                if self.storage.exists(name):
                    detail = f"written before blobs kept pins; {len(users)} record(s) use it"
                    fix = partial(self.track, name)
                    self.problems.append(Problem("untracked_blob", name, detail, "pin it for them", fix))
                continue
            for image_id in users:
                if image_id not in pins:
                    detail = f"its blob {name} holds no pin for it"
                    fix = partial(self.storage.pin, name, image_id)
                    self.problems.append(Problem("unpinned_record", image_id, detail, "pin it", fix))
            for holder, pinned_at in sorted(pins.items()):
                if holder in users or self.recent(pinned_at) or self.docs.get(holder) is not None:
                    continue  # a record's, or an upload's under way, or its record arrived since
                detail = f"pinned by {holder}, which is no record (since {pinned_at:%F %T})"
                fix = partial(services.release_blob, self.storage, name, holder)
                self.problems.append(Problem("stale_pin", name, detail, "give the pin back", fix))

    def track(self, name: str) -> None:
        """Starts keeping pins on an untracked blob. fsck's own TRACKING pin stays until a later run
        finds it older than --grace, so an upload that found the blob untracked meanwhile has had
        its record written (and pinned here) by then."""
        self.storage.track(name)
        for image_id in self.users[name]:
            self.storage.pin(name, image_id)

    def release(self, name: str) -> None:
        """Deletes an unpinned blob with its derivatives, unless an upload pins it first."""
        if self.storage.pin(name, FSCK):
            services.release_blob(self.storage, name, FSCK)

    def damaged_blobs(self) -> None:
        for name in sorted(self.users.keys() & self.blobs):
            try:
                damage = self.damage(name, self.sizes[name])
            except FileNotFoundError:
                continue  # its last record was deleted since the listing, and the blob with it
            if damage is not None:
                kind, detail = damage
                self.broken(Problem(kind, name, detail, ""), self.users[name])

    def damage(self, name: str, expected: int) -> tuple[str, str] | None:
        """How the blob differs from what its records say, if it does: its size, else its sha256."""
        size = self.storage.size(name)
        if size != expected:
            return "size_mismatch", f"holds {size:,} bytes; its records say {expected:,}"
        try:
            with self.storage.open(name) as blob:
                actual = services.sha256_of(blob)
        except CorruptGridFile as exc:  # chunks missing, or cut short
            return "size_mismatch", f"its chunks do not make up its {expected:,} bytes ({exc})"
        return None if actual == name else ("sha256_mismatch", f"its bytes hash to {actual}")

    def wrong_dimensions(self) -> None:
        """Records whose width and height are not the shown picture's (read from each blob's header)."""
        for name, records in sorted(self.dimensions.items()):
            try:
                with self.storage.open(name) as blob, opened(blob, settings.ALLOWED_IMAGE_FORMATS) as im:
                    shown = shown_size(im)
            except (FileNotFoundError, UnprocessableImage, CorruptGridFile):
                continue  # gone since the listing, or damaged: the other checks' business
            for image_id, width, height in records:
                if (width, height) != shown:
                    right = "x".join(map(str, shown))
                    detail = f"says {width}x{height}; shown (EXIF orientation applied), it is {right}"
                    fix = partial(services.set_dimensions, image_id, *shown)
                    remedy = "store the shown width and height"
                    self.problems.append(Problem("wrong_dimensions", image_id, detail, remedy, fix))

    def broken(self, problem: Problem, image_ids: list[str]) -> None:
        """Bytes missing or damaged: the records are deleted (and so the blob) only if asked to."""
        count = f"{len(image_ids)} record(s)" if len(image_ids) > 1 else "the record"
        if self.delete_broken:
            problem.remedy = f"delete {count}; re-import the image to restore it"
            problem.fix = partial(delete_records, image_ids)
        else:
            problem.remedy = (
                f"restore the bytes from a backup, or pass {BROKEN_RECORDS_FLAG} to delete {count}"
            )
        self.problems.append(problem)

    def leftover(self, kind: str, leftover: Leftover, delete: Callable[[str], object]) -> None:
        if not self.recent(leftover.modified):
            detail = f"left by an unfinished write (last written {leftover.modified:%F %T})"
            self.problems.append(
                Problem(kind, leftover.name, detail, "delete it", partial(delete, leftover.name))
            )

    def recent(self, modified: datetime) -> bool:
        if modified > self.cutoff:
            self.left_alone += 1
            return True
        return False

    def repair(self) -> None:
        for problem in self.problems:
            if problem.fix is None:
                continue
            try:
                problem.fix()
                problem.repaired = True
            except STORE_ERRORS as exc:
                problem.remedy += f" ({exc.__class__.__name__}: {exc})"


def delete_records(image_ids: list[str]) -> None:
    """Through the service, which deletes the blob with the last record that needs it."""
    for image_id in image_ids:
        services.delete_image(image_id)


class Command(BaseCommand):
    help = "Check the stored bytes against the records and report damage; --repair fixes what is safe to."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
        parser.add_argument(
            BROKEN_RECORDS_FLAG,
            action="store_true",
            help="with --repair, also delete the records whose bytes are missing or damaged",
        )
        parser.add_argument("--deep", action="store_true", help="re-read every blob: sizes and sha256")
        parser.add_argument(
            "--grace",
            type=int,
            default=3600,
            metavar="SECONDS",
            help="leave orphans and temporary files younger than this alone (default %(default)s)",
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="a JSON report, for monitoring"
        )

    def handle(
        self, *args, repair: bool, delete_broken_records: bool, deep: bool, grace: int, **options
    ) -> None:
        if delete_broken_records and not repair:
            raise CommandError(f"{BROKEN_RECORDS_FLAG} goes with --repair")
        if grace < 0:
            raise CommandError("--grace must be 0 or more seconds")
        check = Check(get_backend(), grace, delete_broken_records)
        check.run(deep)
        if repair:
            check.repair()
        found = len(check.problems)
        remaining = sum(not p.repaired for p in check.problems)
        if options["as_json"]:
            report = {
                "mode": check.backend.name,
                "records": check.records,
                "blobs": len(check.blobs),
                "legacy_files": len(check.legacy_files),
                "deep": deep,
                "grace_seconds": grace,
                "left_alone": check.left_alone,
                "found": found,
                "repaired": found - remaining,
                "remaining": remaining,
                "clean": remaining == 0,
                "problems": [p.as_json() for p in check.problems],
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write("\n".join(self.lines(check, deep, repair, grace, remaining)))
        if remaining:
            raise CommandError(f"damage found: {remaining} problem(s) remain")

    @staticmethod
    def lines(check: Check, deep: bool, repair: bool, grace: int, remaining: int) -> list[str]:
        how = "sizes and sha256 re-read" if deep else "presence only; --deep re-reads every blob"
        counts = f"{check.records:,} records, {len(check.blobs):,} blobs"
        lines = [f"Checked the {check.backend.name} store: {counts} ({how})."]
        lines += [problem.line(repair) for problem in check.problems]
        if check.legacy_files:
            lines.append(
                f"Left alone: {len(check.legacy_files)} GridFS file name(s) of the Flask service's records "
                "(see manage.py adopt_legacy)."
            )
        if check.left_alone:
            lines.append(
                f"Left alone: {check.left_alone} orphan(s) or temporary file(s) younger than {grace} s."
            )
        found = len(check.problems)
        if not found:
            lines.append("No damage found.")
        elif not repair:
            fixable = sum(p.fix is not None for p in check.problems)
            lines.append(f"Found {found} problem(s); --repair fixes {fixable} of them.")
        elif not remaining:
            lines.append(f"Found {found} problem(s) and repaired them all: the store is clean now.")
        else:
            lines.append(f"Found {found} problem(s): repaired {found - remaining}, {remaining} remain.")
        return lines
