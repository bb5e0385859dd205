"""Keyset pages for image lists: `limit` plus an opaque `cursor`, the next page in a `Link` header.

The cursor encodes the position of the last record served, so each page is an index range scan
from there, as fast at record 100,000 as at record 100 (no skip/offset).
"""

import base64
import binascii
import json
from datetime import datetime

from bson import ObjectId
from django.http import HttpRequest
from django.utils.http import urlencode

from .documents import ImageRecord, Position
from .errors import InvalidRequest
from .validation import plain_integer

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
COUNT_HEADER = "X-Total-Count"


def parse_limit(request: HttpRequest) -> int:
    limit = plain_integer(request.GET.get("limit", str(DEFAULT_LIMIT)))
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}.", code="invalid_limit")
    return limit


def parse_count(request: HttpRequest) -> bool:
    """`?count=true` asks for the total: opt-in, since it costs a count of every matching record."""
    raw = request.GET.get("count", "false")
    if raw not in ("true", "false"):
        raise InvalidRequest("count must be true or false.", code="invalid_count")
    return raw == "true"


def parse_cursor(request: HttpRequest) -> Position | None:
    raw = request.GET.get("cursor")
    if not raw:
        return None
    try:
        at, image_id = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)))
        position = (datetime.fromisoformat(at), str(image_id))
    # RecursionError: JSON nested a thousand levels deep
    except (ValueError, TypeError, binascii.Error, UnicodeError, RecursionError) as exc:
        raise InvalidRequest(
            "cursor is not valid; use the URL from the previous page's Link header.",
            code="invalid_cursor",
        ) from exc
    if position[0].tzinfo is None or not ObjectId.is_valid(position[1]):
        raise InvalidRequest("cursor is not valid.", code="invalid_cursor")
    return position


def encode_cursor(record: ImageRecord) -> str:
    raw = json.dumps([record.uploaded_at.isoformat(), record.image_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def next_link(request: HttpRequest, last: ImageRecord) -> str:
    """The RFC 8288 `Link` value for the page after `last`."""
    query = request.GET.copy()
    query["cursor"] = encode_cursor(last)
    url = request.build_absolute_uri(f"{request.path}?{urlencode(sorted(query.items()))}")
    return f'<{url}>; rel="next"'
