"""`manage.py adopt_legacy`: turns the Flask service's records and GridFS files (images/legacy.py) into
this service's records and blobs.

Each legacy record's GridFS file is read and checked exactly as an upload is (services.check_image),
keeps its `image_id` (the ids old clients hold), and identical contents share one blob. In place (the
configured MongoDB), bytes are not copied: a file whose contents have no blob yet is renamed to its
sha256 and becomes the blob; one whose contents have a blob already is deleted, once that blob has
been read back and matched its sha256. The legacy record goes last. A record that cannot be adopted
(not an allowed image, a GridFS file missing or cut short, a bad model_id) is moved to
`images_set_aside` with its reason, its GridFS file left as it is.

The records go a batch at a time (--batch, 500 by default), in a fixed number of commands per batch
(`Run`, pinned in tests/test_legacy.py): on FerretDB each filter but `_id` scans its collection, so
round trips, not bytes, set the pace. Every step is safe to repeat, and the steps run in an order
that a rerun can finish from any point: killed at any moment, the command run again ends as one
clean run would. A record that has the same bytes for the same model as an existing one merges into
it (one record per model and bytes); `adopted_as` marks the legacy record before its file goes, so
a rerun knows.

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
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from rest_framework.exceptions import APIException

from images import legacy, mongo, services
from images.backend import get_backend
from images.bulk import Progress, human_bytes
from images.documents import ImageRecord
from images.storage import GridFSReader
from images.validation import ImageInfo, validate_model_id

ADOPTED, MERGED, PRESENT, SET_ASIDE = "adopted", "merged_duplicates", "already_adopted", "set_aside"
BATCH_RECORDS = 500  # legacy records per batch (--batch): each batch costs about 12 commands
BATCH_BYTES = 16 * 1024 * 1024  # files read whole in a batch; larger ones are streamed one at a time
SMALL_FILE = 1024 * 1024
PREVIEW_BYTES = 64 * 1024 * 1024  # checked images' reduced pixels (for their bases) held at a time
WRITES_PER_COMMAND = 50  # see bulk_write
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


def batches(source: Source, size: int = BATCH_RECORDS) -> Iterator[list[Legacy]]:
    """The legacy records in `_id` order, a batch at a time, with their files documents and small
    files' bytes read in one query each per batch (FerretDB scans all of fs.chunks for any query on it).
    Keyset paging: records adopted meanwhile leave the collection without upsetting the next page."""
    last = None
    while True:
        query = legacy.LEGACY if last is None else {**legacy.LEGACY, "_id": {"$gt": last}}
        docs = list(legacy.records(source.database).find(query).sort("_id", 1).limit(size))
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
class Checked:
    """A legacy record whose bytes passed an upload's checks, and the record it is to become."""

    item: Legacy
    record: ImageRecord
    info: ImageInfo

    @property
    def key(self) -> tuple[str, str]:
        return self.record.model_id, self.record.sha256

    @property
    def preview_bytes(self) -> int:
        preview = self.info.preview
        return 0 if preview is None else preview.width * preview.height * len(preview.getbands())


