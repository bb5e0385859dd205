"""Calling the service from a browser on another origin: the CORS headers a script may read, the schema
as JSON, and the TypeScript client in clients/typescript/: its generated types checked against the
schema, its Node tests (`node --test`) run against the real service in both modes, and its build used by
Chromium from a second origin (a static server on another loopback port, allowed by CORS_ALLOWED_ORIGINS).

The client's node_modules come from `npm ci`, which scripts/test runs; without them (or without node)
these tests skip, and under CI=true they fail.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import Browser, Page, expect

from tests import servers
from tests.helpers import MODES, new_model_id, store_env, upload
from tests.samples import image_bytes

CLIENT = servers.ROOT / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"
# Response headers that browsers always let scripts read (Fetch standard, "CORS-safelisted response
# header name"): listing them in Access-Control-Expose-Headers changes nothing.
SAFELISTED = {
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
}
# Told to clients by the README (every answer's request id, "Logs"), not by the schema.
README_ONLY = {"x-request-id"}
ORIGIN = "https://viewer.example"
# Made before the service starts, so that no worker has cached "no key yet" (development mode).
KEYS = """
import json
from django.core.management import call_command
from images import apikeys
call_command("migrate", verbosity=0)
scopes = {
    "write": ("write",), "catalog": ("write",), "admin": ("admin",), "read": ("read",), "flood": ("admin",)
}
print(json.dumps({name: apikeys.create_key(name, scope) for name, scope in scopes.items()}))
"""


# --- CORS and the schema, in-process ---------------------------------------------------------------


def schema_json(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


def test_the_schema_is_json_with_format_json_and_yaml_otherwise(client):
    schema = schema_json(client)
    assert schema["openapi"].startswith("3.")
    # A browser's address bar asks for HTML: the URL's format still wins.
    as_browser = client.get("/api/schema/?format=json", headers={"Accept": "text/html"})
    assert json.loads(as_browser.content) == schema
    assert client.get("/api/schema/").content.startswith(b"openapi: 3.")
    assert client.get("/api/schema/?format=yaml").content.startswith(b"openapi: 3.")
    unknown = client.get("/api/schema/?format=xml")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert "yaml or json" in unknown.json()["detail"]


def test_every_header_a_client_is_told_to_read_is_exposed(client, settings):
    """The schema's response headers and the README's are exactly what CORS exposes (beyond what
    browsers always show), so neither can change without the other."""
    documented = {
        name.lower()
        for methods in schema_json(client)["paths"].values()
        for operation in methods.values()
        for response in operation["responses"].values()
        for name in response.get("headers", {})
    }
    assert {"location", "retry-after", "www-authenticate", "link", "etag"} <= documented
    exposed = {name.lower() for name in settings.CORS_EXPOSE_HEADERS}
    assert exposed - SAFELISTED == (documented | README_ONLY) - SAFELISTED


def cors_headers(response) -> tuple[str | None, set[str]]:
    exposed = response.headers.get("Access-Control-Expose-Headers", "")
    return response.headers.get("Access-Control-Allow-Origin"), {
        h.strip().lower() for h in exposed.split(",")
    }


def test_answers_and_refusals_carry_cors_headers(store, client, settings):
    """Refusals too, the body limits' included (they answer before the views): a browser that cannot
    read a refusal sees only a network error."""
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    settings.MAX_FORM_KB = 1
    origin = {"Origin": ORIGIN}
    preflight = client.options(
        "/upload",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in preflight["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight  # cookies stay first-party
    assert preflight["Access-Control-Max-Age"] == "86400"
    created = upload(client, image_bytes(), headers=origin)
    assert created.status_code == 201
    assert cors_headers(created) == (ORIGIN, {h.lower() for h in settings.CORS_EXPOSE_HEADERS})
    content = client.get(created.json()["url"], headers=origin)
    assert cors_headers(content)[0] == ORIGIN
    assert content["Vary"].lower() == "origin"  # a cache keeps CORS and CORS-less copies apart
    too_large = client.post("/accounts/login/", {"username": "x" * 2048}, headers=origin)
    assert too_large.status_code == 413
    assert cors_headers(too_large)[0] == ORIGIN
    other = client.get("/images", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other


# --- The TypeScript client -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """clients/typescript/node_modules/.bin, as `npm ci` installs it."""
    if shutil.which("node") is None or not (BIN / "tsc").exists():
        message = "node or clients/typescript/node_modules is missing: run scripts/test (npm ci)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return BIN


@pytest.fixture(scope="session")
def built_client(node_modules: Path) -> Path:
    """The client compiled by tsc into clients/typescript/dist/, from the sources as they are now."""
    run = subprocess.run(
        [node_modules / "tsc", "-p", CLIENT], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return CLIENT / "dist"


def test_the_generated_types_match_the_schema(node_modules: Path, tmp_path: Path):
    """src/schema.ts is what openapi-typescript makes of the current schema: regenerate it
    (`npm run generate` in clients/typescript) with every change to the API."""
    call_command("spectacular", "--format", "openapi-json", "--file", str(tmp_path / "schema.json"))
    argv = [node_modules / "openapi-typescript", tmp_path / "schema.json", "-o", tmp_path / "schema.ts"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    checked_in = (CLIENT / "src" / "schema.ts").read_text()
    assert (tmp_path / "schema.ts").read_text() == checked_in, "run `npm run generate` in clients/typescript"


@contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """A second origin: `directory` served on another loopback port. Yields its origin."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Site:
    mode: str
    url: str
    origin: str  # the static site's, allowed by CORS
    keys: dict[str, str]
    private_url: str | None  # the same store with PUBLIC_READ=false (embedded mode only)


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, built_client
) -> Iterator[Site]:
    """The service with API keys, its uploads and deletes limited to 30 a minute per key, and
    CORS open to a static site that serves clients/typescript/ (the build and the example page).
    In embedded mode, a second service on the same store keeps reads private, for the signed URLs:
    it costs a start (3-4 s here), and signing does not depend on the store."""
    data_dir = tmp_path_factory.mktemp(f"client-{request.param}")
    with ExitStack() as stack:
        origin = stack.enter_context(static_site(CLIENT))
        env, _ = stack.enter_context(store_env(request, request.param, data_dir))
        env |= {"CORS_ALLOWED_ORIGINS": origin, "THROTTLE_UPLOAD": "30/min", "JWT_HS256_SECRET": ""}
        env |= {"JWT_PUBLIC_KEY": ""}
        made = servers.manage(env, "shell", "-c", KEYS)
        assert made.returncode == 0, made.stderr
        keys = json.loads(made.stdout.splitlines()[-1])
        # One worker: the throttle counts in each worker's memory, so the 429 comes at the 31st.
        served = stack.enter_context(servers.served(env, data_dir / "service.log", workers=1))
        private_url = None
        if request.param == "embedded":
            private_env = env | {"PUBLIC_READ": "false"}
            private_log = data_dir / "private.log"
            private_url = stack.enter_context(servers.served(private_env, private_log, workers=1)).url
        yield Site(request.param, served.url, origin, keys, private_url)


