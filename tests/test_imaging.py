"""Thumbnails made on two threads are Pillow's thumbnails: the same size for any shape; for the sizes
the models make, pixels at most two levels apart and a few in a hundred of them off by one (rounding,
where Pillow takes its two passes in the other order for a half); for any shape, rounding on average."""

import io
from concurrent.futures import ThreadPoolExecutor

import PIL.Image
import PIL.ImageChops
import PIL.ImageStat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apisim.paint import paint
from gallery.catalog import AREA_PRESETS, QWEN_PRESETS, SIDE_PRESETS
from gallery.imaging import fitted, scaled

helper = ThreadPoolExecutor(max_workers=2)


def thumbnail(picture: PIL.Image.Image, edge: int) -> PIL.Image.Image:
    copy = picture.copy()
    copy.thumbnail((edge, edge), PIL.Image.Resampling.LANCZOS, reducing_gap=2.0)
    return copy


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 6000), height=st.integers(1, 6000), edge=st.sampled_from([256, 512]))
def test_the_size_is_thumbnails_for_any_shape(width, height, edge):
    picture = PIL.Image.new("1", (width, height))
    assert fitted((width, height), edge) == thumbnail(picture, edge).size


def model_sizes() -> list[tuple[int, int]]:
    return sorted({(preset.width, preset.height) for preset in (*AREA_PRESETS, *QWEN_PRESETS, *SIDE_PRESETS)})


@pytest.mark.parametrize("size", model_sizes())
def test_the_pixels_are_thumbnails_within_rounding_for_every_preset_size(size):
    picture = PIL.Image.open(io.BytesIO(paint("a teapot on a table", 7, *size))).convert("RGB")
    for edge in (512, 256):
        ours, theirs = scaled(picture, edge, helper), thumbnail(picture, edge)
        assert ours.size == theirs.size
        difference = PIL.ImageChops.difference(ours, theirs)
        assert max(high for _, high in difference.getextrema()) <= 2, f"{size} at {edge}"
        assert max(PIL.ImageStat.Stat(difference).mean) < 0.05, f"{size} at {edge}"


@pytest.mark.parametrize("size", [(742, 970), (531, 675), (600, 200), (512, 513), (3000, 40)])
def test_other_shapes_differ_by_rounding_at_most(size):
    picture = PIL.Image.effect_noise(size, 50).convert("RGB")
    ours, theirs = scaled(picture, 512, helper), thumbnail(picture, 512)
    assert ours.size == theirs.size
    difference = PIL.ImageChops.difference(ours, theirs).convert("L")
    assert PIL.ImageStat.Stat(difference).mean[0] < 0.5


def test_a_picture_within_the_edge_is_left_as_it_is():
    picture = PIL.Image.new("RGB", (300, 200), "teal")
    assert scaled(picture, 512, helper) is picture


def test_an_image_file_not_yet_decoded_is_scaled_whole():
    data = paint("a lighthouse at dusk", 3, 1328, 1328)
    expected = thumbnail(PIL.Image.open(io.BytesIO(data)), 512)
    for _ in range(20):  # both halves start at once; each must find the file decoded
        with PIL.Image.open(io.BytesIO(data)) as opened:
            assert PIL.ImageChops.difference(scaled(opened, 512, helper), expected).getbbox() is None
