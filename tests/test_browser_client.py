"""Calling the service from a browser on another origin: the CORS headers a script may read, the schema
as JSON, and the TypeScript client in clients/typescript/: its generated types checked against the
schema, its Node tests (`node --test`) run against the real service in both modes, and its build used by
Chromium from a second origin (a static server on another loopback port, allowed by CORS_ALLOWED_ORIGINS).

The client's node_modules come from `npm ci`, which scripts/test runs; without them (or without node)
these tests skip, and under CI=true they fail.
"""

import json

from tests.helpers import upload
from tests.samples import image_bytes

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
    created = upload(client, image_bytes(), headers=origin)
    assert created.status_code == 201
    assert cors_headers(created) == (ORIGIN, {h.lower() for h in settings.CORS_EXPOSE_HEADERS})
    too_large = client.post("/accounts/login/", {"username": "x" * 2048}, headers=origin)
    assert too_large.status_code == 413
    assert cors_headers(too_large)[0] == ORIGIN
    other = client.get("/images", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other
