"""Request ids, request logs, metrics and health endpoints."""

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from imageservice.jsonlog import JSONFormatter
from tests.helpers import assert_error, auth, create_key, upload
from tests.samples import image_bytes
from tests.servers import free_port, service


def request_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "imageservice.requests"]


def test_request_ids_are_made_or_kept(store, client):
    made = client.get("/images")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert client.get("/images", HTTP_X_REQUEST_ID="trace-42.a:b")["X-Request-ID"] == "trace-42.a:b"
    for insane in ("has space", "x" * 129, "new\nline"):
        assert client.get("/images", HTTP_X_REQUEST_ID=insane)["X-Request-ID"] != insane


def test_one_log_line_per_request_with_who_and_what(store, client, caplog):
    key = create_key("uploader", "write")
    caplog.set_level(logging.INFO, logger="imageservice.requests")
    response = upload(client, image_bytes(), HTTP_X_REQUEST_ID="req-1", **auth(key))
    [line] = request_lines(caplog)
    assert line == {
        "method": "POST",
        "path": "/upload",
        "status": 201,
        "duration_ms": line["duration_ms"],
        "bytes": len(response.content),
        "request_id": "req-1",
        "image_id": response.json()["image_id"],
        "client": "uploader",
        "remote_addr": "127.0.0.1",
    }
    assert line["duration_ms"] > 0


def test_log_lines_are_json():
    record = logging.LogRecord("imageservice.requests", logging.INFO, __file__, 1, "GET / 200", (), None)
    record.fields = {"status": 200, "request_id": "r"}
    entry = json.loads(JSONFormatter().format(record))
    assert entry["msg"] == "GET / 200"
    assert entry["status"] == 200
    assert entry["ts"].endswith("Z")


def test_metrics_count_requests_uploads_and_refusals(store, client):
    def value(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = client.get("/metrics").content.decode()
    meta = upload(client, image_bytes()).json()
    upload(client, b"not an image")
    client.get(f"/images/{meta['image_id']}/content")
    after = client.get("/metrics")
    assert after.status_code == 200
    assert after["Content-Type"].startswith("text/plain")
    text = after.content.decode()
    refused = 'imageservice_uploads_refused_total{reason="not_an_image"}'
    assert value(text, refused) == value(before, refused) + 1
    assert (
        value(text, "imageservice_images_stored_total")
        == value(before, "imageservice_images_stored_total") + 1
    )
    served = "imageservice_bytes_served_total"
    assert value(text, served) == value(before, served) + meta["size"]
    assert 'imageservice_request_duration_seconds_bucket{endpoint="upload"' in text
    assert 'imageservice_storage_seconds_count{operation="blob_save"}' in text


def test_metrics_are_for_the_allow_list_or_admin(store, client):
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    assert_error(client.get("/metrics", **outside), 401)
    admin = create_key("ops", "admin")
    reader = create_key("reader", "read")
    assert_error(client.get("/metrics", **outside, **auth(reader)), 403)
    assert client.get("/metrics", **outside, **auth(admin)).status_code == 200


def test_health_and_readiness(store, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_readiness_fails_when_mongodb_is_gone_but_liveness_does_not(store, client, settings):
    settings.MONGO = {"URI": f"mongodb://127.0.0.1:{free_port()}/", "DB": "gone"}
    settings.MONGO_TIMEOUT_MS = 300
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "storage_unavailable"
    assert response["Retry-After"]
    assert client.get("/healthz").status_code == 200


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    """Concurrent requests land on both workers; /metrics, answered by one, must count them all."""
    with service({"DATA_DIR": str(tmp_path)}, tmp_path / "service.log", workers=2) as url:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda _: requests.get(f"{url}/healthz", timeout=10).status_code, range(40))
            )
        assert statuses == [200] * 40
        text = requests.get(f"{url}/metrics", timeout=10).text
    assert 'imageservice_requests_total{endpoint="healthz",method="GET",status="200"} 40.0' in text


def test_a_chunked_upload_without_length_is_refused_with_411(tmp_path):
    """Django would read such a body as empty; saying so beats a puzzling "missing file"."""
    with service({"DATA_DIR": str(tmp_path)}, tmp_path / "service.log", workers=1) as url:
        chunks = iter([b'--x\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nm\r\n--x--\r\n'])
        response = requests.post(
            f"{url}/upload",
            data=chunks,  # a generator: requests sends it chunked, with no Content-Length
            headers={"Content-Type": "multipart/form-data; boundary=x"},
            timeout=10,
        )
    assert response.status_code == 411
    assert response.json()["error"] == "length_required"
