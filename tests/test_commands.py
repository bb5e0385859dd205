"""The bulk commands (import, export, fsck, migrate_storage, stats), each run in both storage modes
through `call_command`, against the real stores; and one end-to-end run of `manage.py` in a subprocess.
"""

import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from images import services
from images.backend import get_backend
from images.bulk import human_bytes
from images.derivatives import Spec
from images.documents import ImageRecord
from tests.helpers import fsck_json
from tests.samples import image_bytes
from tests.servers import ROOT

migrate_storage = importlib.import_module("images.management.commands.migrate_storage")

HOURS_AGO = datetime.now(UTC) - timedelta(hours=2)  # older than fsck's default grace of an hour


@pytest.fixture(autouse=True)
def own_data_dir(settings, tmp_path: Path) -> None:
    """Spooled uploads (which fsck checks) and DATA_DIR go to the test's own folder."""
    settings.DATA_DIR = tmp_path / "data"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "spool")


def run(*args: str) -> str:
    """Runs a command as `manage.py` would be given `args`; returns what it printed."""
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_failing(*args: str) -> tuple[str, CommandError]:
    out = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue(), info.value


def jobs(store) -> str:
    """Workers in threads: each has its own database connection, which in embedded mode cannot see the
    test's uncommitted transaction, so embedded runs one job (parallel runs in the subprocess test)."""
    return "4" if store.mode == "mongo" else "1"


def import_(store, *args: str) -> str:
    return run("import", *args, "--quiet", "--jobs", jobs(store))


def import_failing(store, *args: str) -> tuple[str, CommandError]:
    return run_failing("import", *args, "--quiet", "--jobs", jobs(store))


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def add(data: bytes, model_id: str, filename: str = "a.jpg", **restore) -> ImageRecord:
    record, _ = services.add_image(ContentFile(data, name=filename), model_id, **restore)
    return record


def blob_bytes(storage, names) -> dict[str, bytes]:
    result = {}
    for name in names:
        with storage.open(name) as blob:
            result[name] = blob.read()
    return result


def by_id(records) -> list:
    return sorted(records, key=lambda r: r.image_id)


JPEG, PNG, OTHER_JPEG = image_bytes("JPEG", seed=1), image_bytes("PNG", seed=2), image_bytes("JPEG", seed=3)


# --- import --------------------------------------------------------------------------------------


def test_import_takes_model_ids_from_folders_and_adds_nothing_the_second_time(store, tmp_path):
    src = write(
        tmp_path / "src",
        {"m1/a.jpg": JPEG, "m1/b.png": PNG, "m2/a.jpg": JPEG, ".cache/x.jpg": OTHER_JPEG, "m2/.x.jpg": PNG},
    )
    out = import_(store, str(src), "--model-from", "folder")
    size = len(JPEG) * 2 + len(PNG)
    assert f"added 3 ({human_bytes(size)})" in out
    assert "refused 0" in out
    assert sorted((r.model_id, r.filename) for r in store.records()) == [
        ("m1", "a.jpg"),
        ("m1", "b.png"),
        ("m2", "a.jpg"),
    ]
    assert len(store.blob_names()) == 2  # the same bytes for two models are stored once
    before = store.records()

    again = import_(store, str(src), "--model-from", "folder")
    assert "added 0 (0 B), already present 3" in again
    assert store.records() == before


def test_import_takes_model_ids_from_an_option_or_a_regex(store, tmp_path):
    src = write(tmp_path / "src", {"cam1_front.jpg": JPEG, "cam2_back.png": PNG, "nomodel.jpg": OTHER_JPEG})
    out = import_(store, str(src), "--model-from", "regex:^(?P<model>[^_]+)_", "--keep-going")
    assert sorted((r.model_id, r.filename) for r in store.records()) == [
        ("cam1", "cam1_front.jpg"),
        ("cam2", "cam2_back.png"),
    ]
    assert f"{src / 'nomodel.jpg'}: no model_id: its name does not match" in out

    import_(store, str(src / "nomodel.jpg"), "--model-id", "given")
    assert {r.model_id for r in store.records()} == {"cam1", "cam2", "given"}


