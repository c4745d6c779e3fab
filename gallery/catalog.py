"""The models the studio offers and their rules: the one source for the form, its
choices and the worker.

Defaults follow ../shared/API.md. An operator adapts them without a code change
by pointing QWEN_CATALOG_FILE at a JSON file such as

    {"models": {"qwen-image-plus": {"prompt_max": 1000, "per_call": 1, "price": "0.25",
                                    "max_in_flight": 2, "per_minute": 120},
                "my-new-model": {"label": "New", "rule": "sides", "presets": ["1024*1024"]}},
     "hidden": ["wanx2.0-t2i-turbo"]}

where each entry overrides fields of a default model or adds a new one.
"""

import json
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cache
from math import isqrt
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.formats import number_format
from django.utils.translation import gettext as _

MAX_IMAGES = 4
MAX_SEED = 2_147_483_647
NEGATIVE_PROMPT_MAX = 500


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        """Read "W*H" (the API's form); "W×H" and "WxH" are accepted from people."""
        normalised = text.strip().lower().replace("×", "*").replace("x", "*")
        width, sep, height = normalised.partition("*")
        if not sep or not width.strip().isdigit() or not height.strip().isdigit():
            raise ValueError(f"{text!r} is not a size such as 1024*1024")
        return cls(int(width), int(height))

    def __str__(self) -> str:
        return f"{self.width}*{self.height}"

    @property
    def shape(self) -> str:
        ratio = Fraction(self.width, self.height)
        if ratio == 1:
            return "square"
        return "landscape" if ratio > 1 else "portrait"

    @property
    def aspect_label(self) -> str:
        ratio = Fraction(self.width, self.height).limit_denominator(20)
        return f"{ratio.numerator}:{ratio.denominator}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    label: str
    rule: str  # "sides": each side in [min_side, max_side]; "area": W·H and W/H bounded
    prompt_max: int
    per_call: int = 4  # images one API call may return; more are made with several calls
    presets: tuple[Size, ...] = ()
    min_side: int = 512
    max_side: int = 1440
    min_pixels: int = 1280 * 1280
    max_pixels: int = 1440 * 1440
    min_aspect: Fraction = Fraction(1, 4)
    max_aspect: Fraction = Fraction(4)
    recommended: bool = False
    # CNY per image the provider bills; None where the price list gave none (shown as unknown, not 0).
    price: Decimal | None = None
    # The provider's limits for this model across the whole account; None leaves only
    # QWEN_MAX_CONCURRENT (API.md, "Per-model limits and prices").
    max_in_flight: int | None = None
    per_minute: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def smallest_square(self) -> int:
        """The side of the smallest square the area rule allows: a figure people can picture."""
        return isqrt(self.min_pixels - 1) + 1

    @property
    def largest_square(self) -> int:
        return isqrt(self.max_pixels)

    @property
    def tallest_shape(self) -> str:
        """The area rule's narrowest width:height, as "1:4"."""
        return f"{self.min_aspect.numerator}:{self.min_aspect.denominator}"

    @property
    def widest_shape(self) -> str:
        return f"{self.max_aspect.numerator}:{self.max_aspect.denominator}"

    def size_hint(self) -> str:
        """The size rule in words for the form, in the active language, from this spec's own figures."""
        if self.rule == "sides":
            return _("%(model)s: each side %(low)d–%(high)d pixels.") % {
                "model": self.label, "low": self.min_side, "high": self.max_side}
        return _("%(model)s: %(low)s to %(high)s pixels in all (squares from %(small)d×%(small)d to "
                 "%(large)d×%(large)d), shapes from %(tallest)s to %(widest)s.") % {
            "model": self.label, "low": _grouped(self.min_pixels), "high": _grouped(self.max_pixels),
            "small": self.smallest_square, "large": self.largest_square,
            "tallest": self.tallest_shape, "widest": self.widest_shape}

    def size_error(self, size: Size) -> str | None:
        """Why this model refuses the size, in words for the form (in the active language); None when it is fine."""
        given = {"model": self.label, "width": size.width, "height": size.height}
        if self.rule == "sides":
            if not (self.min_side <= size.width <= self.max_side) or not (
                self.min_side <= size.height <= self.max_side
            ):
                return _("%(model)s needs each side between %(low)d and %(high)d pixels; "
                         "%(width)d×%(height)d is outside.") % {**given, "low": self.min_side, "high": self.max_side}
            return None
        pixels = size.width * size.height
        if not self.min_pixels <= pixels <= self.max_pixels:
            return _("%(model)s needs between %(low)s and %(high)s pixels in all (squares from %(small)d×%(small)d "
                     "to %(large)d×%(large)d); %(width)d×%(height)d is %(pixels)s.") % {
                **given, "low": _grouped(self.min_pixels), "high": _grouped(self.max_pixels),
                "small": self.smallest_square, "large": self.largest_square, "pixels": _grouped(pixels)}
        if not self.min_aspect <= Fraction(size.width, size.height) <= self.max_aspect:
            return _("%(model)s allows shapes from %(tallest)s to %(widest)s; %(width)d×%(height)d is not.") % {
                **given, "tallest": self.tallest_shape, "widest": self.widest_shape}
        return None

    def calls_for(self, n: int) -> list[int]:
        """How many images each API call asks for, to make n in all."""
        return [min(self.per_call, n - start) for start in range(0, n, self.per_call)]

    @property
    def default_size(self) -> Size:
        return self.presets[0]


