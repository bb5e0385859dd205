"""The sample images: noise JPEGs of given sizes, made once with tests/samples.py and kept in bench/out.

Noise does not compress, so a size in bytes maps to a predictable pixel count; every system gets the
same files.
"""

import math
from pathlib import Path

from tests.samples import noise_jpeg

SIZES = {"hot": 18 * 1024, "big": 10 * 1024 * 1024, "huge": 100 * 1024 * 1024}
ASPECT = 4 / 3


def _dimensions(pixels: float) -> tuple[int, int]:
    height = max(8, round(math.sqrt(pixels / ASPECT)))
    return round(height * ASPECT), height


def make(size: int) -> bytes:
    """A noise JPEG within about 2% of `size` bytes."""
    pixels = size / 1.2
    for _ in range(6):
        data = noise_jpeg(_dimensions(pixels))
        if abs(len(data) - size) <= size * 0.02:
            break
        pixels *= size / len(data)
    return data


def sample(key: str, cache: Path) -> Path:
    """The JPEG file for `key` (see SIZES), generated on first use."""
    path = cache / f"{key}-{SIZES[key]}.jpg"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_bytes(make(SIZES[key]))
        temp.replace(path)
    return path