def test_refused_files_are_listed_with_reasons_and_fail_the_run_unless_keep_going(store, tmp_path):
    src = write(
        tmp_path / "src",
        {
            "m/good.jpg": JPEG,
            "m/notes.txt": b"not an image",
            "m/cut.jpg": image_bytes("JPEG", (256, 256))[:-200],
            "m/empty.jpg": b"",
            "bad model!/x.jpg": OTHER_JPEG,
        },
    )
    out, error = import_failing(store, str(src), "--model-from", "folder")
    assert error.returncode == 1
    assert "4 file(s) refused" in str(error)
    assert "added 1" in out
    assert f"{src / 'm/notes.txt'}: not_an_image: " in out
    assert f"{src / 'm/cut.jpg'}: corrupt_image: " in out
    assert f"{src / 'm/empty.jpg'}: empty_file: " in out
    assert f"{src / 'bad model!/x.jpg'}: invalid_model_id: " in out
    assert [r.filename for r in store.records()] == ["good.jpg"]

    out = import_(store, str(src), "--model-from", "folder", "--keep-going")
    assert "added 0 (0 B), already present 1" in out
    assert "refused 4" in out


def test_dry_run_reports_the_outcome_and_stores_nothing(store, tmp_path):
    src = write(tmp_path / "src", {"m/a.jpg": JPEG, "m/copy-of-a.jpg": JPEG, "m/b.txt": b"text"})
    dry = import_(store, str(src), "--model-from", "folder", "--dry-run", "--keep-going")
    assert "would add 1" in dry
    assert "already present 1" in dry  # the copy would find the first one
    assert "refused 1" in dry
    assert "Dry run: nothing was stored." in dry
    store.assert_empty()

    real = import_(store, str(src), "--model-from", "folder", "--keep-going")
    assert "added 1" in real
    assert "already present 1" in real
    assert len(store.records()) == 1


def test_an_interrupted_import_resumes_where_it_stopped(store, tmp_path, monkeypatch):
    files = {f"m/{n}.png": image_bytes("PNG", seed=n) for n in range(5)}
    src = write(tmp_path / "src", files)
    real_add_image = services.add_image
    calls = []

    def killed_on_the_third(file, model_id, **kwargs):
        """Stands for Ctrl-C (or a kill) between writing the bytes and the record."""
        calls.append(file.name)
        if len(calls) == 3:
            store.storage.save(services.sha256_of(file), file)
            raise KeyboardInterrupt
        return real_add_image(file, model_id, **kwargs)

    monkeypatch.setattr(services, "add_image", killed_on_the_third)
    out, error = run_failing("import", str(src), "--model-from", "folder", "--quiet", "--jobs", "1")
    assert error.returncode == 130
    assert "run the same command to resume" in str(error)
    assert "added 2" in out
    assert sorted(r.filename for r in store.records()) == ["0.png", "1.png"]
    assert len(store.blob_names()) == 3  # the third file's bytes, without a record yet

    monkeypatch.setattr(services, "add_image", real_add_image)
    out = import_(store, str(src), "--model-from", "folder")
    assert "added 3" in out
    assert "already present 2" in out
    assert sorted(r.filename for r in store.records()) == [f"{n}.png" for n in range(5)]
    assert len(store.blob_names()) == 5
    assert "No damage found." in run("fsck", "--grace", "0", "--deep")


# --- export, and import of an export -------------------------------------------------------------


