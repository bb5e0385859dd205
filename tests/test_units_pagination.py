"""Unit tests of images/pagination.py: limit, count and cursor parsing, and the next page's link."""

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from bson import ObjectId
from django.test import RequestFactory

from images.documents import ImageRecord
from images.errors import InvalidRequest
from images.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    encode_cursor,
    next_link,
    parse_count,
    parse_cursor,
    parse_limit,
)

AT = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
ID = str(ObjectId())


def get(query: str = ""):
    return RequestFactory().get(f"/images?{query}")


def code_of(parse, query: str) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse(get(query))
    return caught.value.get_codes()


def detail_of(parse, query: str) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse(get(query))
    return str(caught.value.detail)


def record(at: datetime = AT, image_id: str = ID) -> ImageRecord:
    return ImageRecord(image_id, "m", "a.png", "image/png", 1, "0" * 64, 1, 1, at)


@pytest.mark.parametrize(("query", "limit"), [("", DEFAULT_LIMIT), ("limit=1", 1), ("limit=1000", MAX_LIMIT)])
def test_limits_that_are_accepted(query, limit):
    assert parse_limit(get(query)) == limit


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=", "limit=-5", "limit=1.5", "limit=%C2%B2"]
)
def test_limits_that_are_refused(query):
    assert code_of(parse_limit, query) == "invalid_limit"


def test_the_messages_say_what_is_wanted():
    assert detail_of(parse_limit, "limit=0") == "limit must be an integer from 1 to 1000."
    assert detail_of(parse_count, "count=1") == "count must be true or false."
    assert detail_of(parse_cursor, "cursor=abcde") == (
        "cursor is not valid; use the URL from the previous page's Link header."
    )
    assert detail_of(parse_cursor, f"cursor={encoded(['2026-01-01T00:00:00', ID])}") == "cursor is not valid."


@pytest.mark.parametrize(("query", "wanted"), [("", False), ("count=false", False), ("count=true", True)])
def test_count_is_opt_in(query, wanted):
    assert parse_count(get(query)) is wanted


@pytest.mark.parametrize("query", ["count=1", "count=True", "count="])
def test_counts_that_are_refused(query):
    assert code_of(parse_count, query) == "invalid_count"


def test_no_cursor_is_the_first_page():
    assert parse_cursor(get()) is None
    assert parse_cursor(get("cursor=")) is None


@pytest.mark.parametrize("at", [AT, AT.replace(microsecond=0), AT.astimezone(timezone(timedelta(hours=-5)))])
def test_a_cursor_comes_back_as_the_position_it_encodes(at):
    raw = encode_cursor(record(at))
    assert "=" not in raw
    assert parse_cursor(get(f"cursor={raw}")) == (at, ID)


def test_a_cursor_is_compact_json():
    raw = encode_cursor(record())
    assert json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) == [AT.isoformat(), ID]
    assert b" " not in base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))  # short links


def encoded(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "raw",
    [
        "nonsense!",
        "abcde",  # not base64: binascii.Error
        encoded(["2026-01-01T00:00:00", ID]),  # no time zone
        encoded(["2026-01-01T00:00:00+00:00", "nope"]),
        encoded(["2026-01-01T00:00:00+00:00"]),
        encoded([1, ID]),
        encoded(7),
        encoded("[" * 5000 + "]" * 5000)[:100],
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),  # too deep for json
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_cursors_that_are_refused(raw):
    assert code_of(parse_cursor, f"cursor={raw}") == "invalid_cursor"


def test_the_next_link_keeps_the_query_and_replaces_the_cursor():
    request = RequestFactory().get("/models/m/images", {"limit": "2", "cursor": "old", "count": "true"})
    link = next_link(request, record())
    assert link == (
        f'<http://testserver/models/m/images?count=true&cursor={encode_cursor(record())}&limit=2>; rel="next"'
    )
