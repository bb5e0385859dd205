"""docker-compose.yml's topology, without containers: two service instances over one MongoDB-compatible
server (the session's FerretDB, or MONGO_TEST_URI's), sharing throttles through Redis, behind nginx
running deploy/nginx.conf. Docker cannot run on this machine; this is how that topology is tested.

Debian's nginx and redis-server are installed when missing (scripts/install-system-deps, as root);
under CI=true, their absence fails the run. The tests share one topology and run in order: the last
one kills an instance.
"""

import hashlib
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
import redis
import requests
from django.test import override_settings

from images import apikeys
from tests import servers, topology
from tests.helpers import upload_to
from tests.samples import image_bytes

pytestmark = pytest.mark.slow

UPLOAD_LIMIT = 20  # THROTTLE_UPLOAD, per minute and caller, shared by both instances through Redis
MAX_UPLOAD_MB = 1
MAX_REQUEST_MB = 2  # nginx's client_max_body_size is set from it, as docker-compose.yml does
TIMEOUT = 30  # per request


@dataclass
class Topology:
    a: str  # instance 1's URL
    b: str  # instance 2's URL
    proxy: topology.Proxy  # nginx, in front of both
    redis_url: str
    logs: dict[str, Path]  # each instance's log (gunicorn's stderr: one JSON line per request)
    writer: dict[str, str]  # headers with an API key that may upload
    burst: dict[str, str]  # another one, for the throttle test alone

    @property
    def nginx(self) -> str:
        return self.proxy.url


