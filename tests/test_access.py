"""Authentication, scopes, development mode and throttling, in both storage modes (keys live in
the same store as the records)."""

import base64
import hashlib
import hmac
import io
import json
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.core.management.base import CommandError

from images.management.commands.serve import is_loopback
from tests.helpers import assert_error, auth, create_key, upload
from tests.samples import image_bytes
from tests.servers import ROOT


def post(client, key: str | None = None, seed: int = 0):
    return upload(client, image_bytes(seed=seed), **(auth(key) if key else {}))


@pytest.fixture
def keys(store) -> dict[str, str]:
    return {scope: create_key(f"{scope}-key", scope) for scope in ("read", "write", "admin")}


# --- API keys ------------------------------------------------------------------------------------


def test_the_key_is_printed_last_and_only_its_hash_is_stored(store):
    key = create_key("ci", "read,write")
    assert key.startswith("isk_") and len(key) > 40
    if store.mode == "mongo":
        docs = list(store.mongo_db["api_keys"].find())
        stored = repr(docs)
    else:
        from images.models import ApiKey

        stored = repr(list(ApiKey.objects.values()))
    assert key not in stored
    assert hashlib.sha256(key.encode()).hexdigest() in stored


def test_key_commands_refuse_bad_input(store):
    create_key("dup", "read")
    with pytest.raises(CommandError, match="exists"):
        create_key("dup", "read")
    with pytest.raises(CommandError, match="subset"):
        create_key("x", "read,delete")
    with pytest.raises(CommandError, match="no active key"):
        call_command("revoke_api_key", "nobody")


def test_uploads_need_write(store, client, keys):
    response = post(client)
    assert_error(response, 401)
    assert "Api-Key" in response["WWW-Authenticate"]
    assert "Bearer" in response["WWW-Authenticate"]
    assert_error(post(client, keys["read"]), 403)
    created = post(client, keys["write"])
    assert created.status_code == 201
    assert created.json()["uploaded_by"] == "write-key"
    assert post(client, keys["admin"], seed=1).json()["uploaded_by"] == "admin-key"


def test_deletes_need_admin(store, client, keys):
    image_id = post(client, keys["write"]).json()["image_id"]
    assert_error(client.delete(f"/images/{image_id}"), 401)
    assert_error(client.delete(f"/images/{image_id}", **auth(keys["write"])), 403)
    assert client.delete(f"/images/{image_id}", **auth(keys["admin"])).status_code == 204


def test_bad_and_misplaced_keys_are_refused(store, client, keys):
    assert_error(post(client, "isk_not-a-real-key"), 401)
    assert_error(post(client, "no-prefix"), 401)
    query = client.post(f"/upload?api_key={keys['write']}", {"model_id": "m"})
    assert_error(query, 401)
    bearer_of_key = upload(client, image_bytes(), HTTP_AUTHORIZATION=f"Bearer {keys['write']}")
    assert_error(bearer_of_key, 401)
    store.assert_empty()


def test_a_revoked_key_stops_working(store, client, keys):
    assert post(client, keys["write"]).status_code == 201
    call_command("revoke_api_key", "write-key", stdout=io.StringIO())
    assert_error(post(client, keys["write"], seed=1), 401)


def test_reads_are_public_unless_public_read_is_off(store, client, keys, settings):
    image_id = post(client, keys["write"]).json()["image_id"]
    urls = ["/images", f"/images/{image_id}", f"/images/{image_id}/content", "/image/m1", "/models/m1/images"]
    for url in urls:
        assert client.get(url).status_code == 200, url
    settings.PUBLIC_READ = False
    for url in urls:
        assert_error(client.get(url), 401)
        assert client.get(url, **auth(keys["read"])).status_code == 200, url
        assert client.get(url, **auth(keys["admin"])).status_code == 200, url


# --- development (open) mode ---------------------------------------------------------------------


def test_open_mode_without_any_credential(store, client):
    response = post(client)
    assert response.status_code == 201
    assert response.json()["uploaded_by"] is None
    assert client.delete(f"/images/{response.json()['image_id']}").status_code == 204


def test_open_mode_only_where_serve_allowed_it(store, client, settings):
    settings.OPEN_MODE_ALLOWED = False
    assert_error(post(client), 401)


def test_open_mode_ends_when_a_key_exists(store, client):
    assert post(client).status_code == 201
    create_key("first", "write")
    assert_error(post(client, seed=1), 401)


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("127.9.9.9:1", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        ("10.0.0.5:80", False),
        ("example.org:80", False),
    ],
)
def test_loopback_binds(bind, loopback):
    assert is_loopback(bind) is loopback