@dataclass
class Run:
    """Adopts the legacy records a batch at a time; counts the outcomes.

    A batch is checked record by record (the upload's checks, on bytes read in one query), then
    written in a few commands whatever its size (services.add_many), then cleaned up in a few more
    (`close`): FerretDB scans a whole collection for any filter but `_id`, so what counts is the
    number of round trips, not their size. The writes keep the order a rerun can finish from:
    pins, the blobs that are missing, the records; then the `adopted_as` marks, the legacy files
    that are copies, the set-aside copies, and the legacy records last.
    """

    source: Source
    dry_run: bool
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    planned: set = field(default_factory=set)  # a dry run's would-be records: (model_id, sha256)
    verified: set = field(default_factory=set)  # blobs read back and matched this run
    # What `close` writes at the end of a batch, in place:
    marks: list[UpdateOne] = field(default_factory=list)  # adopted_as, on merged legacy records
    doomed: list = field(default_factory=list)  # legacy files whose bytes are in a verified blob
    aside: list[dict] = field(default_factory=list)  # set-aside copies of legacy records
    done: list = field(default_factory=list)  # legacy records to delete

    def adopt(self, batch: list[Legacy]) -> None:
        checked: list[Checked] = []
        held = 0
        for item in batch:
            try:
                if (found := self.check(item)) is not None:
                    checked.append(found)
                    held += found.preview_bytes
            except SetAside as refusal:
                self.set_aside(item, refusal)
            if held > PREVIEW_BYTES:  # reduced pixels kept for the bases: write what is checked
                self.store(checked)
                checked, held = [], 0
        self.store(checked)
        self.close()

    def check(self, item: Legacy) -> Checked | None:
        """The record `item` is to become, once its bytes passed an upload's checks; None if an
        earlier run adopted it and stopped before its clean-up, which is then all that is left."""
        if legacy.file_id(item.doc) is None:
            raise SetAside("invalid_image_id", f"image_id {item.image_id!r} names no GridFS file")
        try:
            model_id = validate_model_id(item.doc.get("model_id"))
        except APIException as exc:
            raise SetAside("invalid_model_id", str(exc.detail)) from None
        if item.problem is not None or "adopted_as" in item.doc:
            # Its file may be gone, or cut short, by an earlier run's clean-up: look by image_id.
            # (Any other record adopted before is found by its bytes, in `store`.)
            for image_id, outcome in ((item.doc.get("adopted_as"), MERGED), (item.image_id, PRESENT)):
                if isinstance(image_id, str) and (done := services.find_record(image_id)) is not None:
                    self.adopted_before(item, done, model_id, outcome)
                    return None
        if item.problem is not None:
            raise item.problem
        try:
            with self.open(item) as file:
                sha256, info = services.check_image(file)
                record = services.new_record(
                    file,
                    sha256,
                    info,
                    model_id,
                    filename=item.doc.get("filename") or "",
                    uploaded_at=item.file["uploadDate"].astimezone(UTC),
                    image_id=item.image_id,
                )
        except CorruptGridFile as exc:
            raise SetAside("cut_short", str(exc)) from None
        except APIException as exc:
            raise SetAside(str(exc.get_codes()), str(exc.detail)) from None
        return Checked(item, record, info)

    def adopted_before(self, item: Legacy, done: ImageRecord, model_id: str, outcome: str) -> None:
        if done.model_id != model_id:
            raise SetAside("image_id_taken", f"image_id {done.image_id} is {done.model_id}'s here")
        self.finish(item, done)
        self.counts[outcome] += 1

    def store(self, checked: list[Checked]) -> None:
        """Writes the records of `checked`, merged into those of the same model and bytes (found
        in one query for the lot), in services.add_many's few commands."""
        if not checked:
            return
        found = services.with_contents(sorted({c.record.sha256 for c in checked}))
        by_id = {record.image_id: record for record in found}
        by_content = {(record.model_id, record.sha256): record for record in found}
        new: list[Checked] = []
        merged: list[Checked] = []
        writing: dict[str, Checked] = {}  # the new ones by image_id
        for c in checked:
            try:
                if (done := by_id.get(c.record.image_id)) is not None:
                    self.adopted_before(c.item, done, c.record.model_id, PRESENT)
                elif c.key in by_content or c.key in self.planned:
                    merged.append(c)
                elif c.record.image_id in writing:  # two legacy records of one file, two models
                    raise SetAside("image_id_taken", f"image_id {c.record.image_id} is another record's")
                else:
                    by_content[c.key] = c.record
                    writing[c.record.image_id] = c
                    new.append(c)
            except SetAside as refusal:
                self.set_aside(c.item, refusal)
        if self.dry_run:
            self.planned.update(c.key for c in new)
            self.counts[ADOPTED] += len(new)
            self.counts[MERGED] += len(merged)
            return
        clashed = services.add_many(
            [(c.record, c.info) for c in new], lambda missing: self.make_blobs(missing, writing)
        )
        left_out = {record.image_id for record in clashed}
        for c in new:
            if c.record.image_id in left_out:
                del by_content[c.key]
                self.one_at_a_time(c, by_content)
            else:
                self.counts[ADOPTED] += 1
                self.finish(c.item, c.record)
        for c in merged:
            if (into := by_content.get(c.key)) is None:  # the record it was to merge into was not written
                self.one_at_a_time(c, by_content)
            else:
                self.counts[MERGED] += 1
                self.finish(c.item, into)

    def one_at_a_time(self, c: Checked, by_content: dict) -> None:
        """A record whose batched write clashed with one written meanwhile: add_image sorts it out."""
        try:
            with self.open(c.item) as file:
                record, created = services.add_image(
                    file,
                    c.record.model_id,
                    filename=c.item.doc.get("filename") or "",
                    uploaded_at=c.record.uploaded_at,
                    image_id=c.record.image_id,
                )
        except APIException as exc:
            self.set_aside(c.item, SetAside(str(exc.get_codes()), str(exc.detail)))
            return
        by_content[c.key] = record
        self.counts[ADOPTED if created else MERGED] += 1
        self.finish(c.item, record)

    def make_blobs(self, records: list[ImageRecord], writing: dict[str, Checked]) -> None:
        """The blobs of `records`, none of which exists yet. In place, each legacy file becomes the
        blob, its bytes where they are (`rename`): they were just read whole, hashed and checked,
        and nothing else writes a legacy file, so the blob counts as verified. From another
        database, the bytes are copied."""
        pairs = [(record, writing[record.image_id].item) for record in records]
        if not self.source.in_place:
            for record, item in pairs:
                with self.open(item) as file:
                    get_backend().blobs.save(record.sha256, file)
                self.counts["bytes_copied"] += record.size
            return
        self.rename([(item.file, record.sha256) for record, item in pairs])
        for record, item in pairs:
            item.file["filename"] = record.sha256
            self.remember_verified(record.sha256)
            self.counts["bytes_kept_in_place"] += record.size

    def rename(self, files: list[tuple[dict, str]]) -> None:
        """Renames each GridFS file to its sha256, pinned: a blob that keeps pins, as one that
        GridFSStorage writes (images/storage.py). Not by `update`, which costs FerretDB 1.24 a
        collection scan and tens of ms per document (300 renames took 5.7 s), but by replacing
        the files documents: they are copied to the journal `legacy.RENAMING`, deleted, inserted
        renamed, then the journal is emptied; `recover` finishes a rename that a kill cut short
        (the chunks stay as they are throughout)."""
        if not files:
            return
        renamed = [
            {**file, "filename": sha256, "metadata": {**(file.get("metadata") or {}), "pinned": True}}
            for file, sha256 in files
        ]
        ids = {"_id": {"$in": [file["_id"] for file in renamed]}}
        journal = self.source.database[legacy.RENAMING]
        mongo.insert_new(journal, renamed)
        self.source.files.delete_many(ids)
        mongo.insert_new(self.source.files, renamed)
        journal.delete_many(ids)

    def recover(self) -> None:
        """Finishes the renames that a killed run left in the journal: a files document that was
        deleted is inserted renamed; one that was not is left as it was, to be renamed again."""
        journal = self.source.database[legacy.RENAMING]
        if left := list(journal.find()):
            mongo.insert_new(self.source.files, left)
            journal.delete_many({"_id": {"$in": [doc["_id"] for doc in left]}})

    def open(self, item: Legacy) -> File:
        name = item.doc.get("filename") or ""
        if item.data is not None:
            return ContentFile(item.data, name=name)
        return File(GridFSReader(self.source.chunks, item.file), name=name)

    def finish(self, item: Legacy, record: ImageRecord) -> None:
        """In place, lists for `close` what adoption leaves of the legacy record: its file, unless
        that is the blob now, once the blob is verified; then the record. A copy leaves its source
        alone."""
        if self.dry_run or not self.source.in_place:
            return
        if item.file is not None and item.file["filename"] != record.sha256:
            if record.image_id != item.image_id:  # a merge: say so before the file goes
                self.marks.append(
                    UpdateOne({"_id": item.doc["_id"]}, {"$set": {"adopted_as": record.image_id}})
                )
            self.verify(record.sha256)
            self.doomed.append(item.file["_id"])
            self.counts["legacy_files_deleted"] += 1
        self.done.append(item.doc["_id"])

    def verify(self, sha256: str) -> None:
        """Reads the blob back and checks its sha256 before a legacy copy of its bytes is deleted."""
        if sha256 in self.verified:
            return
        with get_backend().blobs.open(sha256) as blob:
            if services.sha256_of(blob) != sha256:
                raise CommandError(f"The blob {sha256} does not hold its bytes: run fsck --deep.")
        self.remember_verified(sha256)

    def remember_verified(self, sha256: str) -> None:
        if len(self.verified) >= VERIFIED_MEMORY:
            self.verified.clear()
        self.verified.add(sha256)

    def set_aside(self, item: Legacy, refusal: SetAside) -> None:
        """In place, lists the record for `close` to move to images_set_aside with its reason; the
        GridFS file stays as it is. A copy's stay in its source."""
        self.counts[SET_ASIDE] += 1
        self.reasons[refusal.reason] += 1
        if len(self.examples) < EXAMPLES:
            fields = {k: item.doc.get(k) for k in ("image_id", "model_id", "filename")}
            self.examples.append({**fields, "reason": refusal.reason, "detail": str(refusal)})
        if self.dry_run or not self.source.in_place:
            return
        at = datetime.now(UTC)
        self.aside.append({**item.doc, "reason": refusal.reason, "detail": str(refusal), "set_aside_at": at})
        self.done.append(item.doc["_id"])

    def close(self) -> None:
        """The batch's clean-up, in the order a rerun can finish from: the merged records' marks;
        the legacy files that are copies (chunks first: killed in between, the files document
        remains, and a rerun finds it); the set-aside copies; then the legacy records."""
        database = self.source.database
        records = legacy.records(database)
        if self.marks:
            bulk_write(records, self.marks)
        if self.doomed:
            self.source.chunks.delete_many({"files_id": {"$in": self.doomed}})
            self.source.files.delete_many({"_id": {"$in": self.doomed}})
        mongo.insert_new(database[legacy.SET_ASIDE], self.aside)  # or copied by a killed run
        if self.done:
            records.delete_many({"_id": {"$in": self.done}})
        self.marks, self.doomed, self.aside, self.done = [], [], [], []


