"""Tests against the real service process (`manage.py serve`, i.e. gunicorn), in both storage modes.

Django's test client skips what only the real server does: gunicorn's `sendfile` of a ranged file,
streaming a GridOut through `wsgi.file_wrapper`, keep-alive framing, worker processes racing each
other, and a MongoDB that goes away and comes back while the service keeps running.
"""

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from threading import Barrier

import pymongo
import pytest
import requests

from tests import servers
from tests.conftest import MODES
from tests.samples import image_bytes, noise_jpeg

TIMEOUT = 30  # seconds, for every request: a hang fails the test instead of stalling the run
OUTAGE_DEADLINE = 5  # seconds within which a request must get its 503 while MongoDB is down
# All uploads come from 127.0.0.1, so the per-caller upload limit would couple the tests.
UNTHROTTLED = {"THROTTLE_UPLOAD": ""}


@dataclass
class Live:
    """A running service, with a way to look at what it stored behind the API."""

    mode: str
    url: str
    data_dir: Path
    mongo_db: pymongo.database.Database | None = None

    def blob_files(self, name: str) -> list[Path]:
        """Published blob files called `name` (embedded mode), leaving out the `.tmp` staging area."""
        blobs = self.data_dir / "blobs"
        return [p for p in blobs.rglob(name) if p.is_file() and p.relative_to(blobs).parts[0] != ".tmp"]


@pytest.fixture(scope="module", params=MODES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One service per mode for the whole module: starting gunicorn costs seconds."""
    data_dir = tmp_path_factory.mktemp(f"service-{request.param}")
    env = {**UNTHROTTLED, "DATA_DIR": str(data_dir), "MAX_UPLOAD_MB": "64"}
    with ExitStack() as stack:
        mongo_db = None
        if request.param == "mongo":
            uri = request.getfixturevalue("mongo_uri")
            name = f"test_{uuid.uuid4().hex[:12]}"
            # FerretDB on SQLite scans whole collections where MongoDB uses an index, so on a busy
            # machine 20 concurrent uploads can outlast the default 4 s socket timeout; these tests
            # are about behaviour, and the outage tests below check the timeouts on their own.
            env.update(MONGO_URI=uri, MONGO_DB=name, MONGO_TIMEOUT_MS="10000")
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
            stack.callback(client.close)
            stack.callback(client.drop_database, name)
            mongo_db = client[name]
        url = stack.enter_context(servers.service(env, data_dir / "service.log"))
        yield Live(request.param, url, data_dir, mongo_db)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_model_id(prefix: str) -> str:
    """Tests share a service, so each uses models of its own."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def upload(
    url: str,
    data: bytes,
    model_id: str,
    field: str = "file",
    filename: str = "photo.jpg",
    http: requests.Session | None = None,
    timeout: float = TIMEOUT,
) -> requests.Response:
    """POST /upload the way the old clients do: multipart with the image and a model_id field."""
    post = http.post if http is not None else requests.post
    return post(
        f"{url}/upload",
        files={field: (filename, data, "application/octet-stream")},
        data={"model_id": model_id},
        timeout=timeout,
    )


@cache
def ranged_sample() -> bytes:
    """A noise JPEG of a few MB: many GridFS chunks, and offsets past 1 MB to seek to."""
    data = noise_jpeg((2000, 1400))
    assert len(data) > 1024 * 1024
    return data


@cache
def large_sample() -> bytes:
    """Around 25 MB: bigger than any buffer on the way, smaller than MAX_UPLOAD_MB=64."""
    data = noise_jpeg((5000, 4300))
    assert len(data) > 20 * 1024 * 1024
    return data


@pytest.fixture(scope="module")
def ranged(live: Live) -> tuple[str, bytes]:
    """The ranged sample, uploaded once per service; returns its image_id and bytes."""
    data = ranged_sample()
    response = upload(live.url, data, new_model_id("ranged"))
    assert response.status_code == 201, response.text
    return response.json()["image_id"], data


# --- The old clients' flow ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["file", "image"])
def test_old_client_flow(live: Live, field: str) -> None:
    """Existing clients upload with `file` (or `image`), list everything, and fetch by model."""
    data = image_bytes("JPEG", seed={"file": 1, "image": 2}[field])
    model_id = new_model_id("compat")

    first = upload(live.url, data, model_id, field=field)
    assert first.status_code == 201, first.text
    assert first.headers["Content-Type"] == "application/json"
    created = first.json()
    assert created["model_id"] == model_id
    assert created["sha256"] == sha256(data)
    assert created["size"] == len(data)

    again = upload(live.url, data, model_id, field=field)
    assert again.status_code == 200, again.text
    assert again.json()["image_id"] == created["image_id"]

    listing = requests.get(f"{live.url}/images", timeout=TIMEOUT)
    assert listing.status_code == 200
    assert isinstance(listing.json(), list)
    mine = requests.get(f"{live.url}/images", params={"model_id": model_id}, timeout=TIMEOUT).json()
    assert [image["image_id"] for image in mine] == [created["image_id"]]

    content = requests.get(f"{live.url}/image/{model_id}", timeout=TIMEOUT)
    assert content.status_code == 200
    assert content.headers["Content-Type"] == "image/jpeg"
    assert content.content == data


