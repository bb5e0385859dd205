"""Replacing the Flask service (issue 14): its data, written exactly as it wrote it, on the test
MongoDB; the service before and after `manage.py adopt_legacy`; the command in place, from another
database into either mode, as a dry run, and killed with -9 at any moment then run again."""

import importlib
import io
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import gridfs
import pymongo
import pytest
import requests
from bson import ObjectId
from django.core.management import call_command
from django.core.management.base import CommandError

from images import legacy
from tests import servers
from tests.helpers import body, name_of, upload
from tests.samples import image_bytes, noise_jpeg

adopt_legacy = importlib.import_module("images.management.commands.adopt_legacy")

PNG = image_bytes("PNG", seed=1)
JPEG = image_bytes("JPEG", seed=2)
WEBP = image_bytes("WEBP", seed=3)
BIG_JPEG = noise_jpeg((1000, 1000))  # 1.2 MB, over SMALL_FILE: streamed, not read in a batch
TEXT = b"not an image, but the Flask service stored whatever it was sent\n"


@dataclass
class FlaskData:
    """Legacy data in one database, written as the Flask service wrote it."""

    db: pymongo.database.Database
    ids: dict[str, str] = field(default_factory=dict)  # a label: the image_id the Flask service returned

    def put(self, label: str, data: bytes, model_id: str, filename: str) -> str:
        """The Flask service's upload: GridFS.put, then one document in `images`."""
        file_id = gridfs.GridFS(self.db).put(data, filename=filename)
        self.db.images.insert_one({"image_id": str(file_id), "model_id": model_id, "filename": filename})
        self.ids[label] = str(file_id)
        return str(file_id)

    def write_all(self) -> "FlaskData":
        """Every kind of legacy record the issue names, in upload order."""
        self.put("png", PNG, "chair-1", "side.png")
        self.put("jpeg", JPEG, "chair-1", "front.jpg")
        self.put("webp", WEBP, "table-2", "top.webp")
        self.put("shared", JPEG, "lamp-3", "front.jpg")  # another model, the same bytes: one blob
        self.put("again", JPEG, "chair-1", "front (1).jpg")  # the same model and bytes: merged
        self.put("big", BIG_JPEG, "lamp-3", "photo.jpg")
        self.put("text", TEXT, "table-2", "notes.txt")
        gone = self.put("gone", PNG, "chair-1", "gone.png")
        gridfs.GridFS(self.db).delete(ObjectId(gone))
        cut = self.put("cut", BIG_JPEG, "sofa-4", "cut.jpg")  # a chunk lost
        self.db["fs.chunks"].delete_one({"files_id": ObjectId(cut), "n": 2})
        cut = self.put("cut_small", WEBP, "sofa-4", "cut.webp")  # a chunk cut short
        self.db["fs.chunks"].update_one({"files_id": ObjectId(cut)}, {"$set": {"data": WEBP[:40]}})
        self.put("bad_model", PNG, "no/slash", "x.png")
        return self


ADOPTABLE = {"png", "jpeg", "webp", "shared", "big"}
SET_ASIDE = {
    "text": "not_an_image",
    "gone": "missing_file",
    "cut": "cut_short",
    "cut_small": "cut_short",
    "bad_model": "invalid_model_id",
}
SOURCE_BYTES = {"png": PNG, "jpeg": JPEG, "webp": WEBP, "shared": JPEG, "big": BIG_JPEG}


def adopt(*args: str) -> tuple[dict, int]:
    """Runs the command in-process with --json: its summary and exit status."""
    out = io.StringIO()
    try:
        call_command("adopt_legacy", "--json", *args, stdout=out, stderr=io.StringIO())
        status = 0
    except CommandError as exc:
        status = exc.returncode
    return json.loads(out.getvalue()), status


