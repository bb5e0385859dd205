"""Signed URLs: a link to an image's bytes that works without credentials until it expires, for an
`<img src>` (which cannot send an `Authorization` header) while reads are private.

A signed URL is the content URL plus `exp` (its expiry, in Unix seconds) and `sig`: an HMAC-SHA256 of
the path and the sorted query without `sig` (so `exp` and any derivative parameter are covered),
made by Django's `Signer` with URL_SIGNING_KEY (by default SECRET_KEY, under a salt of its own). A
signature made with one of URL_SIGNING_OLD_KEYS is still accepted, so keys rotate without breaking
the URLs out there. A bad or expired signature is a 403, whatever PUBLIC_READ says.
"""

import time
from collections.abc import Iterable

from django.conf import settings
from django.core.signing import BadSignature, Signer
from django.http import HttpRequest, HttpResponseBase, QueryDict
from django.utils.cache import patch_cache_control
from django.utils.http import urlencode
from rest_framework.exceptions import PermissionDenied

from .errors import InvalidRequest
from .validation import plain_integer

SIGNATURE = "sig"
EXPIRY = "exp"
DEFAULT_TTL = 3600  # seconds
MAX_TTL = 7 * 24 * 3600


class SignatureRefused(PermissionDenied):
    default_code = "bad_signature"


def _signer() -> Signer:
    return Signer(
        key=settings.URL_SIGNING_KEY or settings.SECRET_KEY,
        fallback_keys=settings.URL_SIGNING_OLD_KEYS,
        salt="images.signed-url",
        algorithm="sha256",
    )


def _signed_value(path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """What the HMAC covers: the path and the sorted query, without the signature itself."""
    return f"{path}?{urlencode(sorted((k, v) for k, v in pairs if k != SIGNATURE))}"


def sign(path: str, params: dict[str, str], ttl: int, now: float | None = None) -> tuple[str, int]:
    """The signed form of `path?params`, a relative URL, and its expiry."""
    expires = int(now if now is not None else time.time()) + ttl
    pairs = sorted({**params, EXPIRY: str(expires)}.items())
    signature = _signer().signature(_signed_value(path, pairs))
    return f"{path}?{urlencode([*pairs, (SIGNATURE, signature)])}", expires


def presented(query: QueryDict) -> bool:
    """Whether the request carries a signature (or an expiry): it is then judged on it."""
    return SIGNATURE in query or EXPIRY in query


def verify(path: str, query: QueryDict) -> int:
    """The expiry of the valid signature that `path?query` carries; else SignatureRefused (403)."""
    expires = plain_integer(query.get(EXPIRY, ""))
    signatures = query.getlist(SIGNATURE)
    if expires is None or len(signatures) != 1 or len(query.getlist(EXPIRY)) != 1:
        raise SignatureRefused("The URL's signature is missing or malformed: ask for a new signed URL.")
    value = _signed_value(path, ((k, v) for k, values in query.lists() for v in values))
    signer = _signer()
    try:
        signer.unsign(f"{value}{signer.sep}{signatures[0]}")
    except BadSignature:
        raise SignatureRefused("The URL's signature does not match it: ask for a new signed URL.") from None
    if expires <= time.time():
        raise SignatureRefused("The signed URL has expired: ask for a new one.", code="signature_expired")
    return expires


def admit(request: HttpRequest) -> None:
    """Lets a read in on its valid signature (else the 403), and notes until when."""
    request.signed_until = verify(request.path, request.GET)


def limit_caching(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """Keeps caches from holding a signed answer past the signature's expiry (Django takes the
    lower max-age)."""
    if (expires := getattr(request, "signed_until", None)) is not None:
        patch_cache_control(response, max_age=max(0, expires - int(time.time())))
    return response


def parse_ttl(query: QueryDict) -> int:
    """`?ttl=`: how long a signed URL asked for lasts, in seconds."""
    raw = query.get("ttl")
    ttl = DEFAULT_TTL if raw is None else plain_integer(raw)
    if ttl is None or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl must be an integer from 1 to {MAX_TTL} seconds.", code="invalid_ttl")
    return ttl
