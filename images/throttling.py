"""Rate limits per caller (the credential's name, or the client address), kept in Django's cache:
local memory by default, Redis (CACHE_URL) to share them across instances.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class CallerRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        # DRF binds THROTTLE_RATES at import; reading it per request lets settings change live.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str:
        ident = f"key:{request.user.name}" if request.user else f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class UploadRateThrottle(CallerRateThrottle):
    """Uploads and deletes: THROTTLE_UPLOAD."""

    scope = "upload"


class ReadRateThrottle(CallerRateThrottle):
    """Everything else: THROTTLE_READ."""

    scope = "read"


class DeriveRateThrottle(CallerRateThrottle):
    """Making a derivative, not reading one made already: THROTTLE_DERIVE. Checked only when a
    derivative is about to be made (`check_derive`), for the request the view is answering."""

    scope = "derive"


_answering: ContextVar[Request | None] = ContextVar("answering", default=None)


@contextmanager
def answering(request: Request) -> Iterator[None]:
    """Marks `request` as the one whose caller pays for any derivative made meanwhile."""
    token = _answering.set(request)
    try:
        yield
    finally:
        _answering.reset(token)


def check_derive() -> None:
    """Raises a 429 when the caller being answered has made THROTTLE_DERIVE derivatives already;
    nothing outside a request (commands, tests) is throttled."""
    request = _answering.get()
    throttle = DeriveRateThrottle()
    if request is not None and not throttle.allow_request(request, None):
        raise exceptions.Throttled(throttle.wait())