def snapshot(db: pymongo.database.Database) -> dict:
    """Every collection, each sorted, ObjectIds and dates as text: what two end states compare by
    (but when a record was set aside, or a blob pinned)."""
    state = {}
    for name in sorted(db.list_collection_names()):
        docs = [
            {k: str(v) for k, v in doc.items() if k not in ("set_aside_at", "at")} for doc in db[name].find()
        ]
        state[name] = sorted(docs, key=lambda doc: json.dumps(doc, sort_keys=True))
    return state


@pytest.fixture
def flask(store) -> FlaskData:
    return FlaskData(store.mongo_db).write_all()


mongo_only = pytest.mark.parametrize("store", ["mongo"], indirect=True)


@mongo_only
def test_before_adoption_legacy_records_are_left_out_and_nothing_fails(store, client, flask):
    ids = flask.ids
    new = upload(client, image_bytes("PNG", seed=9), "chair-1", "new.png")  # indexes built beside them
    assert new.status_code == 201
    listing = client.get("/images")
    assert listing.status_code == 200
    assert [r["filename"] for r in listing.json()] == ["new.png"]
    assert client.get("/images?model_id=table-2").json() == []
    assert client.get("/models/table-2/images").status_code == 404
    assert client.get("/image/table-2").status_code == 404
    assert client.get("/image/chair-1").status_code == 200  # the new upload
    legacy_doc_id = str(store.mongo_db.images.find_one({"image_id": ids["png"]})["_id"])
    for image_id in (ids["png"], legacy_doc_id):
        assert client.get(f"/images/{image_id}").status_code == 404
        assert client.get(f"/images/{image_id}/content").status_code == 404
        assert client.delete(f"/images/{image_id}").status_code == 404
    assert client.get("/readyz").status_code == 200
    assert legacy.count(store.mongo_db) == 11


@mongo_only
def test_adopting_in_place(store, client, flask):
    ids = flask.ids
    files_before = store.mongo_db["fs.files"].count_documents({})
    summary, status = adopt()
    assert status == 1  # done, with records set aside
    assert (summary["adopted"], summary["merged_duplicates"], summary["already_adopted"]) == (5, 1, 0)
    assert summary["set_aside"] == {
        "cut_short": 2,
        "invalid_model_id": 1,
        "missing_file": 1,
        "not_an_image": 1,
    }
    assert summary["bytes_copied"] == 0
    # Three distinct contents became blobs in place; the shared and merged copies were deleted.
    assert summary["bytes_kept_in_place"] == len(PNG) + len(JPEG) + len(WEBP) + len(BIG_JPEG)
    assert summary["legacy_files_deleted"] == 2
    assert store.mongo_db["fs.files"].count_documents({}) == files_before - 2

    records = {r.image_id: r for r in store.records()}
    assert set(records) == {ids[label] for label in ADOPTABLE}
    for label in ADOPTABLE:
        record = records[ids[label]]
        file_doc = store.mongo_db["fs.files"].find_one({"filename": record.sha256})
        assert record.sha256 == name_of(SOURCE_BYTES[label])
        assert record.uploaded_by is None
        assert record.uploaded_at.tzinfo is not None
        content = client.get(f"/images/{record.image_id}/content")
        assert body(content) == SOURCE_BYTES[label]
        assert content["Content-Type"] == record.content_type
        assert file_doc is not None
    assert records[ids["webp"]].content_type == "image/webp"
    assert records[ids["shared"]].model_id == "lamp-3"
    assert client.get(f"/images/{ids['again']}").status_code == 404  # merged into ids["jpeg"]
    assert store.mongo_db.images.count_documents(legacy.LEGACY) == 0

    aside = {doc["image_id"]: doc["reason"] for doc in store.mongo_db[legacy.SET_ASIDE].find()}
    assert aside == {ids[label]: reason for label, reason in SET_ASIDE.items()}
    for label in ("text", "cut", "cut_small"):  # their bytes stay where they were, never served
        assert store.mongo_db["fs.files"].find_one({"_id": ObjectId(ids[label])})
        assert client.get(f"/images/{ids[label]}/content").status_code == 404

    before = snapshot(store.mongo_db)
    again, status = adopt()
    assert status == 0
    assert (again["adopted"], again["merged_duplicates"], again["set_aside"]) == (0, 0, {})
    assert snapshot(store.mongo_db) == before

    report, error = fsck("--repair", "--grace", "0")
    assert error is None and report["clean"], report["problems"]
    assert report["legacy_files"] == 4  # the set-aside files: text, both cut short, bad model's
    assert snapshot(store.mongo_db) == before


