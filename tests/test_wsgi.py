"""The WSGI layer that sends hot answers again without Django (imageservice/wsgi.py): what it sends
must be what Django sent, byte for byte (status, headers, body, log line, metrics), in both modes,
and it must step aside as soon as Django's answer could differ."""

import logging

import pytest
from django.core import signals
from django.db import close_old_connections
from django.test import RequestFactory
from prometheus_client import REGISTRY

from imageservice import wsgi
from tests.helpers import upload
from tests.samples import image_bytes

VARYING = {"request_id", "duration_ms"}  # of the log line's fields: differ between any two requests


class Calls:
    """Calls the WSGI application as a server does, and says whether Django answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.django = 0
        through = wsgi.HotAnswerHandler.get_response

        def counted(handler, request):
            self.django += 1
            return through(handler, request)

        monkeypatch.setattr(wsgi.HotAnswerHandler, "get_response", counted)

    def __call__(self, path: str, method: str = "GET", **headers: str) -> tuple[str, list, bytes, bool]:
        environ = RequestFactory().generic(method, path, **headers).environ
        answered: list = []
        before = self.django
        # As Django's test client does: the test's database connection must stay open.
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            result = wsgi.application(environ, lambda status, heads: answered.extend([status, heads]))
            body = b"".join(result)
            getattr(result, "close", lambda: None)()
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)
        return answered[0], answered[1], body, self.django > before


@pytest.fixture
def calls(store, monkeypatch) -> Calls:
    return Calls(monkeypatch)


def served(path: str, method: str = "GET", status: int = 200) -> float:
    return (
        REGISTRY.get_sample_value(
            "imageservice_requests_total", {"endpoint": path, "method": method, "status": str(status)}
        )
        or 0.0
    )


def same(answer: tuple) -> tuple:
    """Status, headers in order and body, the X-Request-ID's value left out (new per request)."""
    status, headers, body, _ = answer
    return status, [(k, "" if k == "X-Request-ID" else v) for k, v in headers], body


def log_line(caplog) -> dict:
    record = [r for r in caplog.records if r.name == "imageservice.requests"][-1]
    return {k: v for k, v in record.fields.items() if k not in VARYING}


@pytest.mark.parametrize(
    "query, headers",
    [
        ("", {}),
        ("?w=64", {}),
        ("?w=64&format=auto", {"HTTP_ACCEPT": "image/webp,*/*"}),
        ("", {"HTTP_ORIGIN": "https://viewer.example"}),
        ("", {"HTTP_X_REQUEST_ID": "trace-1"}),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_hot_answer_is_sent_again_as_django_sent_it(
    calls, client, settings, caplog, query, headers, method
):
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]
    image_id = upload(client, image_bytes("JPEG", (300, 200), seed=1), model_id="m1").json()["image_id"]
    caplog.set_level(logging.INFO, logger="imageservice.requests")
    for path in (f"/images/{image_id}/content{query}", f"/image/m1{query}"):
        endpoint = "image-content" if path.startswith("/images/") else "model-image"
        first = calls(path, method, **headers)
        first_log, counted = log_line(caplog), served(endpoint, method)
        again = calls(path, method, **headers)
        assert first[3] and not again[3], "the second answer came from Django"
        assert same(again) == same(first)
        assert again[0].startswith("200 ") and (method == "HEAD") == (again[2] == b"")
        ids = [dict(answer[1])["X-Request-ID"] for answer in (first, again)]
        if "HTTP_X_REQUEST_ID" in headers:
            assert ids == ["trace-1", "trace-1"]
        else:
            assert ids[0] != ids[1]
        assert log_line(caplog) == first_log
        assert served(endpoint, method) == counted + 1

        etag = dict(first[1])["ETag"]
        not_modified = calls(path, method, HTTP_IF_NONE_MATCH=etag, **headers)
        assert not_modified[0].startswith("304 ")
        assert same(calls(path, method, HTTP_IF_NONE_MATCH=etag, **headers)) == same(not_modified)


def test_a_delete_or_a_newer_image_is_seen_at_once(calls, client):
    image_id = upload(client, image_bytes("PNG", (30, 30), seed=2), model_id="m1").json()["image_id"]
    for path in (f"/images/{image_id}/content", "/image/m1"):
        calls(path)
        assert not calls(path)[3]
    older = dict(calls("/image/m1")[1])["ETag"]
    newer = upload(client, image_bytes("PNG", (30, 30), seed=3), model_id="m1").json()["image_id"]
    status, headers, _, django = calls("/image/m1")
    assert django and dict(headers)["ETag"] != older
    assert client.delete(f"/images/{image_id}").status_code == 204
    status, _, body, django = calls(f"/images/{image_id}/content")
    assert django and status.startswith("404 ") and b"not_found" in body
    assert calls(f"/images/{newer}/content")[0].startswith("200 ")


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_AUTHORIZATION": "Api-Key nonsense"},  # a bad key is a 401, every time
        {"HTTP_COOKIE": "sessionid=abc"},
        {"HTTP_RANGE": "bytes=0-9"},
        {"HTTP_IF_MODIFIED_SINCE": "Thu, 01 Jan 2099 00:00:00 GMT"},
    ],
)
def test_requests_that_carry_more_always_go_through_django(calls, client, headers):
    image_id = upload(client, image_bytes("PNG", (30, 30), seed=4), model_id="m1").json()["image_id"]
    path = f"/images/{image_id}/content"
    assert [calls(path, **headers)[3] for _ in range(2)] == [True, True]


def test_throttled_reads_are_each_counted(calls, client, settings):
    image_id = upload(client, image_bytes("PNG", (30, 30), seed=5), model_id="m1").json()["image_id"]
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"read": "2/min"}}
    statuses = [calls(f"/images/{image_id}/content")[0][:3] for _ in range(3)]
    assert statuses == ["200", "200", "429"]


def test_a_signed_url_is_checked_on_every_request(calls, client):
    """A signature expires: an answer to a signed URL is never sent again without Django's check."""
    from images import signing

    image_id = upload(client, image_bytes("PNG", (30, 30), seed=6), model_id="m1").json()["image_id"]
    url, _ = signing.sign(f"/images/{image_id}/content", {}, 600)
    path, query = url.split("?")
    assert [calls(path, QUERY_STRING=query)[3] for _ in range(2)] == [True, True]
    assert [calls(path, QUERY_STRING=query)[0][:3] for _ in range(2)] == ["200", "200"]