def test_export_then_import_into_an_empty_store_restores_every_field(store, tmp_path):
    older = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    cover = add(JPEG, "m1", "a.jpg", uploaded_at=older, uploaded_by="alice", label="front")
    newest_a = add(OTHER_JPEG, "m1", "A.JPG", label="side")  # the same name, but for case: a collision
    add(JPEG, "m2", "a.jpg")  # the same bytes for another model: one blob
    add(PNG, "..", "p.png")  # a valid model_id that is no folder name
    services.set_cover("m1", cover.image_id)  # the older image, not the newest
    before = by_id(store.records())
    blobs = blob_bytes(store.storage, store.blob_names())

    dest = tmp_path / "export"
    out = run("export", str(dest), "--quiet")
    assert "exported 4" in out
    older_id = next(r.image_id for r in before if r.uploaded_at == older)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert older_id == cover.image_id
    renamed = f"m1/A~{newest_a.image_id}.JPG"
    assert files == sorted(["manifest.jsonl", "m1/a.jpg", renamed, "m2/a.jpg", "%2E%2E/p.png"])
    assert (dest / "m1/a.jpg").read_bytes() == JPEG  # the cover keeps its name, though older
    assert (dest / renamed).read_bytes() == OTHER_JPEG
    manifest = [json.loads(line) for line in (dest / "manifest.jsonl").read_text().splitlines()]
    assert {m["image_id"] for m in manifest} == {r.image_id for r in before}
    assert next(m for m in manifest if m["image_id"] == newest_a.image_id)["path"] == renamed
    assert [m["image_id"] for m in manifest if m.get("cover")] == [cover.image_id]
    assert {m["image_id"]: m["label"] for m in manifest if m["label"]} == {
        cover.image_id: "front",
        newest_a.image_id: "side",
    }

    for record in before:
        services.delete_image(record.image_id)
    store.assert_empty()
    assert services.list_covers() == []

    out = import_(store, str(dest))
    assert "added 4" in out
    assert "Covers: set 1, already set 0, kept another one here 0" in out
    assert by_id(store.records()) == before  # every field: ids, names, times, uploaded_by, label
    assert blob_bytes(store.storage, store.blob_names()) == blobs
    assert [(m, i) for m, i, _ in services.list_covers()] == [("m1", cover.image_id)]

    again = import_(store, str(dest / "manifest.jsonl"))
    assert "added 0 (0 B), already present 4" in again
    assert "Covers: set 0, already set 1, kept another one here 0" in again


def test_import_sets_a_cover_only_where_its_image_is_and_the_model_has_none(store, tmp_path):
    cover_a = add(JPEG, "a")
    cover_b = add(PNG, "b", "b.png")
    add(OTHER_JPEG, "b", "other.jpg")
    cover_c = add(image_bytes("PNG", seed=4), "c", "c.png")
    for model_id, record in [("a", cover_a), ("b", cover_b), ("c", cover_c)]:
        services.set_cover(model_id, record.image_id)
    dest = tmp_path / "export"
    run("export", str(dest), "--quiet")
    manifest = dest / "manifest.jsonl"
    for record in store.records():
        services.delete_image(record.image_id)

    (dest / "c/c.png").write_bytes(PNG)  # the cover's bytes changed: refused, so no cover
    other_b = add(OTHER_JPEG, "b", "other.jpg")
    services.set_cover("b", other_b.image_id)  # the model chose another cover here: it stays
    dry, _ = import_failing(store, str(dest), "--dry-run")
    assert "Covers: would set 1, already set 0, kept another one here 1" in dry
    assert [(m, i) for m, i, _ in services.list_covers()] == [("b", other_b.image_id)]

    out, _ = import_failing(store, str(dest))
    assert "refused 1" in out and "Covers: set 1, already set 0, kept another one here 1" in out
    assert {m: i for m, i, _ in services.list_covers()} == {"a": cover_a.image_id, "b": other_b.image_id}

    services.clear_cover("a")  # an export made before covers (no "cover" field) restores none
    manifest.write_text("".join(line.replace(', "cover": true', "") for line in manifest.open()))
    out, _ = import_failing(store, str(dest))
    assert "Covers:" not in out
    assert [m for m, _, _ in services.list_covers()] == ["b"]


def test_export_of_one_model_and_into_a_used_folder(store, tmp_path):
    services.set_cover("m1", add(JPEG, "m1").image_id)  # another model's cover stays out too
    only = add(PNG, "m2", "b.png")
    dest = tmp_path / "export"
    run("export", str(dest), "--model-id", "m2", "--quiet")
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["b.png", "manifest.jsonl"]
    assert json.loads((dest / "manifest.jsonl").read_text())["image_id"] == only.image_id

    with pytest.raises(CommandError, match="not empty"):
        run("export", str(dest), "--quiet")


