"""Catalog features (issue 19), in both modes: labels, covers, batch lookups and signed URLs."""

import json

import pytest

from images import documents
from tests.helpers import assert_error, auth, body, create_key, upload
from tests.samples import image_bytes


def patch_label(client, image_id: str, label, **extra):
    return client.patch(
        f"/images/{image_id}", json.dumps({"label": label}), content_type="application/json", **extra
    )


# --- labels --------------------------------------------------------------------------------------


def test_an_upload_may_carry_a_label_and_reads_filter_by_it(store, client):
    front = upload(client, image_bytes(seed=1), label="front").json()
    side = upload(client, image_bytes(seed=2), label="side").json()
    front2 = upload(client, image_bytes(seed=3), label="front").json()
    plain = upload(client, image_bytes(seed=4)).json()
    other = upload(client, image_bytes(seed=5), model_id="m2", label="front").json()
    assert (front["label"], plain["label"]) == ("front", None)
    assert [m["image_id"] for m in client.get("/images?label=front").json()] == [
        other["image_id"],
        front2["image_id"],
        front["image_id"],
    ]
    listed = client.get("/models/m1/images?label=front").json()
    assert [m["image_id"] for m in listed] == [front2["image_id"], front["image_id"]]
    # The model's newest with that label; without one, the newest of all.
    assert body(client.get("/image/m1?label=front")) == image_bytes(seed=3)
    assert body(client.get("/image/m1?label=side")) == image_bytes(seed=2)
    assert body(client.get("/image/m1")) == image_bytes(seed=4)
    assert_error(client.get("/image/m1?label=top"), 404, "not_found")
    assert side["label"] == "side"


@pytest.mark.parametrize("label", ["Front", "a" * 33, "front view", "fr/ont", "é", ""])
def test_a_bad_label_is_refused_and_nothing_is_stored(store, client, label):
    if label:  # an empty form field is no label, as HTML forms send it (DRF's rule)
        assert_error(upload(client, image_bytes(), label=label), 400, "invalid_label")
        store.assert_empty()
    assert_error(client.get("/images", {"label": label}), 400, "invalid_label")
    assert_error(client.get("/image/m1", {"label": label}), 400, "invalid_label")


def test_patch_sets_and_clears_a_label(store, client):
    image = upload(client, image_bytes(seed=1)).json()
    assert_error(client.get("/image/m1?label=top"), 404)  # read first: the answer is cached
    changed = patch_label(client, image["image_id"], "top")
    assert changed.status_code == 200, changed.content
    assert changed.json() == {**image, "label": "top"}
    assert client.get(f"/images/{image['image_id']}").json()["label"] == "top"
    assert body(client.get("/image/m1?label=top")) == image_bytes(seed=1)
    assert patch_label(client, image["image_id"], None).json()["label"] is None
    assert_error(client.get("/image/m1?label=top"), 404)
    assert client.get("/images?label=top").json() == []


def test_patch_refusals(store, client, settings):
    image = upload(client, image_bytes(seed=1)).json()
    assert_error(patch_label(client, image["image_id"], "Bad Label"), 400, "invalid_label")
    assert_error(patch_label(client, "0" * 24, "top"), 404, "not_found")
    assert_error(patch_label(client, "not-an-id", "top"), 404, "not_found")
    no_json = client.patch(f"/images/{image['image_id']}", "label=top", content_type="text/plain")
    assert_error(no_json, 415)
    assert_error(client.patch(f"/images/{image['image_id']}", "{", content_type="application/json"), 400)
    reader = create_key("reader", "read")
    assert_error(patch_label(client, image["image_id"], "top", **auth(reader)), 403, "permission_denied")
    assert_error(patch_label(client, image["image_id"], "top"), 401)
    writer = create_key("writer", "read,write")
    assert patch_label(client, image["image_id"], "top", **auth(writer)).status_code == 200
    assert [r.label for r in store.records()] == ["top"]


# --- covers --------------------------------------------------------------------------------------


def put_cover(client, model_id: str, image_id, **extra):
    return client.put(
        f"/models/{model_id}/cover",
        json.dumps({"image_id": image_id}),
        content_type="application/json",
        **extra,
    )


