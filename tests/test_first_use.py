"""What a new user trips over (issue 18), in both modes: the API's and the README's promises, the
browsable API, the recorded last use of API keys, and the dimensions of rotated photos.

The gallery, the admin's previews and Swagger UI are tested in Chromium in tests/test_gallery.py.
"""

import io
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from images import apikeys
from images.backend import get_backend
from images.models import ApiKey, DerivativeUse, Lease, StoredImage
from tests import servers
from tests.helpers import assert_error, auth, body, create_key, fsck_json, upload, upload_to
from tests.samples import image_bytes, rotated_jpeg
from tests.servers import ROOT

README = (ROOT / "README.md").read_text()
ERRORS_DOC = (ROOT / "docs" / "errors.md").read_text()
BROWSER = {"HTTP_ACCEPT": "text/html,application/xhtml+xml,*/*;q=0.8"}


# --- The upload's parts and the derivatives' parameters -------------------------------------------


def test_a_file_and_an_image_part_together_are_two_files(store, client):
    form = {
        "file": SimpleUploadedFile("a.png", image_bytes("PNG", seed=1)),
        "image": SimpleUploadedFile("b.png", image_bytes("PNG", seed=2)),
        "model_id": "m1",
    }
    assert_error(client.post("/upload", form), 400, "too_many_files")
    store.assert_empty()


def test_fit_cover_needs_both_sides(store, client):
    meta = upload(client, image_bytes("PNG", (300, 200))).json()
    blobs = store.blob_names()
    for query in ("w=256&fit=cover", "h=128&fit=cover"):
        assert_error(client.get(f"/images/{meta['image_id']}/content?{query}"), 400, "invalid_fit")
    assert store.blob_names() == blobs  # no `_256x0_cover_` derivative
    assert client.get(f"/images/{meta['image_id']}/content?w=256&h=128&fit=cover").status_code == 200


def test_a_json_body_gets_the_415_that_the_error_table_lists(store, client):
    response = client.post("/upload", {"model_id": "m1"}, content_type="application/json")
    assert_error(response, 415, "unsupported_media_type")
    assert "`unsupported_media_type`" in ERRORS_DOC.split("| Status |")[1].split("\n## ")[0]
    store.assert_empty()


# --- Dimensions after EXIF orientation ------------------------------------------------------------


def test_a_rotated_photo_is_stored_with_its_shown_dimensions(store, client):
    meta = upload(client, rotated_jpeg()).json()
    assert (meta["width"], meta["height"]) == (30, 60)
    made = client.get(f"/images/{meta['image_id']}/content?w=64")  # derivatives turn it the same way
    assert Image.open(io.BytesIO(body(made))).size == (30, 60)


def test_fsck_deep_repair_gives_old_records_their_shown_dimensions(store, client):
    rotated = upload(client, rotated_jpeg(), model_id="phone").json()
    plain = upload(client, image_bytes("PNG", (40, 20)), model_id="flat").json()
    docs = get_backend().records
    docs.set_dimensions(rotated["image_id"], 60, 30)  # as uploads stored it before the fix

    report, error = fsck_json("--deep")
    assert error is not None
    [problem] = report["problems"]
    assert (problem["kind"], problem["subject"], problem["repairable"]) == (
        "wrong_dimensions",
        rotated["image_id"],
        True,
    )
    assert "says 60x30" in problem["detail"] and "it is 30x60" in problem["detail"]
    assert fsck_json()[0]["clean"]  # a quick fsck reads no blob, so it cannot tell

    report, error = fsck_json("--deep", "--repair")
    assert error is None and report["repaired"] == 1
    assert (docs.get(rotated["image_id"]).width, docs.get(rotated["image_id"]).height) == (30, 60)
    assert (docs.get(plain["image_id"]).width, docs.get(plain["image_id"]).height) == (40, 20)
    assert fsck_json("--deep")[0]["clean"]


# --- Listings: ?count=true ------------------------------------------------------------------------


