"""The WSGI application: Django's, with a layer in front that sends a hot image again without Django.

A hot hit of a content endpoint reads nothing but this worker's caches, yet Django's middleware
chain and DRF's dispatch cost it about three times what a bare `FileResponse` costs (issue 17). So
the first such answer for a request is kept as Django sent it (images/hotcache.py's `AnswerCache`),
and the same request is then answered from it: the same status, headers and body, a fresh
X-Request-ID, the same log line and metrics (images/observability.py's `observe`). It is sent again
only while every cache entry that Django's answer read is still cached as it was, so a delete, a
newer image of the model or an entry's expiry sends the next request through Django again.

"The same request" is everything an answer can depend on (`answer_key`): the method, path and query,
the headers that CORS, content negotiation, conditional requests, host checks and the scheme look at.
Requests that carry what makes an answer depend on more (a credential, a signature, a cookie, a
body, a range or a date-based precondition) always go through Django, and so does everything while reads are
throttled (each read must be counted) or DISALLOWED_USER_AGENTS is set.
"""

import os
import time
from collections.abc import Callable, Hashable, Iterable

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imageservice.settings")
django.setup(set_prefix=False)  # as get_wsgi_application() does; what follows needs the apps loaded

from rest_framework.settings import api_settings  # noqa: E402

from images import hotcache, signing  # noqa: E402
from images.observability import BYTES_ENDPOINTS, client_name, observe, request_id  # noqa: E402

CONTENT_PATHS = ("/images/", "/image/")
# Headers whose presence sends a request through Django: its answer depends on more than the key.
THROUGH_DJANGO = (
    "HTTP_AUTHORIZATION",
    "HTTP_COOKIE",
    "HTTP_RANGE",
    "HTTP_IF_RANGE",
    "HTTP_IF_MATCH",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_TRANSFER_ENCODING",
)
# What else an answer may depend on: CORS (Origin), negotiation (Accept), 304s, ALLOWED_HOSTS, HTTPS.
KEYED = (
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "HTTP_ACCEPT",
    "HTTP_ORIGIN",
    "HTTP_IF_NONE_MATCH",
    "HTTP_HOST",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
)
KEY_ENVIRON = "imageservice.answer_key"


def answer_key(environ: dict) -> Hashable | None:
    """The request, as far as a content endpoint's answer can depend on it; None: through Django."""
    method = environ.get("REQUEST_METHOD")
    if method not in ("GET", "HEAD") or not environ.get("PATH_INFO", "").startswith(CONTENT_PATHS):
        return None
    if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or any(map(environ.get, THROUGH_DJANGO)):
        return None
    if settings.DISALLOWED_USER_AGENTS or api_settings.DEFAULT_THROTTLE_RATES.get("read"):
        return None
    if f"{signing.SIGNATURE}=" in environ.get("QUERY_STRING", ""):
        return None  # a signed URL's expiry is checked on every request (a false match costs only speed)
    return (method, *(environ.get(name) for name in KEYED))


class HotAnswerHandler(WSGIHandler):
    """Django's WSGI handler, answering hot hits from `hotcache.answers` (see the module's doc)."""

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        key = answer_key(environ)
        if key is not None:
            answer = hotcache.answers.get(key)
            if answer is not None and (body := self._body(answer)) is not None:
                return self._send(answer, body, environ, start_response, started)
            environ[KEY_ENVIRON] = key
        return super().__call__(environ, start_response)

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        key = request.META.get(KEY_ENVIRON)
        if key is None:
            return super().get_response(request)
        with hotcache.tracking() as reads:
            response = super().get_response(request)
        if (answer := _answer(request, response, reads)) is not None:
            hotcache.answers.put(key, answer)
        return response

    @staticmethod
    def _body(answer: hotcache.Answer) -> bytes | None:
        """The answer's body; None when its blob has left the cache (Django reads it again)."""
        return b"" if answer.blob is None else hotcache.blobs.peek(answer.blob)

    @staticmethod
    def _send(
        answer: hotcache.Answer, body: bytes, environ: dict, start_response: Callable, started: float
    ) -> list[bytes]:
        rid = request_id(environ)
        headers = list(answer.headers)
        headers.insert(answer.request_id_at, ("X-Request-ID", rid))
        start_response(answer.status, headers)
        observe(
            environ,
            environ["REQUEST_METHOD"],
            answer.path,
            answer.endpoint,
            answer.status_code,
            answer.size,
            time.perf_counter() - started,
            request_id=rid,
            image_id=answer.image_id,
            client=None,
        )
        return [body] if body else []


def _answer(request: HttpRequest, response: HttpResponseBase, reads: list) -> hotcache.Answer | None:
    """What may be sent again of Django's `response`: only a content endpoint's answer that
    images/serving.py made from the hot caches alone (`replayable`), to an anonymous caller, with
    no cookie set, while what it read is still cached."""
    match = request.resolver_match
    if (
        not hasattr(response, "replay_body")
        or response.streaming
        or response.cookies
        or not (match and match.url_name in BYTES_ENDPOINTS)
        or client_name(request) is not None
        or not reads
        or not hotcache.still_cached(reads)
    ):
        return None
    headers = [(name, value) for name, value in response.items()]
    at = next(i for i, (name, _) in enumerate(headers) if name == "X-Request-ID")
    del headers[at]
    return hotcache.Answer(
        status=f"{response.status_code} {response.reason_phrase}",
        status_code=response.status_code,
        headers=tuple(headers),
        request_id_at=at,
        blob=response.replay_body,
        size=int(response.get("Content-Length") or 0),
        endpoint=match.url_name,
        path=request.path,
        image_id=getattr(request, "image_id", None),
        reads=tuple(reads),
    )


application = HotAnswerHandler()
