"""Every read and write of images, and the hot cache's invalidation: views, the admin and the
commands come here, not to the backend's stores (fsck and migrate_storage, which check and copy the
stores themselves, read them directly and still write through here).

Reads of one record, a model's newest and a derivative's size go through the per-process hot cache
(images/hotcache.py), whose entries the writes here forget in this process.

Records and blobs are written in the order that survives a crash. Adding pins the blob's name,
writes its bytes if they are new, then writes the record: a crash in between leaves a pin without a
record (fsck reclaims it), never a record without bytes. Removing deletes the record, then gives back its pin;
the blob goes with its last pin (see images/storage.py).
"""

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage
from rest_framework.exceptions import NotFound

from . import derivatives, hotcache
from .backend import get_backend
from .documents import Documents, DuplicateImage, ImageRecord, Position, iter_records, new_image_id
from .errors import InvalidRequest, PayloadTooLarge, StorageUnavailable
from .observability import BYTES_STORED, IMAGES_STORED, timed
from .validation import ImageInfo, inspect_image, sanitize_filename

log = logging.getLogger(__name__)


def find_record(image_id: str) -> ImageRecord | None:
    """The record, from the hot cache when this process read it lately (only its label changes, and
    `set_label` forgets it here; other workers may show the old label for HOT_CACHE_SECONDS)."""
    return hotcache.records.get(hotcache.key("record", image_id), lambda: get_backend().records.get(image_id))


def get_record(image_id: str) -> ImageRecord:
    if (record := find_record(image_id)) is None:
        raise NotFound(f"No image has image_id {image_id!r}.")
    return record


def find_by_content(model_id: str, sha256: str) -> ImageRecord | None:
    """The model's record of these bytes, if it has one (an import's or adoption's dry run)."""
    return get_backend().records.find(model_id, sha256)


def with_contents(sha256s: list[str]) -> list[ImageRecord]:
    """Every record, of any model, of any of these bytes, in one query (adopt_legacy's batches)."""
    return get_backend().records.with_contents(sha256s)


def model_record(model_id: str, label: str | None = None) -> ImageRecord:
    """What `GET /image/<model_id>` shows: the model's cover when it has one, else its newest image
    (with `label`, the newest with that label). Kept in the hot cache like a record: the writes here
    forget it in this process, other workers may show the previous one for HOT_CACHE_SECONDS."""
    records = hotcache.records.get(hotcache.key("newest", model_id, label), lambda: _chosen(model_id, label))
    if not records:
        with_label = f" with label {label!r}" if label is not None else ""
        raise NotFound(f"Model {model_id!r} has no images{with_label}.")
    return records[0]


def _chosen(model_id: str, label: str | None) -> list[ImageRecord]:
    """The model's cover (unless a label is asked for), else its newest record: at most one."""
    if label is None and (cover := cover_record(model_id)):
        return [cover]
    return get_backend().records.page(model_id, None, 1, label=label)


def cover_record(model_id: str) -> ImageRecord | None:
    """The model's cover's record. A cover whose image went meanwhile (a delete racing the PUT)
    counts as none, so reads fall back to the newest."""
    backend = get_backend()
    image_id = backend.covers.get(model_id)
    record = image_id and backend.records.get(image_id)
    return record if record and record.model_id == model_id else None


def set_cover(model_id: str, image_id: str) -> ImageRecord:
    """Makes the model's image `image_id` its cover; the image must exist and be the model's."""
    backend = get_backend()
    with backend.lookup_deadline():  # a find and a replace: a hung MongoDB is a 503 as for a lookup
        record = backend.records.get(image_id)
        if record is None:
            raise NotFound(f"No image has image_id {image_id!r}.")
        if record.model_id != model_id:
            raise InvalidRequest(
                f"Image {image_id} belongs to model {record.model_id!r}, not {model_id!r}.",
                code="image_of_another_model",
            )
        backend.covers.set(model_id, image_id)
    _forget_model(model_id)
    return record


