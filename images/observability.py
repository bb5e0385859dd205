"""Request ids, one JSON log line per request, and Prometheus metrics.

One middleware measures each request once and feeds both the log line and the metrics. Metrics
work across gunicorn workers through prometheus_client's multiprocess mode: `serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start.
"""

import ipaddress
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from rest_framework.permissions import BasePermission
from rest_framework.views import APIView

from .negotiation import LenientNegotiation

log = logging.getLogger("imageservice.requests")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")

REQUESTS = Counter("imageservice_requests_total", "HTTP requests answered.", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "imageservice_request_duration_seconds",
    "Time to answer, until the body starts streaming.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IMAGES_STORED = Counter("imageservice_images_stored_total", "New images stored.")
BYTES_STORED = Counter("imageservice_bytes_stored_total", "Bytes of new images stored.")
BYTES_SERVED = Counter("imageservice_bytes_served_total", "Image bytes sent (ranges counted as sent).")
UPLOADS_REFUSED = Counter("imageservice_uploads_refused_total", "Uploads refused, by reason.", ["reason"])
STORAGE_LATENCY = Histogram(
    "imageservice_storage_seconds",
    "Time spent in the blob storage and the document manager.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
BYTES_ENDPOINTS = {"image-content", "model-image"}


@contextmanager
def timed(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STORAGE_LATENCY.labels(operation).observe(time.perf_counter() - started)


class RequestObservationMiddleware:
    """Gives each request an id (X-Request-ID, kept when the client sent a sane one), then logs
    and counts it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        request.id = request_id(request.META)
        response = self.get_response(request)
        response["X-Request-ID"] = request.id
        match = request.resolver_match
        observe(
            request.META,
            request.method,
            request.path,
            match.url_name if match and match.url_name else "unmatched",
            response.status_code,
            int(response.get("Content-Length") or 0),
            time.perf_counter() - started,
            request_id=request.id,
            image_id=getattr(request, "image_id", None),
            client=client_name(request),
            error_code=getattr(response, "error_code", "unknown"),
        )
        return response


def request_id(environ: dict) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    sent = environ.get("HTTP_X_REQUEST_ID", "")
    return sent if REQUEST_ID.match(sent) else uuid.uuid4().hex


def observe(
    environ: dict,
    method: str,
    path: str,
    endpoint: str,
    status: int,
    size: int,
    elapsed: float,
    *,
    request_id: str,
    image_id: str | None,
    client: str | None,
    error_code: str = "unknown",
) -> None:
    """Counts an answered request and writes its log line: for Django's answers (the middleware)
    and for those that imageservice/wsgi.py sends again without Django."""
    REQUESTS.labels(endpoint, method, status).inc()
    LATENCY.labels(endpoint).observe(elapsed)
    if endpoint in BYTES_ENDPOINTS and status in (200, 206) and method == "GET":
        BYTES_SERVED.inc(size)
    if endpoint == "upload" and 400 <= status < 500:
        UPLOADS_REFUSED.labels(error_code).inc()
    log.info(
        "%s %s %s",
        method,
        path,
        status,
        extra={
            "fields": {
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes": size,
                "request_id": request_id,
                "image_id": image_id,
                "client": client,
                "remote_addr": environ.get("REMOTE_ADDR"),
            }
        },
    )


def client_name(request: HttpRequest) -> str | None:
    """The caller's name: an API key's or token's (DRF's Principal), or a signed-in Django user's."""
    user = getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return None
    return getattr(user, "name", None) or user.get_username()


def _client_allowed(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in settings.METRICS_ALLOWED_NETWORKS)


class MetricsAccess(BasePermission):
    """Metrics are for the allow-listed networks (loopback by default) or an `admin` credential."""

    def has_permission(self, request, view) -> bool:
        return _client_allowed(request) or bool(request.user and request.user.has("admin"))


class MetricsView(APIView):
    permission_classes = [MetricsAccess]
    content_negotiation_class = LenientNegotiation  # scrapers' Accept headers vary

    def get(self, request) -> HttpResponse:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