def _grouped(number: int) -> str:
    """A large number as the reader's locale writes it (1,638,400 in English)."""
    return number_format(number, force_grouping=True)


def _sizes(*texts: str) -> tuple[Size, ...]:
    return tuple(Size.parse(text) for text in texts)


SIDE_PRESETS = _sizes("1024*1024", "1280*1280", "1280*960", "960*1280", "1280*720", "720*1280", "1440*1440")
AREA_PRESETS = _sizes("1280*1280", "1440*1440", "1600*1200", "1200*1600", "1920*1080", "1080*1920", "768*2700")
# Upstream documents fixed sizes for Qwen-Image; the spec's side rule wins, so only those
# of its presets that also respect [512, 1440] are offered, with squares first.
QWEN_PRESETS = _sizes("1328*1328", "1024*1024", "1440*1080", "1080*1440", "1440*810", "810*1440")

DEFAULT_MODELS = (
    ModelSpec("wan2.6-t2i", "Wan 2.6", "area", 2100, presets=AREA_PRESETS, recommended=True, price=Decimal("0.20"),
              max_in_flight=5, per_minute=60),
    ModelSpec("wan2.5-t2i-preview", "Wan 2.5 preview", "area", 2000, presets=AREA_PRESETS, recommended=True),
    ModelSpec("qwen-image-plus", "Qwen-Image Plus", "sides", 800, per_call=1, presets=QWEN_PRESETS,
              price=Decimal("0.20"), max_in_flight=2, per_minute=120),
    ModelSpec("qwen-image-max", "Qwen-Image Max", "sides", 800, per_call=1, presets=QWEN_PRESETS,
              price=Decimal("0.50"), per_minute=2),
    ModelSpec("wan2.2-t2i-flash", "Wan 2.2 Flash", "sides", 500, presets=SIDE_PRESETS),
    ModelSpec("wan2.2-t2i-plus", "Wan 2.2 Plus", "sides", 500, presets=SIDE_PRESETS),
    ModelSpec("wanx2.1-t2i-turbo", "Wanx 2.1 Turbo", "sides", 500, presets=SIDE_PRESETS),
    ModelSpec("wanx2.1-t2i-plus", "Wanx 2.1 Plus", "sides", 500, presets=SIDE_PRESETS),
    ModelSpec("wanx2.0-t2i-turbo", "Wanx 2.0 Turbo", "sides", 500, presets=SIDE_PRESETS),
)

_OVERRIDABLE = {
    "label": str, "rule": str, "prompt_max": int, "per_call": int, "min_side": int,
    "max_side": int, "min_pixels": int, "max_pixels": int, "recommended": bool,
}


