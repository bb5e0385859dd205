"""Unit tests of images/serving.py's parts: RangeReader, parse_range and content_disposition.

Through the API, a small blob comes from memory and the server sendfile()s a large one from disk,
so each of the two places that enforce a range hid a fault in the other (issue 21): these test each
one alone.
"""

import io

import pytest

from images.serving import RangeReader, content_disposition, parse_range

DATA = bytes(range(100))


def reader(start: int, length: int, data: bytes = DATA) -> RangeReader:
    file = io.BytesIO(data)
    file.seek(start)
    return RangeReader(file, length)


def test_reads_stop_at_the_end_of_the_range_whatever_the_size_asked():
    part = reader(10, 25)
    assert part.read(10) == DATA[10:20]
    assert part.read(10) == DATA[20:30]
    assert part.read(10) == DATA[30:35]
    assert part.read(10) == b""
    assert part.read() == b""


@pytest.mark.parametrize("size", [-1, None])
def test_reading_to_the_end_gives_the_rest_of_the_range_only(size):
    part = reader(5, 20)
    assert part.read(3) == DATA[5:8]
    assert part.read(size) == DATA[8:25]
    assert part.read(size) == b""


def test_the_bytes_read_first_come_before_the_rest_and_count_against_the_range():
    part = reader(40, 30)
    part.read_first(8)
    assert part.read(5) == DATA[40:45]
    assert part.read(10) == DATA[45:48]  # what is left of the first bytes, never more
    assert part.read(100) == DATA[48:70]
    assert part.read(100) == b""


def test_reading_all_after_reading_first_joins_both():
    part = reader(0, 12)
    part.read_first(4)
    assert part.read() == DATA[:12]
    assert part.read() == b""


def test_a_file_shorter_than_the_range_ends_the_range_early():
    part = reader(90, 50)
    assert part.read(4) == DATA[90:94]
    assert part.remaining == 46  # only what was really read counts
    assert part.read() == DATA[94:]


def test_a_range_of_one_byte_reads_that_byte():
    assert reader(7, 1).read() == DATA[7:8]
    part = reader(0, 4)
    assert part.read(3) == DATA[:3]
    assert part.read(3) == DATA[3:4]


def test_reading_zero_bytes_reads_nothing_and_loses_nothing():
    part = reader(0, 10)
    assert part.read(0) == b""
    part.read_first(2)
    assert part.read(0) == b""
    assert part.read() == DATA[:10]


def test_a_range_of_zero_bytes_reads_nothing():
    assert reader(0, 0).read() == b""
    assert reader(0, 0).read(5) == b""


def test_a_real_file_offers_its_fileno_and_a_stream_does_not(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    with path.open("rb") as file:
        assert RangeReader(file, 10).fileno() == file.fileno()
    assert not hasattr(reader(0, 10), "fileno")


def test_close_closes_the_file():
    part = reader(0, 10)
    part.close()
    assert part.file.closed


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=3-3", (3, 3)),
        ("bytes=90-", (90, 99)),
        ("bytes=99-", (99, 99)),
        ("bytes=95-1000", (95, 99)),
        ("bytes=0-99", (0, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-100", (0, 99)),
        ("bytes=-1000", (0, 99)),  # a suffix longer than the file is the whole file
        ("bytes= 2 - 5", (2, 5)),  # spaces are allowed around the numbers
        (" bytes=-3 ", (97, 99)),
        ("bytes=5-4", None),  # last before first: malformed, so ignored
        ("bytes=-", None),
        ("bytes=0-1,4-5", None),  # several ranges: the whole body
        ("items=0-1", None),
        ("bytes=1-2x", None),
        ("bytes=a-", None),
    ],
)
def test_parse_range(header, span):
    assert parse_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_unsatisfiable_ranges_raise(header):
    with pytest.raises(ValueError):
        parse_range(header, 100)


@pytest.mark.parametrize(
    ("filename", "fallback", "exact"),
    [
        ("a b.png", "a b.png", "a%20b.png"),
        ("X-ray.png", "X-ray.png", "X-ray.png"),
        ("tilde~.png", "tilde~.png", "tilde~.png"),  # 126, the last printable ASCII character
        ("del\x7f.png", "del_.png", "del%7F.png"),  # 127
        ("unit\x1f.png", "unit_.png", "unit%1F.png"),  # 31, the last control character
        ('quote".png', "quote_.png", "quote%22.png"),
        ("back\\.png", "back_.png", "back%5C.png"),
        ("é.png", "_.png", "%C3%A9.png"),
        ("a/b;c.png", "a/b;c.png", "a%2Fb%3Bc.png"),
    ],
)
def test_content_disposition_has_an_ascii_fallback_and_the_exact_name(filename, fallback, exact):
    assert content_disposition(filename) == f"inline; filename=\"{fallback}\"; filename*=UTF-8''{exact}"
