"""Every error leaves the service as JSON: `{"error": <code>, "detail": <what to do>}`.

`error_json` builds every such answer: here, and where one is made without an exception (a bytes
response's 412 or 416, /readyz, a sign-in lockout). `error_response` turns an exception into it.
DRF views reach it through `api_exception_handler`, plain views (the bytes endpoints) through
`JSONErrorMiddleware`, and URLs that match nothing through `handler404`/`handler500`. A dependency
that is down becomes a 503 with `Retry-After`; a full disk becomes a 507. Anything else is a bug and
stays a 500.
"""

import errno
import logging
import math
import sqlite3

from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import OperationalError
from django.http import Http404, HttpRequest, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from gridfs.errors import CorruptGridFile
from pymongo.errors import ConnectionFailure, PyMongoError
from rest_framework import exceptions, status

from imageservice.pacing import ClientTooSlow

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class InvalidRequest(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"


class LengthRequired(exceptions.APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_code = "length_required"
    default_detail = "Send the upload with a Content-Length header (chunked bodies are not accepted)."


class RequestTimeout(exceptions.APIException):
    status_code = status.HTTP_408_REQUEST_TIMEOUT
    default_code = "request_timeout"
    default_detail = "The request body arrived too slowly; nothing was stored."


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


class UnsupportedImageType(exceptions.APIException):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    default_code = "not_an_image"


class UnprocessableImage(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "corrupt_image"


class StorageUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "storage_unavailable"
    default_detail = "The image store is unreachable right now; retry shortly."


class InsufficientStorage(exceptions.APIException):
    status_code = status.HTTP_507_INSUFFICIENT_STORAGE
    default_code = "insufficient_storage"
    default_detail = "The image store is out of space; nothing was stored."


def as_api_exception(exc: Exception) -> exceptions.APIException | None:
    """Maps what we know how to answer to an APIException; None means a bug."""
    if isinstance(exc, exceptions.ParseError):  # DRF's word for a broken multipart body
        return InvalidRequest(f"Malformed request: {exc.detail}", code="malformed_request")
    if isinstance(exc, exceptions.APIException):
        return exc
    if isinstance(exc, Http404):
        return exceptions.NotFound(str(exc) or "Not found.")
    if isinstance(exc, PermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if _mongo_unavailable(exc) or _sqlite_says(exc, "locked"):
        log.warning("storage unavailable: %s", exc)
        return StorageUnavailable()
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or _sqlite_says(exc, "full"):
        log.error("storage full: %s", exc)
        return InsufficientStorage()
    if isinstance(exc, UnreadablePostError):  # Django's wrapper of an error reading the body
        if isinstance(exc.__cause__, ClientTooSlow):
            return RequestTimeout()
        return InvalidRequest(f"The request body could not be read: {exc}", code="malformed_request")
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is too large.")
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return InvalidRequest("The form has too many fields or files.", code="too_many_parts")
    if isinstance(exc, (MultiPartParserError, SuspiciousOperation)):
        return InvalidRequest(f"Malformed request: {exc}", code="malformed_request")
    return None


def _mongo_unavailable(exc: Exception) -> bool:
    """MongoDB gone or too slow (a timeout of any kind: pymongo.timeout's deadline, or the server's
    own ExecutionTimeout), or a blob whose chunks it cannot give whole right now (CorruptGridFile: a
    download's first read; `fsck --deep` tells if they are lost)."""
    return isinstance(exc, (ConnectionFailure, CorruptGridFile)) or (
        isinstance(exc, PyMongoError) and exc.timeout
    )


def _sqlite_says(exc: Exception, word: str) -> bool:
    """SQLite reports a busy lock and a full disk as OperationalErrors, told apart by message."""
    return isinstance(exc, (OperationalError, sqlite3.OperationalError)) and word in str(exc)


def error_body(code: str, detail: str, **fields: object) -> dict:
    """The error body, `fields` first (the ones an endpoint adds, such as /readyz's status)."""
    return {**fields, "error": code, "detail": detail}


def error_json(
    http_status: int, code: str, detail: str, /, *, headers: dict[str, str] | None = None, **fields: object
) -> JsonResponse:
    """The one way a JSON error answer is made."""
    return JsonResponse(error_body(code, detail, **fields), status=http_status, headers=headers)


def error_response(exc: Exception) -> JsonResponse | None:
    api_exc = as_api_exception(exc)
    if api_exc is None:
        return None
    codes = api_exc.get_codes()
    code = codes if isinstance(codes, str) else api_exc.default_code
    detail = api_exc.detail if isinstance(api_exc.detail, str) else str(api_exc.detail)
    response = error_json(api_exc.status_code, code, detail)
    response.error_code = code  # for the refused-uploads metric
    if auth_header := getattr(api_exc, "auth_header", None):  # set by DRF for 401s
        response["WWW-Authenticate"] = auth_header
    wait = RETRY_AFTER_SECONDS if isinstance(api_exc, StorageUnavailable) else getattr(api_exc, "wait", None)
    if wait:
        response["Retry-After"] = str(math.ceil(wait))
    return response


def api_exception_handler(exc: Exception, context: dict) -> JsonResponse | None:
    """DRF's EXCEPTION_HANDLER; None lets the exception propagate as the bug it is."""
    return error_response(exc)


class JSONErrorMiddleware:
    """Gives plain Django views the same JSON errors as the DRF views."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> JsonResponse | None:
        return error_response(exc)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_json(404, "not_found", "No such URL.")


def handler500(request: HttpRequest) -> JsonResponse:
    return error_json(500, "server_error", "Internal error; it has been logged.")


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_json(400, "bad_request", "Bad request.")
