"""The model catalog (gallery/catalog.py): the defaults of shared/API.md, their size rules at the
boundaries, and the operator's overrides through QWEN_CATALOG_FILE."""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured

from gallery.catalog import DEFAULT_MODELS, Size, build_catalog, catalog

API_PROMPT_MAX = {
    "wan2.6-t2i": 2100, "wan2.5-t2i-preview": 2000, "wan2.2-t2i-flash": 500, "wan2.2-t2i-plus": 500,
    "wanx2.1-t2i-turbo": 500, "wanx2.1-t2i-plus": 500, "wanx2.0-t2i-turbo": 500,
    "qwen-image-plus": 800, "qwen-image-max": 800,
}
AREA_MODEL = "wan2.6-t2i"
SIDES_MODEL = "wan2.2-t2i-flash"


def allows(model: str, text: str) -> bool:
    return build_catalog()[model].size_error(Size.parse(text)) is None


@pytest.fixture
def fresh_catalog():
    catalog.cache_clear()
    yield catalog
    catalog.cache_clear()


# defaults


@pytest.mark.parametrize("name, prompt_max", API_PROMPT_MAX.items())
def test_every_model_of_the_api_is_offered_with_its_prompt_max(name, prompt_max):
    assert build_catalog()[name].prompt_max == prompt_max


@pytest.mark.parametrize("spec", DEFAULT_MODELS, ids=lambda spec: spec.name)
def test_every_preset_is_valid_under_its_own_rule(spec):
    assert [str(size) for size in spec.presets if spec.size_error(size)] == []


@pytest.mark.parametrize("name", ["wan2.6-t2i", "wan2.5-t2i-preview"])
def test_wan_2_5_and_2_6_use_the_area_rule(name):
    assert build_catalog()[name].rule == "area"


# the area rule


@pytest.mark.parametrize("size", ["1280*1280", "1440*1440", "768*2700", "2700*768", "2560*640", "640*2560",
                                  "2880*720"])
def test_area_rule_allows_sizes_within_its_bounds(size):
    assert allows(AREA_MODEL, size)


@pytest.mark.parametrize("size", ["1279*1280", "1441*1440", "1024*1024"])
def test_area_rule_refuses_a_pixel_count_outside_its_bounds(size):
    assert not allows(AREA_MODEL, size)


@pytest.mark.parametrize("size", ["2600*640", "640*2600"])
def test_area_rule_refuses_a_shape_beyond_4_to_1(size):
    assert not allows(AREA_MODEL, size)


def test_area_rule_refusal_says_why_in_words():
    error = build_catalog()[AREA_MODEL].size_error(Size.parse("1024*1024"))

    assert "squares from 1280×1280 to 1440×1440" in error


# the sides rule


@pytest.mark.parametrize("size", ["512*512", "1440*1440", "512*1440", "1440*512"])
def test_sides_rule_allows_its_edges(size):
    assert allows(SIDES_MODEL, size)


@pytest.mark.parametrize("size", ["511*1024", "1024*511", "1441*1024", "1024*1441"])
def test_sides_rule_refuses_just_past_its_edges(size):
    assert not allows(SIDES_MODEL, size)


# calls_for


def test_qwen_image_makes_one_image_per_call():
    assert build_catalog()["qwen-image-plus"].calls_for(3) == [1, 1, 1]


def test_wan_makes_several_images_in_one_call():
    assert build_catalog()[SIDES_MODEL].calls_for(3) == [3]


def test_calls_split_by_per_call_with_a_remainder():
    spec = build_catalog({"models": {SIDES_MODEL: {"per_call": 2}}})[SIDES_MODEL]

    assert spec.calls_for(3) == [2, 1]


# Size.parse


@pytest.mark.parametrize("text", ["1024*1024", "1024x1024", "1024×1024", "1024X1024", " 1024 * 1024 "])
def test_size_parse_accepts_the_usual_spellings(text):
    assert Size.parse(text) == Size(1024, 1024)


def test_size_prints_with_a_star():
    assert str(Size.parse("1280x720")) == "1280*720"


@pytest.mark.parametrize("text", ["", "1024", "1024*", "*1024", "big*small", "1024*1024*2", "-1*5",
                                  "10.5*20", "1024,1024", "1024*²"])
def test_size_parse_refuses_junk(text):
    with pytest.raises(ValueError):
        Size.parse(text)


# build_catalog overrides


def test_override_changes_a_prompt_max():
    models = build_catalog({"models": {"qwen-image-plus": {"prompt_max": 1000}}})

    assert models["qwen-image-plus"].prompt_max == 1000
    assert models["qwen-image-plus"].per_call == 1


def test_override_adds_a_model():
    models = build_catalog({"models": {"my-new-model": {"label": "New", "rule": "sides",
                                                        "presets": ["1024*1024"]}}})

    assert models["my-new-model"].label == "New"
    assert models["my-new-model"].presets == (Size(1024, 1024),)


def test_override_hides_a_model():
    models = build_catalog({"hidden": ["wanx2.0-t2i-turbo"]})

    assert "wanx2.0-t2i-turbo" not in models
    assert len(models) == len(DEFAULT_MODELS) - 1


def test_preset_that_breaks_its_own_rule_is_refused():
    with pytest.raises(ImproperlyConfigured, match="breaks its own rule"):
        build_catalog({"models": {AREA_MODEL: {"presets": ["1024*1024"]}}})


