"""`manage.py adopt_legacy`: turns the Flask service's records and GridFS files (images/legacy.py) into
this service's records and blobs.

Each legacy record's GridFS file is read, then stored through `services.add_image`, so it is checked
exactly as an upload is, keeps its `image_id` (the ids old clients hold), and identical contents share
one blob. In place (the configured MongoDB), bytes are not copied: a file whose contents have no blob
yet is renamed to its sha256 and becomes the blob; one whose contents have a blob already is deleted,
once that blob has been read back and matched its sha256. The legacy record goes last. A record that
cannot be adopted (not an allowed image, a GridFS file missing or cut short, a bad model_id) is moved
to `images_set_aside` with its reason, its GridFS file left as it is.

Every step is safe to repeat, and each record's steps run in an order that a rerun can finish from
any point: killed at any moment, the command run again ends as one clean run would. A record that has
the same bytes for the same model as an existing one merges into it (one record per model and bytes);
`adopted_as` marks the legacy record before its file goes, so a rerun knows.

With --from-uri/--from-db the legacy data is read from another MongoDB database and copied into the
configured store, in either mode; that source is only read. Exit status: 0 done, 1 done with records
set aside (or blobs that did not verify), 2 bad arguments.
"""

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError, CommandParser
from gridfs.errors import CorruptGridFile
from pymongo import MongoClient
from pymongo.database import Database
from rest_framework.exceptions import APIException

from images import legacy, services
from images.backend import get_backend
from images.bulk import Progress, human_bytes
from images.documents import ImageRecord
from images.storage import GridFSReader
from images.validation import validate_model_id

ADOPTED, MERGED, PRESENT, SET_ASIDE = "adopted", "merged_duplicates", "already_adopted", "set_aside"
BATCH_RECORDS = 100
BATCH_BYTES = 8 * 1024 * 1024  # files read whole in a batch; larger ones are streamed one at a time
SMALL_FILE = 1024 * 1024
EXAMPLES = 20  # set-aside records listed in the output; the rest are in the collection
VERIFIED_MEMORY = 10_000  # blobs remembered as verified; forgotten past this, so memory stays flat


