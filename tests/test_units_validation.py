"""Unit tests of images/validation.py: what an upload must be, checked without a request or a store.

The API tests reach these functions only through Django's multipart parser, which cleans filenames
first and sends no image exactly at a limit; these call them directly (issue 21's surviving mutants).
"""

import io

import pytest
from PIL import Image

from images.errors import InvalidRequest, UnprocessableImage, UnsupportedImageType
from images.validation import (
    MAX_FILENAME,
    dct_reduction,
    inspect_image,
    plain_integer,
    sanitize_filename,
    sniff_format,
    validate_model_id,
)
from tests.samples import image_bytes, noise_jpeg, png_with_header_size, rotated_jpeg


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, ""),
        ("", ""),
        ("dir/sub/a.png", "a.png"),
        ("dir\\sub\\a.png", "a.png"),
        ("a/", ""),
        ("bell\x07.png", "bell.png"),  # Cc
        ("zero\u200bwidth.png", "zerowidth.png"),  # Cf
        ("line\u2028sep\u2029.png", "linesep.png"),  # Zl, Zp
        ("  spaced.png  ", "spaced.png"),
        ("..hidden.png", "hidden.png"),
        (" .x.png", "x.png"),
        ("..Xray.png", "Xray.png"),
        ("a~b c.png", "a~b c.png"),
    ],
)
def test_sanitize_filename_keeps_the_harmless_part(sent, kept):
    assert sanitize_filename(sent) == kept


def test_a_name_of_exactly_the_limit_is_kept_whole():
    name = "x" * (MAX_FILENAME - 4) + ".png"
    assert sanitize_filename(name) == name


def test_a_name_of_exactly_the_limit_is_not_shortened():
    name = "x" * (MAX_FILENAME - 25) + "." + "y" * 24  # shortening would cap its extension
    assert sanitize_filename(name) == name


def test_shortening_keeps_the_last_extension_only():
    kept = sanitize_filename("photo.v2." + "x" * 300 + ".png")
    assert kept.startswith("photo.v2.xxx")
    assert kept.endswith("x.png")
    assert len(kept) == MAX_FILENAME


def test_a_long_name_is_shortened_to_the_limit_keeping_its_extension():
    kept = sanitize_filename("x" * MAX_FILENAME + ".jpeg")
    assert kept == "x" * (MAX_FILENAME - 5) + ".jpeg"
    assert len(kept) == MAX_FILENAME


def test_a_long_extension_is_capped_at_16_characters():
    ext = "abcdefghijklmnopqrstuvwxyz"
    kept = sanitize_filename("x" * 300 + "." + ext)
    assert kept == "x" * (MAX_FILENAME - 17) + "." + ext[:16]
    assert len(kept) == MAX_FILENAME


def test_a_long_name_without_a_dot_is_cut_and_gets_no_extension():
    kept = sanitize_filename("x" * 300)
    assert "." not in kept
    assert 0 < len(kept) <= MAX_FILENAME
    assert kept == "x" * len(kept)


def test_shortening_drops_the_spaces_left_before_the_extension():
    kept = sanitize_filename("x" * 250 + " " * 20 + ".png")
    assert kept == "x" * 250 + ".png"


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("42", 42), ("", None), ("-1", None), ("²", None)])
def test_plain_integer_takes_ascii_digits_only(raw, value):
    assert plain_integer(raw) == value


@pytest.mark.parametrize("value", ["a", "A-z.0_9:-", "x" * 128])
def test_model_ids_that_are_valid(value):
    assert validate_model_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "é", None, 7])
def test_model_ids_that_are_refused(value):
    with pytest.raises(InvalidRequest) as caught:
        validate_model_id(value)
    assert caught.value.get_codes() == "invalid_model_id"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_each_allowed_format_is_sniffed_and_described(fmt):
    info = inspect_image(io.BytesIO(image_bytes(fmt, (40, 30))))
    assert (info.format, info.width, info.height) == (fmt, 40, 30)
    assert info.content_type == Image.MIME[fmt]
    assert info.extension == ("jpg" if fmt == "JPEG" else fmt.lower())


def test_only_the_configured_formats_are_sniffed(settings):
    settings.ALLOWED_IMAGE_FORMATS = ["PNG"]
    assert sniff_format(image_bytes("PNG")[:64]) == "PNG"
    with pytest.raises(UnsupportedImageType) as caught:
        sniff_format(image_bytes("JPEG")[:64])
    assert "(allowed: png)" in str(caught.value.detail)
    with pytest.raises(UnsupportedImageType):
        sniff_format(b"GIF89a but not allowed")
    settings.ALLOWED_IMAGE_FORMATS = ["PNG", "GIF"]
    with pytest.raises(UnsupportedImageType) as caught:
        sniff_format(b"not an image")
    assert "(allowed: png, gif)" in str(caught.value.detail)


