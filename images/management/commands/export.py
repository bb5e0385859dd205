"""`manage.py export DEST`: every image, or one model's, as DEST/<model_id>/<filename>, plus
DEST/manifest.jsonl with every record (and `"cover": true` on each model's cover's), which
`manage.py import DEST` restores exactly.

The manifest is written last (under a temporary name until then), so a folder with a manifest is
a whole export. Every file's sha256 is checked as it is copied: damaged bytes are never exported.
"""

import hashlib
from collections import defaultdict
from itertools import chain, count
from pathlib import Path

from django.core.files.storage import Storage
from django.core.management.base import BaseCommand, CommandError, CommandParser

from images import services
from images.backend import get_backend
from images.bulk import MANIFEST, Progress, Tally, manifest_line
from images.documents import ImageRecord
from images.validation import validate_model_id

EXPORTED, FAILED = "exported", "failed"
MAX_NAME_BYTES = 255  # what common file systems allow in one name


def folder_name(model_id: str) -> str:
    """`.` and `..` are valid model_ids but not folder names; `%` is in no model_id, so no clash."""
    return model_id.replace(".", "%2E") if model_id in (".", "..") else model_id


def file_name(filename: str, image_id: str, taken: set[str]) -> str:
    """The record's filename, unless the folder has it already; then `<stem>~<image_id>.<ext>`.

    The first to ask keeps the plain name: a model's cover, then its images newest first, the image
    that /image/<model_id> serves. Names are compared case-blind, for the file systems that are.
    """
    stem, dot, ext = filename.rpartition(".")
    if not (dot and stem):
        stem, ext = filename, ""
    tails = (f"~{image_id}" + (f"-{n}" if n > 1 else "") for n in count(1))  # -n: for crafted names only
    names = (fit(stem, tail, ext) for tail in chain([""], tails))
    name = next(name for name in names if name.casefold() not in taken)
    taken.add(name.casefold())
    return name


def fit(stem: str, tail: str, ext: str) -> str:
    """`stem + tail + .ext`, the stem shortened until the name fits in one file system name."""
    suffix = tail + (f".{ext}" if ext else "")
    while len((stem + suffix).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + suffix


def copy_blob(storage: Storage, record: ImageRecord, target: Path) -> str | None:
    """Copies the record's bytes to `target`; says what is wrong instead if they are missing or damaged."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with storage.open(record.sha256) as blob, target.open("wb") as out:
            for chunk in blob.chunks():
                digest.update(chunk)
                out.write(chunk)
    except FileNotFoundError:
        return "its bytes are missing (run manage.py fsck)"
    if digest.hexdigest() != record.sha256:
        target.unlink()
        return "its bytes are damaged (run manage.py fsck --deep)"
    return None


class Command(BaseCommand):
    help = "Export every image (or one model's) as DEST/<model_id>/<filename>, plus DEST/manifest.jsonl."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dest", metavar="DEST", help="a new or empty folder")
        parser.add_argument("--model-id", help="only this model's images")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, dest: str, model_id: str | None, quiet: bool, **options) -> None:
        root = Path(dest)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise CommandError(f"{root} is not empty: export into a new or empty folder")
        if model_id is not None:
            validate_model_id(model_id)
        storage = get_backend().blobs
        root.mkdir(parents=True, exist_ok=True)
        partial = root / f"{MANIFEST}.partial"
        taken: defaultdict[str, set[str]] = defaultdict(set)
        covers = {(m, image_id) for m, image_id, _ in services.list_covers()}
        paths = {  # the covers' names come first (see file_name); records come newest first
            cover.image_id: self.path(cover, taken)
            for m, _ in covers
            if model_id in (None, m) and (cover := services.cover_record(m))
        }
        tally = Tally()
        with Progress(services.count(model_id), "export", quiet) as progress, partial.open("w") as manifest:
            for record in services.all_records(model_id):
                path = paths.get(record.image_id) or self.path(record, taken)
                if problem := copy_blob(storage, record, root / path):
                    tally.add(FAILED, record.size, f"{record.image_id} ({record.model_id})", problem)
                else:
                    cover = (record.model_id, record.image_id) in covers
                    manifest.write(manifest_line(path, record, cover) + "\n")
                    tally.add(EXPORTED, record.size)
                progress.advance(record.size)
        partial.replace(root / MANIFEST)
        self.stdout.write("\n".join(tally.summary({EXPORTED: "exported", FAILED: "not exported"})))
        if tally.counts[FAILED]:
            raise CommandError(f"{tally.counts[FAILED]} image(s) not exported (listed above).")

    @staticmethod
    def path(record: ImageRecord, taken: defaultdict[str, set[str]]) -> str:
        """Where the record's file goes in the export, its name taken in its folder."""
        folder = folder_name(record.model_id)
        return f"{folder}/{file_name(record.filename, record.image_id, taken[folder])}"
