"""The gallery page (`/`) in a real browser: Debian's Chromium, driven by Playwright, against the real
service (gunicorn) in both storage modes.

Three services per mode: an open one (development mode) for the page's features, one with API keys
and Django users for signing in, and one with PUBLIC_READ off. Screenshots at desktop and phone sizes
go to artifacts/gallery/, which git ignores.
"""

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pymongo
import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from images.bulk import human_bytes
from images.gallery import PAGE_SIZE
from tests import servers
from tests.helpers import MODES, upload_to
from tests.samples import image_bytes, noise_jpeg, rotated_jpeg

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = servers.ROOT / "artifacts" / "gallery"
PASSWORD = "gallery-tests-pw-1"
TIMES = "\N{MULTIPLICATION SIGN}"  # as the page writes dimensions
# Each user and key is created before the service starts, so no worker has cached "no key yet".
SETUP = f"""
import json
from django.contrib.auth.models import User
from django.core.management import call_command
from images import apikeys
call_command("migrate", verbosity=0)
User.objects.create_superuser("boss", password={PASSWORD!r})
User.objects.create_user("pat", password={PASSWORD!r})
print(json.dumps({{scope: apikeys.create_key(scope + "-key", (scope,)) for scope in ("read", "write")}}))
"""

pytestmark = pytest.mark.timeout(60)


@dataclass
class Site:
    """A running service and what it was set up with."""

    mode: str
    url: str
    keys: dict[str, str] = field(default_factory=dict)

    def seed(self, model_id: str, count: int = 1, size: tuple[int, int] = (64, 48)) -> list[dict]:
        """Stores images through the API, the newest last."""
        http = requests.Session()
        if "write" in self.keys:
            http.headers["Authorization"] = f"Api-Key {self.keys['write']}"
        metas = []
        for i in range(count):
            data = image_bytes("PNG", size, seed=hash((model_id, i)) % 10**6)
            response = upload_to(self.url, data, model_id, filename=f"{model_id}-{i}.png", http=http)
            assert response.status_code == 201, response.text
            metas.append(response.json())
        return metas


