"""The API suite: every test runs in both storage modes (the `store` fixture), through Django's
test client, so requests go through the real URL conf, middleware, parsers and views.
"""

import hashlib
import time
from email.utils import parsedate_to_datetime

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from images import hotcache
from tests.helpers import assert_error, body, upload
from tests.samples import image_bytes, png_with_header_size, zTXt_bomb
from tests.servers import free_port

FIELDS = {
    "image_id",
    "model_id",
    "filename",
    "content_type",
    "size",
    "sha256",
    "width",
    "height",
    "uploaded_at",
    "uploaded_by",
    "label",
    "cover",
    "url",
}


# --- upload --------------------------------------------------------------------------------------


def test_upload_answers_201_with_metadata(store, client):
    data = image_bytes("JPEG", (64, 48))
    response = upload(client, data, name="front.jpg")
    assert response.status_code == 201
    meta = response.json()
    assert set(meta) == FIELDS
    assert meta["model_id"] == "m1"
    assert meta["filename"] == "front.jpg"
    assert meta["content_type"] == "image/jpeg"
    assert (meta["width"], meta["height"]) == (64, 48)
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["uploaded_at"].endswith("Z")
    assert response["Location"].endswith(f"/images/{meta['image_id']}")
    assert len(store.records()) == 1
    assert len(store.blob_names()) == 1


def test_same_bytes_same_model_answers_200_with_the_existing_image(store, client):
    data = image_bytes()
    first = upload(client, data).json()
    again = upload(client, data, name="other-name.jpg")
    assert again.status_code == 200
    assert again.json() == first
    assert len(store.records()) == 1
    assert len(store.blob_names()) == 1


def test_same_bytes_for_another_model_is_a_new_record_sharing_one_blob(store, client):
    data = image_bytes()
    a = upload(client, data, model_id="a").json()
    b = upload(client, data, model_id="b")
    assert b.status_code == 201
    assert b.json()["image_id"] != a["image_id"]
    assert len(store.records()) == 2
    assert len(store.blob_names()) == 1


def test_image_is_accepted_as_an_alias_of_file(store, client):
    response = upload(client, image_bytes(), field="image")
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_allowed_formats_are_stored_with_the_sniffed_type(store, client, fmt, content_type):
    data = image_bytes(fmt)
    meta = upload(client, data, name="claims-to-be.jpg").json()  # the client claims image/jpeg
    assert meta["content_type"] == content_type
    content = client.get(f"/images/{meta['image_id']}/content")
    assert content["Content-Type"] == content_type
    assert body(content) == data


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\x\\shot.png", "shot.png"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("new\tline\x1b\x7f.png", "newline.png"),
        ("é 中文.png", "é 中文.png"),
        ("x" * 300 + ".png", "x" * 251 + ".png"),
    ],
)
def test_filenames_are_kept_as_sanitized_metadata(store, client, sent, kept):
    meta = upload(client, image_bytes("PNG"), name=sent).json()
    assert meta["filename"] == kept


def test_a_filename_with_nothing_left_gets_a_derived_one(store, client):
    data = image_bytes("PNG")
    meta = upload(client, data, name="...").json()
    assert meta["filename"] == f"{hashlib.sha256(data).hexdigest()[:12]}.png"


# --- refused uploads: a JSON 4xx, and nothing stored ---------------------------------------------