def clear_cover(model_id: str) -> bool:
    """Clears the model's cover: its newest image shows again. Whether it had one."""
    backend = get_backend()
    with backend.lookup_deadline():
        cleared = backend.covers.clear(model_id)
    _forget_model(model_id)
    return cleared


def model_records(model_ids: list[str]) -> tuple[dict[str, ImageRecord | None], set[str]]:
    """Each model's cover, else its newest record (None for a model without images), and the
    image_ids that are covers: in one round of queries whatever the number of models, namely the
    covers (one `_id $in`), their records (one `_id $in`) and the newest of the others (one query)."""
    backend = get_backend()
    with backend.lookup_deadline():  # a POST, which LookupDeadline leaves out, but only a lookup
        covers = backend.covers.many(model_ids)
        chosen = {
            record.model_id: record
            for record in (backend.records.get_many(list(covers.values())) if covers else [])
            if covers.get(record.model_id) == record.image_id
        }
        cover_ids = {record.image_id for record in chosen.values()}
        if rest := [m for m in model_ids if m not in chosen]:
            chosen |= backend.records.newest_of(rest)
    return {m: chosen.get(m) for m in model_ids}, cover_ids


def list_covers(limit: int | None = None) -> list[tuple[str, str, datetime]]:
    """Up to `limit` covers (the admin; None: every one, for export) as (model_id, image_id, set_at),
    the latest set first."""
    return get_backend().covers.all(limit)


def covers_among(records: list[ImageRecord]) -> set[str]:
    """The image_ids of `records` that are their model's cover, in one query."""
    if not records:
        return set()
    covers = get_backend().covers.many(sorted({r.model_id for r in records}))
    return {r.image_id for r in records if covers.get(r.model_id) == r.image_id}


def _forget_model(model_id: str, *labels: str | None) -> None:
    """Forgets, in this process, what `model_record` answered for the model (and these labels)."""
    for label in {None, *labels}:
        hotcache.records.forget(hotcache.key("newest", model_id, label))


def page(
    model_id: str | None,
    after: Position | None,
    limit: int,
    matching: str | None = None,
    label: str | None = None,
) -> list[ImageRecord]:
    """Up to `limit` records, newest first, after `after` (see documents.Documents.page)."""
    return get_backend().records.page(model_id, after, limit, matching, label)


def count(model_id: str | None = None) -> int:
    return get_backend().records.count(model_id)


def all_records(model_id: str | None = None) -> Iterator[ImageRecord]:
    """Every record (of `model_id`), newest first, a page at a time (export, stats, fsck)."""
    return iter_records(get_backend().records, model_id)


def derivative_size(record: ImageRecord, spec: derivatives.Spec) -> int:
    """The derivative's size, made first if need be. A derivative never changes once made, so its
    size is kept like a record: a hit then costs no storage call at all, as for an original. Keyed
    by the record too, so that the same bytes uploaded again after a delete (which took the
    derivatives) are made anew."""
    key = hotcache.key("derivative", record.image_id, spec.name(record.sha256))
    return hotcache.records.get(key, lambda: derivatives.ensure_sized(record, spec)[1])


def set_dimensions(image_id: str, width: int, height: int) -> None:
    """fsck --repair's change of a record; this process's cached copy goes with it."""
    get_backend().records.set_dimensions(image_id, width, height)
    hotcache.records.forget(hotcache.key("record", image_id))


def set_label(image_id: str, label: str | None) -> ImageRecord:
    """Sets or (None) clears an image's label; the record as it is now."""
    backend = get_backend()
    with backend.lookup_deadline():  # one small write: a hung MongoDB is a 503 as soon as a lookup's
        before = backend.records.set_label(image_id, label)
    if before is None:
        raise NotFound(f"No image has image_id {image_id!r}.")
    hotcache.records.forget(hotcache.key("record", image_id))
    _forget_model(before.model_id, before.label, label)
    return replace(before, label=label)


