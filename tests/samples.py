"""Test images, made on the fly with Pillow: nothing binary is committed."""

import io
import random
import zlib

from PIL import Image, PngImagePlugin


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


def zTXt_bomb() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("bomb", "A" * (80 * 1024 * 1024), zip=True)  # decompresses past Pillow's limit
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge size, with almost no pixel data behind it."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def rotated_jpeg(seed: int = 0) -> bytes:
    """Stored 60x30, with EXIF orientation 6 (a phone held upright): shown 30x60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes("JPEG", (60, 30), seed=seed, exif=exif.tobytes())