REFUSED = {
    "text": (b"just some text, not an image", 415, "not_an_image"),
    "html": (b"<!doctype html><html><script>alert(1)</script></html>", 415, "not_an_image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415, None),
    "postscript named .jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", 415, None),
    "pdf": (b"%PDF-1.7\n1 0 obj<<>>endobj\n", 415, None),
    "zip": (b"PK\x03\x04" + b"\x00" * 40, 415, None),
    "bmp (not allowed)": (image_bytes("BMP"), 415, None),
    "tiff (not allowed)": (image_bytes("TIFF"), 415, None),
    "jpeg magic only": (b"\xff\xd8\xff", 422, "corrupt_image"),
    "png magic only": (b"\x89PNG\r\n\x1a\n", 422, "corrupt_image"),
    "truncated jpeg": (image_bytes("JPEG", (256, 256))[:-200], 422, "corrupt_image"),
    "truncated png": (image_bytes("PNG", (256, 256))[:-30], 422, "corrupt_image"),
    "truncated gif": (image_bytes("GIF", (256, 256))[:40], 422, None),
    "png header bomb": (png_with_header_size(100_000, 100_000), 422, "too_many_pixels"),
    "png just over the limit": (png_with_header_size(10_000, 5_001), 422, "too_many_pixels"),
    "zTXt bomb": (zTXt_bomb(), 422, None),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_files_are_refused_and_nothing_is_stored(store, client, case):
    data, status, code = REFUSED[case]
    assert_error(upload(client, data), status, code)
    store.assert_empty()


@pytest.mark.parametrize(
    "model_id", ["", "a" * 129, "../etc", "a/b", "with space", "x\x00y", '{"$gt": ""}', "\u202e"]
)
def test_invalid_model_ids_are_refused(store, client, model_id):
    payload = assert_error(upload(client, image_bytes(), model_id=model_id), 400, "invalid_model_id")
    assert "1-128 characters" in payload["detail"]
    store.assert_empty()


def test_longest_model_id_and_every_allowed_character_are_accepted(store, client):
    assert upload(client, image_bytes(), model_id="a" * 128).status_code == 201
    assert upload(client, image_bytes(seed=2), model_id="Az09._:-").status_code == 201


def test_missing_parts_are_refused(store, client):
    assert_error(upload(client, image_bytes(), model_id=None), 400, "invalid_model_id")
    assert_error(client.post("/upload", {"model_id": "m1"}), 400, "missing_file")
    assert_error(upload(client, b""), 400, "empty_file")
    two = [SimpleUploadedFile("a.jpg", image_bytes()), SimpleUploadedFile("b.jpg", image_bytes(seed=3))]
    assert_error(client.post("/upload", {"file": two, "model_id": "m1"}), 400, "too_many_files")
    assert_error(client.post("/upload", b"{}", content_type="application/json"), 415)
    store.assert_empty()


def test_over_the_size_limit_is_413(store, client, settings):
    settings.MAX_UPLOAD_MB = 1
    big = image_bytes("PNG", (1200, 1200), compress_level=0)
    assert len(big) > 1024 * 1024
    assert_error(upload(client, big), 413, "too_large")
    store.assert_empty()


def test_width_and_height_limits_are_configurable(store, client, settings):
    settings.MAX_IMAGE_WIDTH = 63
    payload = assert_error(upload(client, image_bytes("JPEG", (64, 48))), 422, "too_many_pixels")
    assert "at most 63 wide" in payload["detail"]
    settings.MAX_IMAGE_WIDTH, settings.MAX_IMAGE_HEIGHT = 64, 47
    assert_error(upload(client, image_bytes("JPEG", (64, 48))), 422, "too_many_pixels")
    store.assert_empty()


def test_the_request_body_limit_is_checked_before_reading(store, client, settings):
    settings.MAX_REQUEST_MB = 1
    big = image_bytes("PNG", (1200, 1200), compress_level=0)
    assert_error(upload(client, big), 413, "request_too_large")
    store.assert_empty()


def test_the_pixel_limit_is_configurable(store, client, settings):
    settings.MAX_IMAGE_PIXELS = 1000
    payload = assert_error(upload(client, image_bytes("JPEG", (64, 48))), 422, "too_many_pixels")
    assert "64x48" in payload["detail"]
    store.assert_empty()


def test_allowed_formats_are_configurable(store, client, settings):
    settings.ALLOWED_IMAGE_FORMATS = ["PNG"]
    assert_error(upload(client, image_bytes("JPEG")), 415)
    assert upload(client, image_bytes("PNG")).status_code == 201


def test_a_failing_record_write_leaves_no_blob(store, client, monkeypatch):
    """The blob is written first; if the record cannot be written, the blob goes too."""
    from images import documents

    def broken_insert(self, record):
        raise RuntimeError("record store failed")

    cls = documents.MongoDocuments if store.mode == "mongo" else documents.SQLDocuments
    monkeypatch.setattr(cls, "insert", broken_insert)
    client.raise_request_exception = False
    assert upload(client, image_bytes()).status_code == 500
    store.assert_empty()


# --- listing -------------------------------------------------------------------------------------


def upload_many(client, count: int, model_id: str = "m1") -> list[dict]:
    metas = []
    for i in range(count):
        metas.append(upload(client, image_bytes(seed=i), model_id=model_id).json())
        time.sleep(0.002)  # distinct millisecond timestamps, as real uploads have
    return metas


def test_list_is_an_array_newest_first(store, client):
    metas = upload_many(client, 3)
    response = client.get("/images")
    assert response.status_code == 200
    assert response.json() == metas[::-1]
    assert "Link" not in response


def test_list_filters_by_model_id(store, client):
    upload_many(client, 2, "a")
    b = upload_many(client, 2, "b")
    assert client.get("/images", {"model_id": "b"}).json() == b[::-1]
    assert client.get("/images", {"model_id": "none"}).json() == []
    assert_error(client.get("/images", {"model_id": "bad id"}), 400, "invalid_model_id")


def follow_pages(client, url: str) -> tuple[list[dict], int]:
    seen, pages = [], 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += response.json()
        pages += 1
        link = response.get("Link")
        url = link[1 : link.index(">")].removeprefix("http://testserver") if link else None
        if link:
            assert link.endswith('rel="next"')
    return seen, pages


def test_pages_follow_link_headers_to_the_end(store, client):
    metas = upload_many(client, 5)
    seen, pages = follow_pages(client, "/images?limit=2")
    assert pages == 3
    assert seen == metas[::-1]


def test_a_full_last_page_has_no_next_link(store, client):
    upload_many(client, 4)
    seen, pages = follow_pages(client, "/images?limit=2")
    assert (len(seen), pages) == (4, 2)


def test_pages_keep_the_filter(store, client):
    upload_many(client, 3, "other")
    mine = upload_many(client, 3, "mine")
    upload_many(client, 3, "other2")
    seen, _ = follow_pages(client, "/images?limit=2&model_id=mine")
    assert seen == mine[::-1]


def test_records_with_the_same_timestamp_page_without_loss(store, client, monkeypatch):
    from images import services

    frozen = services.now()
    monkeypatch.setattr(services, "now", lambda: frozen)
    metas = [upload(client, image_bytes(seed=i)).json() for i in range(5)]
    seen, _ = follow_pages(client, "/images?limit=2")
    assert sorted(m["image_id"] for m in seen) == sorted(m["image_id"] for m in metas)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "cursor=nonsense"])
