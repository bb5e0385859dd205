"""Password sign-in throttling, by django-axes: after SIGNIN_FAILURE_LIMIT failures for one user
name, or from one client address, sign-in is refused for SIGNIN_LOCKOUT_MINUTES.

django-axes watches `django.contrib.auth.authenticate()`, which every password sign-in goes
through: the gallery's /accounts/login/ and the admin's /admin/login/ alike. Its records live in
Django's own database (DATA_DIR), so every worker of an instance counts together. These are the
two hooks that make it fit the service: the client address as the API's throttles see it
(NUM_PROXIES), and a JSON 429 like every other refusal.
"""

import math

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from rest_framework.throttling import BaseThrottle

from .errors import error_json


def client_address(request: HttpRequest) -> str:
    """AXES_CLIENT_IP_CALLABLE: DRF's rule, X-Forwarded-For believed only behind NUM_PROXIES."""
    return BaseThrottle().get_ident(request)


def lockout_response(request: HttpRequest, response=None, credentials: dict | None = None) -> JsonResponse:
    """AXES_LOCKOUT_CALLABLE: the JSON refusal, with how long to wait."""
    minutes = settings.AXES_COOLOFF_TIME.total_seconds() / 60
    return error_json(
        429,
        "signin_locked",
        "Too many failed sign-ins for this user name or from this address; "
        f"try again in {minutes:g} minutes.",
        headers={"Retry-After": str(math.ceil(settings.AXES_COOLOFF_TIME.total_seconds()))},
    )