def test_unknown_field_is_refused():
    with pytest.raises(ImproperlyConfigured, match="unknown field 'promptmax'"):
        build_catalog({"models": {SIDES_MODEL: {"promptmax": 900}}})


@pytest.mark.parametrize("entry", [{"prompt_max": "800"}, {"prompt_max": 800.0}, {"prompt_max": True},
                                   {"per_call": 1.5}, {"recommended": "yes"}, {"label": 7},
                                   {"presets": ["big"]}, {"presets": "1024*1024"}],
                         ids=["text", "float", "bool", "per-call-float", "recommended-text", "label-number",
                              "preset-junk", "presets-string"])
def test_wrong_type_is_refused(entry):
    with pytest.raises(ImproperlyConfigured):
        build_catalog({"models": {SIDES_MODEL: entry}})


def test_hiding_every_model_is_refused():
    with pytest.raises(ImproperlyConfigured):
        build_catalog({"hidden": [spec.name for spec in DEFAULT_MODELS]})


# QWEN_CATALOG_FILE


def test_catalog_file_is_honoured(settings, tmp_path, fresh_catalog):
    # given a file that raises one limit and hides one model
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {"qwen-image-plus": {"prompt_max": 1000}},
                                "hidden": ["wanx2.0-t2i-turbo"]}))
    settings.QWEN_CATALOG_FILE = str(path)

    # when
    models = fresh_catalog()

    # then
    assert models["qwen-image-plus"].prompt_max == 1000
    assert "wanx2.0-t2i-turbo" not in models


def test_catalog_without_a_file_is_the_defaults(settings, fresh_catalog):
    settings.QWEN_CATALOG_FILE = ""

    assert list(fresh_catalog()) == [spec.name for spec in DEFAULT_MODELS]


def test_catalog_file_that_is_not_json_is_refused_naming_the_setting(settings, tmp_path, fresh_catalog):
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    settings.QWEN_CATALOG_FILE = str(path)

    with pytest.raises(ImproperlyConfigured, match="QWEN_CATALOG_FILE"):
        fresh_catalog()


@pytest.mark.parametrize(("name", "price"), [
    ("wan2.6-t2i", "0.20"), ("qwen-image-plus", "0.20"), ("qwen-image-max", "0.50"), ("wan2.2-t2i-flash", None),
])
def test_prices_come_from_the_providers_list_and_unknown_ones_stay_unknown(name, price):
    from decimal import Decimal

    assert build_catalog()[name].price == (None if price is None else Decimal(price))


@pytest.mark.parametrize(("given", "expected"), [("0.25", "0.25"), (0.3, "0.3"), (None, None)])
def test_an_operator_sets_or_clears_a_price(given, expected):
    from decimal import Decimal

    spec = build_catalog({"models": {"wan2.6-t2i": {"price": given}}})["wan2.6-t2i"]
    assert spec.price == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize("price", ["cheap", "-1", "NaN", "Infinity", [1]])
def test_a_malformed_price_stops_start_up_naming_it(price):
    with pytest.raises(ImproperlyConfigured, match="wan2.6-t2i.price"):
        build_catalog({"models": {"wan2.6-t2i": {"price": price}}})


# an operator's size rule reaches the form


@pytest.fixture
def wider_wan(settings, tmp_path, fresh_catalog):
    """An operator's catalog that lets Wan 2.6 go smaller and larger but keeps its shapes within 1:2 to 2:1."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {AREA_MODEL: {
        "min_pixels": 1024 * 1024, "max_pixels": 1536 * 1536, "min_aspect": "1:2", "max_aspect": 2,
        "presets": ["1024*1024", "1536*1536", "1448*1086"]}}}))
    settings.QWEN_CATALOG_FILE = str(path)


def test_the_size_field_states_the_operators_bounds(wider_wan, client, alice):
    client.force_login(alice)

    html = client.get("/generate/sizes/", {"model": AREA_MODEL}).content.decode()

    assert ("Wan 2.6: 1,048,576 to 2,359,296 pixels in all (squares from 1024×1024 to 1536×1536), "
            "shapes from 1:2 to 2:1.") in html
    assert "1280×1280" not in html and "4:1" not in html


@pytest.mark.parametrize(("width", "height", "error"), [
    (1100, 1000, None),  # too small for the defaults
    (1500, 1500, None),  # too large for the defaults
    (1000, 1000, "squares from 1024×1024 to 1536×1536"),
    (2000, 900, "shapes from 1:2 to 2:1; 2000×900 is not"),  # 2.2:1, which the defaults allow
])
def test_the_form_judges_sizes_by_the_operators_bounds(wider_wan, width, height, error):
    from gallery.forms import GenerateForm

    form = GenerateForm({"prompt": "a kitten", "model": AREA_MODEL, "size": "custom", "width": width,
                         "height": height, "n": 1})

    assert form.is_valid() is (error is None)
    if error:
        assert error in " ".join(form.errors["size"])


@pytest.mark.parametrize(("entry", "message"), [
    ({"min_aspect": "wide"}, "min_aspect must be a number"), ({"min_aspect": "1:0"}, "min_aspect must be a number"),
    ({"min_aspect": 0}, "0 < min_aspect"), ({"min_pixels": 3_000_000}, "min_pixels <= max_pixels"),
    ({"min_side": 2000}, "min_side <= max_side"),
], ids=["aspect-text", "aspect-zero-height", "aspect-zero", "pixels-crossed", "sides-crossed"])
def test_bounds_that_make_no_sense_are_refused_naming_them(entry, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        build_catalog({"models": {AREA_MODEL: entry}})
