"""Tests against the real service process (`manage.py serve`, i.e. gunicorn), in both storage modes.

Django's test client skips what only the real server does: gunicorn's `sendfile` of a ranged file,
streaming a GridOut through `wsgi.file_wrapper`, keep-alive framing, worker processes racing each
other, and a MongoDB that goes away and comes back while the service keeps running.
"""

import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from threading import Barrier

import pytest
import requests

from tests import servers
from tests.helpers import TIMEOUT, UNTHROTTLED, Live, new_model_id, sha256, upload_to
from tests.samples import image_bytes, noise_jpeg

OUTAGE_DEADLINE = 5  # seconds within which a request must get its 503 while MongoDB is down


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
    response = upload_to(live.url, data, new_model_id("ranged"))
    assert response.status_code == 201, response.text
    return response.json()["image_id"], data


# --- The old clients' flow ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["file", "image"])
def test_old_client_flow(live: Live, field: str) -> None:
    """Existing clients upload with `file` (or `image`), list everything, and fetch by model."""
    data = image_bytes("JPEG", seed={"file": 1, "image": 2}[field])
    model_id = new_model_id("compat")

    first = upload_to(live.url, data, model_id, field=field)
    assert first.status_code == 201, first.text
    assert first.headers["Content-Type"] == "application/json"
    created = first.json()
    assert created["model_id"] == model_id
    assert created["sha256"] == sha256(data)
    assert created["size"] == len(data)

    again = upload_to(live.url, data, model_id, field=field)
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


def test_ranges_of_a_local_copy_are_exact(live: Live, ranged: tuple[str, bytes]) -> None:
    """Read whole once, a blob has a local copy in Mongo mode (BLOB_CACHE_MB), a file that the
    server sendfile()s from the range's offset: every span is exact, and nothing more goes on the
    keep-alive connection (the next answer parses)."""
    image_id, data = ranged
    url = f"{live.url}/images/{image_id}/content"
    with requests.Session() as http:
        assert http.get(url, timeout=TIMEOUT).content == data
        if live.mode == "mongo":
            assert (live.data_dir / "blob-cache" / sha256(data)).is_file()
        for header, first, last in span_cases(len(data)):
            response = http.get(url, headers={"Range": header}, timeout=TIMEOUT)
            assert (response.status_code, response.content) == (206, data[first : last + 1]), header
        assert http.get(url, timeout=TIMEOUT).content == data


# --- Large bodies ------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_upload_and_download_round_trip(live: Live) -> None:
    """~25 MB each way: spooled to disk on the way in, streamed (never buffered) on the way out.

    Deleted afterwards: the service is shared, and FerretDB scans every chunk for some queries.
    """
    data = large_sample()
    created = upload_to(live.url, data, new_model_id("large"), timeout=120)
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
    """100 clients send the same bytes at once, across gunicorn's workers and threads: 50 for the
    same model and 50 for 50 other models. One blob, 51 records, and the 50 clients of the same
    model are all told the same image_id (one 201, the rest 200).
    """
    clients = 50
    data = noise_jpeg((300, 250))
    model_id = new_model_id("race")
    others = [new_model_id(f"race{n}") for n in range(clients)]
    start = Barrier(2 * clients)

    def send(model: str) -> requests.Response:
        start.wait(TIMEOUT)
        return upload_to(live.url, data, model, timeout=2 * TIMEOUT)

    with ThreadPoolExecutor(2 * clients) as pool:
        same = [pool.submit(send, model_id) for _ in range(clients)]
        spread = [pool.submit(send, model) for model in others]
        same_model = [f.result(timeout=3 * TIMEOUT) for f in same]
        other_models = [f.result(timeout=3 * TIMEOUT) for f in spread]

    for response in same_model + other_models:
        assert response.status_code in (200, 201), response.text
    assert sorted(r.status_code for r in same_model) == [200] * (clients - 1) + [201]
    assert len({r.json()["image_id"] for r in same_model}) == 1
    assert [r.status_code for r in other_models] == [201] * clients
    assert [r.json()["model_id"] for r in other_models] == others
    image_ids = {r.json()["image_id"] for r in same_model + other_models}
    assert len(image_ids) == clients + 1

    name = sha256(data)
    listed = requests.get(f"{live.url}/images", params={"limit": 1000}, timeout=TIMEOUT).json()
    assert {image["image_id"] for image in listed if image["sha256"] == name} == image_ids
    if live.mode == "mongo":
        assert live.mongo_db["images"].count_documents({"sha256": name}) == clients + 1
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
        lambda: upload_to(url, image_bytes("PNG", seed=7), new_model_id("outage")),
    ]


