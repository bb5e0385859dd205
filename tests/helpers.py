"""What the tests share: the storage modes, requests to the API (one `upload` for Django's test
client, one `upload_to` for a running service), API keys, and ways to look behind the API. The
fixtures are in conftest.py; test modules import from here, never from each other.
"""

import hashlib
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
import requests
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from pymongo import monitoring

from images.backend import get_backend
from images.derivatives import Spec
from images.documents import ImageRecord
from images.storage import BlobFileSystemStorage
from tests import servers

MODES = ["embedded", "mongo"]


@dataclass
class Store:
    """One storage mode, configured into Django's settings, with ways to look behind the API."""

    mode: str
    blob_dir: Path | None = None
    mongo_db: pymongo.database.Database | None = None

    @property
    def storage(self):
        return storages["images"]

    def records(self) -> list:
        return get_backend().records.page(None, None, 10_000)

    def blob_names(self) -> list[str]:
        """Every blob, and every piece of one, that exists in the backend. A deleted GridFS file's
        chunks that wait for their purge (see GridFSStorage) belong to no blob any more."""
        if self.mongo_db is not None:
            files = [d["filename"] for d in self.mongo_db["fs.files"].find()]
            accounted = [d["_id"] for d in self.mongo_db["fs.files"].find()]
            accounted += [d["_id"] for d in self.mongo_db["fs.deleted"].find()]
            orphans = self.mongo_db["fs.chunks"].count_documents({"files_id": {"$nin": accounted}})
            return files + ["<orphan chunk>"] * orphans
        refs = self.blob_dir / BlobFileSystemStorage.REFS_DIR  # pins and their locks, not bytes
        return sorted(p.name for p in self.blob_dir.rglob("*") if p.is_file() and refs not in p.parents)

    def assert_empty(self) -> None:
        assert self.records() == []
        assert self.blob_names() == []


def upload(
    client, data: bytes, model_id: str | None = "m1", name: str = "a.jpg", field: str = "file", **extra
):
    """POST /upload as the old clients do; `extra` carries request headers (HTTP_AUTHORIZATION=...)."""
    form = {field: SimpleUploadedFile(name, data, content_type="image/jpeg")}
    if model_id is not None:
        form["model_id"] = model_id
    return client.post("/upload", form, **extra)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


class CommandCounter(monitoring.CommandListener):
    """The commands a client sends: `names`, and `calls` as (name, collection)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.calls: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)
        self.calls.append((event.command_name, str(event.command.get(event.command_name))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def clear(self) -> None:
        self.names.clear()
        self.calls.clear()


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    payload = response.json()
    assert payload["detail"]
    if code:
        assert payload["error"] == code
    return payload


TIMEOUT = 30  # seconds, for every request: a hang fails the test instead of stalling the run


# All uploads come from 127.0.0.1, so the per-caller upload limit would couple the tests.
UNTHROTTLED = {"THROTTLE_UPLOAD": ""}


@dataclass
class Live:
    """A running service, with a way to look at what it stored behind the API."""

    mode: str
    url: str
    data_dir: Path
    mongo_db: pymongo.database.Database | None = None
    served: servers.Served | None = None  # its processes

    def blob_files(self, name: str) -> list[Path]:
        """Published blob files called `name` (embedded mode), leaving out the `.tmp` staging area."""
        blobs = self.data_dir / "blobs"
        return [p for p in blobs.rglob(name) if p.is_file() and p.relative_to(blobs).parts[0] != ".tmp"]


@contextmanager
def store_env(
    request: pytest.FixtureRequest, mode: str, data_dir: Path
) -> Iterator[tuple[dict[str, str], pymongo.database.Database | None]]:
    """The environment of a service of its own in `mode`, unthrottled; in Mongo mode, a database of
    its own too (dropped afterwards), which is also returned, to look behind the API."""
    env = {**UNTHROTTLED, "DATA_DIR": str(data_dir)}
    if mode == "embedded":
        yield env, None
        return
    uri, name = request.getfixturevalue("mongo_uri"), f"test_{uuid.uuid4().hex[:12]}"
    # FerretDB on SQLite scans whole collections where MongoDB uses an index, so on a busy machine
    # 20 concurrent uploads can outlast the default 4 s socket timeout; these tests are about
    # behaviour, and the outage tests below check the timeouts on their own.
    env.update(MONGO_URI=uri, MONGO_DB=name, MONGO_TIMEOUT_MS="10000")
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        yield env, client[name]
    finally:
        client.drop_database(name)
        client.close()


def new_model_id(prefix: str) -> str:
    """Tests share a service, so each uses models of its own."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_to(
    url: str,
    data: bytes,
    model_id: str,
    field: str = "file",
    filename: str = "photo.jpg",
    http: requests.Session | None = None,
    timeout: float = TIMEOUT,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST /upload to a running service at `url`, the way the old clients do: multipart with the
    image and a model_id field."""
    post = http.post if http is not None else requests.post
    return post(
        f"{url}/upload",
        files={field: (filename, data, "application/octet-stream")},
        data={"model_id": model_id},
        headers=headers,
        timeout=timeout,
    )


def create_key(name: str, scopes: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        call_command("create_api_key", name, scopes=scopes, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def auth(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Api-Key {key}"}


def fsck_json(*args: str) -> tuple[dict, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("fsck", "--json", *args, stdout=out, stderr=io.StringIO())
    except CommandError as error:
        return json.loads(out.getvalue()), error
    return json.loads(out.getvalue()), None


def spec(width=64, height=None, fit="contain", fmt="png", quality=100) -> Spec:
    return Spec(width, height, fit, fmt, quality)


def stored_image(client, data: bytes, model_id: str = "m1") -> ImageRecord:
    meta = upload(client, data, model_id=model_id).json()
    return get_backend().records.get(meta["image_id"])


GRIDFS_CHUNK = 255 * 1024


def name_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset, so a misplaced read cannot match by luck."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def untrack(store, name: str) -> None:
    """Makes `name` look like a blob written before blobs kept pins."""
    if store.mongo_db is not None:
        store.mongo_db["fs.files"].update_many({"filename": name}, {"$unset": {"metadata": ""}})
    else:
        shutil.rmtree(store.storage._refs(name))


def drop_pin(store, name: str, holder: str) -> None:
    """Loses a pin without what unpin does after it: a pin lost to a crash or a restore."""
    if store.mongo_db is not None:
        store.mongo_db["fs.pins"].delete_one({"_id": f"{name}/{holder}"})
    else:
        (Path(store.storage._refs(name)) / holder).unlink()