def _apply(base: ModelSpec | None, name: str, entry: dict) -> ModelSpec:
    changes = {}
    for key, value in entry.items():
        if key in _OVERRIDABLE:
            wanted = _OVERRIDABLE[key]
            # bool is an int to Python, but `"prompt_max": true` is a mistake in the file.
            if not isinstance(value, wanted) or isinstance(value, bool) and wanted is not bool:
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.{key} must be {wanted.__name__}")
            changes[key] = value
        elif key == "price":
            try:
                # A string or a number in the file; null says the price is not known.
                changes[key] = None if value is None else Decimal(str(value))
            except InvalidOperation:
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.price must be a number such as 0.2") from None
            if changes[key] is not None and (not changes[key].is_finite() or changes[key] < 0):
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.price must be a number such as 0.2")
        elif key in {"max_in_flight", "per_minute"}:
            # null says the provider sets no such limit for the model.
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.{key} must be a whole number of at least 1, "
                                           "or null for no limit")
            changes[key] = value
        elif key in {"min_aspect", "max_aspect"}:
            try:
                # A number, or a width:height such as "1:4".
                changes[key] = Fraction(str(value).replace(":", "/"))
            except (ValueError, ZeroDivisionError):
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.{key} must be a number such as 0.25 "
                                           'or a shape such as "1:4"') from None
        elif key == "presets":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.presets must be a list such as [\"1024*1024\"]")
            try:
                changes[key] = _sizes(*value)
            except ValueError as error:
                raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name}.presets: {error}") from None
        else:
            raise ImproperlyConfigured(f"QWEN_CATALOG_FILE: {name} has an unknown field {key!r}")
    if base is None:
        changes.setdefault("label", name)
        changes.setdefault("rule", "sides")
        changes.setdefault("prompt_max", 500)
        base = ModelSpec(name=name, **{k: changes.pop(k) for k in ("label", "rule", "prompt_max")})
    return replace(base, **changes)


def _check(spec: ModelSpec) -> None:
    if spec.rule not in {"sides", "area"}:
        raise ImproperlyConfigured(f"Catalog: {spec.name} has rule {spec.rule!r}; use sides or area")
    if not spec.presets:
        raise ImproperlyConfigured(f"Catalog: {spec.name} has no size presets")
    if not 1 <= spec.per_call <= MAX_IMAGES:
        raise ImproperlyConfigured(f"Catalog: {spec.name} per_call must be 1 to {MAX_IMAGES}")
    for low, high in (("min_side", "max_side"), ("min_pixels", "max_pixels"), ("min_aspect", "max_aspect")):
        if not 0 < getattr(spec, low) <= getattr(spec, high):
            raise ImproperlyConfigured(f"Catalog: {spec.name} needs 0 < {low} <= {high}")
    for size in spec.presets:
        if error := spec.size_error(size):
            raise ImproperlyConfigured(f"Catalog: preset {size} of {spec.name} breaks its own rule: {error}")


def build_catalog(overrides: dict | None = None) -> dict[str, ModelSpec]:
    models = {spec.name: spec for spec in DEFAULT_MODELS}
    overrides = overrides or {}
    entries = overrides.get("models", {}) if isinstance(overrides, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        raise ImproperlyConfigured('QWEN_CATALOG_FILE must hold {"models": {"<name>": {...}}, "hidden": [...]}')
    for name, entry in entries.items():
        models[name] = _apply(models.get(name), name, entry)
    for name in overrides.get("hidden", []):
        models.pop(name, None)
    for spec in models.values():
        _check(spec)
    if not models:
        raise ImproperlyConfigured("Catalog: every model is hidden")
    return models


@cache
def catalog() -> dict[str, ModelSpec]:
    if not settings.QWEN_CATALOG_FILE:
        return build_catalog()
    path = Path(settings.QWEN_CATALOG_FILE)
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ImproperlyConfigured(f"QWEN_CATALOG_FILE {path} cannot be read: {error}") from None
    return build_catalog(overrides)


def get_model(name: str) -> ModelSpec | None:
    return catalog().get(name)


def default_model() -> ModelSpec:
    models = catalog()
    return next((spec for spec in models.values() if spec.recommended), next(iter(models.values())))
