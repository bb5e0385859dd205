"""Who is calling, and what they may do: API keys and JWT bearer tokens, checked against scopes.

Uploads need `write` and deletes need `admin`; reads need `read` only when PUBLIC_READ is off.
Scopes nest: `admin` includes `write`, which includes `read`. With no key and no JWT key
configured, the service runs open (development mode), but only where `serve` allowed it.
"""

from dataclasses import dataclass

import jwt
from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

from . import apikeys

CHALLENGE = 'Api-Key realm="image-service", Bearer realm="image-service"'


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: DRF's `request.user`."""

    name: str
    scopes: frozenset[str]
    is_authenticated = True

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
        if found is None:
            raise AuthenticationFailed("The API key is not valid, or it has been revoked.")
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
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed(f"The bearer token is not valid: {exc}.") from exc
        scopes = claims.get("scope", "")
        return Principal(str(claims["sub"]), frozenset(str(scopes).split())), claims

    def authenticate_header(self, request) -> str:
        return CHALLENGE


def open_mode() -> bool:
    """No credential is configured and `serve` allowed running open (bound to loopback)."""
    return settings.OPEN_MODE_ALLOWED and not jwt_configured() and not apikeys.any_active()


class HasScope(BasePermission):
    """Checks the view's `required_scope`; DRF turns a refusal into 401 (no valid credential)
    or 403 (a valid credential without the scope)."""

    def has_permission(self, request, view) -> bool:
        scope = view.required_scope
        if (scope == "read" and settings.PUBLIC_READ) or open_mode():
            return True
        if request.user is None:
            return False
        self.message = f"This needs the '{scope}' scope, which your credential does not have."
        return request.user.has(scope)


def caller_name(request) -> str | None:
    return request.user.name if request.user else None
