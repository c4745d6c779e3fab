"""Thumbnails: Pillow's `thumbnail` pixels, made with both cores when one is free.

Pillow lets go of the GIL while it scales and encodes, so the halves of one scaling can run on two
threads. A worker storing several images keeps both cores busy anyway; a single image (a designer
waiting on one result) is then ready in about half the time its longest step takes alone.
"""

import io
import math
from concurrent.futures import Executor

import PIL.Image

LANCZOS = PIL.Image.Resampling.LANCZOS
REDUCING_GAP = 2.0


def fitted(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """The size `Image.thumbnail((edge, edge))` gives an image of `size`: the aspect kept as closely
    as whole pixels allow, never larger than it was."""
    width, height = size
    if width <= edge and height <= edge:
        return size
    aspect = width / height
    x = y = edge
    if x / y >= aspect:
        x = _closest(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = _closest(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _closest(number: float, key) -> int:
    return max(min(math.floor(number), math.ceil(number), key=key), 1)


def scaled(picture: PIL.Image.Image, edge: int, helper: Executor) -> PIL.Image.Image:
    """`picture` fitted within edge×edge as `thumbnail(..., LANCZOS, reducing_gap=2.0)` does it: the top
    half is scaled on `helper` while this thread scales the bottom half. The pixels are thumbnail's, but
    for rounding where Pillow takes its two passes in the other order for a half (seen only when an
    image is less than twice the edge)."""
    size = fitted(picture.size, edge)
    if size == picture.size:
        return picture
    picture.load()  # here, once: an image file still to be decoded must not be loaded by both threads
    width, height = size
    # As Image.resize does with a reducing gap: first a box reduction by a whole factor, then LANCZOS
    # over the reduced image's region that stands for the whole original.
    factor = (int(picture.width / width / REDUCING_GAP) or 1, int(picture.height / height / REDUCING_GAP) or 1)
    source = (0.0, 0.0, picture.width / factor[0], picture.height / factor[1])
    if factor != (1, 1):
        picture = picture.reduce(factor)
    middle = height // 2
    if middle == 0:
        return picture.resize(size, LANCZOS, box=source)
    cut = middle * source[3] / height  # the source row where output row `middle` starts
    top = helper.submit(picture.resize, (width, middle), LANCZOS, box=(0.0, 0.0, source[2], cut))
    bottom = picture.resize((width, height - middle), LANCZOS, box=(0.0, cut, source[2], source[3]))
    whole = PIL.Image.new(picture.mode, size)
    whole.paste(top.result(), (0, 0))
    whole.paste(bottom, (0, middle))
    return whole


def encode_webp(picture: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=82, method=4)
    return buffer.getvalue()