def test_serve_refuses_a_public_bind_without_authentication(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "serve", "--bind", "0.0.0.0:1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Refusing to serve on 0.0.0.0:1 with no authentication configured" in result.stderr
    assert "--insecure" in result.stderr


# --- JWT -----------------------------------------------------------------------------------------

SECRET = "s3cret-shared-with-the-issuer-0123456789"


def token(key=SECRET, algorithm="HS256", **claims) -> str:
    body = {"sub": "svc-catalog", "scope": "read write", "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def bearer(value: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {value}"}


@pytest.fixture
def hs256(store, settings) -> None:
    settings.JWT_HS256_SECRET = SECRET


def test_a_valid_token_uploads_as_its_subject(hs256, client):
    response = upload(client, image_bytes(), **bearer(token()))
    assert response.status_code == 201
    assert response.json()["uploaded_by"] == "svc-catalog"


def test_token_scopes_are_enforced(hs256, client):
    assert_error(upload(client, image_bytes(), **bearer(token(scope="read"))), 403)
    image_id = upload(client, image_bytes(), **bearer(token())).json()["image_id"]
    assert_error(client.delete(f"/images/{image_id}", **bearer(token())), 403)
    assert client.delete(f"/images/{image_id}", **bearer(token(scope="admin"))).status_code == 204


@pytest.mark.parametrize(
    "bad",
    [
        token(exp=int(time.time()) - 10),
        token(key="another-secret-of-sufficient-length-000"),
        token(exp=None),
        token(sub=None),
        jwt.encode({"sub": "x", "scope": "write", "exp": int(time.time()) + 300}, None, algorithm="none"),
        "not.a.jwt",
    ],
    ids=["expired", "wrong-key", "no-exp", "no-sub", "alg-none", "garbage"],
)
def test_bad_tokens_are_refused(hs256, client, bad):
    response = upload(client, image_bytes(), **bearer(bad))
    assert_error(response, 401)
    assert "Bearer" in response["WWW-Authenticate"]


def test_audience_and_issuer_are_checked_when_configured(hs256, client, settings):
    settings.JWT_AUDIENCE = "image-service"
    settings.JWT_ISSUER = "https://auth.example"
    good = token(aud="image-service", iss="https://auth.example")
    assert upload(client, image_bytes(), **bearer(good)).status_code == 201
    for bad in (token(aud="other", iss="https://auth.example"), token(aud="image-service", iss="x"), token()):
        assert_error(upload(client, image_bytes(seed=1), **bearer(bad)), 401)


def test_bearer_tokens_without_a_configured_key_are_refused(store, client):
    create_key("someone", "read")  # not open mode
    assert_error(upload(client, image_bytes(), **bearer(token())), 401)


def pem_pair(private_key) -> tuple:
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, public.decode()


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_public_key_tokens(store, client, settings, algorithm, make_key):
    private, public = pem_pair(make_key())
    settings.JWT_PUBLIC_KEY = public
    assert upload(client, image_bytes(), **bearer(token(private, algorithm))).status_code == 201
    other, _ = pem_pair(make_key())
    assert_error(upload(client, image_bytes(seed=1), **bearer(token(other, algorithm))), 401)
    assert_error(upload(client, image_bytes(seed=2), **bearer(token(SECRET, "HS256"))), 401)
    # The classic algorithm confusion: an HS256 token whose HMAC key is the public key itself.
    assert_error(upload(client, image_bytes(seed=3), **bearer(forge_hs256(public.encode()))), 401)


def forge_hs256(secret: bytes) -> str:
    """Built by hand, since PyJWT itself refuses to use a PEM key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "x", "scope": "write", "exp": int(time.time()) + 300}
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --- throttling ----------------------------------------------------------------------------------


def test_uploads_are_throttled_with_retry_after(store, client, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"upload": "2/min", "read": None},
    }
    assert post(client, seed=1).status_code == 201
    assert post(client, seed=2).status_code == 201
    response = post(client, seed=3)
    payload = assert_error(response, 429, "throttled")
    assert 0 < int(response["Retry-After"]) <= 60
    assert "seconds" in payload["detail"]
    assert client.get("/images").status_code == 200  # reads have their own rate
    assert len(store.records()) == 2


def test_reads_have_their_own_rate_per_caller(store, client, settings, keys):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"upload": None, "read": "3/min"},
    }
    for _ in range(3):
        assert client.get("/images").status_code == 200
    assert_error(client.get("/images"), 429)
    # Another caller (a key) has its own budget.
    assert client.get("/images", **auth(keys["read"])).status_code == 200


def test_forwarded_for_is_not_believed_without_a_proxy(store, client, settings):
    """Otherwise a client could dodge its limit by sending a new X-Forwarded-For each time."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"upload": None, "read": "2/min"},
    }
    for i in range(2):
        assert client.get("/images", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code == 200
    assert_error(client.get("/images", HTTP_X_FORWARDED_FOR="198.51.100.9"), 429)