def test_count_true_adds_the_total_on_every_page(store, client):
    for i in range(3):
        upload(client, image_bytes(seed=i), model_id="a")
    upload(client, image_bytes(seed=9), model_id="b")
    assert "X-Total-Count" not in client.get("/images")  # it costs a count: asked for only
    first = client.get("/images?limit=2&count=true")
    assert first["X-Total-Count"] == "4" and len(first.json()) == 2
    following = first["Link"].split(">")[0].removeprefix("<")
    assert client.get(following)["X-Total-Count"] == "4"  # the Link keeps count=true
    assert client.get("/images?model_id=a&count=true")["X-Total-Count"] == "3"
    assert client.get("/images?model_id=nobody&count=true")["X-Total-Count"] == "0"
    assert client.get("/models/b/images?count=true")["X-Total-Count"] == "1"
    assert_error(client.get("/images?count=yes"), 400, "invalid_count")


# --- API keys: where they are checked, and their last use -----------------------------------------


def test_an_unknown_key_says_which_store_checks_keys(store, client):
    detail = assert_error(client.get("/images", **auth("isk_from-the-other-store")), 401)["detail"]
    where = {"mongo": "MongoDB's api_keys collection", "embedded": "the embedded store's api_keys table"}
    assert where[store.mode] in detail


def stored_last_use(name: str) -> datetime | None:
    return next(k.last_used_at for k in apikeys.all_keys() if k.name == name)


def set_last_use(store, name: str, when: datetime) -> None:
    if store.mongo_db is not None:
        store.mongo_db["api_keys"].update_one({"name": name}, {"$set": {"last_used_at": when}})
    else:
        ApiKey.objects.filter(name=name).update(last_used_at=when)


def test_a_keys_last_use_is_recorded_at_most_once_a_minute(store, client, monkeypatch):
    key = create_key("viewer", "read")
    assert stored_last_use("viewer") is None
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert client.get("/images", **auth(key)).status_code == 200
    assert stored_last_use("viewer") >= before

    # This worker wrote it just now: the next minute of requests writes nothing.
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    set_last_use(store, "viewer", long_ago)
    assert client.get("/images", **auth(key)).status_code == 200
    assert stored_last_use("viewer") == long_ago

    # Another worker (nothing remembered here) finds a use recorded 30 s ago: it writes nothing either.
    half_a_minute_ago = (datetime.now(UTC) - timedelta(seconds=30)).replace(microsecond=0)
    set_last_use(store, "viewer", half_a_minute_ago)
    apikeys.forget_cached()
    assert client.get("/images", **auth(key)).status_code == 200
    assert stored_last_use("viewer") == half_a_minute_ago

    # A minute on, the use is recorded again.
    later = apikeys.time.monotonic() + apikeys.LAST_USED_SECONDS + 1
    monkeypatch.setattr(apikeys.time, "monotonic", lambda: later)
    set_last_use(store, "viewer", long_ago)
    assert client.get("/images", **auth(key)).status_code == 200
    assert stored_last_use("viewer") > half_a_minute_ago


# --- The browsable API ----------------------------------------------------------------------------


def test_the_browsable_api_names_its_pages_and_the_caller(store, client):
    meta = upload(client, image_bytes()).json()
    page = client.get("/images", **BROWSER).content.decode()
    assert "<title>List images · image-service API</title>" in page
    assert 'href="/accounts/login/?next=/images"' in page  # anonymous: a way to sign in
    detail = client.get(f"/images/{meta['image_id']}", **BROWSER).content.decode()
    assert "<title>An image&#x27;s metadata · image-service API</title>" in detail

    client.force_login(User.objects.create_user("ops", password="pw-for-tests", is_staff=True))
    page = client.get("/images", **BROWSER).content.decode()
    assert "Signed in as ops" in page and "Sign out" in page
    assert "Principal(" not in page and "frozenset" not in page