def max_upload_bytes() -> int:
    return settings.MAX_UPLOAD_MB * 1024 * 1024


def sha256_of(file: File) -> str:
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def now() -> datetime:
    """Millisecond precision, which is what MongoDB keeps, so both modes agree."""
    at = datetime.now(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def check_image(file: File) -> tuple[str, ImageInfo]:
    """The checks every new image passes, from the API or a bulk import: its sha256 and what it is."""
    if not file.size:
        raise InvalidRequest("The file is empty.", code="empty_file")
    if file.size > max_upload_bytes():
        raise PayloadTooLarge(f"The file is larger than {settings.MAX_UPLOAD_MB} MB.")
    return sha256_of(file), inspect_image(file, keep_side=derivatives.BASE_SIDE)


def add_image(
    file: File,
    model_id: str,
    *,
    filename: str | None = None,
    uploaded_at: datetime | None = None,
    image_id: str | None = None,
    uploaded_by: str | None = None,
    label: str | None = None,
) -> tuple[ImageRecord, bool]:
    """Stores `file` for `model_id`; returns the record and whether it is new.

    The same bytes for the same model return the existing record, with nothing written. The
    keyword arguments let an import restore an exported record exactly.
    """
    sha256, info = check_image(file)
    storage, docs = get_backend().blobs, get_backend().records
    record = new_record(file, sha256, info, model_id, filename, uploaded_at, image_id, uploaded_by, label)
    # A concurrent upload of the same bytes for the same model may win the insert and then be
    # deleted before we read it: each round either stores ours or finds theirs, and two such
    # coincidences in a row are as good as never. Bytes that the store lacks have no record (a
    # record's blob lives as long as it does), so new bytes, the common case, skip the lookup: in
    # embedded mode a stat instead of a query. One that a concurrent upload wins fails our insert.
    for _ in range(3):
        exists = storage.exists(sha256)
        if exists and (existing := docs.find(model_id, sha256)):
            return existing, False
        if _insert(storage, docs, record, file, missing=not exists):
            break
        taken = image_id and docs.get(image_id)  # an import's id that another image holds?
        if taken and (taken.model_id, taken.sha256) != (model_id, sha256):
            raise InvalidRequest(f"image_id {image_id} belongs to another image.", code="image_id_taken")
    else:
        raise StorageUnavailable("The image was changed concurrently; retry.")
    _stored(record, info)
    return record, True


def new_record(
    file: File,
    sha256: str,
    info: ImageInfo,
    model_id: str,
    filename: str | None = None,
    uploaded_at: datetime | None = None,
    image_id: str | None = None,
    uploaded_by: str | None = None,
    label: str | None = None,
) -> ImageRecord:
    """The record of `file`, which passed `check_image` (giving `sha256` and `info`)."""
    return ImageRecord(
        image_id=image_id or new_image_id(),
        model_id=model_id,
        filename=sanitize_filename(filename or file.name) or f"{sha256[:12]}.{info.extension}",
        content_type=info.content_type,
        size=file.size,
        sha256=sha256,
        width=info.width,
        height=info.height,
        uploaded_at=uploaded_at or now(),
        uploaded_by=uploaded_by,
        label=label,
    )


def add_many(
    new: list[tuple[ImageRecord, ImageInfo]], write_missing: Callable[[list[ImageRecord]], None]
) -> list[ImageRecord]:
    """`add_image`'s writes for many checked records at once, in the same order (pins, the bytes
    that are missing, the records), in a few commands whatever their number (adopt_legacy's
    batches, images/legacy.py). `write_missing` gets one record per blob that does not exist yet
    and must make it exist. Returns the records that were not written because their image_id or
    `(model_id, sha256)` exists already, with their pins given back: add them one at a time. A
    failure midway leaves pins without records, as a crash does (the caller's rerun takes them up,
    or fsck reclaims them)."""
    if not new:
        return []
    storage, docs = get_backend().blobs, get_backend().records
    records = [record for record, _ in new]
    present = storage.pin_many([(record.sha256, record.image_id) for record in records])
    missing: dict[str, ImageRecord] = {}  # the first record of each blob that is not there yet
    for record in records:
        if record.sha256 not in present:
            missing.setdefault(record.sha256, record)
    write_missing(list(missing.values()))
    clashed = docs.insert_many(records)
    for record in clashed:
        _give_back_pin(storage, docs, record)
    left_out = {record.image_id for record in clashed}
    for record, info in new:
        if record.image_id not in left_out:
            _stored(record, info)
    return clashed


def _stored(record: ImageRecord, info: ImageInfo) -> None:
    """What follows a new record: its model's newest is forgotten here, its base kept, the counts."""
    _forget_model(record.model_id, record.label)
    with timed("base_save"):
        derivatives.keep_base(record.sha256, info.preview)
    IMAGES_STORED.inc()
    BYTES_STORED.inc(record.size)


def _insert(storage: Storage, docs: Documents, record: ImageRecord, file: File, missing: bool) -> bool:
    """Pins the blob (writing it if need be, and without looking for it first if it was `missing`
    just before), then writes the record: False if `(model_id, sha256)` or the image_id exists
    already, with the pin given back."""
    try:
        with timed("blob_save"):
            hold_blob(storage, record.sha256, file, record.image_id, missing)
        with timed("record_insert"):
            docs.insert(record)
        return True
    except DuplicateImage:
        _give_back_pin(storage, docs, record)
        return False
    except BaseException as failure:
        _release_quietly(storage, record, failure)
        raise


def _give_back_pin(storage: Storage, docs: Documents, record: ImageRecord) -> None:
    """Gives back the pin of a record that was not written, unless a record of the same bytes
    holds its image_id (an import's or an adoption's id, written before): the pin is then that
    record's, and giving it back could delete the bytes under it."""
    holder = docs.get(record.image_id)
    if holder is None or holder.sha256 != record.sha256:
        release_blob(storage, record.sha256, record.image_id)


def hold_blob(storage: Storage, sha256: str, file: File, holder: str, missing: bool) -> None:
    """Pins the blob `sha256` for `holder` (a record about to be written), then writes the bytes if
    they are not there yet (or were `missing` just before). The pin comes first, so no delete of
    another record that shares these bytes can remove them before our record exists (see
    images/storage.py)."""
    if not storage.pin(sha256, holder, missing=missing):
        storage.save_new(sha256, file)


def release_blob(storage: Storage, sha256: str, holder: str) -> None:
    """Gives back `holder`'s pin; the blob and its derivatives go with the last one."""
    if storage.unpin(sha256, holder):
        derivatives.delete_all(sha256, storage)


def delete_image(image_id: str) -> ImageRecord | None:
    """Deletes the record, clears the model's cover if it was this image, then gives back its pin;
    None if it was not there (or another delete of it won: exactly one caller gets the record)."""
    backend = get_backend()
    with timed("delete"):
        record = backend.records.delete(image_id)
        if record is not None:
            backend.covers.clear(record.model_id, image_id)  # if it was the cover
            release_blob(backend.blobs, record.sha256, image_id)
    if record is not None:
        hotcache.records.forget(hotcache.key("record", image_id))
        _forget_model(record.model_id, record.label)
    return record


def _release_quietly(storage: Storage, record: ImageRecord, failure: BaseException) -> None:
    """Best-effort clean-up after a failed upload; a pin left here is reclaimed by fsck later. Quick
    when the store was lost, so that the client gets its 503 in time."""
    backend = get_backend()
    try:
        with backend.cleanup_deadline(failure):
            docs = backend.records
            stored = docs.get(record.image_id)  # the insert may have gone through unanswered
            if stored is None or stored == record:  # else an import's id that another image holds
                docs.delete(record.image_id)
                release_blob(storage, record.sha256, record.image_id)
    except Exception:
        log.warning("could not clean up after a failed upload of %s", record.sha256, exc_info=True)