def test_a_cover_is_what_the_model_shows_until_it_is_cleared(store, client):
    first = upload(client, image_bytes(seed=1)).json()
    upload(client, image_bytes(seed=2))
    assert body(client.get("/image/m1")) == image_bytes(seed=2)  # cached now: the PUT must forget it
    answer = put_cover(client, "m1", first["image_id"])
    assert answer.status_code == 200, answer.content
    assert answer.json() == {**first, "cover": True}
    assert body(client.get("/image/m1")) == image_bytes(seed=1)
    assert client.get(f"/images/{first['image_id']}").json()["cover"] is True
    listed = client.get("/images").json() + client.get("/models/m1/images").json()
    assert [m["cover"] for m in listed] == [False, True, False, True]
    upload(client, image_bytes(seed=3))  # a newer image does not displace the cover
    assert body(client.get("/image/m1")) == image_bytes(seed=1)
    assert client.delete("/models/m1/cover").status_code == 204
    assert body(client.get("/image/m1")) == image_bytes(seed=3)
    assert client.get(f"/images/{first['image_id']}").json()["cover"] is False
    assert client.delete("/models/m1/cover").status_code == 204  # none: nothing to do


def test_a_label_read_ignores_the_cover(store, client):
    cover = upload(client, image_bytes(seed=1), label="front").json()
    upload(client, image_bytes(seed=2), label="front")
    put_cover(client, "m1", cover["image_id"])
    assert body(client.get("/image/m1?label=front")) == image_bytes(seed=2)


def test_deleting_the_cover_image_clears_the_cover(store, client):
    cover = upload(client, image_bytes(seed=1)).json()
    upload(client, image_bytes(seed=2))
    put_cover(client, "m1", cover["image_id"])
    assert body(client.get("/image/m1")) == image_bytes(seed=1)
    assert client.delete(f"/images/{cover['image_id']}").status_code == 204
    assert body(client.get("/image/m1")) == image_bytes(seed=2)
    if store.mongo_db is not None:
        assert store.mongo_db["covers"].count_documents({}) == 0
    else:
        from images.models import Cover

        assert not Cover.objects.exists()


def test_cover_refusals_leave_the_cover_as_it_was(store, client):
    mine = upload(client, image_bytes(seed=1)).json()
    theirs = upload(client, image_bytes(seed=2), model_id="m2").json()
    put_cover(client, "m1", mine["image_id"])
    assert_error(put_cover(client, "m1", theirs["image_id"]), 400, "image_of_another_model")
    assert_error(put_cover(client, "m1", "0" * 24), 404, "not_found")
    assert_error(put_cover(client, "m1", "nope"), 404, "not_found")
    assert_error(put_cover(client, "bad id", mine["image_id"]), 400, "invalid_model_id")
    assert_error(put_cover(client, "m1", None), 400)
    assert_error(client.put("/models/m1/cover", "{", content_type="application/json"), 400)
    assert_error(client.delete("/models/bad%20id/cover"), 400, "invalid_model_id")
    reader = create_key("reader", "read")
    assert_error(put_cover(client, "m1", theirs["image_id"], **auth(reader)), 403)
    assert_error(client.delete("/models/m1/cover", **auth(reader)), 403)
    assert_error(put_cover(client, "m1", theirs["image_id"]), 401)
    assert body(client.get("/image/m1")) == image_bytes(seed=1)


# --- batch lookups -------------------------------------------------------------------------------


def lookup(client, model_ids: list, **extra):
    return client.post("/models/lookup", json.dumps(model_ids), content_type="application/json", **extra)


def test_a_batch_gives_each_models_cover_or_newest_and_null_for_unknown(store, client):
    a_old = upload(client, image_bytes(seed=1), model_id="a").json()
    upload(client, image_bytes(seed=2), model_id="a")
    b_new = upload(client, image_bytes(seed=3), model_id="b").json()
    put_cover(client, "a", a_old["image_id"])
    answer = client.get("/models?model_id=b&model_id=nobody&model_id=a&model_id=b")
    assert answer.status_code == 200, answer.content
    models = answer.json()["models"]
    assert list(models) == ["b", "nobody", "a"]  # as asked, each once
    assert models["nobody"] is None
    assert models["a"]["image_id"] == a_old["image_id"] and models["a"]["cover"] is True
    assert models["b"] == {**b_new, "thumb": b_new["url"] + "?preset=thumb"}
    assert body(client.get(models["a"]["url"])) == image_bytes(seed=1)
    thumb = client.get(models["b"]["thumb"])
    assert thumb.status_code == 200 and max(int(thumb["Content-Length"]), 1) > 0
    assert lookup(client, ["b", "nobody", "a"]).json() == answer.json()


def test_batch_refusals(store, client):
    assert_error(client.get("/models"), 400, "invalid_model_ids")
    too_many = "&".join(f"model_id=m{i}" for i in range(101))
    assert_error(client.get(f"/models?{too_many}"), 400, "invalid_model_ids")
    assert client.get(f"/models?{too_many.rsplit('&', 1)[0]}").status_code == 200  # 100 is fine
    assert_error(client.get("/models?model_id=bad%20id"), 400, "invalid_model_id")
    for bad in ({"model_ids": ["a"]}, [], ["a", 3], "a", [f"m{i}" for i in range(101)]):
        assert lookup(client, bad).status_code == 400, bad
    assert_error(client.post("/models/lookup", "[", content_type="application/json"), 400)
    assert_error(client.post("/models/lookup", "a", content_type="text/plain"), 415)


