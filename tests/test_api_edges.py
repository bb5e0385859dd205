"""Edge cases of the API that no other test sent (issue 21), in both modes: ranges of a blob that is
neither in memory nor sendfile()d, HEAD without reading the bytes, the headers of refusals, page
limits and cursors, and a filename that sanitizes to nothing.
"""

import base64
import hashlib
import io
import json
from datetime import UTC, datetime

import pytest
from bson import ObjectId
from django.core.files import File
from django.http import FileResponse

from images import hotcache, serving
from tests.helpers import assert_error, body, upload
from tests.samples import image_bytes, noise_jpeg


@pytest.fixture
def big(store, client) -> tuple[bytes, str]:
    """A JPEG over the hot cache's largest blob, so its ranges stream from storage through
    RangeReader (a GridFS reader in Mongo mode); its content URL."""
    data = noise_jpeg((640, 480))
    assert len(data) > hotcache.BlobCache.MAX_BLOB
    meta = upload(client, data).json()
    return data, f"/images/{meta['image_id']}/content"


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (0, 99),  # ends inside the bytes read ahead in the view
        (1000, 70_000),  # across the read-ahead and several blocks
        (5, None),  # to the end
        (-1_000_000, None),  # a suffix longer than the file: all of it
    ],
)
def test_ranges_of_a_streamed_blob_send_exactly_their_bytes(store, client, big, first, last):
    data, url = big
    if first < 0:
        header, expected, start = f"bytes={first}", data[first:], 0
    else:
        header = f"bytes={first}-" + ("" if last is None else str(last))
        expected, start = data[first : None if last is None else last + 1], first
    response = client.get(url, headers={"Range": header})
    assert response.status_code == 206
    assert response.streaming
    assert response["Content-Type"] == "image/jpeg"
    assert body(response) == expected
    assert response["Content-Length"] == str(len(expected))
    assert response["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"


def reader_of(client, url: str, span: str, monkeypatch) -> serving.RangeReader:
    """The RangeReader of a ranged GET, as the view returned it: before any byte is sent."""
    made = []

    class Spy(serving.RangeReader):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(serving, "RangeReader", Spy)
    assert client.get(url, headers={"Range": span}).status_code == 206
    return made[0]


def test_only_a_blob_that_cannot_be_sendfiled_is_read_ahead_in_the_view(store, client, big, monkeypatch):
    """The server sendfile()s a real file from its offset, so it must not move; any other reader
    gives its first bytes in the view, where a storage failure still becomes a JSON 503."""
    data, url = big
    reader = reader_of(client, url, "bytes=1000-70000", monkeypatch)
    if store.mode == "embedded":
        assert reader.file.tell() == 1000
        assert reader.first == b""
    else:
        assert not hasattr(reader, "fileno")
        assert reader.first == data[1000 : 1000 + FileResponse.block_size]
    reader.close()


def test_a_stream_from_an_embedded_store_is_read_ahead_too(store, client, big, monkeypatch):
    data, url = big
    opened = type(store.storage).open

    def as_stream(self, name, mode="rb"):
        with opened(self, name, mode) as file:
            return File(io.BytesIO(file.read()))

    monkeypatch.setattr(type(store.storage), "open", as_stream)
    reader = reader_of(client, url, "bytes=1000-70000", monkeypatch)
    assert not hasattr(reader, "fileno")
    assert reader.first == data[1000 : 1000 + FileResponse.block_size]
    assert reader.read() == data[1000:70001]


def test_each_small_blob_is_cached_under_its_own_name(store, client):
    first, second = image_bytes(seed=1), image_bytes(seed=2)
    urls = [f"/images/{upload(client, data).json()['image_id']}/content" for data in (first, second)]
    assert [body(client.get(url)) for url in urls] == [first, second]
    assert [body(client.get(url)) for url in urls] == [first, second]


def test_a_derivative_keeps_the_originals_format_and_name(store, client):
    meta = upload(client, image_bytes("JPEG", (200, 100)), name="my.photo.jpg").json()
    url = f"/images/{meta['image_id']}/content?w=64"
    response = client.get(url)
    assert response["Content-Type"] == "image/jpeg"
    assert response["Content-Disposition"].startswith('inline; filename="my.photo.jpeg"')
    auto = client.get(f"{url}&format=auto")  # no Accept header: the original's format
    assert auto["Content-Type"] == "image/jpeg"
    assert "accept" in [v.strip().lower() for v in auto["Vary"].split(",")]


def test_bytes_gone_behind_a_record_are_a_404_naming_the_image(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    if store.mongo_db is not None:
        store.mongo_db["fs.files"].delete_many({"filename": meta["sha256"]})
    else:
        for path in store.blob_dir.rglob(meta["sha256"]):
            if path.is_file():  # the blob, not its folder of pins
                path.unlink()
    hotcache.clear()
    payload = assert_error(client.get(f"/images/{meta['image_id']}/content"), 404)
    assert payload["detail"] == f"No image has image_id {meta['image_id']!r}."


def test_a_streamed_blob_comes_whole_without_a_range(store, client, big):
    data, url = big
    response = client.get(url)
    assert response.status_code == 200
    assert body(response) == data


def test_a_suffix_range_longer_than_a_small_file_is_all_of_it(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    response = client.get(
        f"/images/{meta['image_id']}/content", headers={"Range": f"bytes=-{len(data) + 50}"}
    )
    assert response.status_code == 206
    assert body(response) == data
    assert response["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"


def test_spaces_inside_range_are_allowed(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    response = client.get(f"/images/{meta['image_id']}/content", headers={"Range": "bytes = 2 - 5"})
    assert response.status_code == 206
    assert body(response) == data[2:6]


@pytest.mark.parametrize("size", ["small", "big"])
def test_head_never_reads_the_bytes(store, client, monkeypatch, size):
    data = image_bytes() if size == "small" else noise_jpeg((640, 480))
    meta = upload(client, data).json()
    hotcache.clear()

    def no_read(*args, **kwargs):
        raise AssertionError("HEAD opened the blob")

    monkeypatch.setattr(type(store.storage), "open", no_read)
    url = f"/images/{meta['image_id']}/content"
    response = client.head(url)
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Type"] == "image/jpeg"
    ranged = client.head(url, headers={"Range": "bytes=1-3"})
    assert ranged.status_code == 206
    assert ranged["Content-Length"] == "3"
    assert ranged["Content-Range"] == f"bytes 1-3/{len(data)}"
    assert ranged.content == b""


def test_a_412_and_a_416_are_never_cached(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    url = f"/images/{meta['image_id']}/content"
    failed = client.get(url, headers={"If-Match": '"other"'})
    assert assert_error(failed, 412, "precondition_failed")["detail"] == (
        "If-Match or If-Unmodified-Since did not hold."
    )
    assert failed["Cache-Control"] == "no-store"
    unsatisfiable = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert_error(unsatisfiable, 416, "range_not_satisfiable")
    assert unsatisfiable["Cache-Control"] == "no-store"
    assert client.get(url)["Cache-Control"] == "public, max-age=31536000, immutable"


def test_last_modified_is_the_upload_time(store, client, monkeypatch):
    from images import services

    uploaded = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)  # long before the request
    monkeypatch.setattr(services, "now", lambda: uploaded)
    meta = upload(client, image_bytes()).json()
    response = client.get(f"/images/{meta['image_id']}/content")
    assert response["Last-Modified"] == "Thu, 02 Jan 2025 03:04:05 GMT"


def test_an_empty_filename_on_a_jpeg_gets_a_jpg_name(store, client):
    data = image_bytes("JPEG")
    meta = upload(client, data, name="...").json()
    assert meta["filename"] == f"{hashlib.sha256(data).hexdigest()[:12]}.jpg"
    response = client.get(f"/images/{meta['image_id']}/content")
    assert f'filename="{meta["filename"]}"' in response["Content-Disposition"]


def test_limit_1_pages_one_record_at_a_time(store, client):
    metas = [upload(client, image_bytes(seed=i)).json() for i in range(2)]
    first = client.get("/images?limit=1")
    assert [m["image_id"] for m in first.json()] == [metas[1]["image_id"]]
    link = first["Link"]
    second = client.get(link[1 : link.index(">")].removeprefix("http://testserver"))
    assert [m["image_id"] for m in second.json()] == [metas[0]["image_id"]]
    assert "Link" not in second


def cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=", "invalid_limit"),
        ("limit=%C2%B2", "invalid_limit"),
        ("count=yes", "invalid_count"),
        ("cursor=nonsense", "invalid_cursor"),
        (f"cursor={cursor(['2026-01-01T00:00:00', str(ObjectId())])}", "invalid_cursor"),  # no time zone
        (f"cursor={cursor(['2026-01-01T00:00:00+00:00', 'not-an-id'])}", "invalid_cursor"),
        (f"cursor={cursor(7)}", "invalid_cursor"),
        (f"cursor={cursor(['2026-01-01T00:00:00+00:00'])}", "invalid_cursor"),
    ],
)
def test_bad_page_parameters_say_which(store, client, query, code):
    assert_error(client.get(f"/images?{query}"), 400, code)


def test_the_limits_of_limit_are_accepted(store, client):
    upload(client, image_bytes())
    for limit in (1, 1000):
        response = client.get(f"/images?limit={limit}")
        assert response.status_code == 200
        assert len(response.json()) == 1


def test_a_cursor_with_a_time_zone_other_than_utc_is_valid(store, client):
    first, second = (upload(client, image_bytes(seed=i)).json() for i in range(2))
    at = datetime.fromisoformat(second["uploaded_at"].replace("Z", "+00:00")).astimezone()
    response = client.get(f"/images?cursor={cursor([at.isoformat(), second['image_id']])}")
    assert response.status_code == 200
    assert [m["image_id"] for m in response.json()] == [first["image_id"]]