def test_get_upload_is_405_in_a_browser_too_with_the_form_only_for_uploaders(store, client):
    assert_error(client.get("/upload"), 405, "method_not_allowed")  # curl
    create_key("someone", "write")  # development mode ends: anonymous callers may not upload
    page = client.get("/upload", **BROWSER)
    assert page.status_code == 405 and page["Allow"] == "POST, OPTIONS"
    html = page.content.decode()
    assert "Uploading needs the &#x27;write&#x27; scope" in html
    assert 'enctype="multipart/form-data"' not in html

    client.force_login(User.objects.create_user("pat", password="pw-for-tests"))
    page = client.get("/upload", **BROWSER)
    assert page.status_code == 405
    html = page.content.decode()
    assert "POST the form below" in html and 'enctype="multipart/form-data"' in html
    assert "<title>Upload an image · image-service API</title>" in html


# --- The README's lists and the start-up line -----------------------------------------------------


def test_every_collection_and_table_the_service_makes_is_in_the_readme(store, client):
    """Uploads, a derivative (which takes a lease), a key and a delete make every kind of data."""
    key = create_key("uploader", "admin")
    meta = upload(client, image_bytes("PNG", (300, 200)), **auth(key)).json()
    assert client.get(f"/images/{meta['image_id']}/content?w=64").status_code == 200
    assert client.delete(f"/images/{meta['image_id']}", **auth(key)).status_code == 204
    if store.mongo_db is not None:
        section = README.split("The service creates the following in `MONGO_DB`:")[1].split("\n## ")[0]
        documented = set(re.findall(r"\*\*(?:Collection|GridFS bucket) `([\w.]+)`", section))
        documented |= {"fs.files", "fs.chunks"} if "fs" in documented else set()
        assert set(store.mongo_db.list_collection_names()) <= documented, documented
    else:
        layout = README.split("**Embedded layout**")[1].split("```")[1]
        for model in (StoredImage, ApiKey, Lease, DerivativeUse):
            assert f"`{model._meta.db_table}`" in layout, model


def test_the_mongo_location_names_hosts_and_database_never_credentials(settings):
    from images.mongo import location

    settings.MONGO = {"URI": "mongodb://u:p%40ss@db1:27017,db2:27018/?replicaSet=rs0", "DB": "Catalog"}
    assert location() == "db1:27017,db2:27018, database Catalog"


def test_a_hung_mongodb_gets_503_within_the_deadline_from_the_named_store(tmp_path: Path, ferretdb_bin):
    """SIGSTOP: the server keeps its connections open and answers nothing. Each lookup's MongoDB
    operations share one deadline, MONGO_TIMEOUT_MS + 1 s (images/deadline.py); without it, the first
    requests waited out a socket timeout per connection pymongo tried (6.3 s here, where one is 2 s)."""
    timeout_ms, db = 1000, "hung"
    bound = timeout_ms / 1000 + 1
    with servers.ferretdb(ferretdb_bin, tmp_path / "ferretdb") as uri:
        env = {
            "MONGO_URI": uri,
            "MONGO_DB": db,
            "MONGO_TIMEOUT_MS": str(timeout_ms),
            "DATA_DIR": str(tmp_path),
            "HOT_CACHE_SECONDS": "0",  # every read asks MongoDB
        }
        log = tmp_path / "service.log"
        with servers.service(env, log, workers=1) as url:
            assert f"image-service: mongo ({uri.split('/')[2]}, database {db}) mode" in log.read_text()
            meta = upload_to(url, image_bytes("PNG"), "m1", filename="a.png").json()
            paths = ["/images", "/images?model_id=m1", f"/images/{meta['image_id']}/content"]

            def timed(path: str) -> tuple[requests.Response, float]:
                started = time.monotonic()
                response = requests.get(f"{url}{path}", timeout=30)
                return response, time.monotonic() - started

            # The same requests answered now, as a measure of how busy the machine is.
            baseline = max(timed(path)[1] for path in paths)
            ferretdb = int(subprocess.check_output(["pgrep", "-f", str(tmp_path / "ferretdb")]).split()[0])
            os.kill(ferretdb, signal.SIGSTOP)
            try:
                for path in paths:
                    response, elapsed = timed(path)
                    assert response.status_code == 503, (path, response.text)
                    assert elapsed < bound + 1 + 10 * baseline, (path, elapsed, baseline)
            finally:
                os.kill(ferretdb, signal.SIGCONT)
