"""Derivatives: resized, re-encoded versions of an original, made once and kept beside it.

A derivative is named `<original sha256>_<normalized parameters>`, so the same request always
finds the same blob, and deleting an original's bytes can find all of its derivatives by prefix.
What a derivative is: the first frame, EXIF orientation applied, colour converted to sRGB (CMYK
included), transparency kept where the output format has it, and no metadata (EXIF, GPS, XMP, ICC,
text chunks) at all.

Decoding a large JPEG is nearly all the cost of a derivative, and the upload check has decoded it
already (DCT-scaled). So a large JPEG original gets a *base* when it is stored: those pixels, oriented
and in sRGB, as a JPEG of 640-1279 px on its long side (`<sha256>_base.jpg`, a derivative like any
other). Every derivative that only shrinks the base is made from it, about 6x faster than from a
12 MP original; anything larger, or an original without a base, is made from the original.

What one request can cost is bounded (the derivative budget): a derivative's name holds only its
canonical parameters (`q` rounded to one of QUALITIES, none for PNG, `fit` only with a size), no
derivative is larger than its original, and a full-size re-encode has at most
DERIVATIVE_MAX_PIXELS. Each one is made in a child process (images/sandbox.py) killed after
DERIVATIVE_TIMEOUT or past DERIVATIVE_MEMORY_MB, one at a time per worker, and only for a caller
within THROTTLE_DERIVE. What they all occupy is kept under DERIVATIVE_CACHE_MB by
images/derivative_cache.py, which removes the least recently used.
"""

import io
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.http import QueryDict
from PIL import Image, ImageCms, ImageOps

from . import derivative_cache, throttling
from .backend import STORE_ERRORS, get_backend
from .documents import ImageRecord
from .errors import InvalidRequest, StorageUnavailable, UnprocessableImage
from .sandbox import OverLimit, run_limited
from .validation import opened, plain_integer

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
DEFAULT_QUALITY = {"jpeg": 85, "webp": 80, "avif": 60, "png": 100}
# `q` is rounded to the nearest of these, so that q=31..34 is one derivative, not four. PNG is
# lossless: its quality is always DEFAULT_QUALITY's, whatever `q` says.
QUALITIES = (20, 40, 60, 70, 80, 85, 90)
PARAMS = ("w", "h", "fit", "format", "q", "preset")
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
log = logging.getLogger(__name__)
BASE_SIDE = 640  # the card preset: a base serves it, and every smaller size, by shrinking
# One make at a time per worker process, so that a worker's makes take DERIVATIVE_MEMORY_MB at most.
_making = threading.Lock()


@dataclass(frozen=True)
class Spec:
    """A normalized derivative request; `format` is concrete (never "auto")."""

    width: int | None
    height: int | None
    fit: str
    format: str
    quality: int

    def name(self, sha256: str) -> str:
        return f"{sha256}_{self.width or 0}x{self.height or 0}_{self.fit}_q{self.quality}.{self.format}"

    @property
    def content_type(self) -> str:
        return Image.MIME[FORMATS[self.format]]


def wanted(query: QueryDict) -> bool:
    return any(p in query for p in PARAMS)


def _size(query: QueryDict, key: str) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    allowed = settings.DERIVATIVE_SIZES
    if (size := plain_integer(raw)) not in allowed:
        sizes = ", ".join(map(str, allowed))
        raise InvalidRequest(f"{key} must be one of {sizes} (or use a preset).", code="invalid_size")
    return size


def _quality(query: QueryDict, fmt: str) -> int:
    """The canonical quality: PNG's fixed one, or `q` rounded to the nearest of QUALITIES."""
    raw = query.get("q")
    if raw is not None and not 1 <= (plain_integer(raw) or 0) <= 100:
        raise InvalidRequest("q must be an integer from 1 to 100.", code="invalid_quality")
    if fmt == "png" or raw is None:
        return DEFAULT_QUALITY[fmt]
    return min(QUALITIES, key=lambda level: (abs(level - int(raw)), -level))


def parse_spec(query: QueryDict, accept: str, original_format: str) -> tuple[Spec, bool]:
    """The derivative asked for, and whether the answer depends on `Accept` (format=auto)."""
    fit = query.get("fit", "contain")
    if fit not in ("contain", "cover"):
        raise InvalidRequest("fit must be contain or cover.", code="invalid_fit")
    if preset := query.get("preset"):
        if preset not in settings.DERIVATIVE_PRESETS:
            names = ", ".join(settings.DERIVATIVE_PRESETS)
            raise InvalidRequest(f"preset must be one of {names}.", code="invalid_preset")
        if "w" in query or "h" in query:
            raise InvalidRequest("Use either a preset or w/h, not both.", code="invalid_size")
        width = height = settings.DERIVATIVE_PRESETS[preset]
    else:
        width, height = _size(query, "w"), _size(query, "h")
    if fit == "cover" and not (width and height):  # so a full-size one has fit=contain
        raise InvalidRequest("fit=cover fills a box: give both w and h (or a preset).", code="invalid_fit")
    fmt = query.get("format", "auto" if preset else original_format)
    negotiated = fmt == "auto"
    if negotiated:
        fmt = "avif" if "image/avif" in accept else "webp" if "image/webp" in accept else original_format
    if fmt not in FORMATS:
        raise InvalidRequest("format must be jpeg, png, webp, avif or auto.", code="invalid_format")
    return Spec(width, height, fit, fmt, _quality(query, fmt)), negotiated