def fsck(*args: str) -> tuple[dict, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("fsck", "--json", *args, stdout=out)
    except CommandError as exc:
        return json.loads(out.getvalue()), exc
    return json.loads(out.getvalue()), None


@mongo_only
def test_fsck_leaves_the_flask_services_files_alone_before_adoption(store, flask):
    before = snapshot(store.mongo_db)
    report, error = fsck("--repair", "--grace", "0")
    assert error is None and report["clean"], report["problems"]
    assert report["legacy_files"] == 9  # the names of the files legacy records hold ("gone" has none)
    assert snapshot(store.mongo_db) == before


@mongo_only
def test_dry_run_reports_what_adoption_would_do_and_changes_nothing(store, flask):
    before = snapshot(store.mongo_db)
    summary, status = adopt("--dry-run")
    assert status == 1
    assert (summary["adopted"], summary["merged_duplicates"]) == (5, 1)
    assert sum(summary["set_aside"].values()) == 5
    assert snapshot(store.mongo_db) == before


def test_bad_arguments_exit_2(store, settings):
    with pytest.raises(CommandError) as error:
        call_command("adopt_legacy", "--from-uri", "mongodb://127.0.0.1:1/")
    assert error.value.returncode == 2
    if store.mode == "embedded":
        with pytest.raises(CommandError) as error:
            call_command("adopt_legacy")
        assert error.value.returncode == 2


@pytest.fixture
def flask_db(request, django_db_blocker) -> Iterator[pymongo.database.Database]:
    """The Flask service's own database, apart from the store, dropped afterwards."""
    uri = request.getfixturevalue("mongo_uri")
    client = pymongo.MongoClient(uri, tz_aware=True)
    name = f"flask_{uuid.uuid4().hex[:12]}"
    yield client[name]
    client.drop_database(name)
    client.close()


def test_copying_from_another_database_into_either_mode(store, client, flask_db, mongo_uri):
    ids = FlaskData(flask_db).write_all().ids
    source_before = snapshot(flask_db)
    summary, status = adopt("--from-uri", mongo_uri, "--from-db", flask_db.name)
    assert status == 1
    assert (summary["adopted"], summary["merged_duplicates"]) == (5, 1)
    assert summary["bytes_copied"] == len(PNG) + len(JPEG) + len(WEBP) + len(BIG_JPEG)
    assert snapshot(flask_db) == source_before  # only read
    for label in ADOPTABLE:
        assert body(client.get(f"/images/{ids[label]}/content")) == SOURCE_BYTES[label]
    assert len(store.blob_names()) == 4  # one blob per distinct content

    records = sorted(store.records(), key=lambda r: r.image_id)
    again, status = adopt("--from-uri", mongo_uri, "--from-db", flask_db.name)
    assert status == 1  # the set-aside records are still in the source
    assert (again["adopted"], again["already_adopted"], again["bytes_copied"]) == (0, 5, 0)
    assert again["merged_duplicates"] == 1  # merged again, into the same record: nothing changes
    assert sorted(store.records(), key=lambda r: r.image_id) == records
    assert len(store.blob_names()) == 4


def write_many(db: pymongo.database.Database) -> int:
    """Every kind of legacy record, then 16 more, so that kills land mid-way: bytes shared by other
    models (their legacy files deleted) and repeated for the same model (merged). Returns the count."""
    data = FlaskData(db).write_all()
    for n in range(10):
        data.put(f"shared{n}", image_bytes("PNG", seed=100 + n % 5), f"m{n % 3}", f"{n}.png")
    for n in range(6):
        data.put(f"dup{n}", image_bytes("PNG", seed=200 + n % 3), "dup", f"dup{n}.png")
    return len(data.ids)


def copy_database(source: pymongo.database.Database, target: pymongo.database.Database) -> None:
    """The same documents, `_id`s included, so that two end states compare exactly."""
    for name in source.list_collection_names():
        target[name].insert_many(list(source[name].find()))


@mongo_only
def test_killed_at_any_moment_a_rerun_ends_as_one_clean_run(store, flask_db, mongo_uri, tmp_path, settings):
    """kill -9 of `manage.py adopt_legacy` in a subprocess, at random moments while it works, then a
    rerun: the same end state as one uninterrupted run on a copy of the same data."""
    total = write_many(store.mongo_db)
    copy_database(store.mongo_db, flask_db)
    killed_db = settings.MONGO
    settings.MONGO = {**killed_db, "DB": flask_db.name}
    assert adopt()[1] == 1  # the clean run, on the copy
    settings.MONGO = killed_db

    env = {"MONGO_URI": mongo_uri, "MONGO_DB": store.mongo_db.name, "DATA_DIR": str(tmp_path / "data")}
    argv = [sys.executable, "manage.py", "adopt_legacy", "--batch", "3"]  # 9 batches: kills land mid-way
    rng = random.Random(14)
    cut_mid_way = 0
    for _ in range(3):
        before = legacy.count(store.mongo_db)
        run = subprocess.Popen(
            argv, cwd=servers.ROOT, env=servers.service_env(env), stdout=subprocess.DEVNULL
        )
        target = before - rng.randint(1, 5)  # kill once a batch or two are done, at a random point
        while run.poll() is None and legacy.count(store.mongo_db) > target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))  # about a batch's time
        run.send_signal(signal.SIGKILL)
        run.wait()
        cut_mid_way += 0 < legacy.count(store.mongo_db) < before
    assert cut_mid_way == 3
    assert adopt()[1] in (0, 1)  # the rerun
    assert snapshot(store.mongo_db) == snapshot(flask_db)
    assert legacy.count(store.mongo_db) == 0 and total == 27