# --- Ranges, conditional requests and HEAD through the real WSGI server ------------------------


def span_cases(size: int) -> list[tuple[str, int, int]]:
    """(Range header, first byte, last byte), for a body of `size` bytes."""
    chunk = 255 * 1024
    half = size // 2 + 7
    return [
        ("bytes=0-99", 0, 99),
        ("bytes=1000000-1000099", 1_000_000, 1_000_099),
        (f"bytes={chunk - 10}-{chunk + 89}", chunk - 10, chunk + 89),  # across a GridFS chunk
        ("bytes=-50", size - 50, size - 1),
        (f"bytes={half}-", half, size - 1),
        (f"bytes={size - 10}-{size + 1000}", size - 10, size - 1),  # clipped to the end
    ]


@pytest.mark.parametrize("case", range(6))
def test_range_returns_exactly_the_span(live: Live, ranged: tuple[str, bytes], case: int) -> None:
    """206 with exactly the requested bytes, and no more on the wire: the next response on the
    same keep-alive connection still parses (a server that sendfile()d too much would corrupt it).
    """
    image_id, data = ranged
    header, first, last = span_cases(len(data))[case]
    with requests.Session() as http:
        response = http.get(
            f"{live.url}/images/{image_id}/content", headers={"Range": header}, timeout=TIMEOUT
        )
        assert response.status_code == 206, response.text
        assert response.content == data[first : last + 1]
        assert response.headers["Content-Length"] == str(last - first + 1)
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        follow_up = http.get(f"{live.url}/images/{image_id}", timeout=TIMEOUT)
        assert follow_up.status_code == 200
        assert follow_up.json()["image_id"] == image_id


@pytest.mark.parametrize("header", ["bytes={size}-", "bytes={size_plus}-{size_plus}", "bytes=-0"])
def test_unsatisfiable_range_is_416(live: Live, ranged: tuple[str, bytes], header: str) -> None:
    image_id, data = ranged
    value = header.format(size=len(data), size_plus=len(data) + 5)
    response = requests.get(
        f"{live.url}/images/{image_id}/content", headers={"Range": value}, timeout=TIMEOUT
    )
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"
    assert response.json()["error"] == "range_not_satisfiable"