@dataclass
class Call:
    """One request of the mixed traffic, and what came of it (`status` None: no answer at all)."""

    kind: str
    started: float
    ended: float
    status: int | None
    detail: str = ""
    retry_after: str | None = None
    model_id: str = ""
    data: bytes = b""
    image_id: str = ""  # an upload's new image, or the image a delete removed


class MixedTraffic:
    """A few clients that keep sending reads, uploads and deletes, each on a keep-alive connection,
    and record every answer. Few enough that, even all on one worker, each has a thread."""

    KINDS = ("list", "metadata", "content", "model image", "upload", "delete")

    def __init__(self, url: str, stored: dict[str, tuple[str, bytes]], clients: int = 3) -> None:
        self.url, self.stored, self.clients = url, stored, clients  # stored: image_id -> (model, bytes)
        self.calls: list[Call] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> "MixedTraffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(2 * TIMEOUT)

    def client(self, number: int) -> None:
        rng, mine = random.Random(number), []
        with requests.Session() as http:
            while not self.stop.is_set():
                kind = rng.choice(self.KINDS)
                image_id, (model_id, data) = rng.choice(list(self.stored.items()))
                if kind == "upload":
                    model_id, data = new_model_id("traffic"), image_bytes("PNG", seed=rng.randrange(10**9))
                started = time.monotonic()
                try:
                    response = self.send(http, kind, image_id, model_id, data, mine)
                except requests.RequestException as exc:
                    self.calls.append(Call(kind, started, time.monotonic(), None, repr(exc)))
                    continue
                if response is None:
                    continue
                call = Call(
                    kind,
                    started,
                    time.monotonic(),
                    response.status_code,
                    response.content[:200].decode(errors="replace"),
                )
                call.retry_after, call.model_id, call.data = (
                    response.headers.get("Retry-After"),
                    model_id,
                    data,
                )
                if kind in ("content", "model image") and response.status_code == 200:
                    call.detail = "whole" if response.content == data else "partial or other bytes"
                if kind == "upload" and response.status_code == 201:
                    call.image_id = response.json()["image_id"]
                    mine.append(call.image_id)
                if kind == "delete":
                    call.image_id = response.url.rsplit("/", 1)[1]
                    if response.status_code not in (204, 404):
                        mine.append(call.image_id)  # maybe still there: it is deleted again later
                self.calls.append(call)

    def send(
        self, http: requests.Session, kind: str, image_id: str, model_id: str, data: bytes, mine: list[str]
    ) -> requests.Response | None:
        if kind == "list":
            return http.get(f"{self.url}/images", params={"limit": 20}, timeout=TIMEOUT)
        if kind == "metadata":
            return http.get(f"{self.url}/images/{image_id}", timeout=TIMEOUT)
        if kind == "content":
            return http.get(f"{self.url}/images/{image_id}/content", timeout=TIMEOUT)
        if kind == "model image":
            return http.get(f"{self.url}/image/{model_id}", timeout=TIMEOUT)
        if kind == "upload":
            return upload_to(self.url, data, model_id, http=http)
        if not mine:
            return None
        return http.delete(f"{self.url}/images/{mine.pop()}", timeout=TIMEOUT)


