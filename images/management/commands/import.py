"""`manage.py import PATH...`: loads image files and folders, or an export, through the API's own checks.

Every file goes through `services.add_image`, so it is refused or accepted exactly as an upload
would be, and the same bytes for the same model are never stored twice: running the command again
adds nothing, and running it after an interruption picks up where it stopped. An export's cover is
set once its image is stored, unless the model has a cover here already: an import adds, it never
changes what the store holds.
"""

import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.exceptions import APIException

from images import services
from images.backend import get_backend
from images.bulk import MANIFEST, Progress, Tally, parallel, read_manifest
from images.documents import ImageRecord
from images.validation import validate_model_id

ADDED, PRESENT, REFUSED = "added", "present", "refused"
COVER_SET, COVER_PRESENT, COVER_KEPT = "set", "present", "kept"  # an export's cover, here


@dataclass(frozen=True)
class Source:
    """One file to import and what it becomes: a new image of `model_id`, or a manifest's record."""

    path: Path
    size: int
    model_id: str = ""
    restore: ImageRecord | None = None  # from a manifest: the record to restore exactly
    cover: bool = False  # from a manifest: the record is its model's cover
    refusal: str | None = None  # why it is refused before it is even read


def model_rule(model_id: str | None, model_from: str | None) -> Callable[[Path], str] | None:
    """How a plain file's model_id is found: given, its folder's name, or a regex on its name."""
    if model_id is not None:
        return lambda path: model_id
    if model_from == "folder":
        return lambda path: path.parent.name
    if model_from and model_from.startswith("regex:"):
        try:
            pattern = re.compile(model_from.removeprefix("regex:"))
        except re.error as exc:
            raise CommandError(f"--model-from: not a regular expression ({exc})") from exc
        if pattern.groups == 0:
            raise CommandError("--model-from regex: needs a group, e.g. 'regex:^(?P<model>[^_]+)_'")
        group = "model" if "model" in pattern.groupindex else 1

        def from_name(path: Path) -> str:
            if match := pattern.search(path.name):
                return match.group(group) or ""
            raise ValueError(f"its name does not match {pattern.pattern!r}")

        return from_name
    if model_from is not None:
        raise CommandError("--model-from is 'folder' or 'regex:PATTERN'")
    return None


def find_sources(paths: list[str], rule: Callable[[Path], str] | None) -> list[Source]:
    """Every file under `paths`, in a stable order. A folder holding a manifest (or a `.jsonl` file)
    is an export: its manifest says what to import. Hidden files and folders are left out."""
    sources: list[Source] = []
    for arg in paths:
        path = Path(arg)
        if path.is_file() and path.suffix == ".jsonl":
            sources += manifest_sources(path)
        elif (path / MANIFEST).is_file():
            sources += manifest_sources(path / MANIFEST)
        elif path.is_dir():
            found = (f for f in sorted(path.rglob("*")) if f.is_file())
            sources += [plain_source(f, rule) for f in found if not is_hidden(f.relative_to(path))]
        elif path.is_file():
            sources.append(plain_source(path, rule))
        else:
            raise CommandError(f"{path}: no such file or folder")
    return sources


def is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def manifest_sources(manifest: Path) -> list[Source]:
    return [
        Source(e.path, e.record.size, e.record.model_id, restore=e.record, cover=e.cover)
        for e in read_manifest(manifest)
    ]


def plain_source(path: Path, rule: Callable[[Path], str] | None) -> Source:
    if rule is None:
        raise CommandError(f"{path}: say where its model_id comes from, with --model-id or --model-from")
    size = path.stat().st_size
    try:
        return Source(path, size, validate_model_id(rule(path)))
    except ValueError as exc:
        return Source(path, size, refusal=f"no model_id: {exc}")
    except APIException as exc:
        return Source(path, size, refusal=reason(exc))


def reason(exc: APIException) -> str:
    return f"{exc.get_codes()}: {exc.detail}"


def cover_outcome(model_id: str, image_id: str) -> str:
    """What restoring `image_id` as the model's cover does here: set it, find it set, or keep another."""
    current = services.cover_record(model_id)
    if current is None:
        return COVER_SET
    return COVER_PRESENT if current.image_id == image_id else COVER_KEPT