@pytest.fixture(scope="module")
def programs() -> dict[str, Path]:
    try:
        return topology.ensure_programs("nginx", "redis-server")
    except topology.MissingPrograms as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def scaled_out(programs, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("scaleout")
    database = f"test_{uuid.uuid4().hex[:12]}"
    with override_settings(MONGO={"URI": mongo_uri, "DB": database}):  # keys live in MongoDB, shared
        keys = {name: apikeys.create_key(name, ("write",)) for name in ("writer", "burst")}
    try:
        with topology.redis_server(programs["redis-server"], tmp / "redis") as redis_url:
            env = {
                "MONGO_URI": mongo_uri,
                "MONGO_DB": database,
                "MONGO_TIMEOUT_MS": "10000",
                "MONGO_BLOB_READ_PREFERENCE": "secondaryPreferred",  # harmless on a single server
                "CACHE_URL": redis_url,
                "NUM_PROXIES": "1",
                "THROTTLE_UPLOAD": f"{UPLOAD_LIMIT}/min",
                "MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
                "MAX_REQUEST_MB": str(MAX_REQUEST_MB),
                "MODEL_IMAGE_MAX_AGE": "1",
                "URL_SIGNING_KEY": "scaleout-signing-key",  # the same on both: either checks a URL
            }
            logs = {name: tmp / f"service-{name}.log" for name in "ab"}
            with (
                servers.service({**env, "DATA_DIR": str(tmp / "data-a")}, logs["a"]) as a,
                servers.service({**env, "DATA_DIR": str(tmp / "data-b")}, logs["b"]) as b,
                topology.nginx(
                    programs["nginx"],
                    (topology.upstream_address(a), topology.upstream_address(b)),
                    MAX_REQUEST_MB,
                    tmp / "nginx",
                ) as proxy,
            ):
                yield Topology(
                    a,
                    b,
                    proxy,
                    redis_url,
                    logs,
                    {"Authorization": f"Api-Key {keys['writer']}"},
                    {"Authorization": f"Api-Key {keys['burst']}"},
                )
    finally:
        with pymongo.MongoClient(mongo_uri) as client:
            client.drop_database(database)


def requests_logged(log: Path, path: str) -> int:
    """How many requests for `path` an instance has logged."""
    return sum(f'"path": "{path}"' in line for line in log.read_text().splitlines())


def test_an_upload_to_one_instance_is_read_through_the_other_at_once(scaled_out: Topology) -> None:
    data = image_bytes("PNG", (300, 200), seed=1)
    response = upload_to(scaled_out.a, data, "chair-1", headers=scaled_out.writer)
    assert response.status_code == 201, response.text
    image_id = response.json()["image_id"]

    b = scaled_out.b
    meta = requests.get(f"{b}/images/{image_id}", timeout=TIMEOUT)
    assert meta.status_code == 200
    assert meta.json()["sha256"] == hashlib.sha256(data).hexdigest()
    content = requests.get(f"{b}/images/{image_id}/content", timeout=TIMEOUT)
    assert (content.status_code, content.content) == (200, data)
    assert [m["image_id"] for m in requests.get(f"{b}/models/chair-1/images", timeout=TIMEOUT).json()] == [
        image_id
    ]
    # A derivative made by one instance is the one the other serves.
    thumb_b = requests.get(f"{b}/images/{image_id}/content?preset=thumb", timeout=TIMEOUT)
    thumb_a = requests.get(f"{scaled_out.a}/images/{image_id}/content?preset=thumb", timeout=TIMEOUT)
    assert thumb_b.status_code == thumb_a.status_code == 200
    assert (thumb_a.headers["ETag"], thumb_a.content) == (thumb_b.headers["ETag"], thumb_b.content)


def test_nginx_caches_content_and_derivatives(scaled_out: Topology) -> None:
    nginx = scaled_out.nginx
    data = image_bytes("PNG", (320, 240), seed=2)
    response = upload_to(nginx, data, "table-2", headers=scaled_out.writer)
    assert response.status_code == 201, response.text
    path = f"/images/{response.json()['image_id']}/content"

    for query in ("", "?preset=thumb"):
        first = requests.get(nginx + path + query, timeout=TIMEOUT)
        second = requests.get(nginx + path + query, timeout=TIMEOUT)
        assert first.status_code == second.status_code == 200
        assert [first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]] == ["MISS", "HIT"]
        assert second.content == first.content
        assert second.headers["ETag"] == first.headers["ETag"]
        assert second.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert "gzip" not in second.headers.get("Content-Encoding", "")
    assert requests.get(nginx + path, timeout=TIMEOUT).content == data

    # Hits never reach an instance: not the plain ones, nor a HEAD, a 304 or a range.
    seen = sum(requests_logged(log, path) for log in scaled_out.logs.values())
    etag = requests.head(nginx + path, timeout=TIMEOUT).headers["ETag"]
    not_modified = requests.get(nginx + path, headers={"If-None-Match": etag}, timeout=TIMEOUT)
    assert (not_modified.status_code, not_modified.headers["X-Cache-Status"]) == (304, "HIT")
    ranged = requests.get(nginx + path, headers={"Range": "bytes=10-19"}, timeout=TIMEOUT)
    assert (ranged.status_code, ranged.content) == (206, data[10:20])
    assert ranged.headers["X-Cache-Status"] == "HIT"
    assert sum(requests_logged(log, path) for log in scaled_out.logs.values()) == seen

    # Each answer carries its own request's id, not the one that filled the cache.
    answer = requests.get(nginx + path, headers={"X-Request-ID": "scaleout-hit-1"}, timeout=TIMEOUT)
    assert (answer.headers["X-Cache-Status"], answer.headers["X-Request-ID"]) == ("HIT", "scaleout-hit-1")

    # A request with a credential is the caller's own: neither answered from the cache nor stored.
    private = requests.get(nginx + path, headers=scaled_out.writer, timeout=TIMEOUT)
    assert (private.status_code, private.headers["X-Cache-Status"]) == (200, "BYPASS")