def ensure(record: ImageRecord, spec: Spec) -> str:
    """The derivative's blob name, made first if need be: by one worker, whoever else asks at once."""
    return ensure_sized(record, spec)[0]


def ensure_sized(record: ImageRecord, spec: Spec) -> tuple[str, int]:
    """`ensure`, with the derivative's size: a hit asks the storage for the size alone, one round
    trip where an `exists` and then a `size` took two in GridFS."""
    storage = get_backend().blobs
    name = spec.name(record.sha256)
    give_up = time.monotonic() + settings.DERIVATIVE_TIMEOUT + 5
    while (size := _size_if_stored(storage, name)) is None:
        with get_backend().leases.holding(name, settings.DERIVATIVE_TIMEOUT + 5) as mine:
            if mine and not storage.exists(name):
                throttling.check_derive()  # a 429 for a caller past THROTTLE_DERIVE
                data = _make(record, spec)
                storage.save(name, ContentFile(data))
                if not storage.exists(record.sha256):
                    # The original's last pin went while we made this, and its delete may have
                    # swept its derivatives before ours existed: take ours too, as a read of a
                    # deleted image (see images/storage.py).
                    storage.delete(name)
                    raise FileNotFoundError(record.sha256)
                derivative_cache.made(name, len(data))
                return name, len(data)
        if time.monotonic() > give_up:
            raise StorageUnavailable("The derivative is still being made; retry shortly.")
        time.sleep(0.02)  # another worker is making it
    derivative_cache.used(name, size)
    return name, size


def _size_if_stored(storage: Storage, name: str) -> int | None:
    try:
        return storage.size(name)
    except FileNotFoundError:
        return None


def _make(record: ImageRecord, spec: Spec) -> bytes:
    """The derivative's bytes, from the original's base when the base holds enough pixels."""
    storage = get_backend().blobs
    made = None
    try:
        with storage.open(base_name(record.sha256)) as base:
            made = render(base, spec, ["JPEG"], only_shrinking=True)
    except FileNotFoundError:
        pass  # a small or non-JPEG original, or one stored before bases existed
    if made is None:
        with storage.open(record.sha256) as original:
            made = render(original, spec, settings.ALLOWED_IMAGE_FORMATS)
    return made


def base_name(sha256: str) -> str:
    return f"{sha256}_base.jpg"


def keep_base(sha256: str, preview: Image.Image | None) -> None:
    """Stores the upload check's reduced pixels as the original's base (see the module's doc).

    A base only saves time, so failing to store one loses nothing: the upload has succeeded, and
    derivatives come from the original instead.
    """
    if preview is None:
        return
    try:
        get_backend().blobs.save(base_name(sha256), ContentFile(base_bytes(preview)))
    except (*STORE_ERRORS, StorageUnavailable) as exc:
        log.warning("could not store the base of %s: %s", sha256, exc)


def base_bytes(preview: Image.Image) -> bytes:
    """The base's JPEG: quality 95 without chroma subsampling, so that what is made from it looks
    like what the original would give."""
    out = io.BytesIO()
    _normalized(preview).save(out, "JPEG", quality=95, subsampling=0)
    return out.getvalue()


def delete_all(sha256: str, storage: Storage | None = None) -> None:
    """Deletes every derivative of an original (called once its bytes go). A derivative being made
    meanwhile is deleted by its maker (see `ensure`)."""
    storage = storage or get_backend().blobs
    for name in storage.names_starting(f"{sha256}_"):
        storage.delete(name)
        derivative_cache.forget(name)


def output_format(original_content_type: str) -> str:
    """The original's format as a derivative format: GIF (and anything else) becomes PNG."""
    return {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}.get(original_content_type, "png")


def _target(size: tuple[int, int], spec: Spec) -> tuple[int, int]:
    """The output size for `contain`: within the box, never larger than the original."""
    width, height = size
    scale = min(
        spec.width / width if spec.width else 1.0,
        spec.height / height if spec.height else 1.0,
        1.0,
    )
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_srgb(im: Image.Image) -> Image.Image:
    """Pixels in sRGB (or grey), with alpha where the source had any."""
    icc = im.info.get("icc_profile")
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        im = im.point(lambda v: v / 256).convert("L")  # 16-bit grey down to 8 bits, not clipped
    elif im.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        im = im.convert("RGBA" if has_alpha else "RGB")
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
            im = ImageCms.profileToProfile(im, source, SRGB, outputMode=out_mode)
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: keep the pixels as they are rather than refuse the image
    if im.mode == "CMYK":
        im = im.convert("RGB")
    if im.mode == "LA":
        im = im.convert("RGBA")
    return im


