"""The records' contract, called directly in both modes (images/documents.py): what the API tests
reach only through a view that hides some of it (ties in the order, searching, legacy records)."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pymongo
import pytest
from bson import ObjectId

from images import documents
from images.backend import get_backend
from images.documents import DuplicateImage, ImageRecord, MongoDocuments, iter_records, new_image_id

AT = datetime(2026, 3, 4, 5, 6, 7, 8000, tzinfo=UTC)


def record(n: int, model_id: str = "m", at: datetime = AT, filename: str | None = None) -> ImageRecord:
    sha = f"{n:02x}" * 32
    return ImageRecord(
        new_image_id(), model_id, filename or f"shot{n}.png", "image/png", 10 + n, sha, 4, 3, at
    )


@pytest.fixture
def docs(store):
    return get_backend().records


def test_a_record_comes_back_as_it_went_in(docs):
    one = record(1)
    docs.insert(one)
    assert docs.get(one.image_id) == one
    assert docs.find("m", one.sha256) == one
    assert docs.find("other", one.sha256) is None
    assert docs.get(new_image_id()) is None
    assert docs.get("not-an-id") is None


def test_the_same_bytes_for_the_same_model_are_refused(docs):
    one = record(1)
    docs.insert(one)
    with pytest.raises(DuplicateImage):
        docs.insert(replace(one, image_id=new_image_id()))
    docs.insert(replace(one, image_id=new_image_id(), model_id="other"))  # another model: allowed
    assert docs.count() == 2


def test_pages_are_newest_first_with_ties_broken_by_image_id(docs):
    same = [record(n) for n in range(3)]  # one uploaded_at: the image_id decides
    older = record(9, at=AT - timedelta(seconds=1))
    for one in [*same, older]:
        docs.insert(one)
    expected = [*sorted(same, key=lambda r: r.image_id, reverse=True), older]
    assert docs.page(None, None, 10) == expected
    assert docs.page(None, None, 2) == expected[:2]
    assert docs.page(None, (AT, expected[0].image_id), 10) == expected[1:]
    assert docs.page(None, (AT, expected[2].image_id), 10) == [older]
    assert docs.page(None, (older.uploaded_at, older.image_id), 10) == []


def test_pages_and_counts_of_one_model(docs):
    mine, theirs = record(1, "mine"), record(2, "theirs")
    docs.insert(mine)
    docs.insert(theirs)
    assert docs.page("mine", None, 10) == [mine]
    assert (docs.count(), docs.count("mine"), docs.count("nobody")) == (2, 1, 0)
    assert docs.page("mine", (AT + timedelta(seconds=1), str(ObjectId())), 10) == [mine]


def test_matching_searches_filenames_and_sha256_prefixes(docs):
    front = record(0xAB, filename="Front View (1).png")
    back = record(0xCD, filename="back.png")
    for one in (front, back):
        docs.insert(one)
    assert docs.page(None, None, 10, "front view") == [front]
    assert docs.page(None, None, 10, "(1)") == [front]  # a regex character, matched as itself
    assert docs.page(None, None, 10, "AB") == [front]  # a sha256 prefix, whatever its case
    assert docs.page(None, None, 10, "bab") == []  # in the sha256, but not at its start
    assert docs.page("other", None, 10, "back") == []
    assert docs.page(None, (AT, max(front.image_id, back.image_id)), 10, "png") == [
        min((front, back), key=lambda r: r.image_id)
    ]


def test_delete_returns_the_record_once(docs):
    one = record(1)
    docs.insert(one)
    assert docs.references(one.sha256)
    assert docs.delete(one.image_id) == one
    assert docs.delete(one.image_id) is None
    assert docs.delete("not-an-id") is None
    assert not docs.references(one.sha256)
    assert docs.count() == 0


def test_set_dimensions_changes_only_that_record(docs):
    one, two = record(1), record(2)
    docs.insert(one)
    docs.insert(two)
    docs.set_dimensions(one.image_id, 30, 60)
    assert docs.get(one.image_id) == replace(one, width=30, height=60)
    assert docs.get(two.image_id) == two


def test_iter_records_pages_through_every_record_newest_first(docs):
    made = [record(n, "m" if n % 2 else "n", AT + timedelta(seconds=n)) for n in range(5)]
    for one in made:
        docs.insert(one)
    assert list(iter_records(docs, batch=2)) == made[::-1]
    assert list(iter_records(docs, "m", batch=1)) == [made[3], made[1]]
    assert list(iter_records(docs, "x")) == []


def test_with_contents_finds_every_models_record_of_those_bytes(docs):
    one, other, elsewhere = record(1), record(2), replace(record(1), image_id=new_image_id(), model_id="n")
    for each in (one, other, elsewhere):
        docs.insert(each)
    assert sorted(docs.with_contents([one.sha256]), key=lambda r: r.model_id) == [one, elsewhere]
    assert docs.with_contents([]) == []


def test_get_many_gives_the_records_that_exist(docs):
    one, two = record(1), record(2)
    docs.insert(one)
    docs.insert(two)
    found = docs.get_many([two.image_id, one.image_id, new_image_id(), "not-an-id"])
    assert sorted(found, key=lambda r: r.image_id) == sorted([one, two], key=lambda r: r.image_id)
    assert docs.get_many([]) == docs.get_many(["not-an-id"]) == []


def test_newest_of_gives_each_models_newest_with_ties_broken_by_image_id(docs):
    old, newer, tie = record(1, "m"), record(2, "m", AT + timedelta(seconds=1)), record(3, "m", AT)
    only = record(4, "n", AT - timedelta(days=1))
    for each in (old, newer, tie, only, record(5, "other")):
        docs.insert(each)
    assert docs.newest_of(["m", "n", "unknown"]) == {"m": newer, "n": only}
    docs.delete(newer.image_id)
    assert docs.newest_of(["m"]) == {"m": max(old, tie, key=lambda r: r.image_id)}


def test_set_label_returns_the_record_before_and_changes_only_that_record(docs):
    one, two = record(1), record(2)
    docs.insert(one)
    docs.insert(two)
    assert docs.set_label(one.image_id, "front") == one
    assert docs.get(one.image_id) == replace(one, label="front")
    assert docs.set_label(one.image_id, None) == replace(one, label="front")
    assert docs.get(one.image_id) == one
    assert docs.get(two.image_id) == two
    assert docs.set_label(new_image_id(), "front") is None


@pytest.mark.parametrize("store", ["mongo"], indirect=True)  # the aggregation: MongoDB only
def test_newest_of_falls_back_to_a_find_on_a_server_without_first(store, docs, monkeypatch):
    """FerretDB 1.24 has no `$group` `$first`: the first newest_of of a client finds that out (and
    only that error), the answer is the same, and the client is remembered."""
    monkeypatch.setattr(documents, "_WITHOUT_FIRST", set())
    one, two = record(1, "m"), record(2, "m", AT + timedelta(seconds=1))
    docs.insert(one)
    docs.insert(two)
    assert docs.newest_of(["m"]) == {"m": two}
    assert docs.newest_of(["m"]) == {"m": two}
    assert docs.collection.database.client in documents._WITHOUT_FIRST


def test_mongo_documents_on_a_given_database(mongo_uri):
    """A storage migration's records go to the database it names, not the configured one."""
    client = pymongo.MongoClient(mongo_uri)
    database = client[f"docs_{new_image_id()}"]
    try:
        one = record(1)
        MongoDocuments(database).insert(one)
        assert [d["_id"] for d in database["images"].find()] == [ObjectId(one.image_id)]
    finally:
        client.drop_database(database.name)
        client.close()


@pytest.mark.parametrize("store", ["mongo"], indirect=True)  # legacy and foreign documents: MongoDB only
def test_mongo_records_without_a_sha256_or_with_unknown_fields(store, docs):
    one = record(1)
    docs.insert(one)
    store.mongo_db["images"].update_one({"_id": ObjectId(one.image_id)}, {"$set": {"tool": "x"}})
    legacy = ObjectId()
    store.mongo_db["images"].insert_one({"_id": legacy, "model_id": "m", "filename": "old.png"})
    assert docs.get(one.image_id) == one  # the unknown field is left out
    assert docs.get(str(legacy)) is None
    assert docs.page(None, None, 10) == [one]
    assert (docs.count(), docs.count("m")) == (1, 1)
    assert docs.delete(str(legacy)) is None
    assert store.mongo_db["images"].count_documents({"_id": legacy}) == 1
    assert docs.set_label(str(legacy), "front") is None
    assert docs.get_many([str(legacy), one.image_id]) == [one]
    assert docs.newest_of(["m"]) == {"m": one}