def test_a_configured_format_that_pillow_lacks_is_skipped(settings):
    settings.ALLOWED_IMAGE_FORMATS = ["NOSUCHFORMAT", "PNG"]
    assert sniff_format(image_bytes("PNG")[:64]) == "PNG"
    with pytest.raises(UnsupportedImageType):
        sniff_format(image_bytes("JPEG")[:64])


def refusal(data: bytes) -> UnprocessableImage:
    with pytest.raises(UnprocessableImage) as caught:
        inspect_image(io.BytesIO(data))
    return caught.value


# Each limit from both sides: exactly at it is accepted, one past it is refused before decoding.
@pytest.mark.parametrize(
    ("limits", "accepted"),
    [
        ({"MAX_IMAGE_WIDTH": 64}, True),
        ({"MAX_IMAGE_WIDTH": 63}, False),
        ({"MAX_IMAGE_HEIGHT": 48}, True),
        ({"MAX_IMAGE_HEIGHT": 47}, False),
        ({"MAX_IMAGE_PIXELS": 64 * 48}, True),
        ({"MAX_IMAGE_PIXELS": 64 * 48 - 1}, False),
    ],
)
def test_each_limit_holds_from_both_sides(settings, limits, accepted):
    for name, value in limits.items():
        setattr(settings, name, value)
    data = image_bytes("JPEG", (64, 48))
    if accepted:
        assert (inspect_image(io.BytesIO(data)).width, inspect_image(io.BytesIO(data)).height) == (64, 48)
        return
    error = refusal(data)
    assert error.get_codes() == "too_many_pixels"
    assert "64x48" in str(error.detail)


def test_the_messages_name_the_limits(settings):
    settings.MAX_IMAGE_WIDTH, settings.MAX_IMAGE_HEIGHT = 63, 40
    assert "at most 63 wide and 40 high" in str(refusal(image_bytes("JPEG", (64, 48))).detail)
    settings.MAX_IMAGE_WIDTH, settings.MAX_IMAGE_HEIGHT, settings.MAX_IMAGE_PIXELS = 100, 100, 3000
    assert "at most 3000 pixels" in str(refusal(image_bytes("JPEG", (64, 48))).detail)


def test_a_header_past_pillows_bomb_limit_is_too_many_pixels_not_corrupt(settings):
    settings.MAX_IMAGE_WIDTH = settings.MAX_IMAGE_HEIGHT = 10**6
    settings.MAX_IMAGE_PIXELS = 10**12
    assert refusal(png_with_header_size(100_000, 100_000)).get_codes() == "too_many_pixels"


def test_a_truncated_file_is_corrupt_and_named_by_its_format():
    error = refusal(noise_jpeg((64, 64))[:-400])
    assert error.get_codes() == "corrupt_image"
    assert "looks like JPEG" in str(error.detail)


def test_a_quarter_turned_jpeg_is_described_as_shown():
    info = inspect_image(io.BytesIO(rotated_jpeg()))
    assert (info.width, info.height) == (30, 60)


def test_a_jpeg_keeps_its_reduced_pixels_as_the_preview_only_when_asked():
    data = noise_jpeg((512, 256))
    assert inspect_image(io.BytesIO(data)).preview is None
    preview = inspect_image(io.BytesIO(data), keep_side=128).preview
    assert preview is not None
    assert preview.size == (128, 64)  # the largest DCT scaling (4) keeping the long side >= 128
    assert inspect_image(io.BytesIO(data), keep_side=512).preview is None  # no reduction: nothing kept


@pytest.mark.parametrize("size", [(512, 4), (4, 512)])
def test_a_thin_jpegs_preview_keeps_a_side_of_one_pixel(size):
    # the short side scales to 1 pixel: the draft asks for no more, so the reduction stays 4
    preview = inspect_image(io.BytesIO(noise_jpeg(size)), keep_side=128).preview
    assert preview.size == (size[0] // 4, size[1] // 4)


@pytest.mark.parametrize(
    ("side", "keep", "reduction"), [(800, 100, 8), (799, 100, 4), (400, 100, 4), (399, 100, 2), (199, 100, 1)]
)
def test_dct_reduction_is_the_largest_that_keeps_the_side(side, keep, reduction):
    assert dct_reduction(side, keep) == reduction