class Importer:
    """Imports one source at a time, from any number of threads."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.planned: set[tuple[str, str]] = set()  # a dry run's would-be additions
        self.covers: Counter[str] = Counter()  # COVER_*: what became of the export's covers
        self.lock = threading.Lock()

    def __call__(self, source: Source) -> tuple[str, str | None]:
        """The outcome and, for a refusal, why. Problems of the store itself are not refusals: they stop
        the run (its work so far stays, and running it again resumes)."""
        if source.refusal:
            return REFUSED, source.refusal
        try:
            handle = source.path.open("rb")
        except OSError as exc:
            return REFUSED, f"cannot read it ({exc.strerror or exc})"
        try:
            with File(handle, name=source.path.name) as file:
                return self.store(file, source)
        except APIException as exc:
            return REFUSED, reason(exc)

    def store(self, file: File, source: Source) -> tuple[str, str | None]:
        record = source.restore
        if record is not None:
            if services.sha256_of(file) != record.sha256:
                return REFUSED, "its bytes are not the ones the manifest lists (sha256 differs)"
            taken = services.find_record(record.image_id)
            if taken is not None and (taken.model_id, taken.sha256) != (record.model_id, record.sha256):
                return REFUSED, f"image_id {record.image_id} is another image's here ({taken.model_id})"
        if self.dry_run:
            sha256, _ = services.check_image(file)
            key = (source.model_id, sha256)
            with self.lock:
                present = key in self.planned or services.find_by_content(*key) is not None
                self.planned.add(key)
            if source.cover:
                self.count_cover(cover_outcome(source.model_id, record.image_id))
            return (PRESENT if present else ADDED), None
        if record is None:
            _, created = services.add_image(file, source.model_id)
        else:
            stored, created = services.add_image(
                file,
                record.model_id,
                filename=record.filename,
                uploaded_at=record.uploaded_at,
                image_id=record.image_id,
                uploaded_by=record.uploaded_by,
                label=record.label,
            )
            if source.cover:
                self.restore_cover(stored)
        return (ADDED if created else PRESENT), None

    def restore_cover(self, stored: ImageRecord) -> None:
        """Makes the stored image (the export's, or the same bytes already here under another image_id)
        its model's cover, unless the model has one here already."""
        outcome = cover_outcome(stored.model_id, stored.image_id)
        if outcome == COVER_SET:
            services.set_cover(stored.model_id, stored.image_id)
        self.count_cover(outcome)

    def count_cover(self, outcome: str) -> None:
        with self.lock:
            self.covers[outcome] += 1


class Command(BaseCommand):
    help = (
        "Import image files and folders (recursively), or an export (its folder or manifest.jsonl), "
        "with the same checks as an upload. Running it again adds nothing, so it also resumes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or exports")
        model = parser.add_mutually_exclusive_group()
        model.add_argument("--model-id", help="the model_id of every plain file")
        model.add_argument(
            "--model-from",
            metavar="folder|regex:PATTERN",
            help="each file's model_id is its folder's name, or the group 'model' (else the first group) "
            "of PATTERN searched in its name, e.g. 'regex:^(?P<model>[^_]+)_'",
        )
        jobs = min(8, os.cpu_count() or 1)
        parser.add_argument("--jobs", type=int, default=jobs, help="files at once (default %(default)s)")
        parser.add_argument("--dry-run", action="store_true", help="report the outcome, store nothing")
        parser.add_argument(
            "--keep-going", action="store_true", help="exit 0 even if files were refused (they are listed)"
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, paths: list[str], jobs: int, dry_run: bool, keep_going: bool, **options) -> None:
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        sources = find_sources(paths, model_rule(options["model_id"], options["model_from"]))
        get_backend().ensure_schema()
        tally = Tally()
        importer = Importer(dry_run)
        interrupted = False
        with Progress(len(sources), "import", options["quiet"]) as progress:
            try:
                for source, (outcome, problem) in parallel(importer, sources, jobs):
                    tally.add(outcome, source.size, str(source.path), problem)
                    progress.advance(source.size)
            except KeyboardInterrupt:
                interrupted = True
        added = "would add" if dry_run else "added"
        labels = {ADDED: added, PRESENT: "already present", REFUSED: "refused"}
        self.stdout.write("\n".join(tally.summary(labels)))
        if covers := importer.covers:
            set_ = "would set" if dry_run else "set"
            self.stdout.write(
                f"Covers: {set_} {covers[COVER_SET]}, already set {covers[COVER_PRESENT]}, "
                f"kept another one here {covers[COVER_KEPT]}"
            )
        if dry_run:
            self.stdout.write("Dry run: nothing was stored.")
        if interrupted:
            message = "Interrupted. What was imported stays; run the same command to resume."
            raise CommandError(message, returncode=130)
        if tally.counts[REFUSED] and not keep_going:
            raise CommandError(f"{tally.counts[REFUSED]} file(s) refused (listed above).")
