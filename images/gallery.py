"""The gallery page at `/`, its sign-in pages, and `/api/whoami`, which tells the page what the caller
may do.

The page is a template plus plain JavaScript (static/images/gallery.js) that uses the public API with
the caller's own credential (session cookie or pasted API key), so it can never do more than the API
allows, and the rules stay in one place (images.auth).
"""

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import apikeys
from .auth import SessionAuthentication, allowed, caller_name, open_mode
from .negotiation import LenientNegotiation
from .throttling import ReadRateThrottle

PAGE_SIZE = 24  # cards per API page: a few screens on a desktop, so scrolling fetches the next
# Only the service's own files (private images come from signed URLs, which are the service's too).
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def strict_csp(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The page's policy; the API's HTML (browsable API, Swagger UI) needs inline scripts, so no
    middleware sets it for every page."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = CSP
        return response

    return wrapped


@strict_csp
@never_cache  # it carries the CSRF token and says who is signed in
@require_safe
def page(request: HttpRequest) -> HttpResponse:
    model_id = request.GET.get("model_id")
    if model_id is not None and not model_id.strip():
        return redirect("gallery")  # an emptied filter shows everything, at the plain URL
    config = {"pageSize": PAGE_SIZE, "presets": settings.DERIVATIVE_PRESETS}
    return render(request, "images/gallery.html", {"model_id": model_id or "", "config": config})


login = strict_csp(
    auth_views.LoginView.as_view(
        template_name="images/login.html", next_page="gallery", redirect_authenticated_user=True
    )
)
logout = auth_views.LogoutView.as_view(next_page="gallery")


class WhoAmI(APIView):
    """`GET /api/whoami`: who the credential is and what it may do now, with PUBLIC_READ and
    development mode applied, through the API's own authenticators and rules."""

    permission_classes = []  # anyone may ask; an invalid credential still gets its 401
    throttle_classes = [ReadRateThrottle]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = LenientNegotiation

    def get(self, request: Request) -> Response:
        body = {
            "name": caller_name(request),
            "scopes": [scope for scope in apikeys.SCOPES if allowed(request, scope)],
            "session": isinstance(request.successful_authenticator, SessionAuthentication),
            "open_mode": open_mode(),
            "public_read": settings.PUBLIC_READ,
        }
        return Response(body, headers={"Cache-Control": "no-store"})