def render(file: IO[bytes], spec: Spec, allowed_formats: list[str], *, only_shrinking: bool = False):
    """The derivative's bytes, made from the seekable `file` in a child process within
    DERIVATIVE_TIMEOUT and DERIVATIVE_MEMORY_MB (422 past either, having stored nothing); None when
    `only_shrinking` and the file has fewer pixels than `spec` needs."""
    if not _making.acquire(timeout=settings.DERIVATIVE_TIMEOUT):
        raise StorageUnavailable("Derivatives are being made for others; retry shortly.", code="busy")
    try:
        with _readable_in_child(file) as source:

            def work() -> bytes | None:
                im = _decoded(source, spec, allowed_formats, only_shrinking=only_shrinking)
                return None if im is None else _finished(im, spec)

            return run_limited(work, settings.DERIVATIVE_TIMEOUT, settings.DERIVATIVE_MEMORY_MB)
    except OverLimit as exc:
        if exc.reason != "time":
            # Short of memory, an encoder says so in its own words ("Encoding of color planes
            # failed"): the original passed the upload's checks, so the limit is the likely cause.
            log.warning("derivative %s not made: %s", spec, exc.detail)
        raise UnprocessableImage(
            f"Making this derivative took longer than {settings.DERIVATIVE_TIMEOUT:g} s."
            if exc.reason == "time"
            else f"Making this derivative needed more than {settings.DERIVATIVE_MEMORY_MB} MB.",
            code="derivative_timeout" if exc.reason == "time" else "derivative_too_large",
        ) from exc
    finally:
        _making.release()


@contextmanager
def _readable_in_child(file: IO[bytes]) -> Iterator[IO[bytes]]:
    """`file` itself when a forked child can read it (a real file, bytes in memory); otherwise (a
    GridFS blob, read through the parent's MongoDB connection) a copy in an unnamed temporary file."""
    raw = getattr(file, "file", file)
    try:
        if isinstance(raw, io.BytesIO) or raw.fileno() >= 0:
            yield raw
            return
    except (AttributeError, OSError):
        pass
    with tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR) as copy:
        file.seek(0)
        shutil.copyfileobj(file, copy, 1024 * 1024)
        yield copy


def _shrinks(size: tuple[int, int], spec: Spec) -> bool:
    """Whether an image of `size` holds all the pixels `spec` needs, so that it is only shrunk."""
    width, height = size
    if spec.fit == "cover" and spec.width and spec.height:
        return spec.width <= width and spec.height <= height
    return bool((spec.width and spec.width < width) or (spec.height and spec.height < height))


def _decoded(file, spec: Spec, formats: list[str], *, only_shrinking: bool = False):
    """The first frame, oriented and in sRGB, decoded DCT-scaled where that suffices; None when
    `only_shrinking` and `spec` needs more pixels than the file has."""
    with opened(file, formats) as source:
        width, height = source.size
        if not (spec.width or spec.height) and width * height > settings.DERIVATIVE_MAX_PIXELS:
            raise UnprocessableImage(  # from the header: a PNG's getexif() below decodes it all
                f"The image is {width}x{height} pixels; a full-size derivative may have at most "
                f"{settings.DERIVATIVE_MAX_PIXELS}. Ask for a size (w, h or a preset).",
                code="too_many_pixels",
            )
        source.seek(0)  # animated GIF/WebP: the first frame only
        transposed = source.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        oriented = (height, width) if transposed else (width, height)
        if only_shrinking and not _shrinks(oriented, spec):
            return None
        box = _target(oriented, spec)
        if source.format == "JPEG":
            source.draft(source.mode, (box[1], box[0]) if transposed else box)  # DCT scaling
        source.load()
        return _normalized(source)


def _normalized(im: Image.Image) -> Image.Image:
    """A copy that is oriented and in sRGB."""
    return _to_srgb(ImageOps.exif_transpose(im))


def _finished(im: Image.Image, spec: Spec) -> bytes:
    if spec.fit == "cover" and spec.width and spec.height:
        im = ImageOps.fit(im, _cover_box(im.size, spec), Image.Resampling.LANCZOS)
    else:
        target = _target(im.size, spec)
        if target != im.size:
            im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _encode(im, spec)


def _cover_box(size: tuple[int, int], spec: Spec) -> tuple[int, int]:
    """The box that `cover` fills: w x h, or the largest box of that shape within a smaller
    image, since a derivative never has more pixels than its original."""
    scale = min(1.0, size[0] / spec.width, size[1] / spec.height)
    return max(1, round(spec.width * scale)), max(1, round(spec.height * scale))


def _encode(im: Image.Image, spec: Spec) -> bytes:
    has_alpha = im.mode == "RGBA"
    if spec.format == "jpeg" and has_alpha:
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        im = flat
    im.info = {}  # no EXIF, GPS, XMP, ICC or text chunks in the output
    out = io.BytesIO()
    options: dict = {"quality": spec.quality}
    if spec.format == "jpeg":
        options.update(optimize=True, progressive=True)
    elif spec.format == "png":
        options = {"optimize": False, "compress_level": 6}
    elif spec.format == "webp":
        options["method"] = 4
    im.save(out, FORMATS[spec.format], **options)
    return out.getvalue()
