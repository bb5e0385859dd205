"""Catalog features (issue 19), in both modes: labels, covers, batch lookups and signed URLs."""

import json

import pytest

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
