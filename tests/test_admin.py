"""The admin's images section, in both modes: through the document manager, never the ORM."""

import hashlib

import pytest
from django.contrib.auth.models import User

from images import admin as image_admin
from tests.samples import image_bytes
from tests.test_access import auth, create_key
from tests.test_api import upload


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