def test_a_browser_opening_the_lookup_gets_no_upload_form(store, client):
    page = client.get("/models/lookup", HTTP_ACCEPT="text/html")
    assert page.status_code == 405
    assert 'name="file"' not in page.content.decode() and "upload" not in page.content.decode().lower()


@pytest.mark.parametrize("store", ["mongo"], indirect=True)
def test_a_batch_costs_the_same_few_mongo_commands_for_any_number_of_models(
    store, client, mongo_commands, monkeypatch
):
    """One `_id $in` for the covers, one for their records, one query for the newest of the
    others: never one query per model. The newest is an aggregation with `$first`, which FerretDB
    lacks (NotImplemented): a process learns that once, and makes a find instead from then on."""
    for i in range(12):
        upload(client, image_bytes(seed=i), model_id=f"m{i}")
    covered = client.get("/images?model_id=m3").json()[0]
    put_cover(client, "m3", covered["image_id"])
    monkeypatch.setattr(documents, "_WITHOUT_FIRST", set())  # as in a new process
    mongo_commands.clear()
    lookup(client, ["m1"])
    ferretdb = mongo_commands.names == ["find", "aggregate", "find"]
    assert ferretdb or mongo_commands.names == ["find", "aggregate"], mongo_commands.names
    newest = "find" if ferretdb else "aggregate"
    for ids, expected in (
        ([f"m{i}" for i in range(12)] + ["nobody"], ["find", "find", newest]),
        (["m1", "m2"], ["find", newest]),
        (["m3"], ["find", "find"]),
    ):
        mongo_commands.clear()
        models = lookup(client, ids).json()["models"]
        assert mongo_commands.names == expected, (ids, mongo_commands.names)
        assert sum(m is not None for m in models.values()) == len([i for i in ids if i != "nobody"])


# --- signed URLs ---------------------------------------------------------------------------------


@pytest.fixture
def private(settings) -> dict:
    """PUBLIC_READ off, with keys made (so not open): reads need `read`, or a signed URL."""
    settings.PUBLIC_READ = False
    return auth(create_key("reader", "read"))


def signed_url_as(client, image_id: str, credential: dict, **params) -> str:
    answer = client.get(f"/images/{image_id}/signed-url", params, **credential)
    assert answer.status_code == 200, answer.content
    assert answer["Cache-Control"] == "no-store"
    return answer.json()["url"]