def test_the_client_against_the_live_service(site: Site, tmp_path: Path):
    """clients/typescript/test/*.test.mjs with Node's own test runner."""
    for i in range(10):
        (tmp_path / f"{i}.png").write_bytes(image_bytes("PNG", (96, 64), seed=i))
    env = {
        **os.environ,
        "IMAGE_SERVICE_URL": site.url,
        "IMAGE_SERVICE_KEYS": json.dumps(site.keys),
        "IMAGE_SERVICE_SAMPLES": str(tmp_path),
        **({"IMAGE_SERVICE_PRIVATE_URL": site.private_url} if site.private_url else {}),
    }
    files = sorted(str(p) for p in (CLIENT / "test").glob("*.test.mjs"))
    run = subprocess.run(
        ["node", "--test", "--test-reporter=spec", *files],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    summary = dict(re.findall(r"^\S+ (tests|pass|fail|skipped|todo) (\d+)$", run.stdout, re.M))
    print(f"node --test ({site.mode}): {summary}")
    assert run.returncode == 0, run.stdout[-10000:] + run.stderr[-3000:]
    assert int(summary["pass"]) > 0 and summary["fail"] == "0" and summary["skipped"] == "0"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    yield page
    context.close()
    assert problems == []


IN_THE_PAGE = """async ({ service, privateService, keys, model }) => {
    const { ApiError, createClient } = await import("/dist/index.js");
    const anonymous = createClient({ baseUrl: service });
    const seen = {};
    try {
        await anonymous.upload(new Blob(["x"]), model, { filename: "x.png" });
    } catch (e) {
        seen.unauthenticated = [e instanceof ApiError, e.status, e.error, e.headers.get("WWW-Authenticate")];
    }
    const first = await anonymous.list({ model_id: model, limit: 1, count: true });
    seen.paging = [first.images.length, first.total, first.next !== null];
    seen.second = (await anonymous.next(first)).images.length;
    const [image] = first.images;
    const catalog = createClient({ baseUrl: service, apiKey: keys.catalog });
    seen.label = (await catalog.setLabel(image.image_id, "front")).label; // PATCH, preflighted
    seen.cover = (await catalog.setCover(model, image.image_id)).cover; // PUT, preflighted
    const reader = createClient({ baseUrl: privateService ?? service, apiKey: keys.read });
    const img = new Image();
    img.crossOrigin = "anonymous";
    img.src = (await reader.signedUrl(image.image_id, { preset: "thumb" })).url;
    await img.decode();
    const context = new OffscreenCanvas(1, 1).getContext("2d");
    context.drawImage(img, 0, 0);
    seen.signed = [img.currentSrc.includes("&sig="), context.getImageData(0, 0, 1, 1).data[3]];
    const flood = createClient({ baseUrl: service, apiKey: keys.flood });
    for (let i = 0; i < 100 && seen.retryAfter === undefined; i++) {
        try {
            await flood.delete("0".repeat(24));
        } catch (e) {
            if (e.status === 429) seen.retryAfter = e.retryAfter;
        }
    }
    return seen;
}"""


def test_a_page_on_another_origin_uses_the_built_client(site: Site, page: Page, tmp_path: Path):
    """The example page: an upload with progress (XHR, with a preflight for Authorization), its
    Location, the model's listing, and a thumbnail in an `<img crossorigin>` drawn into a canvas whose
    pixels the page may read. Then, in the same page: the headers of a 401, Link paging, a label and a
    cover set (PATCH and PUT, preflighted), a signed URL (of the private service in embedded mode) in
    an `<img crossorigin>` drawn into a canvas, a 429's Retry-After."""
    model = new_model_id("browser")
    page.goto(f"{site.origin}/examples/browser.html?service={site.url}")
    page.set_input_files(
        "input[name=file]", {"name": "a.png", "mimeType": "image/png", "buffer": image_bytes("PNG")}
    )
    page.fill("input[name=model_id]", model)
    page.fill("input[name=key]", site.keys["write"])
    page.click("button:text('Upload')")
    expect(page.locator("#status")).to_have_text(
        re.compile(rf"^201 [0-9a-f]{{24}}, Location: {site.url}/images/")
    )
    assert page.eval_on_selector("progress", "p => p.value") == 1
    expect(page.locator("#pixel")).to_have_text(re.compile(r"^pixel \d+,\d+,\d+,255$"))
    assert page.eval_on_selector("#thumbs img", "img => img.currentSrc").endswith("/content?preset=thumb")

    page.set_input_files(
        "input[name=file]", {"name": "b.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=1)}
    )
    page.click("button:text('Upload')")
    expect(page.locator("#status")).to_have_text(re.compile(r"^201 "))
    given = {"service": site.url, "privateService": site.private_url, "keys": site.keys, "model": model}
    seen = page.evaluate(IN_THE_PAGE, given)
    assert seen["unauthenticated"][:3] == [True, 401, "not_authenticated"]
    assert "Api-Key" in seen["unauthenticated"][3]
    assert seen["paging"] == [1, 2, True]
    assert seen["second"] == 1
    assert (seen["label"], seen["cover"]) == ("front", True)
    assert seen["signed"] == [True, 255]
    assert 0 < seen["retryAfter"] <= 60