def test_bad_page_parameters_are_400(store, client, query):
    assert_error(client.get(f"/images?{query}"), 400)


def test_the_default_page_is_100_and_the_largest_1000(store, client, monkeypatch):
    from images import documents

    asked = []
    cls = documents.MongoDocuments if store.mode == "mongo" else documents.SQLDocuments
    original = cls.page
    monkeypatch.setattr(
        cls,
        "page",
        lambda self, m, a, limit, *more: asked.append(limit) or original(self, m, a, limit, *more),
    )
    client.get("/images")
    client.get("/images?limit=1000")
    assert asked == [101, 1001]  # one more than the page, to know whether a next page exists


def test_model_images_lists_one_model_with_the_same_pages(store, client):
    upload_many(client, 2, "other")
    mine = upload_many(client, 3, "mine")
    seen, pages = follow_pages(client, "/models/mine/images?limit=2")
    assert (seen, pages) == (mine[::-1], 2)
    assert_error(client.get("/models/nobody/images"), 404, "not_found")
    assert_error(client.get("/models/bad%20id/images"), 400)


# --- metadata, bytes, delete ---------------------------------------------------------------------


def test_metadata_by_id(store, client):
    meta = upload(client, image_bytes()).json()
    assert client.get(f"/images/{meta['image_id']}").json() == meta
    assert_error(client.get("/images/000000000000000000000000"), 404, "not_found")
    assert_error(client.get("/images/not-an-id"), 404, "not_found")


def test_content_headers(store, client):
    data = image_bytes("PNG")
    meta = upload(client, data, name="résumé shot.png").json()
    response = client.get(f"/images/{meta['image_id']}/content")
    assert response.status_code == 200
    assert body(response) == data
    assert response["Content-Type"] == "image/png"
    assert response["Content-Length"] == str(len(data))
    assert response["ETag"] == f'"{meta["sha256"]}"'
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Disposition"] == (
        "inline; filename=\"r_sum_ shot.png\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20shot.png"
    )
    modified = parsedate_to_datetime(response["Last-Modified"])
    assert abs(modified.timestamp() - time.time()) < 60


def test_content_of_an_unknown_image_is_a_json_404(store, client):
    assert_error(client.get("/images/000000000000000000000000/content"), 404)


