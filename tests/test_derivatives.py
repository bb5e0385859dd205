"""Derivatives: the rendering itself (every case of issue 4), then the API in both storage modes."""

import errno
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.http import QueryDict
from PIL import Image, ImageChops, ImageCms, ImageFilter, ImageStat, PngImagePlugin

from images import derivatives, services
from images.backend import get_backend
from images.derivatives import Spec, parse_spec, render
from images.errors import InvalidRequest, UnprocessableImage
from tests.helpers import body, spec, stored_image, upload

ALLOWED = ["JPEG", "PNG", "WEBP", "GIF"]


def encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def made(data: bytes, spec: Spec) -> Image.Image:
    out = Image.open(io.BytesIO(render(io.BytesIO(data), spec, ALLOWED)))
    out.load()
    return out


# --- parameters ----------------------------------------------------------------------------------


def parse(query: str, accept: str = "", original: str = "jpeg"):
    return parse_spec(QueryDict(query), accept, original)


def test_parameters_are_normalized():
    assert parse("w=256") == (Spec(256, None, "contain", "jpeg", 85), False)
    assert parse("w=256&h=128&fit=cover&format=webp&q=70") == (Spec(256, 128, "cover", "webp", 70), False)
    assert parse("preset=thumb", "image/webp,*/*") == (Spec(256, 256, "contain", "webp", 80), True)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [("image/avif,image/webp,*/*", "avif"), ("image/webp,*/*", "webp"), ("*/*", "png"), ("", "png")],
)
def test_format_auto_follows_accept(accept, chosen):
    assert parse("w=64&format=auto", accept, "png") == (
        Spec(64, None, "contain", chosen, parse("w=64&format=" + chosen)[0].quality),
        True,
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("w=300", "invalid_size"),
        ("h=0", "invalid_size"),
        ("w=abc", "invalid_size"),
        ("preset=huge", "invalid_preset"),
        ("preset=thumb&w=64", "invalid_size"),
        ("w=64&fit=stretch", "invalid_fit"),
        ("w=64&format=bmp", "invalid_format"),
        ("w=64&q=0", "invalid_quality"),
        ("w=64&q=101", "invalid_quality"),
    ],
)
def test_bad_parameters_are_refused(query, code):
    with pytest.raises(InvalidRequest) as caught:
        parse(query)
    assert caught.value.get_codes() == code


def test_a_wrong_size_lists_the_allowed_ones(settings):
    settings.DERIVATIVE_SIZES = [100, 200]
    with pytest.raises(InvalidRequest, match="100, 200"):
        parse("w=64")
    assert parse("w=200")[0].width == 200


# --- rendering -----------------------------------------------------------------------------------


def test_contain_fits_the_box_and_never_upscales():
    source = encode(Image.new("RGB", (400, 200), "red"), "PNG")
    assert made(source, spec(64)).size == (64, 32)
    assert made(source, spec(None, 64)).size == (128, 64)
    assert made(source, spec(64, 64)).size == (64, 32)
    assert made(encode(Image.new("RGB", (40, 20)), "PNG"), spec(256)).size == (40, 20)


def test_cover_fills_the_box_exactly():
    source = encode(Image.new("RGB", (400, 200), "red"), "PNG")
    assert made(source, spec(64, 64, "cover")).size == (64, 64)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
def test_output_formats(fmt):
    out = made(encode(Image.new("RGB", (300, 300), "green"), "PNG"), spec(128, fmt=fmt, quality=80))
    assert out.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}[fmt]


def oriented(orientation: int) -> bytes:
    """40x20, red with a blue top-left corner, stored so that `orientation` displays it upright."""
    upright = Image.new("RGB", (40, 20), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 0, 10, 10))
    inverse = {
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_90],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }
    stored = upright
    for step in inverse.get(orientation, []):
        stored = stored.transpose(step)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "PNG", exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_eight_exif_orientations_come_out_upright(orientation):
    out = made(oriented(orientation), spec(40)).convert("RGB")
    assert out.size == (40, 20)
    assert out.getpixel((2, 2)) == (0, 0, 255)
    assert out.getpixel((37, 17)) == (255, 0, 0)


