"""images/services.py's paths that the API alone does not reach, in both modes: an import's image_id
that another image holds, a batch's writes (adopt_legacy), fsck's and import's helpers, the base
kept at upload, a delete's cover and its latency label."""

import pytest
from django.core.files.base import ContentFile
from prometheus_client import REGISTRY
from rest_framework.exceptions import NotFound

from images import derivatives, services
from images.backend import get_backend
from images.errors import InvalidRequest
from tests.helpers import sha256
from tests.samples import image_bytes


def add(data: bytes, model_id: str = "m1", **kwargs):
    return services.add_image(ContentFile(data, name="a.png"), model_id, **kwargs)[0]


def test_an_image_id_that_another_image_holds_is_refused_and_its_pin_given_back(store):
    held = add(image_bytes("PNG", seed=1))
    squatter = image_bytes("PNG", seed=2)
    with pytest.raises(InvalidRequest) as caught:
        add(squatter, "m2", image_id=held.image_id)
    assert caught.value.get_codes() == "image_id_taken"
    assert str(caught.value.detail) == f"image_id {held.image_id} belongs to another image."
    assert store.records() == [held]
    assert sha256(squatter) not in store.blob_names()


def test_an_image_id_that_holds_these_bytes_for_another_model_keeps_its_pin(store):
    """The refused record's pin would be the holder's own pin (same bytes, same image_id): giving it
    back would delete the bytes under the record that holds that image_id."""
    data = image_bytes("PNG", seed=1)
    held = add(data)
    with pytest.raises(InvalidRequest) as caught:
        add(data, "m2", image_id=held.image_id)
    assert caught.value.get_codes() == "image_id_taken"
    assert store.records() == [held]
    assert held.sha256 in store.blob_names()
    assert services.delete_image(held.image_id) == held  # its pin is still its own to give back
    assert held.sha256 not in store.blob_names()


def test_the_same_image_id_for_the_same_bytes_is_the_record_there(store):
    held = add(image_bytes("PNG", seed=1))
    assert services.add_image(ContentFile(image_bytes("PNG", seed=1)), "m1", image_id=held.image_id) == (
        held,
        False,
    )


def test_find_by_content_names_the_models_record_of_those_bytes(store):
    held = add(image_bytes("PNG", seed=1))
    assert services.find_by_content("m1", held.sha256) == held
    assert services.find_by_content("m2", held.sha256) is None


def test_set_dimensions_changes_the_record_and_forgets_the_cached_one(store):
    held = add(image_bytes("PNG", (30, 20)))
    assert services.find_record(held.image_id).width == 30  # cached now
    services.set_dimensions(held.image_id, 20, 30)
    assert (services.find_record(held.image_id).width, services.find_record(held.image_id).height) == (20, 30)


def test_a_cover_of_another_models_image_is_refused_with_both_names(store):
    held = add(image_bytes("PNG"))
    with pytest.raises(InvalidRequest) as caught:
        services.set_cover("m2", held.image_id)
    assert str(caught.value.detail) == f"Image {held.image_id} belongs to model 'm1', not 'm2'."
    with pytest.raises(NotFound):
        services.set_cover("m1", "0" * 24)


def test_deleting_another_image_leaves_the_cover(store):
    cover = add(image_bytes("PNG", seed=1))
    other = add(image_bytes("PNG", seed=2))
    services.set_cover("m1", cover.image_id)
    services.delete_image(other.image_id)
    assert services.cover_record("m1") == cover


def test_a_delete_is_timed_under_its_name(store):
    held = add(image_bytes("PNG"))
    sample = "imageservice_storage_seconds_count"
    before = REGISTRY.get_sample_value(sample, {"operation": "delete"}) or 0
    services.delete_image(held.image_id)
    assert REGISTRY.get_sample_value(sample, {"operation": "delete"}) == before + 1


def test_a_large_jpeg_keeps_its_base(store):
    data = image_bytes("JPEG", (1400, 1000))
    held = add(data)
    assert derivatives.base_name(held.sha256) in store.blob_names()


def test_add_many_gives_back_only_the_pins_of_records_it_did_not_write(store):
    """A clash on an image_id that a record of the same bytes holds (a second adoption run racing
    the first) leaves that record's pin; a clash with other bytes gives back the new pin."""
    data, other = image_bytes("PNG", seed=1), image_bytes("PNG", seed=2)
    held = add(data)
    new = []
    for content in (data, other):
        file = ContentFile(content, name="a.png")
        digest, info = services.check_image(file)
        new.append((services.new_record(file, digest, info, "m2", image_id=held.image_id), info))

    def write_missing(records):
        for record in records:
            get_backend().blobs.save_new(record.sha256, ContentFile(other))

    assert services.add_many(new, write_missing) == [record for record, _ in new]
    assert store.records() == [held]
    assert sorted(store.blob_names()) == [held.sha256]
    assert services.delete_image(held.image_id) == held
    assert store.blob_names() == []


def test_add_many_writes_each_missing_blob_once(store):
    first, second = image_bytes("PNG", seed=1), image_bytes("PNG", seed=2)
    new = []
    for data, model_id in ((first, "m1"), (first, "m2"), (second, "m1")):
        file = ContentFile(data, name="a.png")
        digest, info = services.check_image(file)
        new.append((services.new_record(file, digest, info, model_id), info))
    written = []

    def write_missing(records):
        written.extend(records)
        for record in records:
            data = first if record.sha256 == sha256(first) else second
            get_backend().blobs.save_new(record.sha256, ContentFile(data))

    assert services.add_many(new, write_missing) == []
    assert written == [new[0][0], new[2][0]]
    assert sorted((r.model_id, r.sha256) for r in store.records()) == sorted(
        (r.model_id, r.sha256) for r, _ in new
    )
