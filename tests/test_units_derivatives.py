"""Unit tests of images/derivatives.py's parameters: each bound from both sides, the rounding of
`q`, what a name holds, and the messages of refusals (test_derivatives.py makes the images)."""

import pytest
from django.http import QueryDict

from images.derivatives import Spec, output_format, parse_spec, wanted
from images.errors import InvalidRequest


def parse(query: str, accept: str = "", original: str = "jpeg") -> tuple[Spec, bool]:
    return parse_spec(QueryDict(query), accept, original)


def refusal(query: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(query)
    return caught.value


@pytest.mark.parametrize(
    ("q", "kept"),
    [(1, 20), (29, 20), (30, 40), (31, 40), (65, 70), (82, 80), (83, 85), (87, 85), (88, 90), (100, 90)],
)
def test_q_is_rounded_to_the_nearest_level_and_up_on_a_tie(q, kept):
    assert parse(f"w=64&q={q}")[0].quality == kept


@pytest.mark.parametrize(("fmt", "quality"), [("jpeg", 85), ("webp", 80), ("avif", 60), ("png", 100)])
def test_each_format_has_its_default_quality_and_png_ignores_q(fmt, quality):
    assert parse(f"w=64&format={fmt}")[0].quality == quality
    assert parse("w=64&format=png&q=20")[0].quality == 100


@pytest.mark.parametrize(
    ("query", "spec"),
    [
        ("h=128", Spec(None, 128, "contain", "jpeg", 85)),
        ("format=webp", Spec(None, None, "contain", "webp", 80)),  # full size
        ("fit=contain&format=png", Spec(None, None, "contain", "png", 100)),
        ("w=64&h=64&fit=cover", Spec(64, 64, "cover", "jpeg", 85)),
        ("preset=thumb&fit=cover&format=jpeg", Spec(256, 256, "cover", "jpeg", 85)),
        ("w=2048", Spec(2048, None, "contain", "jpeg", 85)),
        ("w=64&h=2048", Spec(64, 2048, "contain", "jpeg", 85)),
    ],
)
def test_parameters_that_are_accepted(query, spec):
    assert parse(query) == (spec, False)


def test_a_preset_negotiates_its_format_unless_one_is_given():
    assert parse("preset=card", "image/avif")[0].format == "avif"
    assert parse("preset=card", "image/avif") == (Spec(640, 640, "contain", "avif", 60), True)
    assert parse("preset=card&format=png", "image/avif") == (Spec(640, 640, "contain", "png", 100), False)


@pytest.mark.parametrize(
    ("query", "code", "detail"),
    [
        ("w=32", "invalid_size", "w must be one of 64, 128, 256, 512, 1024, 2048 (or use a preset)."),
        ("h=4096", "invalid_size", "h must be one of 64, 128, 256, 512, 1024, 2048 (or use a preset)."),
        ("preset=thumb&h=64", "invalid_size", "Use either a preset or w/h, not both."),
        ("preset=x", "invalid_preset", "preset must be one of thumb, card, full."),
        ("fit=fill&w=64", "invalid_fit", "fit must be contain or cover."),
        ("fit=cover&w=64", "invalid_fit", "fit=cover fills a box: give both w and h (or a preset)."),
        ("fit=cover&h=64", "invalid_fit", "fit=cover fills a box: give both w and h (or a preset)."),
        ("w=64&format=gif", "invalid_format", "format must be jpeg, png, webp, avif or auto."),
        ("w=64&q=", "invalid_quality", "q must be an integer from 1 to 100."),
        ("w=64&q=-5", "invalid_quality", "q must be an integer from 1 to 100."),
    ],
)
def test_parameters_that_are_refused(query, code, detail):
    error = refusal(query)
    assert (error.get_codes(), str(error.detail)) == (code, detail)


def test_a_name_holds_every_parameter():
    assert Spec(256, None, "contain", "webp", 80).name("abc") == "abc_256x0_contain_q80.webp"
    assert Spec(None, 64, "cover", "png", 100).name("abc") == "abc_0x64_cover_q100.png"
    assert Spec(1, 2, "contain", "avif", 60).content_type == "image/avif"


@pytest.mark.parametrize("param", ["w", "h", "fit", "format", "q", "preset"])
def test_any_derivative_parameter_asks_for_one(param):
    assert wanted(QueryDict(f"{param}=1"))
    assert not wanted(QueryDict("other=1"))


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [("image/jpeg", "jpeg"), ("image/png", "png"), ("image/webp", "webp"), ("image/gif", "png")],
)
def test_the_originals_format_as_a_derivative_format(content_type, fmt):
    assert output_format(content_type) == fmt
