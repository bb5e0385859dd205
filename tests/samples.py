"""Test images, made on the fly with Pillow: nothing binary is committed."""

import io
import random

from PIL import Image


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0, **save) -> bytes:
    """A small image whose pixels (and so bytes) differ with `seed`."""
    rng = random.Random(seed)
    mode = "RGBA" if fmt in ("PNG", "WEBP") and save.pop("alpha", False) else "RGB"
    im = Image.new(mode, size, tuple(rng.randrange(256) for _ in mode))
    for _ in range(20):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        im.putpixel((x, y), tuple(rng.randrange(256) for _ in mode))
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def noise_jpeg(size: tuple[int, int], quality: int = 95) -> bytes:
    """A JPEG that does not compress well, for tests that need many bytes."""
    im = Image.frombytes("RGB", size, random.Random(1).randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
