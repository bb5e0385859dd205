"""Issue 15's adversarial review, replayed against the live service in both modes: each finding,
as an attacker tried it, and the limit that now stops it (README: "Abuse limits").

One service per mode, with one worker (so per-worker counters are exact) and small limits, so
that every case ends within seconds.
"""

import http.client
import io
import json
import random
import socket
import time
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from PIL import Image

from tests import servers
from tests.helpers import MODES, TIMEOUT, Live, new_model_id, store_env, upload_to
from tests.samples import image_bytes

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLIENT_TIMEOUT = 2
DERIVATIVE_TIMEOUT = 1
SIGNIN_FAILURE_LIMIT = 3
LIMITS = {
    "JWT_PUBLIC_KEY": RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode(),
    "CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
    "DERIVATIVE_TIMEOUT": str(DERIVATIVE_TIMEOUT),
    "DERIVATIVE_MEMORY_MB": "160",  # the 49 MP RGBA image below decodes to 187 MiB
    "DERIVATIVE_CACHE_MB": "1",
    "HOT_CACHE_SECONDS": "0.5",  # the eviction grace is this plus a second
    "THROTTLE_DERIVE": "10/min",
    "SIGNIN_FAILURE_LIMIT": str(SIGNIN_FAILURE_LIMIT),
    "SIGNIN_LOCKOUT_MINUTES": "1",
}


ENVS: dict[str, dict[str, str]] = {}  # each mode's service environment, for manage.py commands