def check_outage(calls: list[Call], down: float, up: float, recovered: float) -> Counter:
    """Every call was answered in time and never with a 5xx other than 503; calls made while the
    database was down got a 503 with Retry-After (or, for a read, the right bytes from a cache);
    calls made after the recovery succeeded. Returns the count of each outcome."""
    outcomes: Counter = Counter()
    # A write that the database's going cut off may have happened all the same: a delete answered
    # 503 may find its image gone when it is sent again.
    unsure = {call.image_id for call in calls if call.kind == "delete" and call.status == 503}
    for call in calls:
        label = f"{call.kind} {call.status} {call.detail}"
        assert call.status is not None, label
        assert call.ended - call.started < OUTAGE_DEADLINE, (label, call.ended - call.started)
        assert call.status < 500 or call.status == 503, label
        if call.status == 503:
            assert call.retry_after and int(call.retry_after) > 0, label
            assert '"storage_unavailable"' in call.detail, label
        if call.status == 200 and call.kind in ("content", "model image"):
            assert call.detail == "whole", label
        if down + 0.5 < call.started and call.ended < up:
            phase = "down"
            reads = ("list", "metadata", "content", "model image")
            assert call.status == 503 or (call.kind in reads and call.status == 200), label
        elif call.started > recovered:
            phase = "after"
            assert call.status in (200, 201, 204) or (call.status == 404 and call.image_id in unsure), label
        else:
            phase = "until it stopped" if call.ended < down else "around a change"
        outcomes[f"{phase}: {call.status}"] += 1
    return outcomes


@pytest.mark.slow
def test_mongo_outage_gives_503_then_recovers(tmp_path: Path, ferretdb_bin: Path) -> None:
    """MongoDB stops under a running service and mixed traffic, then comes back on the same port
    and data. Meanwhile every request is answered within 5 s (the default MONGO_TIMEOUT_MS): 503
    with Retry-After (or a read from a worker's cache); /readyz answers 503 and /healthz 200. Then
    the service recovers by itself, nothing is lost, and nothing is half-written: every upload that
    got a 2xx reads back whole, one that got a 503 left no image or a whole one, and fsck finds
    only orphans that it may reclaim (an aborted GridFS write cannot be cleaned up while the
    database is down), and nothing after --repair.
    """
    port = servers.free_port()
    ferret_dir = tmp_path / "ferretdb"
    with ExitStack() as stack:
        first_run = stack.enter_context(ExitStack())
        uri = first_run.enter_context(servers.ferretdb(ferretdb_bin, ferret_dir, port=port))
        env = {**UNTHROTTLED, "MONGO_URI": uri, "MONGO_DB": "outage", "DATA_DIR": str(tmp_path / "service")}
        url = stack.enter_context(servers.service(env, tmp_path / "service.log"))
        stored = {}
        for seed in range(3):
            data, model_id = image_bytes("JPEG", seed=seed), new_model_id("outage")
            created = upload_to(url, data, model_id)
            assert created.status_code == 201, created.text
            stored[created.json()["image_id"]] = (model_id, data)
        # The outage probe reads an image that the traffic never reads, so no worker has it cached.
        probe = upload_to(url, image_bytes("JPEG", seed=3), new_model_id("outage"))
        assert probe.status_code == 201, probe.text

        with MixedTraffic(url, stored) as traffic:
            time.sleep(2)
            first_run.close()  # MongoDB goes away
            down = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=1).status_code == 200
            assert_unavailable(lambda: requests.get(f"{url}/readyz", timeout=TIMEOUT))
            for call in outage_requests(url, probe.json()["image_id"]):
                assert_unavailable(call)
            # Down long enough for each client to make a whole call meanwhile: the call under way at
            # `down + 0.5` ends within OUTAGE_DEADLINE, and so does the one after it.
            time.sleep(max(0.0, down + 0.5 + 2 * OUTAGE_DEADLINE - time.monotonic()))
            assert requests.get(f"{url}/healthz", timeout=1).status_code == 200

            up = time.monotonic()
            stack.enter_context(servers.ferretdb(ferretdb_bin, ferret_dir, port=port))
            servers.wait_until(
                lambda: requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200, 20, "recovery"
            )
            recovered = time.monotonic()
            time.sleep(2)
        outcomes = check_outage(traffic.calls, down, up, recovered)
        assert outcomes["down: 503"] and outcomes["after: 200"], outcomes

        for call in traffic.calls:
            if call.kind == "upload" and call.status != 201:
                images = requests.get(f"{url}/images", params={"model_id": call.model_id}, timeout=TIMEOUT)
                for image in images.json():  # stored just before the database went: whole
                    assert requests.get(image["url"], timeout=TIMEOUT).content == call.data
        deletes = {c.image_id: c.status for c in traffic.calls if c.kind == "delete" and c.status != 404}
        answered = {c.image_id: c.data for c in traffic.calls if c.kind == "upload" and c.status == 201}
        kept = {image_id: data for image_id, (_, data) in stored.items()}
        for image_id, data in (kept | answered).items():
            content = requests.get(f"{url}/images/{image_id}/content", timeout=TIMEOUT)
            whole = content.status_code == 200 and content.content == data
            gone = content.status_code == 404
            # Deleted (204): gone; a delete cut off (503) may have happened or not; else: whole.
            assert {204: gone, 503: gone or whole}.get(deletes.get(image_id), whole), image_id
        repaired = fsck_repairs(env)
    print(f"\nMongoDB outage: {dict(outcomes)}; fsck reclaimed {repaired}")


