"""Bad input against the real service, in both modes: every case of tests/corpus.py gets its expected
status (a JSON 4xx, or 201 for the legitimate ones) within a second of the service's CPU, and leaves
nothing stored; the legitimate ones read back byte-identical, and are deleted again.

Requests go out as raw bytes on a socket, so that what a client library would escape (a NUL or a
CR/LF in a filename) or never send (a body cut short) reaches the server as it is.
"""

import hashlib
import http.client
import json
import socket
import threading

import pytest
import requests

from tests import corpus, servers
from tests.helpers import TIMEOUT, Live, Store

CPU_LIMIT = 1.0  # seconds of the service's CPU (all its processes) per case
CASES = {case.name: case for case in corpus.cases()}
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


def test_the_corpus_has_every_kind_of_case() -> None:
    assert len(CASES) >= 35
    statuses = {case.status for case in CASES.values()}
    assert {201, 400, 411, 415, 422} <= statuses


def send_raw(url: str, raw: bytes, half_close: bool) -> tuple[int, dict[str, str], bytes]:
    """Sends `raw` while reading the answer: a server may answer (and close) before the end of a
    body it refuses, and a client that is still writing then would lose the answer to the reset."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:

        def write() -> None:
            try:
                sock.sendall(raw)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # answered and closed before the whole body was sent

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        writer.join(TIMEOUT)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def stored(live: Live) -> tuple[list, list[str], list[str]]:
    """Records, blobs (and pieces of blobs) and spooled uploads that the service holds."""
    records = requests.get(f"{live.url}/images", params={"limit": 1000}, timeout=TIMEOUT).json()
    blobs = Store(live.mode, blob_dir=live.data_dir / "blobs", mongo_db=live.mongo_db).blob_names()
    spool = live.data_dir / "tmp"
    return records, blobs, sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


def assert_nothing_stored(live: Live) -> None:
    """Uploaded files are closed (and their spool files deleted) once the response has gone out,
    which can come a moment after the client has it."""
    servers.wait_until(lambda: stored(live) == ([], [], []), 5, "an empty store")


@pytest.mark.parametrize("name", CASES)
def test_every_case_gets_its_status_quickly_and_stores_nothing(live: Live, name: str) -> None:
    case = CASES[name]
    host = live.url.removeprefix("http://")
    pids = live.served.pids()
    cpu = servers.cpu_seconds(pids)
    status, headers, body = send_raw(live.url, case.raw(host), case.half_close)
    used = servers.cpu_seconds(pids) - cpu

    assert status == case.status, body[:500]
    assert used < CPU_LIMIT, f"{used:.2f} s of CPU"
    if status != 201:
        assert headers["content-type"] == "application/json"
        payload = json.loads(body)
        assert payload["detail"]
        if case.error:
            assert payload["error"] == case.error, payload
        assert_nothing_stored(live)
        return

    meta = json.loads(body)
    assert meta["sha256"] == hashlib.sha256(case.data).hexdigest()
    if case.stored_filename is not None:
        assert meta["filename"] == case.stored_filename
    content = requests.get(f"{live.url}/images/{meta['image_id']}/content", timeout=TIMEOUT)
    assert content.status_code == 200
    assert content.content == case.data
    assert content.headers["Content-Type"] == meta["content_type"]
    assert content.headers["Content-Type"].startswith("image/")
    for header, value in SAFE_HEADERS.items():
        assert content.headers[header] == value
    assert requests.delete(f"{live.url}/images/{meta['image_id']}", timeout=TIMEOUT).status_code == 204
    assert_nothing_stored(live)