def test_jpeg_orientation_with_dct_scaling():
    upright = Image.new("RGB", (800, 400), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes(), quality=95)
    out = made(data, spec(128)).convert("RGB")
    assert out.size == (128, 64)
    r, _g, b = out.getpixel((5, 5))
    assert b > 200 and r < 60


def test_metadata_is_stripped():
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 0.0)}  # GPS
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret <html>")
    info.add_text("XML:com.adobe.xmp", "<x:xmpmeta>private</x:xmpmeta>")
    sources = [
        encode(Image.new("RGB", (200, 100), "red"), "JPEG", exif=exif.tobytes(), icc_profile=srgb_bytes()),
        encode(Image.new("RGB", (200, 100), "red"), "PNG", pnginfo=info, exif=exif.tobytes()),
    ]
    for source in sources:
        for fmt in ("jpeg", "png", "webp", "avif"):
            data = render(io.BytesIO(source), spec(64, fmt=fmt, quality=80), ALLOWED)
            out = Image.open(io.BytesIO(data))
            assert not out.getexif(), fmt
            assert "icc_profile" not in out.info
            assert b"CameraMaker" not in data and b"secret" not in data and b"xmpmeta" not in data


def srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_an_embedded_profile_is_converted_to_srgb():
    """A profile whose primaries differ from sRGB's must change the pixels: here an sRGB profile
    with its red and green colorants swapped, so stored (255,0,0) means green."""
    profile = bytearray(srgb_bytes())
    count = struct.unpack(">I", profile[128:132])[0]
    tags = {}
    for i in range(count):
        sig, offset, size = struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i])
        tags[sig] = (132 + 12 * i, offset, size)
    r_entry, g_entry = tags[b"rXYZ"][0], tags[b"gXYZ"][0]
    profile[r_entry + 4 : r_entry + 12], profile[g_entry + 4 : g_entry + 12] = (
        profile[g_entry + 4 : g_entry + 12],
        profile[r_entry + 4 : r_entry + 12],
    )
    data = encode(Image.new("RGB", (64, 64), (255, 0, 0)), "PNG", icc_profile=bytes(profile))
    r, g, _b = made(data, spec(32)).convert("RGB").getpixel((5, 5))
    assert g > 200 and r < 80


def test_cmyk_jpegs_come_out_right():
    cmyk_red = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    out = made(encode(cmyk_red, "JPEG", quality=95), spec(32, fmt="png"))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(("fmt", "keeps"), [("png", True), ("webp", True), ("avif", True), ("jpeg", False)])
def test_transparency_is_kept_where_the_format_allows(fmt, keeps):
    source = Image.new("RGBA", (100, 100), (255, 0, 0, 0))
    source.paste((0, 0, 255, 255), (50, 0, 100, 100))
    out = made(encode(source, "PNG"), spec(64, fmt=fmt, quality=90))
    if keeps:
        assert out.mode == "RGBA"
        assert out.getpixel((5, 5))[3] < 10
    else:
        assert out.mode == "RGB"
        assert all(v > 240 for v in out.getpixel((5, 5)))  # flattened onto white


def test_palette_transparency_is_kept():
    gif = Image.new("P", (30, 30), 0)
    gif.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    out = made(encode(gif, "GIF", transparency=0), spec(None))
    assert out.mode == "RGBA" and out.getpixel((3, 3))[3] == 0


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = made(data, spec(32)).convert("RGB")
    r, _g, b = out.getpixel((5, 5))
    assert r > 200 and b < 60
    assert getattr(Image.open(io.BytesIO(render(io.BytesIO(data), spec(32), ALLOWED))), "n_frames", 1) == 1


def test_16_bit_grey_is_scaled_not_clipped():
    grey = Image.new("I;16", (40, 40), 32768)
    out = made(encode(grey, "PNG"), spec(32))
    assert out.mode == "L"
    assert 120 <= out.getpixel((5, 5)) <= 136


