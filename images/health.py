"""Liveness and readiness, for load balancers and orchestrators.

`/healthz` says the process answers; it touches nothing, so a database outage never gets the
process restarted. `/readyz` says whether requests can be served now: the record store and the
blob store must answer.
"""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from .backend import get_backend
from .errors import RETRY_AFTER_SECONDS, error_json


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _problem() -> str | None:
    try:
        return get_backend().problem()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready, and says why
        return f"{exc.__class__.__name__}: {exc}"


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    problem = _problem()
    if problem is None:
        return JsonResponse({"status": "ready"})
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return error_json(503, "storage_unavailable", problem, headers=headers, status="unavailable")
