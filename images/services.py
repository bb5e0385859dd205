"""Adding and removing images: records and blobs, written in the order that survives a crash.

Adding writes the blob, then the record: a crash in between leaves an orphan blob (reclaimable),
never a record without bytes. Removing deletes the record, then the blob once no record needs it.
"""

import hashlib
import logging
from datetime import UTC, datetime

from django.conf import settings
from django.core.files import File

from . import derivatives, hotcache, mongo
from .documents import Documents, DuplicateImage, ImageRecord, get_documents, new_image_id
from .errors import InvalidRequest, PayloadTooLarge
from .observability import BYTES_STORED, IMAGES_STORED, timed
from .storage import image_storage
from .validation import ImageInfo, inspect_image, sanitize_filename

log = logging.getLogger(__name__)


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
) -> tuple[ImageRecord, bool]:
    """Stores `file` for `model_id`; returns the record and whether it is new.

    The same bytes for the same model return the existing record, with nothing written. The
    keyword arguments let an import restore an exported record exactly.
    """
    sha256, info = check_image(file)
    docs = get_documents()
    if existing := docs.find(model_id, sha256):
        return existing, False

    storage = image_storage()
    with timed("blob_save"):
        storage.save(sha256, file)
    record = ImageRecord(
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
    )
    inserted = False
    try:
        with docs.atomic(), timed("record_insert"):
            docs.insert(record)
            inserted = True
            # A delete of the last record that shared these bytes may have removed the blob since
            # we saved it; put it back before answering, so the record never points at nothing.
            if not storage.exists(sha256):
                storage.save(sha256, file)
    except DuplicateImage:
        # A concurrent upload of the same bytes for the same model won the race: answer with its
        # record (or, if that was deleted in the meantime, start over).
        existing = docs.find(model_id, sha256)
        if existing:
            return existing, False
        if image_id:  # the collision was on the id that an import asked to restore
            raise InvalidRequest(
                f"image_id {image_id} belongs to another image.", code="image_id_taken"
            ) from None
        return add_image(
            file,
            model_id,
            filename=filename,
            uploaded_at=uploaded_at,
            image_id=image_id,
            uploaded_by=uploaded_by,
        )
    except BaseException as failure:
        _undo_quietly(docs, record, inserted, failure)
        raise
    hotcache.records.forget(hotcache.scoped("newest", model_id))
    with timed("base_save"):
        derivatives.keep_base(sha256, info.preview)
    IMAGES_STORED.inc()
    BYTES_STORED.inc(record.size)
    return record, True


def delete_image(image_id: str) -> ImageRecord | None:
    docs = get_documents()
    with docs.atomic(), timed("delete"):
        record = docs.delete(image_id)
        if record is not None:
            release_blob(docs, record.sha256)
    if record is not None:
        hotcache.records.forget(hotcache.scoped("id", image_id))
        hotcache.records.forget(hotcache.scoped("newest", record.model_id))
    return record


def release_blob(docs: Documents, sha256: str) -> None:
    """Deletes the blob, and the derivatives made from it, once no record refers to it."""
    if not docs.references(sha256):
        derivatives.delete_all(sha256)
        image_storage().delete(sha256)


def _undo_quietly(docs: Documents, record: ImageRecord, inserted: bool, failure: BaseException) -> None:
    """Best-effort clean-up after a failed upload; an orphan left here is reclaimable later. Quick
    when MongoDB was lost, so that the client gets its 503 in time."""
    try:
        with mongo.cleanup_deadline(failure):
            if inserted:
                docs.delete(record.image_id)  # a no-op where the transaction rolled it back already
            release_blob(docs, record.sha256)
    except Exception:
        log.warning("could not clean up after a failed upload of %s", record.sha256, exc_info=True)