def test_export_leaves_out_images_whose_bytes_are_gone(store, tmp_path):
    kept = add(JPEG, "m1")
    lost = add(PNG, "m1", "b.png")
    store.storage.delete(lost.sha256)
    out, error = run_failing("export", str(tmp_path / "export"), "--quiet")
    assert f"{lost.image_id} (m1): its bytes are missing" in out
    assert "1 image(s) not exported" in str(error)
    manifest = (tmp_path / "export/manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in manifest] == [kept.image_id]
    assert not (tmp_path / "export/m1/b.png").exists()


def test_import_refuses_manifest_entries_whose_bytes_changed(store, tmp_path):
    add(JPEG, "m1")
    dest = tmp_path / "export"
    run("export", str(dest), "--quiet")
    (dest / "m1/a.jpg").write_bytes(OTHER_JPEG)
    for record in store.records():
        services.delete_image(record.image_id)
    out, _ = import_failing(store, str(dest))
    assert "its bytes are not the ones the manifest lists" in out
    store.assert_empty()


def test_import_stops_before_starting_on_bad_arguments_or_a_damaged_manifest(store, tmp_path):
    add(JPEG, "m1")
    dest = tmp_path / "export"
    run("export", str(dest), "--quiet")
    manifest = dest / "manifest.jsonl"
    good = manifest.read_text()
    for damaged, complaint in [
        (good + "{not json\n", "manifest.jsonl:2: not a manifest line"),
        (good.replace('"path": "m1/a.jpg"', '"path": "../../etc/passwd"'), "outside the manifest's folder"),
        (good.replace("+00:00", ""), "uploaded_at has no time zone"),
    ]:
        manifest.write_text(damaged)
        with pytest.raises(CommandError, match=re.escape(complaint)):
            import_(store, str(dest))
    plain = write(tmp_path / "plain", {"a.jpg": JPEG})
    with pytest.raises(CommandError, match="say where its model_id comes from"):
        import_(store, str(plain))
    with pytest.raises(CommandError, match="'folder' or 'regex:PATTERN'"):
        import_(store, str(plain), "--model-from", "name")
    with pytest.raises(CommandError, match="needs a group"):
        import_(store, str(plain), "--model-from", "regex:^[a-z]+")
    with pytest.raises(CommandError, match="no such file or folder"):
        import_(store, str(tmp_path / "nowhere"), "--model-id", "m")
    assert len(store.records()) == 1


def test_import_refuses_a_manifest_image_id_that_is_another_image_here(store, tmp_path):
    exported = add(JPEG, "m1")
    dest = tmp_path / "export"
    run("export", str(dest), "--quiet")
    services.delete_image(exported.image_id)
    squatter = add(PNG, "m2", "other.png", image_id=exported.image_id)
    out, error = import_failing(store, str(dest))
    assert f"image_id {exported.image_id} is another image's here (m2)" in out
    assert error.returncode == 1
    assert store.records() == [squatter]


# --- fsck ----------------------------------------------------------------------------------------


def set_age(store, name: str, when: datetime) -> None:
    """Makes a blob look last written at `when`."""
    if store.mode == "mongo":
        store.mongo_db["fs.files"].update_many({"filename": name}, {"$set": {"uploadDate": when}})
    else:
        os.utime(store.storage.path(name), (when.timestamp(), when.timestamp()))


def damage(store, name: str, truncate: bool) -> None:
    """Cuts a blob short, or flips one of its bytes (the size stays)."""
    with store.storage.open(name) as blob:
        data = bytearray(blob.read())
    data = data[:-10] if truncate else data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:]
    if store.mode == "mongo":
        files = store.mongo_db["fs.files"].find_one({"filename": name})
        store.mongo_db["fs.chunks"].update_one(
            {"files_id": files["_id"], "n": 0}, {"$set": {"data": bytes(data)}}
        )
        store.mongo_db["fs.files"].update_one({"_id": files["_id"]}, {"$set": {"length": len(data)}})
    else:
        Path(store.storage.path(name)).write_bytes(data)