def test_the_old_clients_three_calls_before_and_after_adoption(flask_db, mongo_uri, tmp_path):
    """The real service on a database the Flask service wrote: one start-up warning, no 5xx, and
    after `adopt_legacy` the ids old clients hold work, with the true Content-Type."""
    ids = FlaskData(flask_db).write_all().ids
    env = {"MONGO_URI": mongo_uri, "MONGO_DB": flask_db.name, "DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "service.log"
    new_png = image_bytes("PNG", seed=9)
    with servers.service(env, log) as url:
        assert requests.get(f"{url}/readyz").status_code == 200
        assert requests.get(f"{url}/images").json() == []
        missing = requests.get(f"{url}/image/table-2")
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
        form = {"model_id": "chair-1"}
        posted = requests.post(f"{url}/upload", files={"file": ("new.png", new_png)}, data=form)
        assert posted.status_code == 201
        warnings = [line for line in log.read_text().splitlines() if legacy.ADOPT in line]
        assert len(warnings) == 1 and "11 record(s) of the Flask service" in warnings[0]

        adopted = servers.manage(env, "adopt_legacy", "--json")
        assert adopted.returncode == 1, adopted.stderr
        assert json.loads(adopted.stdout)["adopted"] == 5

        listing = requests.get(f"{url}/images").json()
        newest_first = ["new.png", "photo.jpg", "front.jpg", "top.webp", "front.jpg", "side.png"]
        assert [r["filename"] for r in listing] == newest_first  # legacy ones by their GridFS uploadDate
        served = requests.get(f"{url}/image/table-2")
        assert (served.content, served.headers["Content-Type"]) == (WEBP, "image/webp")
        for label in ADOPTABLE:
            assert requests.get(f"{url}/images/{ids[label]}/content").content == SOURCE_BYTES[label]
        again = requests.post(f"{url}/upload", files={"file": ("front.jpg", JPEG)}, data=form)
        assert (again.status_code, again.json()["image_id"]) == (200, ids["jpeg"])
        text = requests.post(f"{url}/upload", files={"file": ("notes.txt", TEXT)}, data=form)
        assert (text.status_code, text.json()["error"]) == (415, "not_an_image")
        assert requests.get(f"{url}/readyz").status_code == 200


@mongo_only
def test_a_batch_costs_the_same_commands_whatever_its_size(store, mongo_commands):
    """FerretDB scans a whole collection for any filter but `_id`, so adoption works a batch at a
    time and each batch's commands are fixed here, whatever its number of records: a change that
    adds one must say so (README: Replacing the Flask service)."""
    data = FlaskData(store.mongo_db)

    def adopted(count: int, seed: int) -> list[tuple[str, str]]:
        for n in range(count):
            data.put(f"{seed + n}", image_bytes("PNG", seed=seed + n), f"m{n % 2}", f"{n}.png")
        mongo_commands.clear()
        summary, status = adopt()
        assert (status, summary["adopted"], summary["bytes_copied"]) == (0, count, 0)
        return mongo_commands.calls

    adopted(1, 9000)  # indexes are made once per process
    batch = [
        *[("find", "images"), ("find", "fs.files"), ("find", "fs.chunks")],  # records, files, bytes
        ("find", "images"),  # the records of those bytes already (merged, or adopted before)
        *[("insert", "fs.pins"), ("find", "fs.closing"), ("distinct", "fs.files")],  # pins; which exist
        *[("insert", "fs.renaming"), ("delete", "fs.files"), ("insert", "fs.files")],  # the renames
        ("delete", "fs.renaming"),
        ("insert", "images"),  # the records
        ("delete", "images"),  # the legacy records
    ]
    run = [("find", "fs.renaming"), ("aggregate", "images"), *batch, ("find", "images")]  # ... no more
    assert adopted(3, 9100) == run
    assert adopted(12, 9200) == run


@mongo_only
def test_a_rename_cut_short_is_finished_by_the_rerun(store, flask_db, settings):
    """A legacy file becomes its blob by a files document replaced through the journal
    `fs.renaming` (FerretDB updates cost a scan each). Killed after the old document was deleted
    and before the renamed one was inserted, or before the delete, the rerun ends as a clean run,
    and an fsck --repair in between leaves the chunks alone."""
    ids = FlaskData(store.mongo_db).write_all().ids
    copy_database(store.mongo_db, flask_db)
    cut = settings.MONGO
    settings.MONGO = {**cut, "DB": flask_db.name}
    assert adopt()[1] == 1  # the clean run, on the copy
    settings.MONGO = cut

    files, journal = store.mongo_db["fs.files"], store.mongo_db[legacy.RENAMING]
    for label, deleted in (("png", True), ("webp", False)):
        file = files.find_one({"_id": ObjectId(ids[label])})
        sha256 = name_of(SOURCE_BYTES[label])
        store.storage.pin_many([(sha256, ids[label])])
        journal.insert_one({**file, "filename": sha256, "metadata": {"pinned": True}})
        if deleted:
            files.delete_one({"_id": file["_id"]})
    report, _ = fsck("--repair", "--grace", "0")  # meanwhile: the png's chunks are no leftovers
    assert "orphan_chunks" not in {problem["kind"] for problem in report["problems"]}
    assert adopt()[1] == 1
    assert snapshot(store.mongo_db) == snapshot(flask_db)
