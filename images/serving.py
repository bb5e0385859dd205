"""Responses that carry image bytes: validators, conditional requests, single ranges, safe headers.

Bytes stream from the storage's own seekable file (a real file or a GridOut), never read whole.
Under WSGI, Django hands a `FileResponse`'s file to `wsgi.file_wrapper`, and the server then reads
it to the end (or `sendfile`s `Content-Length` bytes from its current offset), bypassing Django. So a
range is enforced in two places: the file is positioned at the range's start and `RangeReader.read()`
stops at its end, and `Content-Length` is always set explicitly.

The server's first read of the file comes after the view has returned, and before any byte is sent:
a MongoDB failure there became gunicorn's plain 500 page. So a file that is not a real one (a GridFS
reader) gives its first bytes in the view, where a failure becomes the JSON 503 (images/errors.py).
A failure after that, once the headers are out, makes gunicorn close the connection: the body is
shorter than its Content-Length, which every client takes for a broken download.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import IO
from urllib.parse import quote

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import get_conditional_response, patch_vary_headers
from django.utils.http import http_date

from . import derivatives, hotcache, services
from .backend import get_backend
from .documents import ImageRecord
from .errors import error_json

IMMUTABLE = "public, max-age=31536000, immutable"
RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Opened directly, a GIF/JS polyglot or an HTML-ish payload can neither run nor load anything.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Accept-Ranges": "bytes",
}


class RangeReader:
    """A file object that yields at most `length` bytes from the file's current position."""

    def __init__(self, file: IO[bytes], length: int):
        self.file = file
        self.remaining = length  # bytes still to read from `file`
        self.first = b""  # bytes read ahead of the server, by `read_first`
        if _has_fileno(file):
            self.fileno = file.fileno  # lets the WSGI server sendfile() from the same offset

    def read_first(self, size: int) -> None:
        """Reads the first `size` bytes now, so that a storage failure still reaches the view."""
        self.first = self._read_file(size)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data, self.first = self.first + self._read_file(-1), b""
        elif self.first:
            data, self.first = self.first[:size], self.first[size:]
        else:
            data = self._read_file(size)
        return data

    def _read_file(self, size: int) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.file.read(size)
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.file.close()


def _has_fileno(file: IO[bytes]) -> bool:
    """Whether `file` is a real file, which the server can sendfile(): a GridFS reader is an IOBase
    too, but its fileno() raises."""
    try:
        file.fileno()
    except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
        return False
    return True


def _read_whole(name: str) -> bytes:
    """A small blob's bytes (the hot cache keeps only blobs of at most BlobCache.MAX_BLOB)."""
    with get_backend().blobs.open(name) as file:
        return file.read()


def content_disposition(filename: str) -> str:
    """RFC 6266 `inline`, with an ASCII fallback and the exact name in `filename*`."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte span of a single `Range`, or None to send the whole body.

    Raises ValueError when the range cannot be satisfied. Multiple ranges and malformed headers
    are ignored, as RFC 9110 allows.
    """
    match = RANGE.match(header.replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        if int(last) == 0:
            raise ValueError
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise ValueError
    return start, end


@dataclass(frozen=True)
class Blob:
    """What a bytes response needs to know. The name is content-addressed, so its quoted form is a
    strong ETag: the sha256 for an original, the parameters too for a derivative."""

    name: str
    size: int
    content_type: str
    filename: str
    modified: datetime

    @classmethod
    def original(cls, record: ImageRecord) -> "Blob":
        return cls(record.sha256, record.size, record.content_type, record.filename, record.uploaded_at)


def image_response(
    request: HttpRequest, record: ImageRecord, cache_control: str = IMMUTABLE
) -> HttpResponseBase:
    """The original's bytes, or those of the derivative that the query string asks for; a 404 when
    the bytes went after the record was read (a delete racing this request, or a record that this
    worker's cache still held), never a 500."""
    try:
        return _bytes_response(request, record, cache_control)
    except FileNotFoundError:
        raise Http404(f"No image has image_id {record.image_id!r}.") from None


def _bytes_response(request: HttpRequest, record: ImageRecord, cache_control: str) -> HttpResponseBase:
    if not derivatives.wanted(request.GET):
        return blob_response(request, Blob.original(record), cache_control)
    original_format = derivatives.output_format(record.content_type)
    spec, negotiated = derivatives.parse_spec(request.GET, request.headers.get("Accept", ""), original_format)
    name = spec.name(record.sha256)
    size = services.derivative_size(record, spec)
    stem = record.filename.rsplit(".", 1)[0] or record.filename
    blob = Blob(name, size, spec.content_type, f"{stem}.{spec.format}", record.uploaded_at)
    response = blob_response(request, blob, cache_control)
    if negotiated:
        patch_vary_headers(response, ["Accept"])
    return response


def replayable(response: HttpResponseBase, body: str | None) -> HttpResponseBase:
    """Marks an answer made from the hot caches alone, which imageservice/wsgi.py may send again for
    the same request while those caches hold what it read; `body` names the blob whose whole bytes
    are the body (None: no body)."""
    response.replay_body = body
    return response


def blob_response(request: HttpRequest, blob: Blob, cache_control: str = IMMUTABLE) -> HttpResponseBase:
    etag = f'"{blob.name}"'
    last_modified = int(blob.modified.timestamp())
    headers = {
        **SAFE_HEADERS,
        "ETag": etag,
        "Last-Modified": http_date(last_modified),
        "Cache-Control": cache_control,
        "Content-Disposition": content_disposition(blob.filename),
    }
    validators = HttpResponse(headers=headers)
    conditional = get_conditional_response(request, etag, last_modified, validators)
    if conditional.status_code == 412:  # Django's own is an empty text/html body; errors are JSON
        return error_json(
            412,
            "precondition_failed",
            "If-Match or If-Unmodified-Since did not hold.",
            headers={"ETag": etag, "Cache-Control": "no-store"},
        )
    if conditional is not validators:
        return replayable(conditional, None)  # 304

    size = blob.size
    span = None
    if_range = request.headers.get("If-Range")
    if "Range" in request.headers and if_range in (None, etag, headers["Last-Modified"]):
        try:
            span = parse_range(request.headers["Range"], size)
        except ValueError:
            return error_json(
                416,
                "range_not_satisfiable",
                f"The image has {size} bytes.",
                headers={"Content-Range": f"bytes */{size}", "Cache-Control": "no-store"},
            )
    start, end = span or (0, size - 1)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    status = 206 if span else 200

    if request.method == "HEAD":
        return replayable(HttpResponse(status=status, headers=headers, content_type=blob.content_type), None)
    if hotcache.blobs.fits(size):
        data = hotcache.blobs.get(blob.name, lambda: _read_whole(blob.name))
        response = HttpResponse(
            data[start : end + 1], status=status, headers=headers, content_type=blob.content_type
        )
        return response if span else replayable(response, blob.name)
    file = get_backend().blobs.open(blob.name).file
    file.seek(start)
    reader = RangeReader(file, end - start + 1)
    if not hasattr(reader, "fileno"):
        try:
            reader.read_first(FileResponse.block_size)
        except BaseException:
            reader.close()
            raise
    return FileResponse(reader, status=status, content_type=blob.content_type, headers=headers)
