"""One deadline for all of a lookup's MongoDB operations, so that a MongoDB that hangs gives a 503
within MONGO_TIMEOUT_MS + 1 s.

Without it, a request that meets a hung server (a stopped process, a frozen VM) waits out the socket
timeout once per connection that pymongo tries: the read on a pooled connection, its retry on
another, a new connection's handshake. Measured with a stopped FerretDB: 6.3 s with MONGO_TIMEOUT_MS
at 1000, 6.9 s at 3000, where one timeout is 2 s and 4 s. pymongo's client-side operation timeout
(`pymongo.timeout`) bounds them all together.

Only lookups get it: GET and HEAD without derivative parameters, whose MongoDB work is a few small
finds. Uploads and making a derivative move megabytes and decode pixels, which may rightly take
longer; their bytes, once the view has answered, stream under the plain socket timeout.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .backend import get_backend
from .derivatives import wanted


class LookupDeadline:
    """Django middleware: applies the backend's lookup deadline (MongoDB's; the embedded store has none)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in ("GET", "HEAD") and not wanted(request.GET):
            with get_backend().lookup_deadline():
                return self.get_response(request)
        return self.get_response(request)
