"""What an upload must be before anything is stored: a valid model_id, a safe filename, and an
image of an allowed type that really decodes, within the pixel limit.
"""

import re
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings
from PIL import Image

from .errors import InvalidRequest, UnprocessableImage, UnsupportedImageType

MODEL_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # of the whole value: see validate_model_id
MODEL_ID_PATTERN = f"^{MODEL_ID_RE.pattern}$"  # the same rule, as the OpenAPI schema states it
MODEL_ID_RULE = "model_id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'"
LABEL_RE = re.compile(r"[a-z0-9_-]{1,32}")  # which view an image is: "front", "side", "top"
LABEL_PATTERN = f"^{LABEL_RE.pattern}$"
LABEL_RULE = "label must be 1-32 characters of a-z, 0-9, '_' and '-'"
MAX_FILENAME = 255
EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the picture a quarter (5-8): it is shown with width and height swapped.
QUARTER_TURNS = {5, 6, 7, 8}

Image.init()


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    width: int  # as shown: after EXIF orientation, as viewers and the derivatives turn it
    height: int
    # The pixels that the check decoded, when they are a reduced copy worth keeping (see
    # `inspect_image`'s keep_side); never compared or printed.
    preview: Image.Image | None = field(default=None, compare=False, repr=False)

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else self.format.lower()


def validate_model_id(value: object) -> str:
    if not isinstance(value, str) or not MODEL_ID_RE.fullmatch(value):
        raise InvalidRequest(MODEL_ID_RULE, code="invalid_model_id")
    return value


MAX_MODELS = 100  # per batch lookup: one round of queries, whatever the number


def validate_model_ids(values: object) -> list[str]:
    """A batch lookup's model_ids: 1 to MAX_MODELS valid ones, each once, in the order given."""
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_MODELS:
        raise InvalidRequest(f"Send a list of 1 to {MAX_MODELS} model_ids.", code="invalid_model_ids")
    return list(dict.fromkeys(validate_model_id(value) for value in values))


def validate_label(value: object) -> str:
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise InvalidRequest(LABEL_RULE, code="invalid_label")
    return value


def plain_integer(raw: str) -> int | None:
    """The value of a string of ASCII digits, else None. `str.isdigit()` alone also accepts
    characters such as '²' that `int()` refuses."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


def sanitize_filename(value: str | None) -> str:
    """Keeps a client's filename as harmless metadata: no path, no control characters, bounded."""
    name = re.split(r"[/\\]", value or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    name = name.strip().lstrip(".")
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        name = name[: MAX_FILENAME - len(ext) - 1].rstrip() + ("." + ext if ext else "")
    return name


def sniff_format(head: bytes) -> str:
    """The allowed format whose signature the bytes carry, by Pillow's own checks."""
    for fmt in settings.ALLOWED_IMAGE_FORMATS:
        accept = Image.OPEN.get(fmt, (None, None))[1]
        if accept is not None and accept(head) is True:
            return fmt
    allowed = ", ".join(f.lower() for f in settings.ALLOWED_IMAGE_FORMATS)
    raise UnsupportedImageType(f"The file is not an allowed image type (allowed: {allowed}).")


@contextmanager
def opened(file: IO[bytes], formats: list[str]) -> Iterator[Image.Image]:
    """Opens an image, trying only `formats`, and refuses it from its header when it is over the
    limits, before any pixel is decoded.

    Any failure inside the block is a broken file: decoders raise OSError, ValueError (a zTXt
    bomb), SyntaxError, struct.error, EOFError and more, so all of them become a 422, never a 500.
    """
    file.seek(0)
    try:
        # We enforce our own pixel limit from the header, next, before decoding: Pillow's warning
        # adds nothing, and is silenced here only, not for the whole process.
        with warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning):
            im = Image.open(file, formats=formats)
        with im:
            width, height = im.size
            if width > settings.MAX_IMAGE_WIDTH or height > settings.MAX_IMAGE_HEIGHT:
                raise UnprocessableImage(
                    f"The image is {width}x{height} pixels; at most {settings.MAX_IMAGE_WIDTH} wide "
                    f"and {settings.MAX_IMAGE_HEIGHT} high is allowed.",
                    code="too_many_pixels",
                )
            if width * height > settings.MAX_IMAGE_PIXELS:
                raise UnprocessableImage(
                    f"The image is {width}x{height} pixels; at most "
                    f"{settings.MAX_IMAGE_PIXELS} pixels are allowed.",
                    code="too_many_pixels",
                )
            yield im
    except (UnprocessableImage, MemoryError):  # out of memory is no fault of the file's
        raise
    except Image.DecompressionBombError as exc:
        raise UnprocessableImage(str(exc), code="too_many_pixels") from exc
    except Exception as exc:
        kind = formats[0] if len(formats) == 1 else "an image"
        raise UnprocessableImage(
            f"The file looks like {kind} but is truncated or corrupt ({exc.__class__.__name__}).",
            code="corrupt_image",
        ) from exc


def inspect_image(file: IO[bytes], keep_side: int | None = None) -> ImageInfo:
    """Sniffs the type, then decodes the image to prove it is whole (`verify()` checks nothing
    for JPEG). Pillow only tries the sniffed format, so a PostScript file named `.jpg` never
    reaches an EPS decoder.

    A JPEG decodes DCT-scaled, which still reads every coefficient but costs a fraction of a full
    decode: at 1/8, or, with `keep_side`, at the largest reduction whose long side stays at least
    `keep_side`, and those reduced pixels come back as `preview`, so nobody decodes them again.
    """
    file.seek(0)
    fmt = sniff_format(file.read(64))
    preview = None
    with opened(file, [fmt]) as im:
        width, height = im.size
        shown = shown_size(im)
        if fmt == "JPEG":
            reduction = dct_reduction(max(width, height), keep_side) if keep_side else 8
            im.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
        im.load()
        if keep_side and im.size != (width, height):
            preview = im.copy()
    return ImageInfo(fmt, Image.MIME[fmt], *shown, preview)


def shown_size(im: Image.Image) -> tuple[int, int]:
    """The width and height of the picture as shown: a quarter-turn EXIF orientation (a phone held
    upright) swaps the stored ones. Read from the header, before any pixel is decoded."""
    width, height = im.size
    if im.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:
        return height, width
    return width, height


def dct_reduction(side: int, keep_side: int) -> int:
    """The largest JPEG DCT scaling (8, 4 or 2) that keeps `side` at least `keep_side` long, or 1."""
    return next((r for r in (8, 4, 2) if side // r >= keep_side), 1)