class SetAside(Exception):
    """This record cannot be adopted: `reason` is a short code, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class Legacy:
    """One legacy record, with its GridFS files document and, for a small file, its bytes."""

    doc: dict
    file: dict | None = None
    data: bytes | None = None
    problem: SetAside | None = None  # found while reading the bytes

    @property
    def image_id(self) -> str:
        return str(self.doc.get("image_id"))


@dataclass
class Source:
    database: Database
    in_place: bool
    label: str
    client: MongoClient | None = None  # made for --from-uri

    @property
    def files(self):
        return self.database["fs.files"]

    @property
    def chunks(self):
        return self.database["fs.chunks"]


def batches(source: Source) -> Iterator[list[Legacy]]:
    """The legacy records in `_id` order, a batch at a time, with their files documents and small
    files' bytes read in one query each per batch (FerretDB scans all of fs.chunks for any query on it).
    Keyset paging: records adopted meanwhile leave the collection without upsetting the next page."""
    last = None
    while True:
        query = legacy.LEGACY if last is None else {**legacy.LEGACY, "_id": {"$gt": last}}
        docs = list(legacy.records(source.database).find(query).sort("_id", 1).limit(BATCH_RECORDS))
        if not docs:
            return
        last = docs[-1]["_id"]
        items = [Legacy(doc) for doc in docs]
        ids = [found for item in items if (found := legacy.file_id(item.doc)) is not None]
        files = {doc["_id"]: doc for doc in source.files.find({"_id": {"$in": ids}})}
        budget, small = BATCH_BYTES, {}
        for item in items:
            item.file = files.get(legacy.file_id(item.doc))
            if item.file is None:
                item.problem = SetAside("missing_file", "its GridFS file is gone")
            elif int(item.file["length"]) <= min(SMALL_FILE, budget):
                budget -= int(item.file["length"])
                small[item.file["_id"]] = item
        pieces: dict = {file_id: [] for file_id in small}
        for chunk in source.chunks.find({"files_id": {"$in": list(small)}}):
            pieces[chunk["files_id"]].append(chunk)
        for file_id, item in small.items():
            item.data, item.problem = whole(item.file, pieces[file_id])
        yield items


def whole(file: dict, chunks: list[dict]) -> tuple[bytes | None, SetAside | None]:
    """The file's bytes from its chunks, checked as GridFSReader checks them: numbered from 0, each
    full but the last, adding up to the length."""
    length, size = int(file["length"]), int(file["chunkSize"])
    chunks.sort(key=lambda chunk: chunk["n"])
    expected = [min(size, length - n * size) for n in range(-(-length // size))]
    found = [(chunk["n"], len(chunk["data"])) for chunk in chunks]
    if found != list(enumerate(expected)):
        return None, SetAside("cut_short", f"its GridFS chunks do not make up its {length:,} bytes")
    return b"".join(bytes(chunk["data"]) for chunk in chunks), None


@dataclass
class Run:
    """Adopts one legacy record at a time; counts the outcomes."""

    source: Source
    dry_run: bool
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    planned: set = field(default_factory=set)  # a dry run's would-be records: (model_id, sha256)
    verified: set = field(default_factory=set)  # blobs read back and matched this run

    def adopt(self, item: Legacy) -> None:
        try:
            outcome = self.adopt_or_set_aside(item)
        except SetAside as refusal:
            outcome = SET_ASIDE
            self.set_aside(item, refusal)
        self.counts[outcome] += 1

    def adopt_or_set_aside(self, item: Legacy) -> str:
        file_id = legacy.file_id(item.doc)
        if file_id is None:
            raise SetAside("invalid_image_id", f"image_id {item.image_id!r} names no GridFS file")
        try:
            model_id = validate_model_id(item.doc.get("model_id"))
        except APIException as exc:
            raise SetAside("invalid_model_id", str(exc.detail)) from None
        for image_id, outcome in ((item.doc.get("adopted_as"), MERGED), (item.image_id, PRESENT)):
            # Adopted by an earlier run that stopped before its clean-up: only that is left to do.
            if isinstance(image_id, str) and (done := services.find_record(image_id)) is not None:
                if done.model_id != model_id:
                    raise SetAside("image_id_taken", f"image_id {image_id} is {done.model_id}'s here")
                self.finish(item, done)
                return outcome
        if item.problem is not None:
            raise item.problem
        with self.open(item) as file:
            try:
                if self.dry_run:
                    return self.plan(file, model_id)
                sha256 = services.sha256_of(file)
                existed = get_backend().blobs.exists(sha256)
                renamed = self.source.in_place and not existed and self.become_blob(item, file, sha256)
                record, created = services.add_image(
                    file,
                    model_id,
                    filename=item.doc.get("filename") or "",
                    uploaded_at=item.file["uploadDate"].astimezone(UTC),
                    image_id=item.image_id,
                )
            except CorruptGridFile as exc:
                raise SetAside("cut_short", str(exc)) from None
            except APIException as exc:
                raise SetAside(str(exc.get_codes()), str(exc.detail)) from None
        if renamed:
            item.file["filename"] = record.sha256
            self.counts["bytes_kept_in_place"] += record.size
        elif not existed:
            self.counts["bytes_copied"] += record.size
        self.finish(item, record)
        return ADOPTED if created else MERGED

    def open(self, item: Legacy) -> File:
        name = item.doc.get("filename") or ""
        if item.data is not None:
            return ContentFile(item.data, name=name)
        return File(GridFSReader(self.source.chunks, item.file), name=name)

    def plan(self, file: File, model_id: str) -> str:
        sha256, _ = services.check_image(file)
        key = (model_id, sha256)
        merged = key in self.planned or services.find_by_content(*key) is not None
        self.planned.add(key)
        return MERGED if merged else ADOPTED

    def become_blob(self, item: Legacy, file: File, sha256: str) -> bool:
        """Renames the legacy file to its sha256 (no blob has those bytes yet) once it has passed an
        upload's checks: it then is the blob, and add_image finds it there and pins it (a blob that
        keeps pins, as one GridFSStorage writes: images/storage.py). Its bytes were just read whole
        and hashed, and nothing else writes a legacy file."""
        services.check_image(file)
        renamed = self.source.files.update_one(
            {"_id": item.file["_id"], "filename": item.file["filename"]},
            {"$set": {"filename": sha256, "metadata.pinned": True}},
        )
        return renamed.modified_count == 1

    def finish(self, item: Legacy, record: ImageRecord) -> None:
        """In place, removes what adoption left of the legacy record: its file, unless that is the
        blob now, once the blob is verified; then the record. A copy leaves its source alone."""
        if self.dry_run or not self.source.in_place:
            return
        records = legacy.records(self.source.database)
        if item.file is not None and item.file["filename"] != record.sha256:
            if record.image_id != item.image_id:  # a merge: say so before the file goes
                records.update_one({"_id": item.doc["_id"]}, {"$set": {"adopted_as": record.image_id}})
            self.verify(record.sha256)
            # Chunks first: killed in between, the files document remains, and a rerun finds it.
            self.source.chunks.delete_many({"files_id": item.file["_id"]})
            self.source.files.delete_one({"_id": item.file["_id"]})
            self.counts["legacy_files_deleted"] += 1
        records.delete_one({"_id": item.doc["_id"]})

    def verify(self, sha256: str) -> None:
        """Reads the blob back and checks its sha256 before a legacy copy of its bytes is deleted."""
        if sha256 in self.verified:
            return
        with get_backend().blobs.open(sha256) as blob:
            if services.sha256_of(blob) != sha256:
                raise CommandError(f"The blob {sha256} does not hold its bytes: run fsck --deep.")
        if len(self.verified) >= VERIFIED_MEMORY:
            self.verified.clear()
        self.verified.add(sha256)

    def set_aside(self, item: Legacy, refusal: SetAside) -> None:
        """In place, moves the record to images_set_aside with its reason (copied there first, so a
        kill in between loses nothing); the GridFS file stays as it is. A copy's stay in its source."""
        self.reasons[refusal.reason] += 1
        if len(self.examples) < EXAMPLES:
            fields = {k: item.doc.get(k) for k in ("image_id", "model_id", "filename")}
            self.examples.append({**fields, "reason": refusal.reason, "detail": str(refusal)})
        if self.dry_run or not self.source.in_place:
            return
        doc = {
            **item.doc,
            "reason": refusal.reason,
            "detail": str(refusal),
            "set_aside_at": datetime.now(UTC),
        }
        self.source.database[legacy.SET_ASIDE].replace_one({"_id": item.doc["_id"]}, doc, upsert=True)
        legacy.records(self.source.database).delete_one({"_id": item.doc["_id"]})