def test_nginx_keeps_one_copy_for_every_signature_and_checks_each(scaled_out: Topology) -> None:
    """Signed URLs of the same bytes share a cache entry; a tampered or expired one is refused even
    though the bytes are cached; an unsigned request never gets the signed entry."""
    nginx = scaled_out.nginx
    data = image_bytes("PNG", (64, 48), seed=5)
    image_id = upload_to(nginx, data, "signed-5", headers=scaled_out.writer).json()["image_id"]

    def signed(ttl: int) -> str:
        answer = requests.get(f"{nginx}/images/{image_id}/signed-url?ttl={ttl}&preset=thumb", timeout=TIMEOUT)
        return answer.json()["url"]  # absolute, made from nginx's Host

    first, second = signed(600), signed(900)
    assert first != second
    answers = [requests.get(url, timeout=TIMEOUT) for url in (first, second)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["X-Cache-Status"] for a in answers] == ["MISS", "HIT"]
    assert int(answers[0].headers["Cache-Control"].split("max-age=")[1].split(",")[0]) <= 600
    tampered = second[:-2] + ("AA" if not second.endswith("AA") else "BB")
    refused = requests.get(tampered, timeout=TIMEOUT)
    assert (refused.status_code, refused.json()["error"]) == (403, "bad_signature")
    unsigned = requests.get(f"{nginx}/images/{image_id}/content?preset=thumb", timeout=TIMEOUT)
    assert (unsigned.status_code, unsigned.headers["X-Cache-Status"]) == (200, "MISS")  # its own entry


def test_nginx_revalidates_a_models_newest_image(scaled_out: Topology) -> None:
    nginx = scaled_out.nginx
    old, new = image_bytes("PNG", (64, 64), seed=3), image_bytes("PNG", (64, 64), seed=4)
    assert upload_to(nginx, old, "lamp-3", headers=scaled_out.writer).status_code == 201
    url = f"{nginx}/image/lamp-3"
    statuses = [requests.get(url, timeout=TIMEOUT).headers["X-Cache-Status"] for _ in range(2)]
    assert statuses == ["MISS", "HIT"]
    # Past MODEL_IMAGE_MAX_AGE (nginx counts whole seconds), nginx asks with the ETag; the service: 304.
    deadline = time.monotonic() + 5
    while (again := requests.get(url, timeout=TIMEOUT)).headers["X-Cache-Status"] == "HIT":
        assert time.monotonic() < deadline, "the entry never expired"
        time.sleep(0.2)
    assert (again.headers["X-Cache-Status"], again.content) == ("REVALIDATED", old)

    assert upload_to(nginx, new, "lamp-3", headers=scaled_out.writer).status_code == 201
    deadline = time.monotonic() + 10  # max-age, plus the instances' HOT_CACHE_SECONDS
    while (latest := requests.get(url, timeout=TIMEOUT)).content != new and time.monotonic() < deadline:
        time.sleep(0.25)
    assert latest.content == new
    assert latest.headers["X-Cache-Status"] in ("EXPIRED", "MISS")


def test_nginx_enforces_the_services_body_limit(scaled_out: Topology) -> None:
    def uploads_logged() -> int:
        return sum(requests_logged(log, "/upload") for log in scaled_out.logs.values())

    seen = uploads_logged()
    too_big = os.urandom(MAX_REQUEST_MB * 1024 * 1024 + 1)
    response = upload_to(scaled_out.nginx, too_big, "big", headers=scaled_out.writer)
    assert (response.status_code, response.json()["error"]) == (413, "request_too_large")
    assert uploads_logged() == seen  # refused before any instance saw it
    # Under the request limit but over the image limit: the service's own 413.
    too_big = os.urandom(MAX_UPLOAD_MB * 1024 * 1024 + 1)
    response = upload_to(scaled_out.nginx, too_big, "big", headers=scaled_out.writer)
    assert (response.status_code, response.json()["error"]) == (413, "too_large")


