"""Deterministic, pleasant placeholder pictures: gradient sky, soft glows and layered hills."""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random

from PIL import Image, ImageDraw, ImageFilter

_WORK_SIDE = 320  # longest side of the small canvas everything is drawn on before upscaling
PNG_COMPRESS_LEVEL = 1

RGB = tuple[int, int, int]


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return round(r * 255), round(g * 255), round(b * 255)


def _palette(rng: random.Random) -> dict[str, list[RGB]]:
    base = rng.random()
    spread = rng.choice((0.06, 0.09, 0.14, 0.5))  # analogous most of the time, sometimes complementary
    night = rng.random() < 0.2
    sky_v = (0.35, 0.5, 0.7) if night else (0.75, 0.9, 1.0)
    sky = [_hsv(base + spread * i, 0.35 + 0.15 * i + rng.uniform(-0.1, 0.1), sky_v[i]) for i in range(3)]
    glows = [_hsv(base + spread * 2 + rng.uniform(-0.08, 0.08), 0.25 + rng.random() * 0.3, 1.0)
             for _ in range(3)]
    hill_h = base + 0.5 + rng.uniform(-0.12, 0.12)
    hills = [_hsv(hill_h + 0.03 * i, 0.35 + 0.1 * i, (0.55 if not night else 0.35) - 0.13 * i)
             for i in range(3)]
    return {"sky": sky, "glows": glows, "hills": hills}


def _lerp(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _sky(size: tuple[int, int], stops: list[RGB]) -> Image.Image:
    segments = len(stops) - 1
    colors = []
    for y in range(256):
        t = y / 255 * segments
        i = min(int(t), segments - 1)
        colors.append(_lerp(stops[i], stops[i + 1], t - i))
    column = Image.new("RGB", (1, 256))
    column.putdata(colors)
    return column.resize(size, Image.Resampling.BILINEAR)


def _blend_shape(canvas: Image.Image, color: RGB, alpha: int, blur: float,
                 shape: list[tuple[float, float]] | tuple[float, float, float, float]) -> None:
    # Blur only the mask, so soft edges fade into the canvas instead of into black.
    mask = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask)
    if isinstance(shape, tuple):
        draw.ellipse(shape, fill=alpha)
    else:
        draw.polygon(shape, fill=alpha)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    canvas.paste(color, (0, 0, *canvas.size), mask)


def _glows(canvas: Image.Image, rng: random.Random, colors: list[RGB]) -> None:
    w, h = canvas.size
    for i in range(rng.randint(3, 6)):
        r = rng.uniform(0.06, 0.22) * max(w, h)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h * 0.65)
        _blend_shape(canvas, colors[i % len(colors)], rng.randint(70, 150), max(w, h) / 22,
                     (cx - r, cy - r, cx + r, cy + r))


def _sun(canvas: Image.Image, rng: random.Random, color: RGB) -> None:
    w, h = canvas.size
    r = rng.uniform(0.04, 0.08) * max(w, h)
    cx, cy = rng.uniform(w * 0.15, w * 0.85), rng.uniform(h * 0.12, h * 0.42)
    _blend_shape(canvas, color, 90, r * 1.2, (cx - r * 2, cy - r * 2, cx + r * 2, cy + r * 2))
    _blend_shape(canvas, color, 235, r / 6, (cx - r, cy - r, cx + r, cy + r))


def _hills(canvas: Image.Image, rng: random.Random, colors: list[RGB]) -> None:
    w, h = canvas.size
    for i, color in enumerate(colors):
        base = h * (0.55 + 0.13 * i)
        waves = [(rng.uniform(0.01, 0.05) * h, rng.uniform(0.5, 3.5), rng.uniform(0, math.tau))
                 for _ in range(3)]
        points = [(x, base + sum(a * math.sin(f * math.tau * x / w + p) for a, f, p in waves))
                  for x in range(0, w + 8, 8)]
        _blend_shape(canvas, color, 240, 1.0 - 0.3 * i, [(0, h), *points, (w, h)])


def _work_size(width: int, height: int) -> tuple[int, int]:
    scale = _WORK_SIDE / max(width, height)
    return max(8, round(width * scale)), max(8, round(height * scale))


def render(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """Draw the picture for (prompt, seed) at exactly width×height."""
    rng = _rng(prompt, seed)
    palette = _palette(rng)
    small = _sky(_work_size(width, height), palette["sky"])
    _glows(small, rng, palette["glows"])
    _sun(small, rng, palette["glows"][0])
    _hills(small, rng, palette["hills"])
    return small.resize((width, height), Image.Resampling.BICUBIC)


def paint(prompt: str, seed: int, width: int, height: int) -> bytes:
    """Return a deterministic PNG of exactly width×height for (prompt, seed)."""
    buf = io.BytesIO()
    render(prompt, seed, width, height).save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def to_jpeg(prompt: str, seed: int, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    render(prompt, seed, width, height).save(buf, "JPEG", quality=80)
    return buf.getvalue()