def new_model_id(prefix: str) -> str:
    """The services are shared by the tests of a module, so each test uses models of its own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- Browser and services --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def start_site(
    request: pytest.FixtureRequest, mode: str, extra: dict[str, str], setup: bool
) -> Iterator[Site]:
    tmp = request.getfixturevalue("tmp_path_factory").mktemp(f"gallery-{mode}")
    env = {
        "DATA_DIR": str(tmp),
        "THROTTLE_UPLOAD": "",
        "JWT_HS256_SECRET": "",
        "JWT_PUBLIC_KEY": "",
        "MAX_UPLOAD_MB": "1",  # a refused "too large" upload needs only a small file
        "MAX_REQUEST_MB": "8",
        "HOT_CACHE_SECONDS": "0",  # the tests read deletes back through any worker at once
        **extra,
    }
    with ExitStack() as stack:
        if mode == "mongo":
            uri, name = request.getfixturevalue("mongo_uri"), f"test_{uuid.uuid4().hex[:12]}"
            env.update(MONGO_URI=uri, MONGO_DB=name, MONGO_TIMEOUT_MS="10000")
            client = pymongo.MongoClient(uri)
            stack.callback(client.close)
            stack.callback(client.drop_database, name)
        keys = json.loads(manage(env, "shell", "-c", SETUP).splitlines()[-1]) if setup else {}
        url = stack.enter_context(servers.service(env, tmp / "service.log"))
        yield Site(mode, url, keys)


def manage(env: dict[str, str], *args: str) -> str:
    """Runs `manage.py` on the store that a service with `env` uses; returns its output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MONGO_")} | env
    argv = [sys.executable, "manage.py", *args]
    done = subprocess.run(argv, cwd=servers.ROOT, env=full_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def open_site(request: pytest.FixtureRequest, mode: str) -> Iterator[Site]:
    """Development mode: no credential configured, so everyone may upload and delete."""
    yield from start_site(request, mode, {}, setup=False)


@pytest.fixture(scope="module")
def auth_site(request: pytest.FixtureRequest, mode: str) -> Iterator[Site]:
    """API keys (read, write) and two users: `boss` (superuser: admin) and `pat` (write)."""
    yield from start_site(request, mode, {}, setup=True)


@pytest.fixture(scope="module")
def private_site(request: pytest.FixtureRequest, mode: str) -> Iterator[Site]:
    yield from start_site(request, mode, {"PUBLIC_READ": "false"}, setup=True)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (no cookies, no storage) per test. Uncaught errors and CSP violations fail it."""
    context = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert problems == []


def snap(page: Page, site: Site, name: str) -> None:
    """Desktop and phone screenshots of the page as it is."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.wait_for_load_state("networkidle")  # the thumbnails that came into view
        page.screenshot(path=SHOTS / f"{site.mode}-{name}-{size}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


# --- Helpers ---------------------------------------------------------------------------------------


def as_file(name: str, data: bytes, mime: str = "application/octet-stream") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def drop(page: Page, files: dict[str, bytes]) -> None:
    """Drags files onto the drop zone, as a file manager would."""
    encoded = {name: base64.b64encode(data).decode() for name, data in files.items()}
    page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, b64] of Object.entries(files)) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name));
            }
            const zone = document.getElementById("dropzone");
            for (const type of ["dragover", "drop"]) {
                const event = { dataTransfer: transfer, bubbles: true, cancelable: true };
                zone.dispatchEvent(new DragEvent(type, event));
            }
        }""",
        encoded,
    )


def upload_form(page: Page):
    return page.locator("#upload-form")


def result_of(page: Page, filename: str):
    return page.locator("#uploads li", has=page.locator(".name", has_text=filename)).locator(".result")


def cards(page: Page):
    return page.locator("#grid .card")


def card_of(page: Page, filename: str):
    return page.locator("#grid .card", has=page.get_by_alt_text(filename, exact=True))


def sign_in(page: Page, site: Site, username: str) -> None:
    page.goto(site.url)
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_contain_text(f"Signed in as {username}:")


def wait_loaded(page: Page, img, condition: str = "img.naturalWidth > 0") -> None:
    """Until the image has arrived and decoded (lazy images load once they are near the viewport)."""
    page.wait_for_function(f"(img) => img.complete && {condition}", arg=img.element_handle())


# --- The page's features (development mode) ---------------------------------------------------------


def test_uploading_several_files_shows_progress_then_the_cards(open_site: Site, page: Page):
    model_id = new_model_id("chair")
    files = {
        "front.jpg": noise_jpeg((420, 420)),  # a few hundred KB: several progress events
        "side.png": image_bytes("PNG", (640, 480), seed=1),
        "top.webp": image_bytes("WEBP", (300, 200), seed=2),
    }
    page.goto(f"{open_site.url}/?model_id={model_id}")
    expect(page.locator("#who")).to_have_text("Development mode: anyone may upload and delete.")
    expect(page.locator("#grid-status")).to_have_text("No images yet.")
    form = upload_form(page)
    expect(form.get_by_label("Model ID")).to_have_value(model_id)  # taken from the filter
    page.evaluate(
        """() => {
            window.progressSeen = {};
            new MutationObserver((changes) => {
                for (const { target } of changes) {
                    const name = target.closest("li").querySelector(".name").textContent;
                    (window.progressSeen[name] ||= []).push(target.value);
                }
            }).observe(document.getElementById("uploads"), { subtree: true, attributeFilter: ["value"] });
        }"""
    )
    form.get_by_label("Images", exact=True).set_input_files([as_file(n, d) for n, d in files.items()])
    form.get_by_role("button", name="Upload").click()

    for name in files:
        expect(result_of(page, name)).to_have_text("Added")
    seen = page.evaluate("window.progressSeen")
    for name in files:
        assert seen[name][-1] == 100, seen  # driven by the XHR's upload progress events
    expect(page.locator("#uploads progress")).to_have_count(3)
    expect(cards(page)).to_have_count(3)
    expect(cards(page).first.get_by_role("img")).to_have_attribute("alt", "top.webp")  # newest first

    api = requests.get(f"{open_site.url}/images", params={"model_id": model_id}, timeout=30).json()
    side = next(m for m in api if m["filename"] == "side.png")
    card = card_of(page, "side.png")
    for text in (model_id, "side.png", f"640{TIMES}480", human_bytes(side["size"])):  # as the admin
        expect(card).to_contain_text(text)
    expect(card.locator("time")).to_have_attribute("datetime", side["uploaded_at"])
    thumb = card.get_by_role("img")
    expect(thumb).to_have_attribute("src", f"{side['url']}?preset=thumb")
    expect(thumb).to_have_attribute("loading", "lazy")
    wait_loaded(page, thumb)
    snap(page, open_site, "upload")

    # The same bytes again: the server keeps one image and says so.
    form.get_by_label("Images", exact=True).set_input_files([as_file("side.png", files["side.png"])])
    form.get_by_role("button", name="Upload").click()
    expect(result_of(page, "side.png")).to_have_text("Already there (duplicate)")
    expect(cards(page)).to_have_count(3)


def test_a_refused_file_shows_the_servers_reason(open_site: Site, page: Page):
    model_id = new_model_id("lamp")
    page.goto(f"{open_site.url}/?model_id={model_id}")
    drop(
        page,
        {
            "notes.txt": b"not an image at all",
            "huge.jpg": noise_jpeg((1100, 1100)),  # 1.4 MB, over this service's MAX_UPLOAD_MB=1
            "good.png": image_bytes("PNG", seed=3),
        },
    )
    upload_form(page).get_by_role("button", name="Upload").click()
    expect(result_of(page, "notes.txt")).to_have_text(
        "Refused (415): The file is not an allowed image type (allowed: jpeg, png, webp, gif)."
    )
    expect(result_of(page, "huge.jpg")).to_have_text("Refused (413): The file is larger than 1 MB.")
    expect(result_of(page, "good.png")).to_have_text("Added")
    expect(cards(page)).to_have_count(1)
    snap(page, open_site, "refused")


def test_filter_by_model_and_follow_a_cards_model_link(open_site: Site, page: Page):
    a, b = new_model_id("table"), new_model_id("shelf")
    open_site.seed(a, 2)
    open_site.seed(b, 3)
    page.goto(open_site.url)
    search = page.get_by_role("search")
    search.get_by_label("Model ID").fill(a)
    search.get_by_label("Model ID").press("Enter")
    expect(page).to_have_url(f"{open_site.url}/?model_id={a}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Model {a}")
    expect(cards(page)).to_have_count(2)
    expect(page.locator("#grid .model")).to_have_text([a, a])

    page.goto(open_site.url)  # everything, newest first: b's images lead
    page.locator("#grid .model a", has_text=b).first.click()
    expect(page).to_have_url(f"{open_site.url}/?model_id={b}")
    expect(cards(page)).to_have_count(3)
    expect(page.locator("#grid .model")).to_have_text([b] * 3)
    page.get_by_role("link", name="Show all").click()
    expect(page).to_have_url(f"{open_site.url}/")


def test_scrolling_loads_the_next_page(open_site: Site, page: Page):
    model_id = new_model_id("pages")
    open_site.seed(model_id, PAGE_SIZE + 3)
    lists: list[str] = []
    page.on("request", lambda r: lists.append(r.url) if "/images?" in r.url else None)
    page.goto(f"{open_site.url}/?model_id={model_id}")
    expect(cards(page)).to_have_count(PAGE_SIZE)
    page.wait_for_load_state("networkidle")
    assert len(lists) == 1 and "cursor=" not in lists[0], lists  # one screen: one page
    page.keyboard.press("End")
    expect(cards(page)).to_have_count(PAGE_SIZE + 3)
    assert "cursor=" in lists[1], lists
    assert len(set(page.locator("#grid .card").evaluate_all("(cs) => cs.map((c) => c.dataset.id)"))) == (
        PAGE_SIZE + 3
    )
    snap(page, open_site, "scrolled")


def test_the_detail_view(open_site: Site, page: Page):
    model_id = new_model_id("sofa")
    [meta] = open_site.seed(model_id, size=(640, 480))
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=open_site.url)
    page.goto(f"{open_site.url}/?model_id={model_id}")
    card_of(page, meta["filename"]).get_by_role("button").focus()
    page.keyboard.press("Enter")  # keyboard users open it too
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text(meta["filename"])
    big = dialog.get_by_role("img")
    expect(big).to_have_attribute("src", f"{meta['url']}?preset=full")
    wait_loaded(page, big, "img.naturalWidth === 640")
    for text in (model_id, meta["image_id"], meta["sha256"], "image/png", f"640{TIMES}480 px", "Uploaded by"):
        expect(dialog.locator("#detail-meta")).to_contain_text(text)
    expect(dialog.get_by_role("link", name="Original")).to_have_attribute("href", meta["url"])
    for preset, box in {"thumb": 256, "card": 640, "full": 1600}.items():
        link = dialog.get_by_role("link", name=f"{preset} ({box} px)")
        expect(link).to_have_attribute("href", f"{meta['url']}?preset={preset}")
        assert requests.get(f"{meta['url']}?preset={preset}", timeout=30).status_code == 200
    dialog.get_by_role("button", name="Copy URL").click()
    expect(dialog.get_by_role("status")).to_have_text("URL copied.")
    assert page.evaluate("navigator.clipboard.readText()") == meta["url"]
    expect(dialog.get_by_role("button", name="Delete")).to_be_visible()  # development mode
    snap(page, open_site, "detail")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_label_and_cover_are_set_from_the_detail_view(open_site: Site, page: Page):
    model_id = new_model_id("lamp")
    older, newer = open_site.seed(model_id, 2)
    page.goto(f"{open_site.url}/?model_id={model_id}")
    card_of(page, older["filename"]).get_by_role("button").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#detail-meta")).to_contain_text("No")
    dialog.get_by_label("Label").fill("front")
    dialog.get_by_role("button", name="Set label").click()
    expect(dialog.get_by_role("status")).to_have_text("Label set to front.")
    dialog.get_by_role("button", name="Make cover").click()
    expect(dialog.get_by_role("status")).to_have_text(f"This is now the picture of model {model_id}.")
    expect(dialog.get_by_role("button", name="Make cover")).to_be_hidden()
    expect(dialog.locator("#detail-meta")).to_contain_text("Yes: the model's picture")
    page.keyboard.press("Escape")
    expect(card_of(page, older["filename"]).locator(".badge")).to_have_text(["Cover", "front"])
    expect(card_of(page, newer["filename"]).locator(".badge")).to_have_count(0)
    # The API agrees: the model's picture is the cover now, not its newest image.
    meta = requests.get(f"{open_site.url}/images/{older['image_id']}", timeout=30).json()
    assert (meta["label"], meta["cover"]) == ("front", True)
    shown = requests.get(f"{open_site.url}/image/{model_id}", timeout=30)
    assert shown.headers["ETag"] == f'"{older["sha256"]}"'


def test_delete_asks_for_confirmation_first(open_site: Site, page: Page):
    model_id = new_model_id("stool")
    [meta] = open_site.seed(model_id)
    page.goto(f"{open_site.url}/?model_id={model_id}")
    card_of(page, meta["filename"]).click()
    delete = page.get_by_role("dialog").get_by_role("button", name="Delete")
    asked: list[str] = []

    def answer(accept: bool):
        def handle(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    page.once("dialog", answer(False))
    delete.click()  # returns once the confirmation has been answered
    assert asked == [f"Delete {meta['filename']} (model {model_id})? This cannot be undone."]
    assert requests.get(f"{open_site.url}/images/{meta['image_id']}", timeout=30).status_code == 200
    expect(cards(page)).to_have_count(1)

    page.once("dialog", answer(True))
    delete.click()
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(cards(page)).to_have_count(0)
    expect(page.locator("#grid-status")).to_have_text(f"Deleted {meta['filename']}.")
    assert requests.get(f"{open_site.url}/images/{meta['image_id']}", timeout=30).status_code == 404


# --- Authentication (a key configured) ---------------------------------------------------------------


def test_without_credentials_the_page_is_read_only(auth_site: Site, page: Page):
    model_id = new_model_id("desk")
    [meta] = auth_site.seed(model_id)
    page.goto(f"{auth_site.url}/?model_id={model_id}")
    expect(page.locator("#who")).to_have_text("Not signed in: read-only.")
    expect(cards(page)).to_have_count(1)
    expect(page.locator("#upload")).to_be_hidden()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    snap(page, auth_site, "read-only")
    card_of(page, meta["filename"]).click()
    expect(page.get_by_role("dialog").get_by_role("button", name="Delete")).to_be_hidden()


def test_signing_in_with_a_django_user(auth_site: Site, page: Page):
    model_id = new_model_id("bench")
    sign_in(page, auth_site, "pat")
    expect(page.locator("#who")).to_have_text("Signed in as pat: you may upload.")
    page.goto(f"{auth_site.url}/?model_id={model_id}")
    form = upload_form(page)
    form.get_by_label("Images", exact=True).set_input_files([as_file("pat.png", image_bytes("PNG", seed=7))])
    form.get_by_role("button", name="Upload").click()  # the session, with the CSRF token
    expect(result_of(page, "pat.png")).to_have_text("Added")
    [meta] = requests.get(f"{auth_site.url}/images", params={"model_id": model_id}, timeout=30).json()
    assert meta["uploaded_by"] == "pat"
    card_of(page, "pat.png").click()
    expect(page.get_by_role("dialog").get_by_role("button", name="Delete")).to_be_hidden()  # not staff
    page.keyboard.press("Escape")
    snap(page, auth_site, "signed-in")

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#who")).to_have_text("Not signed in: read-only.")
    sign_in(page, auth_site, "boss")
    page.goto(f"{auth_site.url}/?model_id={model_id}")
    expect(page.locator("#who")).to_have_text("Signed in as boss: you may upload and delete.")
    card_of(page, "pat.png").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(cards(page)).to_have_count(0)
    assert requests.get(f"{auth_site.url}/images/{meta['image_id']}", timeout=30).status_code == 404


def test_a_wrong_password_is_refused(auth_site: Site, page: Page):
    page.goto(f"{auth_site.url}/accounts/login/")
    page.get_by_label("Username").fill("pat")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("did not match")


def test_a_pasted_api_key_is_kept_for_the_session_only(auth_site: Site, page: Page):
    model_id = new_model_id("crate")
    page.goto(f"{auth_site.url}/?model_id={model_id}")
    page.get_by_text("Use an API key", exact=True).click()  # the <summary>
    key_field = page.get_by_label("API key", exact=True)
    key_field.fill("isk_not-a-real-key")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-error")).to_contain_text("The API key is not valid, or it has been revoked.")
    expect(page.locator("#who")).to_have_text("Not signed in: read-only.")

    key_field.fill(auth_site.keys["write"])
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#who")).to_have_text("Signed in as write-key (API key): you may upload.")
    expect(page.get_by_role("link", name="Sign in")).to_be_hidden()  # the key speaks for this tab
    expect(page.get_by_text("Use an API key", exact=True)).to_be_hidden()
    expect(page.get_by_role("button", name="Forget key")).to_be_visible()
    stored = page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
    assert stored[0] == 1 and stored[1] == 0 and auth_site.keys["write"] not in stored[2]
    form = upload_form(page)
    form.get_by_label("Images", exact=True).set_input_files([as_file("k.png", image_bytes("PNG", seed=8))])
    form.get_by_role("button", name="Upload").click()
    expect(result_of(page, "k.png")).to_have_text("Added")
    [meta] = requests.get(f"{auth_site.url}/images", params={"model_id": model_id}, timeout=30).json()
    assert meta["uploaded_by"] == "write-key"

    other = page.context.browser.new_context()  # another session: the key is not there
    try:
        elsewhere = other.new_page()
        elsewhere.goto(auth_site.url)
        expect(elsewhere.locator("#who")).to_have_text("Not signed in: read-only.")
    finally:
        other.close()
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#who")).to_have_text("Not signed in: read-only.")
    assert page.evaluate("sessionStorage.length") == 0


def test_private_reads_need_a_credential(private_site: Site, page: Page):
    model_id = new_model_id("vault")
    private_site.seed(model_id, 2)
    page.goto(f"{private_site.url}/?model_id={model_id}")
    expect(page.locator("#who")).to_have_text("Not signed in: sign in to see the images.")
    expect(page.locator("#grid-status")).to_have_text("Sign in, or use an API key, to see the images.")
    expect(cards(page)).to_have_count(0)

    page.get_by_text("Use an API key", exact=True).click()
    page.get_by_label("API key", exact=True).fill(private_site.keys["read"])
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#who")).to_have_text("Signed in as read-key (API key): you may view.")
    expect(cards(page)).to_have_count(2)
    expect(page.locator("#upload")).to_be_hidden()
    for img in cards(page).get_by_role("img").all():  # an <img> cannot send the key: signed URLs
        wait_loaded(page, img, "img.src.includes('&sig=') && img.naturalWidth > 0")
        assert requests.get(img.get_attribute("src"), timeout=30).status_code == 200  # no credential
    snap(page, private_site, "private-with-key")


# --- What a new user tripped over (issue 18) ----------------------------------------------------------

# Every element of the dialog, the dialog itself within the viewport, and nothing scrolling sideways.
OVERFLOWING = """(dialog) => {
    const width = document.documentElement.clientWidth;
    const box = dialog.getBoundingClientRect();
    const found = [];
    if (box.left < 0 || box.right > width || dialog.scrollWidth > dialog.clientWidth) {
        found.push(`the dialog: ${box.left}-${box.right} of ${width}, scrolls ${dialog.scrollWidth}`);
    }
    for (const node of dialog.querySelectorAll("*")) {
        const r = node.getBoundingClientRect();
        if (r.width && (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.width > width)) {
            found.push(`${node.tagName}#${node.id}.${node.className}: ${r.left}-${r.right}`);
        }
    }
    return found;
}"""


def test_the_detail_dialog_fits_a_desktop_and_a_phone(open_site: Site, page: Page):
    model_id = new_model_id("wide")
    name = "a-long-camera-file-name-without-any-spaces-IMG_20261203_101112_HDR-final-v2.png"
    http = requests.Session()
    assert upload_to(open_site.url, image_bytes("PNG", (640, 480)), model_id, filename=name, http=http).ok
    page.goto(f"{open_site.url}/?model_id={model_id}")
    card_of(page, name).click()
    dialog = page.get_by_role("dialog")
    wait_loaded(page, dialog.get_by_role("img"))
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        assert dialog.evaluate(OVERFLOWING) == [], viewport
        full = dialog.get_by_role("link", name="full (1600 px)")
        full.scroll_into_view_if_needed()  # the dialog scrolls down on a phone, never sideways
        expect(full).to_be_in_viewport(ratio=1)
    page.screenshot(path=SHOTS / f"{open_site.mode}-detail-phone.png")


def test_opening_the_key_panel_moves_nothing(auth_site: Site, page: Page):
    page.goto(auth_site.url)
    expect(page.locator("#who")).to_have_text("Not signed in: read-only.")
    title = page.get_by_role("heading", level=1)
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        before = (page.locator("header").bounding_box(), title.bounding_box())
        page.get_by_text("Use an API key", exact=True).click()
        expect(page.get_by_label("API key", exact=True)).to_be_in_viewport()
        assert (page.locator("header").bounding_box(), title.bounding_box()) == before, viewport
        page.get_by_text("Use an API key", exact=True).click()  # closes it


def test_small_images_keep_their_size_and_photos_their_shown_dimensions(open_site: Site, page: Page):
    model_id = new_model_id("icons")
    http = requests.Session()
    for data, name in ((image_bytes("PNG", (64, 64)), "icon.png"), (rotated_jpeg(), "upright.jpg")):
        assert upload_to(open_site.url, data, model_id, filename=name, http=http).status_code == 201
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{open_site.url}/?model_id={model_id}")
    icon = card_of(page, "icon.png").get_by_role("img")
    wait_loaded(page, icon)
    box, cell = icon.bounding_box(), card_of(page, "icon.png").locator(".thumb").bounding_box()
    assert (box["width"], box["height"]) == (64, 64) and cell["width"] > 100  # not stretched to the card
    expect(card_of(page, "upright.jpg")).to_contain_text(f"30{TIMES}60")  # shown upright: taller than wide
    page.wait_for_load_state("networkidle")
    assert failed == []  # no 404 for /favicon.ico, nor anything else
    assert requests.get(f"{open_site.url}/favicon.ico", timeout=30).headers["Content-Type"] == "image/svg+xml"


def test_the_admin_fits_previews_and_manages_keys(auth_site: Site, page: Page):
    model_id = new_model_id("tall")
    auth_site.seed(model_id, size=(30, 90))  # a portrait: its 64 px preview is 21x64
    page.goto(f"{auth_site.url}/admin/")
    page.get_by_label("Username").fill("boss")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{auth_site.url}/admin/images/?model_id={model_id}")
    preview = page.locator("#result_list img").first
    wait_loaded(page, preview)
    assert preview.bounding_box()["height"] == 64
    assert page.locator("#result_list tbody tr").first.bounding_box()["height"] < 100
    page.screenshot(path=SHOTS / f"{auth_site.mode}-admin-images.png")

    page.get_by_role("link", name="API keys").click()
    expect(page.locator("#result_list")).to_contain_text("write-key")
    page.get_by_role("link", name="Add API key").click()
    page.get_by_label("Name").fill(new_model_id("made-in-the-admin"))
    page.get_by_label("admin: delete (and write and read)").check()
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("The new API key").input_value()
    whoami = requests.get(
        f"{auth_site.url}/api/whoami", headers={"Authorization": f"Api-Key {key}"}, timeout=30
    )
    assert whoami.json()["scopes"] == ["read", "write", "admin"]
    page.get_by_role("link", name="Back to the API keys").click()
    page.screenshot(path=SHOTS / f"{auth_site.mode}-admin-api-keys.png")


def test_swagger_ui_shows_locks_only_where_a_credential_is_needed(open_site: Site, page: Page):
    page.goto(f"{open_site.url}/api/docs/")
    expect(page.locator(".opblock")).to_have_count(13)
    for opblock in page.locator(".opblock").all():
        reads = (
            "opblock-get" in (opblock.get_attribute("class") or "")
            or "/models/lookup" in opblock.inner_text()
        )
        needs_credential = not reads  # POST /models/lookup only reads
        expect(opblock.locator(".authorization__btn")).to_have_count(int(needs_credential))
    page.screenshot(path=SHOTS / f"{open_site.mode}-swagger.png")