def test_model_image_serves_the_newest(store, client):
    upload(client, image_bytes(seed=1), model_id="m")
    time.sleep(0.002)
    newest = image_bytes(seed=2)
    upload(client, newest, model_id="m")
    response = client.get("/image/m")
    assert body(response) == newest
    assert response["Cache-Control"] == "public, max-age=60"
    assert response["ETag"] == f'"{hashlib.sha256(newest).hexdigest()}"'
    assert_error(client.get("/image/unknown"), 404)
    assert_error(client.get("/image/bad%20id"), 400)


def test_head_has_the_headers_and_no_body(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    for url in (f"/images/{meta['image_id']}/content", "/image/m1"):
        response = client.head(url)
        assert response.status_code == 200
        assert response["Content-Length"] == str(len(data))
        assert response["ETag"] == f'"{meta["sha256"]}"'
        assert response.content == b""


def test_conditional_requests_answer_304(store, client):
    meta = upload(client, image_bytes()).json()
    url = f"/images/{meta['image_id']}/content"
    etag = f'"{meta["sha256"]}"'
    first = client.get(url)
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": f'"other", {etag}'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    since = client.get(url, headers={"If-Modified-Since": first["Last-Modified"]})
    assert since.status_code == 304
    assert since["ETag"] == etag
    old = client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert old.status_code == 200


def test_failed_preconditions_answer_a_json_412(store, client):
    meta = upload(client, image_bytes()).json()
    url = f"/images/{meta['image_id']}/content"
    response = client.get(url, headers={"If-Match": '"other"'})
    assert_error(response, 412, "precondition_failed")
    assert response["ETag"] == f'"{meta["sha256"]}"'
    old = client.get(url, headers={"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert_error(old, 412, "precondition_failed")
    assert client.get(url, headers={"If-Match": f'"{meta["sha256"]}"'}).status_code == 200


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, None)),
        ("bytes=-7", (-7, None)),
        ("bytes=5-100000", (5, None)),
        ("bytes=0-0", (0, 0)),
    ],
)
def test_single_ranges_answer_206(store, client, header, span):
    data = image_bytes("PNG", (128, 128))
    meta = upload(client, data).json()
    response = client.get(f"/images/{meta['image_id']}/content", headers={"Range": header})
    assert response.status_code == 206
    start, end = span
    expected = data[start:] if end is None else data[start : end + 1]
    first = start % len(data)
    assert body(response) == expected
    assert response["Content-Length"] == str(len(expected))
    assert response["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"


def test_unsatisfiable_ranges_answer_416(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    url = f"/images/{meta['image_id']}/content"
    for header in (f"bytes={len(data)}-", "bytes=-0"):
        response = client.get(url, headers={"Range": header})
        assert_error(response, 416, "range_not_satisfiable")
        assert response["Content-Range"] == f"bytes */{len(data)}"


def test_ranges_that_are_ignored_give_the_whole_image(store, client):
    data = image_bytes()
    meta = upload(client, data).json()
    url = f"/images/{meta['image_id']}/content"
    for headers in (
        {"Range": "bytes=0-1,5-6"},  # multiple ranges: allowed to answer with the whole
        {"Range": "items=0-1"},
        {"Range": "bytes=9-2"},
        {"Range": "bytes=0-1", "If-Range": '"stale"'},
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, headers
        assert body(response) == data
    matching = client.get(url, headers={"Range": "bytes=0-1", "If-Range": f'"{meta["sha256"]}"'})
    assert matching.status_code == 206


def test_delete_removes_the_record_and_the_unshared_blob(store, client):
    meta = upload(client, image_bytes()).json()
    response = client.delete(f"/images/{meta['image_id']}")
    assert response.status_code == 204
    assert_error(client.get(f"/images/{meta['image_id']}"), 404)
    assert_error(client.get(f"/images/{meta['image_id']}/content"), 404)
    store.assert_empty()
    assert_error(client.delete(f"/images/{meta['image_id']}"), 404)


def test_delete_keeps_a_blob_that_another_record_needs(store, client):
    data = image_bytes()
    a = upload(client, data, model_id="a").json()
    b = upload(client, data, model_id="b").json()
    assert client.delete(f"/images/{a['image_id']}").status_code == 204
    assert body(client.get(f"/images/{b['image_id']}/content")) == data
    assert client.delete(f"/images/{b['image_id']}").status_code == 204
    store.assert_empty()


def test_reupload_after_delete_is_new(store, client):
    data = image_bytes()
    first = upload(client, data).json()
    client.delete(f"/images/{first['image_id']}")
    again = upload(client, data)
    assert again.status_code == 201
    assert body(client.get(f"/images/{again.json()['image_id']}/content")) == data


def test_each_write_forgets_what_this_process_cached(store, client):
    """A read, a write, the same read within HOT_CACHE_SECONDS: the read sees the write, because each
    write forgets its own hot-cache entries here (a model's newest, with and without its label, and
    the record)."""
    first = upload(client, image_bytes(seed=1), label="front").json()
    assert body(client.get("/image/m1")) == image_bytes(seed=1)
    assert body(client.get("/image/m1?label=front")) == image_bytes(seed=1)
    upload(client, image_bytes(seed=2), label="front")
    assert body(client.get("/image/m1")) == image_bytes(seed=2)
    assert body(client.get("/image/m1?label=front")) == image_bytes(seed=2)
    assert client.get(f"/images/{first['image_id']}").status_code == 200
    assert client.delete(f"/images/{first['image_id']}").status_code == 204
    assert_error(client.get(f"/images/{first['image_id']}"), 404)


def test_each_derivative_keeps_its_own_size_and_is_made_anew_after_a_delete(store, client):
    """The hot cache keeps a derivative's size by image_id and name: two sizes of one image never
    share it, and the same bytes uploaded again after a delete (which took the derivatives) get
    theirs made again rather than a size whose file is gone."""
    data = image_bytes("PNG", (300, 150))
    meta = upload(client, data, name="a.png").json()
    url = f"/images/{meta['image_id']}/content"
    small, large = client.get(f"{url}?w=64"), client.get(f"{url}?w=128")
    assert int(small["Content-Length"]) == len(body(small)) < len(body(large)) == int(large["Content-Length"])
    assert client.delete(f"/images/{meta['image_id']}").status_code == 204
    hotcache.blobs.clear()  # as another worker, or an eviction: the derivative's bytes are gone
    again = upload(client, data, name="a.png").json()
    response = client.get(f"/images/{again['image_id']}/content?w=64")
    assert response.status_code == 200
    assert body(response) == body(small)


# --- HTTP behaviour ------------------------------------------------------------------------------


def test_json_endpoints_answer_json_whatever_accept_says(store, client):
    meta = upload(client, image_bytes()).json()
    response = client.get("/images", headers={"Accept": "image/webp,*/*;q=0.1"})
    assert response.status_code == 200
    assert response.json() == [meta]
    content = client.get(f"/images/{meta['image_id']}/content", headers={"Accept": "image/webp"})
    assert content.status_code == 200


def test_trailing_slashes_are_tolerated(store, client):
    meta = client.post("/upload/", {"file": SimpleUploadedFile("a.jpg", image_bytes()), "model_id": "m"})
    assert meta.status_code == 201
    assert client.get("/images/").status_code == 200
    assert client.get("/image/m/").status_code == 200


def test_unknown_urls_and_methods_answer_json(store, client):
    assert_error(client.get("/nope"), 404)
    assert client.put("/images").status_code == 405
    assert client.post("/images/000000000000000000000000/content").status_code == 405


def test_cors_covers_the_content_urls(store, client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]
    meta = upload(client, image_bytes()).json()
    preflight = client.options(
        f"/images/{meta['image_id']}/content",
        HTTP_ORIGIN="https://viewer.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="range, if-none-match",
    )
    allowed = preflight["Access-Control-Allow-Headers"].lower()
    assert "range" in allowed and "if-none-match" in allowed
    origin = {"Origin": "https://viewer.example"}
    response = client.get(f"/images/{meta['image_id']}/content", headers=origin)
    assert response["Access-Control-Allow-Origin"] == "https://viewer.example"
    exposed = {h.strip().lower() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "content-range", "accept-ranges", "content-disposition"} <= exposed
    other = client.get(f"/images/{meta['image_id']}/content", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_unreachable_mongodb_answers_503_quickly(store, client, settings):

    settings.MONGO = {"URI": f"mongodb://127.0.0.1:{free_port()}/", "DB": "gone"}
    settings.MONGO_TIMEOUT_MS = 500
    for call in (
        lambda: client.get("/images"),
        lambda: client.get("/images/000000000000000000000000/content"),
        lambda: client.get("/image/m1"),
        lambda: upload(client, image_bytes()),
    ):
        started = time.monotonic()
        response = call()
        assert time.monotonic() - started < 5
        assert_error(response, 503, "storage_unavailable")
        assert response["Retry-After"] == "5"
