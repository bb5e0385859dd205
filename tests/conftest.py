"""Fixtures that run the same tests in both storage modes, against real servers.

`store` is parametrized over "embedded" (SQLite + files) and "mongo" (FerretDB, or the MongoDB at
MONGO_TEST_URI). Mongo mode never silently disappears: under CI=true a missing server fails the run.
`browser` is Debian's Chromium, driven by Playwright, for the browser tests (the gallery's, the client's).
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests import servers
from tests.helpers import MODES, CommandCounter, Live, Store, store_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--test-third-party-cookie-phaseout",  # third-party cookies blocked, as more and more browsers do
]


@pytest.fixture(scope="session")
def mongo_uri(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-compatible server for the whole session."""
    if uri := os.environ.get("MONGO_TEST_URI"):
        yield uri
        return
    binary = request.getfixturevalue("ferretdb_bin")
    with servers.ferretdb(binary, tmp_path_factory.mktemp("ferretdb")) as uri:
        yield uri


@pytest.fixture(scope="session")
def ferretdb_bin() -> Path:
    """The FerretDB binary. Under CI=true its absence fails the run: Mongo mode never goes quietly."""
    binary = servers.ferretdb_binary()
    if binary is None or not binary.exists():
        message = "FerretDB is not built: run scripts/install-ferretdb (scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def configure_store(mode: str, settings, tmp_path: Path, request) -> Iterator[Store]:
    if mode == "embedded":
        blob_dir = tmp_path / "blobs"
        settings.MONGO = None
        settings.STORAGES = {
            **settings.STORAGES,
            "images": {
                "BACKEND": "images.storage.BlobFileSystemStorage",
                "OPTIONS": {"location": str(blob_dir)},
            },
        }
        yield Store(mode, blob_dir=blob_dir)
        return
    uri = request.getfixturevalue("mongo_uri")
    name = f"test_{uuid.uuid4().hex[:12]}"
    settings.MONGO = {"URI": uri, "DB": name}
    settings.STORAGES = {
        **settings.STORAGES,
        "images": {"BACKEND": "images.storage.GridFSStorage", "OPTIONS": {"bucket_name": "fs"}},
    }
    client = pymongo.MongoClient(uri, tz_aware=True)
    try:
        yield Store(mode, mongo_db=client[name])
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(params=MODES)
def store(request, settings, tmp_path, db) -> Iterator[Store]:
    """Django's test database is set up in both modes: Django's own tables live there anyway."""
    yield from configure_store(request.param, settings, tmp_path, request)


@pytest.fixture
def blob_cache(store, settings, tmp_path: Path) -> Path:
    """Mongo mode's local copies of large blobs (GridFSStorage's `cache_dir`, as the settings give
    it), in this test's own folder; `store` leaves them off otherwise."""
    assert store.mode == "mongo", "local copies are GridFSStorage's"
    cache_dir = tmp_path / "blob-cache"
    images = settings.STORAGES["images"]
    options = {**images["OPTIONS"], "cache_dir": str(cache_dir)}
    settings.STORAGES = {**settings.STORAGES, "images": {**images, "OPTIONS": options}}
    return cache_dir


@pytest.fixture
def mongo_commands(store, monkeypatch, settings) -> Iterator[CommandCounter]:
    """Counts the commands the service sends to MongoDB, through its own client (Mongo mode only)."""
    from images import mongo

    counter = CommandCounter()
    client = pymongo.MongoClient(settings.MONGO["URI"], tz_aware=True, event_listeners=[counter])
    monkeypatch.setattr(mongo, "get_client", lambda: client)
    yield counter
    client.close()


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Throttle counters and cached key lookups must not carry over from one test to the next."""
    from django.core.cache import cache

    from images import apikeys, hotcache

    cache.clear()
    apikeys.forget_cached()
    hotcache.clear()
    yield


@pytest.fixture(scope="module", params=MODES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One service per mode for the whole module: starting gunicorn costs seconds."""
    data_dir = tmp_path_factory.mktemp(f"service-{request.param}")
    with store_env(request, request.param, data_dir) as (env, mongo_db):
        env["MAX_UPLOAD_MB"] = "64"
        with servers.served(env, data_dir / "service.log") as served:
            yield Live(request.param, served.url, data_dir, mongo_db, served)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (the `chromium` package), with a fresh profile each launch. Missing, it
    skips the tests, or fails them under CI=true, so CI never silently loses the browser tests."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/test, which installs the chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