def open_source(uri: str | None, db: str | None) -> Source:
    """The configured MongoDB (in place), or the one named by --from-uri/--from-db (copied from)."""
    configured = get_backend().flask_database()
    if uri is None and db is None:
        if configured is None:
            raise CommandError(
                "Embedded mode holds no Flask data: pass --from-uri and --from-db to copy it from there.",
                returncode=2,
            )
        return Source(configured, True, f"the configured MongoDB database {configured.name}")
    if not uri or not db:
        raise CommandError("--from-uri and --from-db go together.", returncode=2)
    client = MongoClient(uri, tz_aware=True, appname="image-service adopt_legacy")
    if configured is not None and client == configured.client and db == configured.name:
        client.close()  # the configured database itself: adopt in place
        return open_source(None, None)
    return Source(client[db], False, f"the MongoDB database {db} (copied, left as it is)", client)


class Command(BaseCommand):
    help = "Adopt the Flask service's images (its `images` records and GridFS files) into this service."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="check and report; change nothing")
        parser.add_argument("--json", action="store_true", dest="as_json", help="a JSON summary")
        parser.add_argument("--from-uri", help="copy from this MongoDB instead of adopting in place")
        parser.add_argument("--from-db", help="the database there that the Flask service used")

    def handle(
        self, *args, dry_run: bool, as_json: bool, from_uri: str | None, from_db: str | None, **options
    ):
        source = open_source(from_uri, from_db)
        try:
            get_backend().ensure_schema()
            run = Run(source, dry_run)
            interrupted = False
            with Progress(legacy.count(source.database), "adopt", False) as progress:
                try:
                    for batch in batches(source):
                        for item in batch:
                            run.adopt(item)
                            progress.advance(int(item.file["length"]) if item.file else 0)
                except KeyboardInterrupt:
                    interrupted = True
        finally:
            if source.client is not None:
                source.client.close()
        self.report(run, as_json)
        if interrupted:
            raise CommandError("Interrupted: run the same command again to resume.", returncode=130)
        if run.counts[SET_ASIDE]:
            where = f"{legacy.SET_ASIDE} in {source.database.name}" if source.in_place else "the source"
            raise CommandError(f"{run.counts[SET_ASIDE]} record(s) set aside: see {where}.", returncode=1)

    def report(self, run: Run, as_json: bool) -> None:
        counts = run.counts
        if as_json:
            summary = {
                "source": run.source.label,
                "dry_run": run.dry_run,
                **{key: counts[key] for key in (ADOPTED, MERGED, PRESENT)},
                SET_ASIDE: dict(sorted(run.reasons.items())),
                **{
                    key: counts[key]
                    for key in ("legacy_files_deleted", "bytes_kept_in_place", "bytes_copied")
                },
                "set_aside_examples": run.examples,
            }
            self.stdout.write(json.dumps(summary, indent=2, default=str))
            return
        verb = "would adopt" if run.dry_run else "adopted"
        lines = [
            f"From {run.source.label}: {verb} {counts[ADOPTED]}, merged into an existing record "
            f"{counts[MERGED]}, adopted before {counts[PRESENT]}, set aside {counts[SET_ASIDE]}.",
            f"Bytes kept in place {human_bytes(counts['bytes_kept_in_place'])}, copied "
            f"{human_bytes(counts['bytes_copied'])}; legacy files deleted {counts['legacy_files_deleted']}.",
        ]
        lines += [
            f"  {e['image_id']} ({e['model_id']}/{e['filename']}): {e['reason']}, {e['detail']}"
            for e in run.examples
        ]
        if run.dry_run:
            lines.append("Dry run: nothing was changed.")
        self.stdout.write("\n".join(lines))