def test_broken_or_oversized_originals_are_422(settings):
    good = encode(Image.new("RGB", (100, 100), "red"), "JPEG")
    with pytest.raises(UnprocessableImage):
        render(io.BytesIO(good[: len(good) // 2]), spec(64), ALLOWED)
    settings.MAX_IMAGE_PIXELS = 5000
    with pytest.raises(UnprocessableImage, match="pixels"):
        render(io.BytesIO(good), spec(64), ALLOWED)


def test_the_time_limit_refuses_cleanly(settings):
    settings.DERIVATIVE_TIMEOUT = 0
    with pytest.raises(UnprocessableImage) as caught:
        render(io.BytesIO(encode(Image.new("RGB", (100, 100)), "PNG")), spec(64), ALLOWED)
    assert caught.value.get_codes() == "derivative_timeout"


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_pixel_bomb_is_refused_from_its_header():
    with pytest.raises(UnprocessableImage, match="pixels"):
        render(io.BytesIO(png_header_only(60_000, 60_000)), spec(64), ALLOWED)


# --- making and keeping them, in both storage modes ----------------------------------------------


def test_a_derivative_is_made_once_and_kept_in_the_image_storage(store, client, monkeypatch):
    record = stored_image(client, encode(Image.new("RGB", (300, 200), "red"), "JPEG"))
    calls = []
    real = derivatives._make
    monkeypatch.setattr(derivatives, "_make", lambda *a: calls.append(1) or real(*a))
    wanted = spec(128, fmt="webp", quality=80)
    name = derivatives.ensure(record, wanted)
    assert derivatives.ensure(record, wanted) == name == wanted.name(record.sha256)
    assert len(calls) == 1
    assert name in store.blob_names()
    with store.storage.open(name) as made_file:
        assert Image.open(made_file).size == (128, 85)


@pytest.mark.django_db(transaction=True)
def test_identical_requests_at_once_make_it_once(store, client, monkeypatch):
    record = stored_image(client, encode(Image.new("RGB", (600, 400), "blue"), "PNG"))
    calls = []
    real = derivatives._make

    def slow_render(*args):
        calls.append(1)
        time.sleep(0.3)  # long enough for every thread to arrive while it is being made
        return real(*args)

    monkeypatch.setattr(derivatives, "_make", slow_render)
    wanted = spec(64, fmt="png")
    with ThreadPoolExecutor(6) as pool:
        names = list(pool.map(lambda _: derivatives.ensure(record, wanted), range(6)))
    assert set(names) == {wanted.name(record.sha256)}
    assert len(calls) == 1
    assert store.blob_names().count(wanted.name(record.sha256)) == 1


def test_derivatives_go_with_the_last_record_of_their_original(store, client):
    data = encode(Image.new("RGB", (300, 200), "red"), "JPEG")
    first = stored_image(client, data, "a")
    second = stored_image(client, data, "b")
    other = stored_image(client, encode(Image.new("RGB", (300, 200), "green"), "JPEG"), "c")
    for record in (first, other):
        derivatives.ensure(record, spec(64))
        derivatives.ensure(record, spec(128, fmt="webp", quality=80))
    services.delete_image(first.image_id)
    assert len([n for n in store.blob_names() if n.startswith(first.sha256)]) == 3  # still needed by b
    services.delete_image(second.image_id)
    assert not [n for n in store.blob_names() if n.startswith(first.sha256)]
    assert len([n for n in store.blob_names() if n.startswith(other.sha256)]) == 3


def photo_like(size: tuple[int, int]) -> Image.Image:
    """Colourful detail, so that a difference between two renderings shows."""
    return Image.effect_mandelbrot(size, (-2.2, -1.2, 0.8, 1.2), 64).convert("RGB").filter(ImageFilter.DETAIL)


def sideways_jpeg() -> bytes:
    """2560x1280 upright (a blue top-left square), stored turned, with EXIF orientation 6."""
    upright = photo_like((2560, 1280))
    upright.paste((0, 0, 255), (0, 0, 320, 320))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes(), quality=90)


def test_a_large_jpeg_keeps_its_upload_decode_as_an_upright_base(store, client):
    record = stored_image(client, sideways_jpeg())
    with store.storage.open(derivatives.base_name(record.sha256)) as made_file:
        base = Image.open(made_file)
        base.load()
    assert base.format == "JPEG" and base.size == (640, 320)  # 1/4: the smallest scale >= 640 px
    assert not base.getexif() and "icc_profile" not in base.info
    r, _g, b = base.getpixel((5, 5))
    assert b > 200 and r < 60


@pytest.mark.parametrize(
    "data",
    [encode(photo_like((1270, 800)), "JPEG"), encode(photo_like((2600, 1300)), "PNG")],
    ids=["jpeg-under-1280px", "png"],
)
def test_small_jpegs_and_other_formats_get_no_base(store, client, data):
    record = stored_image(client, data)
    assert [n for n in store.blob_names() if n.startswith(record.sha256)] == [record.sha256]


class ReadTheOriginal(Exception):
    pass


def test_derivatives_that_only_shrink_the_base_never_read_the_original(store, client, monkeypatch):
    record = stored_image(client, sideways_jpeg())
    real_open = store.storage.open

    def open_all_but_the_original(name: str, mode: str = "rb"):
        if name == record.sha256:
            raise ReadTheOriginal
        return real_open(name, mode)

    monkeypatch.setattr(store.storage, "open", open_all_but_the_original)
    name = derivatives.ensure(record, spec(256, fmt="webp", quality=80))
    with store.storage.open(name) as made_file:
        out = Image.open(made_file).convert("RGB")
    assert out.size == (256, 128)
    r, _g, b = out.getpixel((5, 5))
    assert b > 200 and r < 60
    with pytest.raises(ReadTheOriginal):  # larger than the base: made from the original
        derivatives.ensure(record, spec(1024))


def test_a_derivative_from_the_base_matches_one_from_the_original(store, client):
    data = sideways_jpeg()
    record = stored_image(client, data)
    for wanted in (spec(256), spec(512), spec(256, 256, fit="cover"), spec(None, 128)):
        with store.storage.open(derivatives.ensure(record, wanted)) as made_file:
            from_base = Image.open(made_file).convert("RGB")
        direct = made(data, wanted).convert("RGB")
        assert from_base.size == direct.size, wanted
        difference = ImageStat.Stat(ImageChops.difference(from_base, direct)).mean
        assert max(difference) < 4, (wanted, difference)
    big = derivatives.ensure(record, spec(1024))
    with store.storage.open(big) as made_file:
        assert Image.open(made_file).size == (1024, 512)


def test_an_upload_whose_base_cannot_be_stored_still_succeeds(store, client, monkeypatch):
    real_save = type(store.storage).save

    def disk_full_for_bases(self, name, content, max_length=None):
        if name.endswith("_base.jpg"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, name, content, max_length)

    monkeypatch.setattr(type(store.storage), "save", disk_full_for_bases)
    data = sideways_jpeg()
    response = upload(client, data)
    assert response.status_code == 201, response.content
    record = get_backend().records.get(response.json()["image_id"])
    assert [n for n in store.blob_names() if n.startswith(record.sha256)] == [record.sha256]
    monkeypatch.undo()
    with store.storage.open(derivatives.ensure(record, spec(256))) as made_file:
        assert Image.open(made_file).size == (256, 128)


# --- through the API -----------------------------------------------------------------------------


def test_a_derivative_is_served_like_an_original(store, client):
    meta = upload(client, encode(Image.new("RGB", (600, 300), "red"), "JPEG", quality=90)).json()
    url = f"/images/{meta['image_id']}/content?w=128&format=webp"
    first = client.get(url)
    assert first.status_code == 200
    data = body(first)
    assert Image.open(io.BytesIO(data)).size == (128, 64)
    assert first["Content-Type"] == "image/webp"
    assert first["Content-Length"] == str(len(data))
    assert first["ETag"] == f'"{meta["sha256"]}_128x0_contain_q80.webp"'
    assert first["Cache-Control"] == "public, max-age=31536000, immutable"
    assert first["Content-Disposition"].startswith('inline; filename="a.webp"')
    assert "Vary" not in first or "accept" not in first["Vary"].lower()
    assert body(client.get(url)) == data
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    ranged = client.get(url, HTTP_RANGE="bytes=0-9")
    assert ranged.status_code == 206 and body(ranged) == data[:10]
    head = client.head(url)
    assert head["Content-Length"] == str(len(data)) and head.content == b""


def test_a_cached_derivative_is_served_without_touching_storage(store, client, monkeypatch):
    """Like an original: once made and read, this worker answers it from memory."""
    meta = upload(client, encode(Image.new("RGB", (600, 300), "red"), "JPEG", quality=90)).json()
    url = f"/images/{meta['image_id']}/content?w=64&format=webp"
    first = client.get(url)
    assert first.status_code == 200

    def unreachable(*args, **kwargs):
        raise AssertionError("storage was called")

    for method in ("exists", "size", "open", "save"):
        monkeypatch.setattr(type(store.storage), method, unreachable)
    again = client.get(url)
    assert again.status_code == 200 and body(again) == body(first)
    assert again["ETag"] == first["ETag"]


def test_format_auto_negotiates_and_varies_on_accept(store, client):
    meta = upload(client, encode(Image.new("RGB", (600, 300), "red"), "PNG")).json()
    url = "/image/m1?preset=thumb"
    avif = client.get(url, HTTP_ACCEPT="image/avif,image/webp,*/*")
    webp = client.get(url, HTTP_ACCEPT="image/webp,*/*")
    fallback = client.get(url, HTTP_ACCEPT="*/*")
    assert [r["Content-Type"] for r in (avif, webp, fallback)] == ["image/avif", "image/webp", "image/png"]
    for response in (avif, webp, fallback):
        assert "accept" in response["Vary"].lower()
        assert response["Cache-Control"] == "public, max-age=60"
    assert Image.open(io.BytesIO(body(fallback))).size == (256, 128)
    assert meta["sha256"] in avif["ETag"]


def test_bad_derivative_requests_are_400_and_store_nothing(store, client):
    meta = upload(client, encode(Image.new("RGB", (60, 30), "red"), "PNG")).json()
    before = store.blob_names()
    response = client.get(f"/images/{meta['image_id']}/content?w=300")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_size"
    assert "64, 128, 256, 512, 1024, 2048" in response.json()["detail"]
    for query in ("fit=squash&w=64", "format=tiff", "q=500&w=64", "preset=nope"):
        assert client.get(f"/images/{meta['image_id']}/content?{query}").status_code == 400
    assert store.blob_names() == before


def test_an_original_over_todays_limits_is_refused_cleanly(store, client, settings):
    meta = upload(client, encode(Image.new("RGB", (300, 300), "red"), "PNG")).json()
    settings.MAX_IMAGE_PIXELS = 1000
    response = client.get(f"/images/{meta['image_id']}/content?w=64")
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_pixels"
    assert body(client.get(f"/images/{meta['image_id']}/content")) != b""  # the original still serves


def test_a_make_is_stopped_at_its_memory_and_its_deadline(settings):
    """Each make runs in a child that an allocation past DERIVATIVE_MEMORY_MB stops at once, and a
    SIGKILL at DERIVATIVE_TIMEOUT, whatever C call it is in."""
    big = encode(Image.new("RGBA", (7000, 7000), "teal"), "PNG")  # 187 MiB decoded
    settings.DERIVATIVE_MEMORY_MB, settings.DERIVATIVE_TIMEOUT = 64, 30
    started = time.monotonic()
    with pytest.raises(UnprocessableImage) as refused:
        render(io.BytesIO(big), spec(64), ALLOWED)
    assert refused.value.get_codes() == "derivative_too_large" and time.monotonic() - started < 5
    settings.DERIVATIVE_MEMORY_MB, settings.DERIVATIVE_TIMEOUT = 1024, 0.3
    started = time.monotonic()
    with pytest.raises(UnprocessableImage) as late:
        render(io.BytesIO(big), spec(64), ALLOWED)
    assert late.value.get_codes() == "derivative_timeout" and time.monotonic() - started < 2