@pytest.fixture(scope="module", params=MODES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp(f"abuse-{request.param}")
    with store_env(request, request.param, data_dir) as (env, mongo_db):
        env.update(LIMITS)
        ENVS[request.param] = env
        with servers.served(env, data_dir / "service.log", workers=1) as served:
            yield Live(request.param, served.url, data_dir, mongo_db, served)


def token(sub: str, key=RSA_KEY, algorithm: str = "RS256") -> str:
    claims = {"sub": sub, "scope": "read write admin", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm=algorithm)


def caller(sub: str) -> requests.Session:
    """A session with a token of its own: each test is its own caller for the throttles."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token(sub)}"
    return http


def stored(live: Live, name: str) -> bool:
    if live.mongo_db is not None:
        return live.mongo_db["fs.files"].find_one({"filename": name}) is not None
    return bool(live.blob_files(name))


def uploaded(live: Live, http: requests.Session, data: bytes) -> dict:
    response = upload_to(live.url, data, new_model_id("abuse"), http=http)
    assert response.status_code == 201, response.text
    return response.json()


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "teal").save(out, "PNG")
    return out.getvalue()


def derivative(live: Live, http: requests.Session, image: dict, query: str) -> requests.Response:
    return http.get(f"{live.url}/images/{image['image_id']}/content?{query}", timeout=TIMEOUT)


def assert_refused(response: requests.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["error"]) == (status, code), response.text


# --- 1. Derivatives ------------------------------------------------------------------------------


def test_q_is_canonical_so_variants_are_few(live: Live) -> None:
    """PNG ignores q, and q=31..34 is one AVIF: one stored derivative each, not 20 and 4."""
    http = caller("variants")
    image = uploaded(live, http, image_bytes("PNG", (96, 96), seed=1))
    pngs = {derivative(live, http, image, f"w=64&format=png&q={q}").headers["ETag"] for q in (1, 7, 20)}
    avifs = {derivative(live, http, image, f"w=64&format=avif&q={q}").headers["ETag"] for q in range(31, 35)}
    assert len(pngs) == len(avifs) == 1
    assert all(stored(live, etag.strip('"')) for etag in pngs | avifs)


def test_cover_never_upscales(live: Live) -> None:
    """A 64x64 upload asked for a 2048x2048 cover: 64x64, not a 4 MB PNG."""
    http = caller("upscale")
    image = uploaded(live, http, image_bytes("PNG", (64, 64), seed=2))
    response = derivative(live, http, image, "w=2048&h=2048&fit=cover&format=png")
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


@pytest.fixture(scope="module")
def huge(live: Live, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 49 MP single-colour RGBA PNG: about 200 KB stored, 187 MiB decoded. Imported by another
    process, so that the worker has not decoded it once already (memory it freed since, a forked
    make could reuse without counting against its limit)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(png((7000, 7000), "RGBA"))
    model_id = new_model_id("huge")
    imported = servers.manage(ENVS[live.mode], "import", str(path), "--model-id", model_id, "--quiet")
    assert imported.returncode == 0, imported.stderr
    return requests.get(f"{live.url}/images?model_id={model_id}", timeout=TIMEOUT).json()[0]


def test_a_full_size_re_encode_is_bounded_by_pixels(live: Live, huge: dict) -> None:
    started = time.monotonic()
    assert_refused(derivative(live, caller("full-size"), huge, "format=avif"), 422, "too_many_pixels")
    assert time.monotonic() - started < 5


def test_a_make_past_its_limits_is_stopped(live: Live, huge: dict) -> None:
    """A thumbnail of it needs the whole decode: a 422 at DERIVATIVE_MEMORY_MB or at the deadline,
    whichever comes first (the worker's freed memory may let a child go further before the limit
    bites; tests/test_derivatives.py pins each limit alone), nothing kept, and the worker serves on."""
    started = time.monotonic()
    response = derivative(live, caller("memory"), huge, "w=64&format=png")
    assert response.status_code == 422 and response.json()["error"] in (
        "derivative_too_large",
        "derivative_timeout",
    )
    assert time.monotonic() - started < DERIVATIVE_TIMEOUT + 4
    assert not stored(live, f"{huge['sha256']}_64x0_contain_q100.png")
    assert requests.get(f"{live.url}/images?limit=1", timeout=TIMEOUT).status_code == 200


def test_a_make_past_its_deadline_is_killed_and_concurrent_ones_never_answer_late(live: Live) -> None:
    """Four concurrent full-size WebPs of a 9 MP noise image (about 2.5 s each, alone): 422 or 503
    within the deadlines, never a late 200, and no derivative stored."""
    http = caller("deadline")
    noise = Image.frombytes("RGB", (3000, 3000), random.Random(1).randbytes(3000 * 3000 * 3))
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=60)
    image = uploaded(live, http, out.getvalue())
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: derivative(live, http, image, f"format=webp&q={q}"), range(31, 35)))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} <= {422, 503}, [a.text for a in answers]
    assert any(a.json()["error"] == "derivative_timeout" for a in answers)
    # one make at a time per worker, each killed at the deadline; waiters give up after it plus 5 s
    assert elapsed < 2 * DERIVATIVE_TIMEOUT + 5 + 5, elapsed
    sha = image["sha256"]
    if live.mongo_db is not None:
        names = [d["filename"] for d in live.mongo_db["fs.files"].find({"filename": {"$regex": f"^{sha}_"}})]
    else:
        names = [p.name for p in (live.data_dir / "blobs").rglob(f"{sha}_*")]
    assert all(name.endswith("_base.jpg") for name in names), names


def test_making_derivatives_is_throttled_per_caller_but_reading_them_is_not(live: Live) -> None:
    http = caller("greedy")
    image = uploaded(live, http, image_bytes("PNG", (96, 96), seed=3))
    queries = [f"w={w}&format={f}" for f in ("png", "webp") for w in (64, 128, 256, 512, 1024, 2048)]
    statuses = [derivative(live, http, image, q).status_code for q in queries[:11]]
    assert statuses == [200] * 10 + [429]
    again = derivative(live, http, image, queries[0])  # made already: a read, not a make
    assert again.status_code == 200
    assert derivative(live, caller("someone-else"), image, queries[11]).status_code == 200


def test_derivatives_keep_within_the_cache_cap_least_recently_used_first(live: Live) -> None:
    """DERIVATIVE_CACHE_MB=1: three 0.75 MB derivatives; the two older ones go, never an original."""
    http = caller("cache")
    noise = Image.frombytes("RGB", (1100, 1100), bytes(range(256)) * (1100 * 1100 * 3 // 256 + 1))
    out = io.BytesIO()
    noise.save(out, "PNG")
    image = uploaded(live, http, out.getvalue())
    names = []
    for w in (512, 1024):
        response = derivative(live, http, image, f"w={w}&format=png")
        assert response.status_code == 200, response.text
        names.append(response.headers["ETag"].strip('"'))
    time.sleep(0.5 + 1 + 0.5)  # past the grace: both are least recently used now
    newest = derivative(live, http, image, "w=512&h=512&fit=cover&format=png")
    assert newest.status_code == 200
    assert not stored(live, names[0]) and stored(live, newest.headers["ETag"].strip('"'))
    assert stored(live, image["sha256"])
    again = derivative(live, http, image, "w=512&format=png")  # made again when asked for
    assert again.status_code == 200 and again.headers["ETag"].strip('"') == names[0]


# --- 2. Bodies -----------------------------------------------------------------------------------


def raw_request(live: Live, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict, float]:
    """Sends a request's head only (whatever its headers claim); the answer's status, JSON and
    seconds."""
    connection = http.client.HTTPConnection(live.url.removeprefix("http://"), timeout=TIMEOUT)
    started = time.monotonic()
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read()), time.monotonic() - started
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/images"])
def test_a_large_anonymous_body_is_refused_from_its_headers(live: Live, path: str) -> None:
    """A claimed 60 MB POST with a made-up csrftoken cookie: 413 before a byte of it is read."""
    form = {"Cookie": f"csrftoken={'a' * 32}", "Content-Type": "multipart/form-data; boundary=x"}
    status, body, seconds = raw_request(live, "POST", path, {**form, "Content-Length": "62914560"})
    assert (status, body["error"]) == (413, "request_too_large") and seconds < 5
    assert not any((live.data_dir / "tmp").iterdir())
    status, body, _ = raw_request(live, "POST", path, {**form, "Transfer-Encoding": "chunked"})
    assert (status, body["error"]) == (411, "length_required")


def test_trickled_sign_in_bodies_hold_no_thread(live: Live) -> None:
    """Eight connections trickling a sign-in form: reads stay as fast as alone (one worker of four
    threads here), and the trickles get 408 at CLIENT_TIMEOUT."""

    def timed_list() -> float:
        started = time.monotonic()
        assert requests.get(f"{live.url}/images?limit=5", timeout=TIMEOUT).status_code == 200
        return time.monotonic() - started

    def trickle(_: int) -> bytes:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(
                b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            )
            try:
                for _ in range(CLIENT_TIMEOUT * 4):
                    sock.sendall(b"u")
                    time.sleep(0.5)
            except OSError:
                pass  # cut off
            return sock.recv(100)

    baseline = max(timed_list() for _ in range(5))
    with ThreadPoolExecutor(8) as pool:
        trickles = [pool.submit(trickle, i) for i in range(8)]
        time.sleep(0.5)
        attacked = max(timed_list() for _ in range(5))
        answers = [t.result() for t in trickles]
    assert attacked < max(1.0, 5 * baseline), (baseline, attacked)
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers


# --- 3. Sign-in ----------------------------------------------------------------------------------


def test_password_sign_in_locks_out_per_user_name_and_address(live: Live) -> None:
    env = {"DATA_DIR": str(live.data_dir), "DJANGO_SUPERUSER_PASSWORD": "the-right-one"}
    made = servers.manage(env, "createsuperuser", "--noinput", "--username", "pat", "--email", "p@x.io")
    assert made.returncode == 0, made.stderr
    browser = requests.Session()

    def sign_in(path: str, username: str, password: str) -> requests.Response:
        browser.get(f"{live.url}{path}", timeout=TIMEOUT)
        form = {
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        }
        return browser.post(f"{live.url}{path}", data=form, headers={"Referer": live.url}, timeout=TIMEOUT)

    for n in range(SIGNIN_FAILURE_LIMIT - 1):
        assert sign_in("/accounts/login/", "pat", f"wrong-{n}").status_code == 200  # the form again
    locked = sign_in("/accounts/login/", "pat", "wrong-last")
    assert_refused(locked, 429, "signin_locked")
    assert locked.headers["Retry-After"] == "60"
    assert_refused(sign_in("/accounts/login/", "pat", "the-right-one"), 429, "signin_locked")
    assert_refused(sign_in("/admin/login/", "ops", "anything"), 429, "signin_locked")  # the address


# --- 4. No 500s ----------------------------------------------------------------------------------


def test_unauthenticated_oddities_answer_json_4xx(live: Live) -> None:
    http = caller("oddities")
    image = uploaded(live, http, image_bytes("PNG", (64, 64), seed=4))
    es256 = token("tester", ec.generate_private_key(ec.SECP256R1()), "ES256")
    refused = requests.get(
        f"{live.url}/images", headers={"Authorization": f"Bearer {es256}"}, timeout=TIMEOUT
    )
    assert_refused(refused, 401, "authentication_failed")
    assert_refused(requests.get(f"{live.url}/images?limit=²", timeout=TIMEOUT), 400, "invalid_limit")
    assert_refused(derivative(live, http, image, "w=²"), 400, "invalid_size")
    assert_refused(derivative(live, http, image, "w=64&q=¹"), 400, "invalid_quality")
    nested = urlsafe_b64encode(b"[" * 1100).decode()
    assert_refused(requests.get(f"{live.url}/images?cursor={nested}", timeout=TIMEOUT), 400, "invalid_cursor")


def test_an_empty_credential_name_is_refused(live: Live) -> None:
    before = requests.get(f"{live.url}/images?limit=1000", timeout=TIMEOUT).json()
    response = upload_to(live.url, image_bytes(seed=5), new_model_id("nameless"), http=caller(""))
    assert_refused(response, 401, "authentication_failed")
    assert requests.get(f"{live.url}/images?limit=1000", timeout=TIMEOUT).json() == before
    made = servers.manage({"DATA_DIR": str(live.data_dir)}, "create_api_key", "")
    assert made.returncode == 2, made.stderr


# --- 5. gunicorn ---------------------------------------------------------------------------------


def test_forwarded_proto_is_not_believed_and_the_server_header_names_no_version(live: Live) -> None:
    http = caller("forwarded")
    http.headers["X-Forwarded-Proto"] = "https"
    response = upload_to(live.url, image_bytes(seed=6), new_model_id("proto"), http=http)
    assert response.json()["url"].startswith("http://"), response.json()["url"]
    assert response.headers["Server"] == "image-service"


def test_what_gunicorn_refuses_itself_is_a_json_error(live: Live) -> None:
    """A request line over 8190 bytes, too many headers, or no HTTP at all never reach the app:
    gunicorn answers them, with the service's JSON body rather than its own HTML page. A URL that
    fits is the app's to judge."""
    many = "&".join(f"model_id={'m' * 60}{n}" for n in range(100))  # 100 ids of 61 characters: 7.2 KB
    assert requests.get(f"{live.url}/models?{many}", timeout=TIMEOUT).status_code == 200
    too_long = requests.get(f"{live.url}/models?{many}&{'x' * 1000}=1", timeout=TIMEOUT)
    assert_refused(too_long, 414, "uri_too_long")
    assert "POST /models/lookup" in too_long.json()["detail"]
    headers = {f"X-Extra-{n}": "1" for n in range(101)}
    crowded = requests.get(f"{live.url}/images", headers=headers, timeout=TIMEOUT)
    assert_refused(crowded, 431, "headers_too_large")
    assert too_long.headers["Content-Type"] == crowded.headers["Content-Type"] == "application/json"
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        answer = sock.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head, answer
    assert json.loads(body)["error"] == "malformed_request", answer