def test_head_gives_length_and_no_body(live: Live, ranged: tuple[str, bytes]) -> None:
    image_id, data = ranged
    response = requests.head(f"{live.url}/images/{image_id}/content", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == b""


def test_etag_revalidation_and_full_body(live: Live, ranged: tuple[str, bytes]) -> None:
    """A full GET is byte-identical; revalidating with its ETag costs a 304 and no body."""
    image_id, data = ranged
    url = f"{live.url}/images/{image_id}/content"
    full = requests.get(url, timeout=TIMEOUT)
    assert full.status_code == 200
    assert full.headers["Content-Length"] == str(len(data))
    assert sha256(full.content) == sha256(data)
    etag = full.headers["ETag"]
    assert etag == f'"{sha256(data)}"'

    not_modified = requests.get(url, headers={"If-None-Match": etag}, timeout=TIMEOUT)
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["ETag"] == etag


def test_stale_if_range_gets_the_whole_body(live: Live, ranged: tuple[str, bytes]) -> None:
    """A client resuming a download of something else must not get a splice of this image."""
    image_id, data = ranged
    response = requests.get(
        f"{live.url}/images/{image_id}/content",
        headers={"Range": "bytes=100-199", "If-Range": '"not-this-image"'},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.content == data


# --- Large bodies ------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_upload_and_download_round_trip(live: Live) -> None:
    """~25 MB each way: spooled to disk on the way in, streamed (never buffered) on the way out.

    Deleted afterwards: the service is shared, and FerretDB scans every chunk for some queries.
    """
    data = large_sample()
    created = upload(live.url, data, new_model_id("large"), timeout=120)
    assert created.status_code == 201, created.text
    assert created.json()["size"] == len(data)
    image_url = f"{live.url}/images/{created.json()['image_id']}"
    try:
        digest = hashlib.sha256()
        received = 0
        with requests.get(f"{image_url}/content", stream=True, timeout=TIMEOUT) as response:
            assert response.status_code == 200
            assert response.headers["Content-Length"] == str(len(data))
            for chunk in response.iter_content(1024 * 1024):
                digest.update(chunk)
                received += len(chunk)
        assert received == len(data)
        assert digest.hexdigest() == sha256(data)
    finally:
        assert requests.delete(image_url, timeout=TIMEOUT).status_code == 204


# --- Concurrency -------------------------------------------------------------------------------


def test_concurrent_identical_uploads_store_one_image(live: Live) -> None:
    """20 clients send the same bytes for the same model at once, across gunicorn's workers and
    threads: one record, one blob, and every client is told the same image_id.
    """
    clients = 20
    data = noise_jpeg((300, 250))
    model_id = new_model_id("race")
    start = Barrier(clients)

    def send() -> requests.Response:
        start.wait(TIMEOUT)
        return upload(live.url, data, model_id)

    with ThreadPoolExecutor(clients) as pool:
        responses = [f.result(timeout=2 * TIMEOUT) for f in [pool.submit(send) for _ in range(clients)]]

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 201}, [r.text for r in responses if r.status_code not in (200, 201)]
    assert statuses.count(201) == 1
    assert len({r.json()["image_id"] for r in responses}) == 1

    name = sha256(data)
    if live.mode == "mongo":
        assert live.mongo_db["images"].count_documents({"sha256": name}) == 1
        files = list(live.mongo_db["fs.files"].find({"filename": name}))
        assert len(files) == 1
        chunks = live.mongo_db["fs.chunks"].count_documents({"files_id": files[0]["_id"]})
        assert chunks == -(-len(data) // files[0]["chunkSize"])
    else:
        assert [p.name for p in live.blob_files(name)] == [name]
        leftovers = list((live.data_dir / "blobs" / ".tmp").glob(f"{name[:16]}-*"))
        assert leftovers == []


# --- MongoDB outages ---------------------------------------------------------------------------


def assert_unavailable(call: Callable[[], requests.Response]) -> None:
    """A 503 with Retry-After and a JSON body, quickly: clients back off instead of hanging."""
    started = time.monotonic()
    response = call()
    elapsed = time.monotonic() - started
    assert elapsed < OUTAGE_DEADLINE, elapsed
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"] == "storage_unavailable"


def outage_requests(url: str, image_id: str) -> list[Callable[[], requests.Response]]:
    """A read of metadata, a read of bytes and a write: all three depend on MongoDB."""
    return [
        lambda: requests.get(f"{url}/images", timeout=TIMEOUT),
        lambda: requests.get(f"{url}/images/{image_id}/content", timeout=TIMEOUT),
        lambda: upload(url, image_bytes("PNG", seed=7), new_model_id("outage")),
    ]


@pytest.mark.slow
def test_mongo_outage_gives_503_then_recovers(tmp_path: Path, ferretdb_bin: Path) -> None:
    """MongoDB stops under a running service, then comes back on the same port and data: the
    service answers 503 meanwhile and recovers by itself, with nothing lost.
    """
    port = servers.free_port()
    ferret_dir = tmp_path / "ferretdb"
    with ExitStack() as stack:
        first_run = stack.enter_context(ExitStack())
        uri = first_run.enter_context(servers.ferretdb(ferretdb_bin, ferret_dir, port=port))
        env = {
            **UNTHROTTLED,
            "MONGO_URI": uri,
            "MONGO_DB": "outage",
            "MONGO_TIMEOUT_MS": "1000",
            "DATA_DIR": str(tmp_path / "service"),
        }
        url = stack.enter_context(servers.service(env, tmp_path / "service.log"))
        created = upload(url, image_bytes("JPEG", seed=3), new_model_id("outage"))
        assert created.status_code == 201, created.text
        image_id = created.json()["image_id"]

        first_run.close()  # MongoDB goes away
        for call in outage_requests(url, image_id):
            assert_unavailable(call)

        stack.enter_context(servers.ferretdb(ferretdb_bin, ferret_dir, port=port))
        servers.wait_until(
            lambda: requests.get(f"{url}/images", timeout=TIMEOUT).status_code == 200, 20, "recovery"
        )
        listed = requests.get(f"{url}/images", timeout=TIMEOUT).json()
        assert image_id in [image["image_id"] for image in listed]
        content = requests.get(f"{url}/images/{image_id}/content", timeout=TIMEOUT)
        assert content.status_code == 200
        assert content.content == image_bytes("JPEG", seed=3)


def test_service_starts_while_mongo_is_unreachable(tmp_path: Path) -> None:
    """A service started before its MongoDB must come up and answer 503, not hang or crash-loop."""
    env = {
        **UNTHROTTLED,
        "MONGO_URI": f"mongodb://127.0.0.1:{servers.free_port()}/",
        "MONGO_DB": "unreachable",
        "MONGO_TIMEOUT_MS": "1000",
        "DATA_DIR": str(tmp_path / "service"),
    }
    with servers.service(env, tmp_path / "service.log") as url:
        for call in outage_requests(url, "0" * 24):
            assert_unavailable(call)
