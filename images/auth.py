"""Who is calling, and what they may do: API keys and JWT bearer tokens, checked against scopes.

Uploads need `write` and deletes need `admin`; reads need `read` only when PUBLIC_READ is off, or
a valid signed URL (images/signing.py).
Scopes nest: `admin` includes `write`, which includes `read`. With no key and no JWT key
configured, the service runs open (development mode), but only where `serve` allowed it.
Django users signed in on the gallery page (a session cookie) get scopes from their account:
superusers and staff `admin`, other active users `write`.
"""

from dataclasses import dataclass

import jwt
from django.conf import settings
from rest_framework import authentication
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

from . import apikeys, signing
from .backend import get_backend

CHALLENGE = 'Api-Key realm="image-service", Bearer realm="image-service"'


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: DRF's `request.user`."""

    name: str
    scopes: frozenset[str]
    is_authenticated = True

    def __str__(self) -> str:
        return self.name  # as pages show the caller (DRF's browsable API prints `user`)

    def has(self, scope: str) -> bool:
        granted = {s for s in self.scopes if s in apikeys.SCOPES}
        rank = max((apikeys.SCOPES.index(s) for s in granted), default=-1)
        return apikeys.SCOPES.index(scope) <= rank


def _credential(request, scheme: str) -> str | None:
    kind, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return value.strip() if kind.lower() == scheme else None


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`. Never from the query string, where keys end up in logs."""

    def authenticate(self, request):
        key = _credential(request, "api-key")
        if key is None:
            return None
        found = apikeys.verify(key)
        if found is None or not found.name.strip():  # nameless: made before names were checked
            raise AuthenticationFailed(
                "The API key is not valid, or it has been revoked. Keys work only in the store they "
                f"were made in; this service checks {get_backend().keys.WHERE}."
            )
        return Principal(found.name, frozenset(found.scopes)), found

    def authenticate_header(self, request) -> str:
        return CHALLENGE


def jwt_configured() -> bool:
    return bool(settings.JWT_HS256_SECRET or settings.JWT_PUBLIC_KEY)


class JWTAuthentication(BaseAuthentication):
    """`Authorization: Bearer <JWT>` issued elsewhere, verified with a shared secret or a public key."""

    def authenticate(self, request):
        token = _credential(request, "bearer")
        if token is None:
            return None
        if not jwt_configured():
            raise AuthenticationFailed("Bearer tokens are not accepted here: no JWT key is configured.")
        if settings.JWT_PUBLIC_KEY:
            key, algorithms = settings.JWT_PUBLIC_KEY, ["RS256", "ES256"]
        else:
            key, algorithms = settings.JWT_HS256_SECRET, ["HS256"]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,  # a fixed list: `alg: none` and algorithm swaps are refused
                audience=settings.JWT_AUDIENCE or None,
                issuer=settings.JWT_ISSUER or None,
                options={"require": ["exp", "sub"], "verify_aud": bool(settings.JWT_AUDIENCE)},
            )
        except jwt.PyJWTError as exc:  # InvalidKeyError too: an ES256 header against an RSA key
            raise AuthenticationFailed(f"The bearer token is not valid: {exc}.") from exc
        subject = str(claims["sub"]).strip()
        if not subject:  # it would be recorded as uploaded_by, and names the caller in logs
            raise AuthenticationFailed("The bearer token is not valid: its sub is empty.")
        scopes = claims.get("scope", "")
        return Principal(subject, frozenset(str(scopes).split())), claims

    def authenticate_header(self, request) -> str:
        return CHALLENGE


def open_mode() -> bool:
    """No credential is configured and `serve` allowed running open (bound to loopback)."""
    return settings.OPEN_MODE_ALLOWED and not jwt_configured() and not apikeys.any_active()


class SessionAuthentication(authentication.SessionAuthentication):
    """A Django user signed in through /accounts/login/ (or the admin). Unsafe methods also need
    the CSRF token (`X-CSRFToken`), which DRF checks for session-authenticated requests only."""

    def authenticate(self, request):
        # Without the cookie, the session is never touched, so API responses get no `Vary: Cookie`.
        if settings.SESSION_COOKIE_NAME not in request.COOKIES:
            return None
        found = super().authenticate(request)
        if found is None:
            return None
        user = found[0]
        return Principal(user.get_username(), user_scopes(user)), user


def user_scopes(user) -> frozenset[str]:
    """Staff run the service, so they may delete; any other active user may add images."""
    return frozenset({"admin" if user.is_superuser or user.is_staff else "write"})


def allowed(request, scope: str) -> bool:
    """Whether this request may do what `scope` guards: the rule for the API and the gallery page."""
    if (scope == "read" and settings.PUBLIC_READ) or open_mode():
        return True
    return request.user is not None and request.user.has(scope)


class HasScope(BasePermission):
    """Checks the view's `required_scope`; DRF turns a refusal into 401 (no valid credential)
    or 403 (a valid credential without the scope)."""

    def has_permission(self, request, view) -> bool:
        scope = view.required_scope
        if scope == "read" and signing.presented(request.GET):
            signing.admit(request)  # a 403 unless valid: then it stands in for a credential
            return True
        self.message = f"This needs the '{scope}' scope, which your credential does not have."
        return allowed(request, scope)


def caller_name(request) -> str | None:
    return request.user.name if request.user else None
