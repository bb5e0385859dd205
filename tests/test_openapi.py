"""The OpenAPI schema, the docs that show it, the browsable API, and the service held to the schema.

The schema is checked three ways: drf-spectacular's own validation (no warnings allowed), its list of
operations, and schemathesis fuzzing the real service (gunicorn, in both storage modes) against it.
"""

import json
import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pymongo
import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from tests import servers
from tests.helpers import MODES
from tests.samples import image_bytes

OPERATIONS = {
    ("/upload", "post"): "upload_image",
    ("/images", "get"): "list_images",
    ("/images/{image_id}", "get"): "get_image",
    ("/images/{image_id}", "patch"): "set_image_label",
    ("/images/{image_id}", "delete"): "delete_image",
    ("/images/{image_id}/content", "get"): "get_image_content",
    ("/images/{image_id}/signed-url", "get"): "get_signed_url",
    ("/image/{model_id}", "get"): "get_model_image",
    ("/models/{model_id}/images", "get"): "list_model_images",
    ("/models", "get"): "lookup_models",
    ("/models/lookup", "post"): "lookup_models_post",
    ("/models/{model_id}/cover", "put"): "set_model_cover",
    ("/models/{model_id}/cover", "delete"): "clear_model_cover",
}
BYTES_OPERATIONS = ("get_image_content", "get_model_image")
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # as a browser asks
FILE_INPUT = re.compile(r'<input name="file"\s+type="file"')


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/schema/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


def operations(schema: dict) -> Iterator[tuple[str, str, dict]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_the_schema_validates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.")


def test_the_schema_lists_every_endpoint_with_a_stable_operation_id(schema):
    assert {(path, method): op["operationId"] for path, method, op in operations(schema)} == OPERATIONS


def test_every_operation_documents_its_errors_as_json(schema):
    for path, method, operation in operations(schema):
        codes = set(operation["responses"])
        assert {"401", "403", "429", "503"} <= codes, (path, method)
        for code, response in operation["responses"].items():
            if code >= "400":
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }, (path, method, code)
    assert schema["components"]["schemas"]["Error"]["required"] == ["detail", "error"]