def bulk_write(collection: Collection, writes: list[UpdateOne]) -> None:
    """The writes, unordered, WRITES_PER_COMMAND to a command: FerretDB 1.24 never answers an
    `update` command of 100 statements or more that all match (99 took 1.4 s)."""
    for start in range(0, len(writes), WRITES_PER_COMMAND):
        collection.bulk_write(writes[start : start + WRITES_PER_COMMAND], ordered=False)


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
        parser.add_argument(
            "--batch",
            type=int,
            default=BATCH_RECORDS,
            dest="batch_size",
            help=f"legacy records adopted together (default {BATCH_RECORDS}); fewer cost more round trips",
        )

    def handle(
        self,
        *args,
        dry_run: bool,
        as_json: bool,
        from_uri: str | None,
        from_db: str | None,
        batch_size: int,
        **options,
    ):
        if batch_size < 1:
            raise CommandError("--batch must be at least 1.", returncode=2)
        source = open_source(from_uri, from_db)
        try:
            get_backend().ensure_schema()
            run = Run(source, dry_run)
            if source.in_place and not dry_run:
                run.recover()
            interrupted = False
            with Progress(legacy.count(source.database), "adopt", False) as progress:
                try:
                    for batch in batches(source, batch_size):
                        run.adopt(batch)
                        for item in batch:
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
