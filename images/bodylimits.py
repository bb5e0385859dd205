"""Request body limits, judged from the headers before anything reads a body.

Django reads a body for more than the views: the CSRF check parses a POST whenever a well-formed
`csrftoken` cookie comes with it, and anyone can make one up. So the limits sit first in the
middleware chain and cover every path: an upload may send `MAX_REQUEST_MB`, any other request
(the sign-in and admin forms, JSON endpoints) at most `MAX_FORM_KB`, and a body without a
`Content-Length` (chunked) is refused, since its size cannot be judged up front. How fast a body
must arrive is the worker's rule (imageservice/workers.py).
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

from .errors import LengthRequired, PayloadTooLarge, error_response

UPLOAD = "upload"  # the URL name of the one endpoint that takes large bodies


def body_limit(request: HttpRequest) -> tuple[int, str]:
    """The largest body this request may send, in bytes, and that limit as people read it."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        match = None
    request.resolver_match = match  # the request log names the endpoint even when refused here
    if match is not None and match.url_name == UPLOAD:
        return settings.MAX_REQUEST_MB * 1024 * 1024, f"{settings.MAX_REQUEST_MB} MB"
    return settings.MAX_FORM_KB * 1024, f"{settings.MAX_FORM_KB} KB"


class RequestBodyLimitMiddleware:
    """Answers 411 or 413 (JSON) before a body that is chunked or over its limit is read."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        length = request.META.get("CONTENT_LENGTH") or ""
        if not length and "HTTP_TRANSFER_ENCODING" in request.META:
            return error_response(LengthRequired())
        if length.isascii() and length.isdigit() and int(length) > 0:
            limit, readable = body_limit(request)
            if int(length) > limit:
                return error_response(
                    PayloadTooLarge(f"The request body is larger than {readable}.", code="request_too_large")
                )
        return self.get_response(request)