def test_what_nginx_refuses_itself_is_answered_in_json(scaled_out: Topology) -> None:
    """nginx's own 400, 414 and 431 carry the service's error bodies, as gunicorn's do."""
    long_query = "&".join(f"model_id=model-{n:04}" for n in range(600))  # past nginx's 8 KB buffers
    response = requests.get(f"{scaled_out.nginx}/models?{long_query}", timeout=10)
    assert (response.status_code, response.json()["error"]) == (414, "uri_too_long")
    response = requests.get(f"{scaled_out.nginx}/images", headers={"X-Big": "x" * 9000}, timeout=10)
    assert (response.status_code, response.json()["error"]) == (431, "headers_too_large")
    host, port = scaled_out.nginx.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /images HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        answer = b"".join(iter(lambda: conn.recv(65536), b""))  # nginx closes after a 400
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, head
    assert b'"malformed_request"' in body


def test_throttling_is_shared_through_redis(scaled_out: Topology) -> None:
    targets = [scaled_out.a, scaled_out.b, scaled_out.nginx]
    data = image_bytes("PNG", (16, 16), seed=5)
    statuses = [
        upload_to(targets[i % 3], data, "burst", headers=scaled_out.burst).status_code
        for i in range(UPLOAD_LIMIT)
    ]
    assert statuses == [201] + [200] * (UPLOAD_LIMIT - 1)  # the same bytes again: stored once
    for target in targets:  # the limit is spent, whichever instance is asked
        response = upload_to(target, data, "burst", headers=scaled_out.burst)
        assert response.status_code == 429, target
    assert upload_to(scaled_out.b, data, "burst", headers=scaled_out.writer).status_code == 200  # per caller
    keys = redis.Redis.from_url(scaled_out.redis_url).keys("*throttle_upload*")
    assert any(b"burst" in key for key in keys), keys


def test_killing_an_instance_loses_no_request_nginx_can_retry(scaled_out: Topology) -> None:
    """Last: it kills instance 2 (every process, as a crash would) while reads flow through nginx."""
    nginx = scaled_out.nginx
    response = upload_to(
        scaled_out.a, image_bytes("PNG", (200, 100), seed=6), "kill", headers=scaled_out.writer
    )
    image_id = response.json()["image_id"]
    # Reads that always reach an instance: JSON, and bytes with a credential (never cached).
    reads = [
        (f"{nginx}/images/{image_id}", {}),
        (f"{nginx}/images?model_id=kill", {}),
        (f"{nginx}/images/{image_id}/content", scaled_out.writer),
    ]
    outcomes: Counter[str] = Counter()
    done = threading.Event()
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def client(offset: int) -> None:
        with requests.Session() as session:
            for i in range(2000):
                if done.is_set() or time.monotonic() > deadline:
                    return
                url, headers = reads[(i + offset) % len(reads)]
                try:
                    outcome = str(session.get(url, headers=headers, timeout=TIMEOUT).status_code)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        pids = topology.listeners(int(scaled_out.b.rsplit(":", 1)[1]))
        assert len(pids) >= 2  # the gunicorn master and its workers
        before = sum(outcomes.values())
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(2.0)
        after = sum(outcomes.values())
    finally:
        done.set()
        for thread in threads:
            thread.join(TIMEOUT + 5)
    # nginx retries a request on the other instance until it has sent the client anything. A
    # response the kill cuts mid-body (at most one in flight per client) cannot be retried by
    # anyone; every other request must succeed.
    cut = outcomes.pop("ChunkedEncodingError", 0)
    assert cut <= len(threads)
    assert dict(outcomes) == {"200": sum(outcomes.values())}
    assert before > 20 and after - before > 20, (before, after)

    # nginx did meet the dead instance, and passed those requests to the live one.
    time.sleep(1.5)  # the access log is flushed every second
    b = topology.upstream_address(scaled_out.b)
    retried = [line for line in scaled_out.proxy.access_log.read_text().splitlines() if f"{b}, " in line]
    assert retried, scaled_out.proxy.error_log.read_text()
    # Uploads go on too: nginx sends them to the live instance (the dead one never got them).
    for seed in (7, 8):
        response = upload_to(nginx, image_bytes("PNG", (8, 8), seed=seed), "after", headers=scaled_out.writer)
        assert response.status_code == 201, response.text