def leave_unfinished_write(store, when: datetime) -> str:
    """What a write that was cut off leaves: a temporary file, or GridFS chunks without their file."""
    if store.mode == "mongo":
        files_id = ObjectId()
        store.mongo_db["fs.chunks"].insert_one(
            {"_id": ObjectId.from_datetime(when), "files_id": files_id, "n": 0, "data": b"x"}
        )
        return str(files_id)
    temp = store.blob_dir / ".tmp" / "0123456789abcdef-unfinished"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half a blob")
    os.utime(temp, (when.timestamp(), when.timestamp()))
    return temp.name


def test_fsck_of_a_healthy_store_finds_nothing(store):
    add(JPEG, "m1")
    cover = add(JPEG, "m2")
    services.set_cover("m2", cover.image_id)
    add(PNG, "m2", "b.png")
    out = run("fsck", "--deep")
    assert "Checked the" in out and "3 records, 2 blobs" in out
    assert "No damage found." in out
    report, error = fsck_json("--deep")
    assert error is None
    assert report["clean"] is True
    assert report["problems"] == []


def test_fsck_finds_every_kind_of_damage_and_repairs_what_is_safe(store, tmp_path, settings):
    healthy = add(JPEG, "ok")
    derivative_of_healthy = Spec(32, None, "contain", "jpeg", 85).name(healthy.sha256)
    store.storage.save(derivative_of_healthy, ContentFile(b"a derivative"))
    set_age(store, derivative_of_healthy, HOURS_AGO)

    missing = add(PNG, "m", "missing.png")
    store.storage.delete(missing.sha256)
    cut = add(image_bytes("PNG", seed=10), "m", "cut.png")
    damage(store, cut.sha256, truncate=True)
    flipped = add(image_bytes("PNG", seed=11), "m", "flipped.png")
    damage(store, flipped.sha256, truncate=False)

    orphan = hashlib.sha256(b"orphan").hexdigest()
    store.storage.save(orphan, ContentFile(b"orphan"))
    set_age(store, orphan, HOURS_AGO)
    orphan_derivative = Spec(32, None, "contain", "webp", 80).name(hashlib.sha256(b"gone").hexdigest())
    store.storage.save(orphan_derivative, ContentFile(b"derivative of a deleted original"))
    set_age(store, orphan_derivative, HOURS_AGO)
    young_orphan = hashlib.sha256(b"upload in progress").hexdigest()
    store.storage.save(young_orphan, ContentFile(b"upload in progress"))

    leftover = leave_unfinished_write(store, HOURS_AGO)
    spool = Path(settings.FILE_UPLOAD_TEMP_DIR)
    spool.mkdir(parents=True)
    (spool / "upload.part").write_bytes(b"spooled")
    os.utime(spool / "upload.part", (HOURS_AGO.timestamp(), HOURS_AGO.timestamp()))
    (spool / "uploading-now.part").write_bytes(b"spooled")

    leftover_kind = "orphan_chunks" if store.mode == "mongo" else "temp_file"
    expected = {
        ("missing_blob", missing.image_id),
        ("size_mismatch", cut.sha256),
        ("sha256_mismatch", flipped.sha256),
        ("orphan_blob", orphan),
        ("orphan_derivative", orphan_derivative),
        (leftover_kind, leftover),
        ("upload_temp_file", "upload.part"),
    }
    report, error = fsck_json("--deep")
    assert error is not None and error.returncode == 1
    assert {(p["kind"], p["subject"]) for p in report["problems"]} == expected
    assert report["left_alone"] == 2  # the young orphan and the spooled upload in progress
    assert (report["found"], report["repaired"], report["clean"]) == (7, 0, False)
    out, _ = run_failing("fsck", "--deep")
    assert all(kind in out for kind, _ in expected)
    assert "Found 7 problem(s); --repair fixes 4 of them." in out
    damaged_bytes = {("size_mismatch", cut.sha256), ("sha256_mismatch", flipped.sha256)}
    shallow, _ = fsck_json()  # without --deep, damaged bytes go unnoticed
    assert {(p["kind"], p["subject"]) for p in shallow["problems"]} == expected - damaged_bytes

    report, error = fsck_json("--deep", "--repair")
    assert error is not None
    repaired = {(p["kind"], p["subject"]) for p in report["problems"] if p["repaired"]}
    assert repaired == expected - damaged_bytes - {("missing_blob", missing.image_id)}
    assert report["remaining"] == 3
    names = set(store.blob_names())
    assert {orphan, orphan_derivative}.isdisjoint(names)
    # Bytes that records still refer to are never deleted, damaged or not.
    assert {healthy.sha256, derivative_of_healthy, cut.sha256, flipped.sha256, young_orphan} <= names
    assert "<orphan chunk>" not in store.blob_names()
    assert sorted(p.name for p in spool.iterdir()) == ["uploading-now.part"]
    if store.mode == "embedded":
        assert not (store.blob_dir / ".tmp" / leftover).exists()

    out = run("fsck", "--deep", "--repair", "--delete-broken-records")
    assert "Found 3 problem(s) and repaired them all: the store is clean now." in out
    assert [r.image_id for r in store.records()] == [healthy.image_id]
    assert {cut.sha256, flipped.sha256}.isdisjoint(store.blob_names())  # went with their records
    assert "No damage found." in run("fsck", "--deep")
    assert young_orphan in store.blob_names()  # still younger than the grace period


