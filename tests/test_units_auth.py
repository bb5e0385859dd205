"""Unit tests of images/auth.py's rules: how scopes nest, where a credential is read from, and what
a signed-in user may do. The API tests in test_access.py cover the same through requests."""

import time
from types import SimpleNamespace

import jwt
import pytest
from django.test import RequestFactory
from rest_framework.exceptions import AuthenticationFailed

from images.auth import (
    ApiKeyAuthentication,
    HasScope,
    JWTAuthentication,
    Principal,
    _credential,
    caller_name,
    user_scopes,
)
from images.backend import get_backend


@pytest.mark.parametrize(
    ("scopes", "read", "write", "admin"),
    [
        ({"read"}, True, False, False),
        ({"write"}, True, True, False),
        ({"admin"}, True, True, True),
        ({"read", "admin"}, True, True, True),
        ({"write", "other"}, True, True, False),
        ({"other"}, False, False, False),
        (set(), False, False, False),
    ],
)
def test_scopes_nest(scopes, read, write, admin):
    caller = Principal("ci", frozenset(scopes))
    assert (caller.has("read"), caller.has("write"), caller.has("admin")) == (read, write, admin)


def test_a_principal_is_shown_by_its_name():
    caller = Principal("ci-uploader", frozenset({"read"}))
    assert str(caller) == "ci-uploader"
    assert caller.is_authenticated


@pytest.mark.parametrize(
    ("header", "scheme", "value"),
    [
        ("Api-Key isk_abc", "api-key", "isk_abc"),
        ("API-KEY  isk_abc ", "api-key", "isk_abc"),
        ("Bearer tok", "bearer", "tok"),
        ("Bearer tok", "api-key", None),
        ("isk_abc", "api-key", None),
        (None, "api-key", None),
    ],
)
def test_the_credential_comes_from_the_authorization_header_and_its_scheme(header, scheme, value):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    assert _credential(RequestFactory().get("/", **extra), scheme) == value


@pytest.mark.parametrize(
    ("superuser", "staff", "scopes"),
    [(True, False, {"admin"}), (False, True, {"admin"}), (True, True, {"admin"}), (False, False, {"write"})],
)
def test_users_scopes(superuser, staff, scopes):
    assert user_scopes(SimpleNamespace(is_superuser=superuser, is_staff=staff)) == scopes


def test_the_callers_name_is_recorded_only_when_there_is_a_caller():
    assert caller_name(SimpleNamespace(user=Principal("k", frozenset()))) == "k"
    assert caller_name(SimpleNamespace(user=None)) is None


def bearer(settings, **claims) -> Principal:
    settings.JWT_HS256_SECRET = "s" * 32
    settings.JWT_PUBLIC_KEY = ""
    token = jwt.encode({"exp": int(time.time()) + 60, **claims}, "s" * 32, algorithm="HS256")
    request = RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {token}")
    return JWTAuthentication().authenticate(request)[0]


def test_a_tokens_subject_and_scopes(settings):
    caller = bearer(settings, sub=" ci ", scope="read  write")
    assert caller == Principal("ci", frozenset({"read", "write"}))
    assert bearer(settings, sub="x").scopes == frozenset()


@pytest.mark.parametrize("sub", ["", "   "])
def test_a_token_with_an_empty_subject_is_refused(settings, sub):
    with pytest.raises(AuthenticationFailed) as caught:
        bearer(settings, sub=sub)
    assert str(caught.value.detail) == "The bearer token is not valid: its sub is empty."


def test_an_audience_in_the_token_is_not_checked_when_none_is_configured(settings):
    settings.JWT_AUDIENCE = ""
    assert bearer(settings, sub="ci", aud="someone-else").name == "ci"


def test_a_bad_token_says_why(settings):
    with pytest.raises(AuthenticationFailed) as caught:
        bearer(settings, sub="ci", exp=int(time.time()) - 60)
    assert str(caught.value.detail) == "The bearer token is not valid: Signature has expired."


def test_bearer_tokens_without_a_configured_key_say_so(settings):
    settings.JWT_HS256_SECRET = settings.JWT_PUBLIC_KEY = ""
    request = RequestFactory().get("/", HTTP_AUTHORIZATION="Bearer x.y.z")
    with pytest.raises(AuthenticationFailed) as caught:
        JWTAuthentication().authenticate(request)
    assert str(caught.value.detail) == "Bearer tokens are not accepted here: no JWT key is configured."


def test_an_unknown_api_key_is_refused_saying_where_keys_are_checked(db):
    request = RequestFactory().get("/", HTTP_AUTHORIZATION="Api-Key isk_unknown")
    with pytest.raises(AuthenticationFailed) as caught:
        ApiKeyAuthentication().authenticate(request)
    assert str(caught.value.detail) == (
        "The API key is not valid, or it has been revoked. Keys work only in the store they were made "
        f"in; this service checks {get_backend().keys.WHERE}."
    )


def test_a_refusal_names_the_scope_needed(settings):
    settings.OPEN_MODE_ALLOWED = False
    check = HasScope()
    request = SimpleNamespace(user=Principal("k", frozenset({"write"})))
    assert not check.has_permission(request, SimpleNamespace(required_scope="admin"))
    assert check.message == "This needs the 'admin' scope, which your credential does not have."
    assert check.has_permission(request, SimpleNamespace(required_scope="write"))