def test_a_signed_url_reads_a_private_image_without_credentials(store, client, private):
    image = upload(client, image_bytes(seed=1), **auth(create_key("up", "write"))).json()
    content = f"/images/{image['image_id']}/content"
    assert_error(client.get(content), 401)
    assert_error(client.get(f"/images/{image['image_id']}/signed-url"), 401)
    answer = client.get(f"/images/{image['image_id']}/signed-url", {"ttl": "600"}, **private)
    url = answer.json()["url"]
    assert url.startswith(f"http://testserver{content}?exp=") and "&sig=" in url
    got = client.get(url)
    assert got.status_code == 200 and body(got) == image_bytes(seed=1)
    max_age = int(got["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 590 <= max_age <= 600  # never beyond the expiry (an original's is a year otherwise)
    thumb = client.get(signed_url_as(client, image["image_id"], private, preset="thumb"))
    assert thumb.status_code == 200 and thumb["Content-Type"] != ""
    assert thumb["ETag"] != got["ETag"]  # the derivative, not the original


def test_a_tampered_or_expired_signature_is_a_403(store, client, private, settings):
    from images import signing

    one = upload(client, image_bytes(seed=1), **auth(create_key("up", "write"))).json()["image_id"]
    two = upload(client, image_bytes(seed=2), **auth(create_key("up2", "write"))).json()["image_id"]
    url = signed_url_as(client, one, private, preset="thumb")
    exp = url.split("exp=")[1].split("&")[0]
    sig = url.split("sig=")[1]
    tampered = [
        url.replace(f"sig={sig}", f"sig={sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}"),
        url.replace(f"exp={exp}", f"exp={int(exp) + 3600}"),
        url.replace("preset=thumb", "preset=full"),
        url.replace(one, two),
        url + "&w=64",
        url.replace(f"&sig={sig}", ""),
        url + f"&sig={sig}",
    ]
    for bad in tampered:
        assert_error(client.get(bad), 403, "bad_signature")
    settings.PUBLIC_READ = True  # a signature that is there is judged, public or not
    assert_error(client.get(tampered[0]), 403, "bad_signature")
    relative, _ = signing.sign(f"/images/{one}/content", {}, 10, now=1_000_000)
    assert_error(client.get(relative), 403, "signature_expired")


def test_signatures_made_with_an_old_key_still_work_after_a_rotation(store, client, private, settings):
    image = upload(client, image_bytes(seed=1), **auth(create_key("up", "write"))).json()["image_id"]
    settings.URL_SIGNING_KEY = "first-key"
    url = signed_url_as(client, image, private)
    settings.URL_SIGNING_KEY, settings.URL_SIGNING_OLD_KEYS = "second-key", ["first-key"]
    assert client.get(url).status_code == 200
    assert client.get(signed_url_as(client, image, private)).status_code == 200
    settings.URL_SIGNING_OLD_KEYS = []  # retired: its URLs stop working
    assert_error(client.get(url), 403, "bad_signature")


def test_signed_url_refusals(store, client, private):
    image = upload(client, image_bytes(seed=1), **auth(create_key("up", "write"))).json()["image_id"]
    for params in ({"ttl": "0"}, {"ttl": "x"}, {"ttl": str(8 * 24 * 3600)}, {"ttl": "²"}):
        assert_error(client.get(f"/images/{image}/signed-url", params, **private), 400, "invalid_ttl")
    assert_error(
        client.get(f"/images/{image}/signed-url", {"preset": "huge"}, **private), 400, "invalid_preset"
    )
    assert_error(client.get(f"/images/{'0' * 24}/signed-url", **private), 404, "not_found")


def test_metadata_carries_signed_urls_when_asked(store, client, private):
    image = upload(client, image_bytes(seed=1), model_id="m1", **auth(create_key("up", "write"))).json()
    assert "signed_urls" not in client.get(f"/images/{image['image_id']}", **private).json()
    meta = client.get(f"/images/{image['image_id']}?signed=true&ttl=60", **private).json()
    assert set(meta["signed_urls"]) == {"original", "thumb", "card", "full"}
    assert body(client.get(meta["signed_urls"]["original"])) == image_bytes(seed=1)
    assert client.get(meta["signed_urls"]["card"]).status_code == 200
    listed = client.get("/images?signed=true", **private).json()
    assert set(listed[0]["signed_urls"]) == set(meta["signed_urls"])
    batch = client.get("/models?model_id=m1&signed=true", **private).json()["models"]["m1"]
    assert client.get(batch["signed_urls"]["thumb"]).status_code == 200
    assert_error(client.get("/images?signed=yes", **private), 400, "invalid_signed")


def test_the_signature_check_that_nginx_asks_for(store, client, private):
    """deploy/nginx.conf's auth_request: 204 for a valid signed URL, else the 403."""
    from images import signing

    image = upload(client, image_bytes(seed=1), **auth(create_key("up", "write"))).json()["image_id"]
    url = signed_url_as(client, image, private, preset="thumb").removeprefix("http://testserver")
    assert client.get("/signature-check", HTTP_X_ORIGINAL_URI=url).status_code == 204
    assert_error(
        client.get("/signature-check", HTTP_X_ORIGINAL_URI=url[:-1] + ("x" if url[-1] != "x" else "y")),
        403,
        "bad_signature",
    )
    assert_error(client.get("/signature-check"), 403, "bad_signature")
    expired, _ = signing.sign(f"/images/{image}/content", {}, 10, now=1_000_000)
    assert_error(client.get("/signature-check", HTTP_X_ORIGINAL_URI=expired), 403, "signature_expired")


# --- admin ---------------------------------------------------------------------------------------


def test_the_admin_filters_by_label_marks_covers_and_lists_them(store, client):
    from django.contrib.auth.models import User

    front = upload(client, image_bytes(seed=1), model_id="lamp", label="front", name="lamp-front.jpg").json()
    upload(client, image_bytes(seed=2), model_id="lamp", label="side", name="lamp-side.jpg")
    put_cover(client, "lamp", front["image_id"])
    client.force_login(User.objects.create_user("ops", password="pw-for-tests", is_staff=True))
    page = client.get("/admin/images/?label=front").content.decode()
    assert "lamp-front.jpg" in page and "lamp-side.jpg" not in page
    assert '<a href="?label=front">front</a>' in page and "<td>Cover</td>" in page
    refused = client.get("/admin/images/?label=Bad!").content.decode()
    assert '<li class="error">Label must be 1-32 characters' in refused
    covers = client.get("/admin/covers/").content.decode()
    assert f"<code>{front['image_id']}</code>" in covers and "?model_id=lamp" in covers
    assert 'href="/admin/covers/"' in client.get("/admin/").content.decode()