def test_the_upload_form_is_documented(schema):
    operation = schema["paths"]["/upload"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data"}
    form = schema["components"]["schemas"]["UploadRequest"]
    assert form["required"] == ["file", "model_id"]
    assert form["properties"]["file"]["format"] == "binary"
    assert "`image`" in form["properties"]["file"]["description"]
    assert form["properties"]["model_id"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    responses = operation["responses"]
    assert {"200", "201", "400", "411", "413", "415", "422", "507"} <= set(responses)
    assert responses["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Image"}
    # No anonymous upload: a key, a token, or a signed-in user's session.
    assert operation["security"] == [{"Api-Key": []}, {"bearerAuth": []}, {"cookieAuth": []}]


def test_the_bytes_endpoints_are_documented(schema):
    for _, _, operation in operations(schema):
        if operation["operationId"] not in BYTES_OPERATIONS:
            continue
        responses = operation["responses"]
        assert {"200", "206", "304", "412", "416"} <= set(responses)
        for code in ("200", "206"):
            types = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/avif"}  # avif: derivatives
            assert set(responses[code]["content"]) == types
            assert {"ETag", "Cache-Control", "Content-Disposition", "Accept-Ranges"} <= set(
                responses[code]["headers"]
            )
        assert "Content-Range" in responses["206"]["headers"]
        sent = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {"Range", "If-None-Match", "If-Modified-Since", "If-Range"} <= sent
        query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert {"w", "h", "fit", "format", "q", "preset"} <= query
        assert {"400", "422"} <= set(responses)
        assert "security" not in operation  # public reads: no credential, and no lock in Swagger UI


def test_paging_and_path_parameters_are_documented(schema):
    listing = {p["name"]: p for p in schema["paths"]["/images"]["get"]["parameters"]}
    assert listing["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert listing["model_id"]["schema"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    assert "cursor" in listing
    assert "Link" in schema["paths"]["/images"]["get"]["responses"]["200"]["headers"]
    for path, _, operation in operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                expected = {"image_id": "^[0-9a-fA-F]{24}$", "model_id": "^[A-Za-z0-9._:-]{1,128}$"}
                assert parameter["schema"]["pattern"] == expected[parameter["name"]], path


def test_every_security_scheme_is_described(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["Api-Key"]["type"] == "apiKey"
    assert (schemes["Api-Key"]["in"], schemes["Api-Key"]["name"]) == ("header", "Authorization")
    assert "Api-Key <key>" in schemes["Api-Key"]["description"]
    assert (schemes["bearerAuth"]["scheme"], schemes["bearerAuth"]["bearerFormat"]) == ("bearer", "JWT")
    assert (schemes["cookieAuth"]["in"], schemes["cookieAuth"]["name"]) == ("cookie", "sessionid")
    assert "X-CSRFToken" in schemes["cookieAuth"]["description"]


def docs_assets(html: str) -> list[str]:
    """The URLs that the Swagger UI page loads, checked to be the service's own (no CDN)."""
    assert "/api/schema" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= {a.rpartition("/")[2] for a in assets}
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/swagger-ui-dist/"), asset
    return assets


def test_swagger_ui_loads_its_assets_from_the_service_itself(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    for asset in docs_assets(page.content.decode()):
        assert client.get(asset).status_code == 200, asset


# --- The browsable API ---------------------------------------------------------------------------


def test_the_browsable_api_renders_the_image_list(store, client):
    response = client.get("/images", headers=HTML)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_the_browsable_api_offers_an_upload_form(store, client):
    response = client.get("/upload", headers=HTML)
    assert response.status_code == 405  # as curl gets; the page still carries the form
    assert response["Content-Type"].startswith("text/html")
    form = re.search(
        r'<form action="/upload" method="POST" enctype="multipart/form-data".*?</form>',
        (response.content.decode()),
        re.S,
    )
    assert form, response.content
    assert FILE_INPUT.search(form.group(0))
    assert 'name="model_id"' in form.group(0)


def test_api_clients_still_get_405_for_get_upload(store, client):
    response = client.get("/upload")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_an_upload_from_the_browser_form_is_stored(store, client):
    form = {"file": SimpleUploadedFile("a.png", image_bytes("PNG")), "model_id": "from-browser"}
    response = client.post("/upload", form, headers=HTML)
    assert response.status_code == 201
    assert response["Content-Type"].startswith("text/html")
    assert FILE_INPUT.search(response.content.decode())  # the upload form again, for the next one
    [record] = store.records()
    assert record.model_id == "from-browser"


# --- The running service, fuzzed against its own schema ------------------------------------------

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
MAX_EXAMPLES = int(os.environ.get("ST_MAX_EXAMPLES", "50"))  # per operation; raise it for a deeper run
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.fixture(scope="module", params=MODES)
def open_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service, open (no credential configured, on loopback) and unthrottled."""
    tmp_path = tmp_path_factory.mktemp(f"service-{request.param}")
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "THROTTLE_UPLOAD": "",
        "THROTTLE_READ": "",
        "JWT_HS256_SECRET": "",
        "JWT_PUBLIC_KEY": "",
    }
    with ExitStack() as stack:
        if request.param == "mongo":
            uri, name = request.getfixturevalue("mongo_uri"), f"test_{uuid.uuid4().hex[:12]}"
            env.update(MONGO_URI=uri, MONGO_DB=name)
            client = pymongo.MongoClient(uri)
            stack.callback(client.close)
            stack.callback(client.drop_database, name)
        yield stack.enter_context(servers.service(env, tmp_path / "service.log"))


def seed(url: str, rounds: int = 1) -> dict:
    """A few stored images, so that the fuzzer reaches more than 404s (see schemathesis_hooks.py)."""
    metas = []
    kinds = [("JPEG", "m1"), ("PNG", "m1"), ("WEBP", "m2"), ("GIF", "m3")] * rounds
    for i, (fmt, model_id) in enumerate(kinds):
        files = {"file": (f"seed{i}.{fmt.lower()}", image_bytes(fmt, seed=i))}
        response = requests.post(f"{url}/upload", files=files, data={"model_id": model_id}, timeout=30)
        assert response.status_code == 201, response.text
        metas.append(response.json())
    return {
        "image_ids": [m["image_id"] for m in metas],
        "model_ids": sorted({m["model_id"] for m in metas}),
        "sha256s": [m["sha256"] for m in metas],
    }


def test_the_live_docs_load_from_the_service_itself(open_service: str):
    """What gunicorn serves, with WhiteNoise finding the sidecar's files (no collectstatic step)."""
    page = requests.get(f"{open_service}/api/docs/", timeout=30)
    assert page.status_code == 200
    for asset in docs_assets(page.text):
        assert requests.get(f"{open_service}{asset}", timeout=30).status_code == 200, asset


@pytest.mark.slow
def test_the_service_conforms_to_its_schema(open_service: str, tmp_path: Path):
    """Every phase (coverage, fuzzing, stateful), deterministic: about ten seconds per mode."""
    env = {
        **os.environ,
        "PYTHONPATH": str(servers.ROOT),
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "ST_SEEDED": json.dumps(seed(open_service)),
    }
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{open_service}/api/schema/",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--request-timeout", "30",
        "--no-color",
    ]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    summary = re.search(r"Test cases:\s*\n\s*(.+)", run.stdout)
    print(f"schemathesis: {summary.group(1) if summary else '?'}")
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]


DEEP_SECONDS = int(os.environ.get("ST_DEEP_SECONDS", "35"))  # per mode


@pytest.mark.slow
def test_a_longer_stateful_run_finds_no_server_error_and_no_violation(open_service: str, tmp_path: Path):
    """Longer than the run above, and not deterministic (the seed is printed, to replay a
    failure): fuzzing, then stateful scenarios along the links that schemathesis infers from the
    schema and learns from `Location` headers (upload, then read, list or delete what it made),
    until DEEP_SECONDS are spent. No 5xx, and every answer as the schema says.

    Its scenarios start from listings (schemathesis does not start them from an upload whose
    model_id it takes for a reference to a resource that nothing creates), then follow the
    schema's links to reading and deleting, so the run starts with enough images to delete."""
    seed_value = random.randrange(2**32)
    env = {
        **os.environ,
        "PYTHONPATH": str(servers.ROOT),
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "ST_SEEDED": json.dumps(seed(open_service, rounds=25)),
    }
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{open_service}/api/schema/",
        "--checks", ",".join(CHECKS),
        "--phases", "fuzzing,stateful",
        "--max-time", str(DEEP_SECONDS),
        "--seed", str(seed_value),
        "--request-timeout", "30",
        "--no-color",
    ]  # fmt: skip
    run = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEEP_SECONDS + 120
    )
    found = {
        name: match.group(1) if (match := re.search(pattern, run.stdout)) else "?"
        for name, pattern in [
            ("cases", r"Test cases:\s*\n\s*(.+)"),
            ("scenarios", r"Scenarios:\s*(\d+)"),
            ("links", r"API Links:\s*(.+)"),
        ]
    }
    print(
        f"schemathesis (seed {seed_value}): {found['cases']}; {found['scenarios']} stateful scenarios; "
        f"links {found['links']}"
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert found["scenarios"].isdigit() and int(found["scenarios"]) > 0, run.stdout[-5000:]  # stateful ran
    covered = re.match(r"(\d+) covered", found["links"])
    assert covered and int(covered.group(1)) > 0, run.stdout[-5000:]  # scenarios followed links


def test_public_reads_state_no_security_so_swagger_ui_shows_no_lock(schema):
    for _, method, operation in operations(schema):
        reads = method in ("get", "head") or operation["operationId"] == "lookup_models_post"  # POSTs a query
        assert ("security" in operation) == (not reads), operation["operationId"]