def test_fsck_grace_and_flags_are_checked(store):
    orphan = hashlib.sha256(b"orphan").hexdigest()
    store.storage.save(orphan, ContentFile(b"orphan"))
    assert "No damage found." in run("fsck")
    report, error = fsck_json("--grace", "0")
    assert [p["kind"] for p in report["problems"]] == ["orphan_blob"] and error is not None
    with pytest.raises(CommandError, match="goes with --repair"):
        run("fsck", "--delete-broken-records")


def test_fsck_clears_a_cover_whose_image_is_gone(store):
    cover = add(JPEG, "m1")
    newest = add(PNG, "m1", "b.png")
    kept = add(OTHER_JPEG, "m2")
    services.set_cover("m1", cover.image_id)
    services.set_cover("m2", kept.image_id)
    # A delete cut off between the record and the cover (services.delete_image): the cover stays.
    backend = get_backend()
    backend.records.delete(cover.image_id)
    services.release_blob(store.storage, cover.sha256, cover.image_id)
    assert services.model_record("m1") == newest  # meanwhile, reads fall back to the newest

    report, error = fsck_json()
    assert error is not None and error.returncode == 1
    assert [(p["kind"], p["subject"], p["repairable"]) for p in report["problems"]] == [
        ("dangling_cover", "m1", True)
    ]
    assert f"dangling_cover   m1: names image {cover.image_id}" in run_failing("fsck")[0]

    out = run("fsck", "--repair")
    assert "Found 1 problem(s) and repaired them all" in out
    assert [(m, i) for m, i, _ in services.list_covers()] == [("m2", kept.image_id)]
    assert "No damage found." in run("fsck")


# --- migrate_storage -----------------------------------------------------------------------------


@pytest.fixture
def other_sides(request, store, django_db_blocker):
    """A second MongoDB database (dropped afterwards) for the other side of a migration, and leave to
    open the SQLite files the command makes for an embedded side. Django's test case refuses any
    database but the test's own, and those files are made during the test, in its tmp_path."""
    uri = request.getfixturevalue("mongo_uri")
    name = f"test_{uuid.uuid4().hex[:12]}"
    with django_db_blocker.unblock():
        yield uri, name
    client = pymongo.MongoClient(uri)
    client.drop_database(name)
    client.close()


