"""Django users on the API through the gallery's session (scopes, CSRF), /api/whoami, and the page's
own headers, in both storage modes. What the page does in a browser is in test_gallery.py."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from images.gallery import CSP
from tests.helpers import assert_error, auth, create_key, upload
from tests.samples import image_bytes


@pytest.fixture
def admin_key(store) -> str:
    """A key exists, so the service is not in development mode."""
    return create_key("ops", "admin")


def signed_in(username: str, **flags) -> Client:
    client = Client(enforce_csrf_checks=True)  # as a browser: the token is checked
    client.force_login(User.objects.create_user(username, password="pw-for-tests", **flags))
    return client


def csrf(client: Client) -> dict:
    """The header the page sends, with the token of the cookie that the page set."""
    client.get("/")
    return {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}


def whoami(client: Client, **extra) -> dict:
    response = client.get("/api/whoami", **extra)
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def test_a_user_may_upload_with_the_csrf_token_and_is_recorded(admin_key):
    pat = signed_in("pat")
    assert_error(upload(pat, image_bytes(seed=1)), 403, "permission_denied")  # no token: CSRF
    created = upload(pat, image_bytes(seed=1), **csrf(pat))
    assert created.status_code == 201, created.content
    assert created.json()["uploaded_by"] == "pat"
    refused = pat.delete(f"/images/{created.json()['image_id']}", **csrf(pat))
    assert_error(refused, 403, "permission_denied")  # deleting needs admin: staff only


@pytest.mark.parametrize("flags", [{"is_staff": True}, {"is_superuser": True}])
def test_staff_and_superusers_may_delete(admin_key, flags):
    boss = signed_in("boss", **flags)
    created = upload(boss, image_bytes(seed=2), **csrf(boss)).json()
    assert boss.delete(f"/images/{created['image_id']}", **csrf(boss)).status_code == 204


def test_inactive_users_and_signed_out_browsers_are_anonymous(admin_key):
    gone = signed_in("gone")
    User.objects.filter(username="gone").update(is_active=False)
    assert_error(upload(gone, image_bytes(seed=3), **csrf(gone)), 401, "not_authenticated")
    assert whoami(gone)["name"] is None


def test_an_authorization_header_wins_over_the_session(admin_key):
    pat = signed_in("pat")
    key = create_key("uploader", "write")
    # No CSRF token needed: the key is the credential, and a key cannot be ridden by another site.
    created = upload(pat, image_bytes(seed=4), **auth(key))
    assert created.json()["uploaded_by"] == "uploader"


def test_whoami_says_what_the_caller_may_do(admin_key, settings):
    anonymous = Client()
    assert whoami(anonymous) == {
        "name": None,
        "scopes": ["read"],
        "session": False,
        "open_mode": False,
        "public_read": True,
    }
    assert whoami(signed_in("pat"))["scopes"] == ["read", "write"]
    boss = whoami(signed_in("boss", is_staff=True))
    assert (boss["name"], boss["scopes"], boss["session"]) == ("boss", ["read", "write", "admin"], True)
    reader = whoami(anonymous, **auth(create_key("reader", "read")))
    assert (reader["name"], reader["scopes"], reader["session"]) == ("reader", ["read"], False)
    assert_error(anonymous.get("/api/whoami", **auth("isk_wrong")), 401, "authentication_failed")
    settings.PUBLIC_READ = False
    assert whoami(anonymous)["scopes"] == []


def test_whoami_in_development_mode(store):
    assert whoami(Client()) == {
        "name": None,
        "scopes": ["read", "write", "admin"],
        "session": False,
        "open_mode": True,
        "public_read": True,
    }


def test_api_clients_without_a_session_get_no_vary_cookie(store):
    meta = upload(Client(), image_bytes(seed=5)).json()
    for url in ("/images", f"/images/{meta['image_id']}", f"/images/{meta['image_id']}/content"):
        assert "Cookie" not in Client().get(url).get("Vary", ""), url


def test_the_page_has_a_strict_content_security_policy(store):
    page = Client().get("/")
    assert page.status_code == 200
    assert page["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    html = page.content.decode()
    assert '<script src="/static/images/gallery.js" defer></script>' in html
    assert "<script>" not in html  # no inline script; the config is a JSON data block
    assert 'type="application/json"' in html
    assert "private" in page["Cache-Control"]


def test_an_empty_filter_is_the_plain_page(store):
    response = Client().get("/?model_id=+")
    assert (response.status_code, response["Location"]) == (302, "/")
    assert Client().post("/").status_code == 405


def test_sign_in_and_out(admin_key):
    User.objects.create_user("pat", password="pw-for-tests")
    browser = Client(enforce_csrf_checks=True)
    form = browser.get("/accounts/login/?next=/%3Fmodel_id%3Dm1")
    assert form["Content-Security-Policy"] == CSP
    token = browser.cookies["csrftoken"].value
    wrong = browser.post(
        "/accounts/login/", {"username": "pat", "password": "no", "csrfmiddlewaretoken": token}
    )
    assert b"did not match" in wrong.content
    signed = browser.post(
        "/accounts/login/",
        {
            "username": "pat",
            "password": "pw-for-tests",
            "next": "/?model_id=m1",
            "csrfmiddlewaretoken": token,
        },
    )
    assert (signed.status_code, signed["Location"]) == (302, "/?model_id=m1")
    assert whoami(browser)["name"] == "pat"
    token = browser.cookies["csrftoken"].value  # rotated at sign-in
    out = browser.post("/accounts/logout/", {"csrfmiddlewaretoken": token})
    assert (out.status_code, out["Location"]) == (302, "/")
    assert whoami(browser)["name"] is None