def fsck_repairs(env: dict[str, str]) -> dict[str, int]:
    """Runs fsck --repair over orphans of any age: only what it may reclaim, then nothing."""
    report = servers.fsck(env, "--repair")
    assert {p["kind"] for p in report["problems"]} <= servers.RECLAIMABLE, report["problems"]
    assert report["clean"], report
    again = servers.fsck(env)
    assert again["problems"] == [] and again["clean"], again
    return dict(Counter(p["kind"] for p in report["problems"]))


def test_service_starts_while_mongo_is_unreachable(tmp_path: Path, ferretdb_bin: Path) -> None:
    """A service started before its MongoDB must come up and answer 503, not hang or crash-loop,
    with /readyz 503 and /healthz 200; once MongoDB is there, everything works without a restart."""
    port = servers.free_port()
    env = {
        **UNTHROTTLED,
        "MONGO_URI": f"mongodb://127.0.0.1:{port}/",
        "MONGO_DB": "unreachable",
        "MONGO_TIMEOUT_MS": "1000",  # quick: the default's 5 s answers are checked by the outage above
        "DATA_DIR": str(tmp_path / "service"),
    }
    with servers.service(env, tmp_path / "service.log") as url:
        assert requests.get(f"{url}/healthz", timeout=1).status_code == 200
        assert_unavailable(lambda: requests.get(f"{url}/readyz", timeout=TIMEOUT))
        for call in outage_requests(url, "0" * 24):
            assert_unavailable(call)

        with servers.ferretdb(ferretdb_bin, tmp_path / "ferretdb", port=port):
            servers.wait_until(
                lambda: requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200, 20, "MongoDB"
            )
            data, model_id = image_bytes("PNG", seed=8), new_model_id("late")
            created = upload_to(url, data, model_id)
            assert created.status_code == 201, created.text
            assert requests.get(f"{url}/image/{model_id}", timeout=TIMEOUT).content == data
            listed = requests.get(f"{url}/images", timeout=TIMEOUT).json()
            assert [image["image_id"] for image in listed] == [created.json()["image_id"]]
            assert (
                requests.delete(f"{url}/images/{created.json()['image_id']}", timeout=TIMEOUT).status_code
                == 204
            )