def contents(side) -> tuple[list, dict[str, bytes]]:
    _, names = side.blobs.listdir("")
    return by_id(side.records.page(None, None, 10_000)), blob_bytes(side.blobs, names)


def covers_of(side) -> list[tuple[str, str, datetime]]:
    """A side's covers by model_id, set_at to the millisecond (as MongoDB keeps it)."""
    to_ms = [(m, i, t.replace(microsecond=t.microsecond // 1000 * 1000)) for m, i, t in side.covers.all()]
    return sorted(to_ms)


def test_migrating_to_the_other_mode_and_back_is_byte_identical(store, tmp_path, other_sides):
    uri, other_db = other_sides
    jpeg = add(JPEG, "m1", uploaded_by="alice", label="front")
    add(JPEG, "m2")
    when = datetime(2023, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    older = add(PNG, "m2", "b.png", uploaded_at=when, label="top")
    services.set_cover("m1", jpeg.image_id)
    services.set_cover("m2", older.image_id)
    gone = add(OTHER_JPEG, "m3")
    services.set_cover("m3", gone.image_id)
    get_backend().records.delete(gone.image_id)  # a delete cut off before clearing the cover
    services.release_blob(store.storage, gone.sha256, gone.image_id)
    derivative = Spec(32, None, "contain", "webp", 80).name(jpeg.sha256)
    store.storage.save(derivative, ContentFile(b"a derivative's bytes"))
    original = (by_id(store.records()), blob_bytes(store.storage, store.blob_names()))
    assert len(original[1]) == 3  # two originals and a derivative
    covers = covers_of(get_backend())
    assert [m for m, _, _ in covers] == ["m1", "m2", "m3"]
    copied = covers[:2]  # not m3's, whose image is gone

    middle_dir, back_dir = tmp_path / "middle", tmp_path / "back"
    if store.mode == "embedded":
        there = ["--to", "mongo", "--mongo-uri", uri, "--mongo-db", other_db]
        back = ["--to", "embedded", "--mongo-uri", uri, "--mongo-db", other_db, "--data-dir", str(back_dir)]
        middle = migrate_storage.mongo_store(uri, other_db)
        final = migrate_storage.embedded_store(str(back_dir), target=False)
    else:
        there = ["--to", "embedded", "--data-dir", str(middle_dir)]
        back = ["--to", "mongo", "--data-dir", str(middle_dir), "--mongo-db", other_db]
        middle = migrate_storage.embedded_store(str(middle_dir), target=False)
        final = migrate_storage.mongo_store(None, other_db)

    out = run("migrate_storage", *there, "--quiet")
    assert "copied 3" in out
    assert "Covers: copied 2, already set 0, left out 1\n  m3: its cover" in out  # m3's image is gone
    assert contents(middle) == original  # with the labels
    assert covers_of(middle) == copied  # with when they were set
    assert (by_id(store.records()), blob_bytes(store.storage, store.blob_names())) == original  # untouched
    again = run("migrate_storage", *there, "--quiet")
    assert "copied 0 (0 B), already in the target 3" in again
    assert "Covers: copied 0, already set 2, left out 1" in again

    assert "copied 3" in run("migrate_storage", *back, "--quiet")
    assert contents(final) == original
    assert covers_of(final) == copied

    out = run("migrate_storage", *there, "--delete-source", "--quiet")
    assert "deleted from the source 3" in out
    store.assert_empty()
    assert covers_of(get_backend()) == covers[2:]  # the dangling cover is fsck's to clear
    assert contents(middle) == original
    assert covers_of(middle) == copied
    middle.close()
    final.close()


def test_an_interrupted_migration_resumes(store, tmp_path, other_sides, monkeypatch):
    uri, other_db = other_sides
    for n in range(4):
        add(image_bytes("PNG", seed=n), "m", f"{n}.png")
    args = (
        ["--to", "mongo", "--mongo-uri", uri, "--mongo-db", other_db]
        if store.mode == "embedded"
        else ["--to", "embedded", "--data-dir", str(tmp_path / "target")]
    )
    real_copy = migrate_storage.Migration.copy
    copied = []

    def interrupted_on_the_third(self, record):
        if len(copied) == 2:
            raise KeyboardInterrupt
        copied.append(record.image_id)
        return real_copy(self, record)

    monkeypatch.setattr(migrate_storage.Migration, "copy", interrupted_on_the_third)
    out, error = run_failing("migrate_storage", *args, "--delete-source", "--quiet")
    assert error.returncode == 130
    assert "copied 2" in out
    assert len(store.records()) == 4  # no --delete-source after an interruption

    monkeypatch.setattr(migrate_storage.Migration, "copy", real_copy)
    out = run("migrate_storage", *args, "--quiet")
    assert "copied 2" in out
    assert "already in the target 2" in out


def test_migrate_storage_needs_a_mongodb(store, settings):
    settings.MONGO = None
    with pytest.raises(CommandError, match="No MongoDB"):
        run("migrate_storage", "--to", "mongo")


# --- stats ---------------------------------------------------------------------------------------


def test_stats_counts_images_bytes_dedup_models_and_formats(store):
    webp = image_bytes("WEBP", (300, 200), seed=5)
    add(JPEG, "m1")
    add(PNG, "m1", "b.png")
    add(JPEG, "m2")  # the same bytes: stored once
    add(webp, "m3", "c.webp")
    report = json.loads(run("stats", "--json", "--top", "2"))
    total = 2 * len(JPEG) + len(PNG) + len(webp)
    assert report["images"] == 4
    assert report["models"] == 3
    assert report["blobs"] == 3
    assert report["total_bytes"] == total
    assert report["stored_bytes"] == total - len(JPEG)
    assert report["dedup_saved_bytes"] == len(JPEG)
    models = sorted(
        [("m1", 2, len(JPEG) + len(PNG)), ("m2", 1, len(JPEG)), ("m3", 1, len(webp))], key=lambda m: -m[2]
    )[:2]
    assert [(m["model_id"], m["images"], m["bytes"]) for m in report["largest_models"]] == models
    assert {f["content_type"]: (f["images"], f["bytes"]) for f in report["formats"]} == {
        "image/jpeg": (2, 2 * len(JPEG)),
        "image/png": (1, len(PNG)),
        "image/webp": (1, len(webp)),
    }

    table = run("stats")
    assert "saved by dedup" in table
    assert "image/webp" in table
    assert "m3" in table


def test_stats_of_an_empty_store(store):
    report = json.loads(run("stats", "--json"))
    assert (report["images"], report["total_bytes"], report["largest_models"]) == (0, 0, [])


# --- end to end ----------------------------------------------------------------------------------


def test_manage_py_import_then_export_in_a_subprocess(tmp_path):
    """The real entry point, in embedded mode in a fresh DATA_DIR, with parallel jobs."""
    files = {f"model{n % 3}/{n}.png": image_bytes("PNG", seed=n) for n in range(12)}
    src = write(tmp_path / "src", files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGO_")}
    env["DATA_DIR"] = str(tmp_path / "data")

    def manage(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "manage.py", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    imported = manage("import", str(src), "--model-from", "folder", "--jobs", "4")
    assert imported.returncode == 0, imported.stderr
    assert "added 12" in imported.stdout
    assert imported.stderr == ""  # no progress bar when not on a terminal
    again = manage("import", str(src), "--model-from", "folder", "--jobs", "4")
    assert "added 0 (0 B), already present 12" in again.stdout

    exported = manage("export", str(tmp_path / "out"), "--quiet")
    assert exported.returncode == 0, exported.stderr
    out_files = {
        str(p.relative_to(tmp_path / "out")): p.read_bytes() for p in (tmp_path / "out").rglob("*.png")
    }
    assert out_files == files
    manifest = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert sorted(m["path"] for m in manifest) == sorted(files)

    from_manifest = manage("import", str(tmp_path / "out/manifest.jsonl"), "--model-id", "x")
    assert from_manifest.returncode == 0  # a manifest brings its own model_ids; the option is for plain files
    assert "already present 12" in from_manifest.stdout
