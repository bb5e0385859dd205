"""The admin's images section, in both modes: through the document manager, never the ORM."""

import hashlib
import re

import pytest
from django.contrib.auth.models import User

from images import admin as image_admin
from images.bulk import human_bytes
from tests.helpers import auth, create_key, upload
from tests.samples import image_bytes


@pytest.fixture
def staff(client, store):
    client.force_login(User.objects.create_user("ops", password="pw-for-tests", is_staff=True))
    return client


def test_the_admin_needs_a_staff_login(store, client):
    response = client.get("/admin/images/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    client.force_login(User.objects.create_user("someone", password="x"))
    assert client.get("/admin/images/").status_code == 302


def test_the_index_links_to_images(staff):
    page = staff.get("/admin/").content.decode()
    assert 'href="/admin/images/"' in page


def test_browse_shows_previews_uploader_and_details(store, staff):
    key = create_key("catalog-bot", "write")
    data = image_bytes("PNG", (64, 48))
    meta = upload(staff, data, model_id="chair-7", name="front.png", **auth(key)).json()
    page = staff.get("/admin/images/").content.decode()
    assert f'src="/images/{meta["image_id"]}/content?w=64&amp;h=64"' in page
    for text in ("front.png", "chair-7", "catalog-bot", "64&times;48", hashlib.sha256(data).hexdigest()):
        assert text in page
    assert f"<td>{human_bytes(meta['size'])}</td>" in page and "bytes" not in page  # as the gallery says


def test_filter_by_model_and_search_by_filename_or_sha256(store, staff):
    a = upload(staff, image_bytes(seed=1), model_id="lamp", name="Lamp-Side.jpg").json()
    upload(staff, image_bytes(seed=2), model_id="chair", name="chair-front.jpg")
    by_model = staff.get("/admin/images/?model_id=lamp").content.decode()
    assert "Lamp-Side.jpg" in by_model and "chair-front.jpg" not in by_model
    by_name = staff.get("/admin/images/?q=lamp-side").content.decode()
    assert "Lamp-Side.jpg" in by_name and "chair-front.jpg" not in by_name
    by_sha = staff.get(f"/admin/images/?q={a['sha256'][:10]}").content.decode()
    assert "Lamp-Side.jpg" in by_sha and "chair-front.jpg" not in by_sha
    assert "No images." in staff.get("/admin/images/?q=nothing-like-this").content.decode()


def test_pages_follow_the_next_link(store, staff, monkeypatch):
    monkeypatch.setattr(image_admin, "PAGE_SIZE", 2)
    for i in range(5):
        upload(staff, image_bytes(seed=i), name=f"img-{i}.jpg")
    seen, url = [], "/admin/images/"
    while url:
        page = staff.get(url).content.decode()
        seen += [f"img-{i}.jpg" for i in range(5) if f"img-{i}.jpg" in page]
        marker = 'class="paginator"><a href="'
        url = (
            "/admin/images/" + page.split(marker)[1].split('"')[0].replace("&amp;", "&")
            if marker in page
            else None
        )
    assert sorted(seen) == [f"img-{i}.jpg" for i in range(5)]


def test_a_bad_filter_is_a_message_not_an_error(store, staff):
    response = staff.get("/admin/images/?model_id=bad%20id")
    assert response.status_code == 200
    assert "1-128 characters" in response.content.decode()


def test_delete_asks_first_then_removes_record_and_bytes(store, staff):
    meta = upload(staff, image_bytes(), name="gone.jpg").json()
    url = f"/admin/images/{meta['image_id']}/delete/"
    confirm = staff.get(url)
    assert confirm.status_code == 200 and "Yes, delete it" in confirm.content.decode()
    assert len(store.records()) == 1
    done = staff.post(url)
    assert done.status_code == 302
    store.assert_empty()
    assert staff.get(url).status_code == 404


# --- API keys --------------------------------------------------------------------------------------


@pytest.fixture
def superuser(client, store):
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests"))
    return client


def test_superusers_create_list_and_revoke_api_keys(store, superuser, client):
    assert 'href="/admin/api-keys/"' in superuser.get("/admin/").content.decode()
    assert "No API keys." in superuser.get("/admin/api-keys/").content.decode()

    created = superuser.post("/admin/api-keys/add/", {"name": "ci-uploader", "scope": "write"})
    assert created.status_code == 200 and "no-store" in created["Cache-Control"]
    key = re.search(r'value="(isk_[^"]+)"', created.content.decode()).group(1)
    again = superuser.post("/admin/api-keys/add/", {"name": "ci-uploader", "scope": "read"})
    assert "exists already" in again.content.decode() and "isk_" not in again.content.decode()

    client.logout()  # the key, not the session, uploads
    meta = upload(client, image_bytes(), **auth(key)).json()
    assert meta["uploaded_by"] == "ci-uploader"
    client.force_login(User.objects.get(username="root"))
    listing = superuser.get("/admin/api-keys/").content.decode()
    row = listing.split("<td>ci-uploader</td>")[1].split("</tr>")[0]
    assert "read, write" in row and "UTC" in row and "active" in row and "never" not in row  # last used
    assert key not in listing  # shown once, at its creation only

    confirm = superuser.get("/admin/api-keys/ci-uploader/revoke/")
    assert "Yes, revoke it" in confirm.content.decode()
    assert superuser.post("/admin/api-keys/ci-uploader/revoke/").status_code == 302
    assert "revoked" in superuser.get("/admin/api-keys/").content.decode().split("<td>ci-uploader</td>")[1]
    client.logout()
    assert upload(client, image_bytes(seed=2), **auth(key)).status_code == 401


def test_only_superusers_manage_api_keys(store, staff):
    assert 'href="/admin/api-keys/"' not in staff.get("/admin/").content.decode()
    for url in ("/admin/api-keys/", "/admin/api-keys/add/", "/admin/api-keys/x/revoke/"):
        assert staff.get(url).status_code == 403, url
    assert staff.post("/admin/api-keys/add/", {"name": "sneaky", "scope": "admin"}).status_code == 403
