"""Model rules and request validation, written from the studio's API contract (shared/API.md)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

SEED_MAX = 2147483647
NEGATIVE_PROMPT_MAX = 500
N_MIN, N_MAX = 1, 4
N_DEFAULT_WITH_PARAMETERS = 4  # upstream default when `parameters` is sent without `n`
N_DEFAULT_WITHOUT_PARAMETERS = 1
RESPONSE_FORMATS = ("url", "b64_json")

_SIZE_RE = re.compile(r"^(\d{1,6})\*(\d{1,6})$")


class ApiError(Exception):
    """An error answered in the documented `{"error": {...}}` shape."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "InvalidParameter", message, param)


@dataclass(frozen=True)
class ModelRule:
    name: str
    size_rule: str  # "area": W·H in [1280², 1440²] and W/H in [1/4, 4]; "sides": each side in [512, 1440]
    prompt_max: int
    default_size: str

    def size_error(self, width: int, height: int) -> str | None:
        """Return why W×H breaks this model's size rule, or None when it is allowed."""
        if self.size_rule == "area":
            area = width * height
            if not 1280 * 1280 <= area <= 1440 * 1440:
                return (f"size {width}*{height} has {area} pixels; {self.name} needs "
                        f"W*H between {1280 * 1280} (1280*1280) and {1440 * 1440} (1440*1440)")
            if not (width * 4 >= height and height * 4 >= width):
                return f"size {width}*{height} has aspect ratio outside [1:4, 4:1] for {self.name}"
            return None
        for side, value in (("width", width), ("height", height)):
            if not 512 <= value <= 1440:
                return f"size {width}*{height}: {side} {value} is outside [512, 1440] for {self.name}"
        return None


def _family(names: tuple[str, ...], size_rule: str, prompt_max: int, default_size: str) -> dict[str, ModelRule]:
    return {name: ModelRule(name, size_rule, prompt_max, default_size) for name in names}


MODELS: dict[str, ModelRule] = {
    **_family(("wan2.6-t2i",), "area", 2100, "1280*1280"),
    **_family(("wan2.5-t2i-preview",), "area", 2000, "1280*1280"),
    **_family(("wan2.2-t2i-flash", "wan2.2-t2i-plus"), "sides", 500, "1024*1024"),
    **_family(("wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.0-t2i-turbo"), "sides", 500, "1024*1024"),
    **_family(("qwen-image-plus", "qwen-image-max"), "sides", 800, "1328*1328"),
}


@dataclass
class GenRequest:
    model: str
    prompt: str
    negative_prompt: str
    prompt_extend: bool
    watermark: bool
    width: int
    height: int
    n: int
    seed: int
    response_format: str


def is_int(value: Any) -> bool:
    # bool is a subclass of int in Python but never a JSON integer.
    return isinstance(value, int) and not isinstance(value, bool)


def parse_size(value: Any) -> tuple[int, int]:
    if not isinstance(value, str):
        raise invalid("parameters.size must be a string like '1024*1024'", "parameters.size")
    match = _SIZE_RE.match(value.strip())
    if not match:
        if "x" in value.lower() or "×" in value:
            raise invalid(f"parameters.size '{value}' must use '*' between width and height "
                          f"(e.g. '1024*1024'), not 'x'", "parameters.size")
        raise invalid(f"parameters.size '{value}' must look like 'W*H', e.g. '1024*1024'",
                      "parameters.size")
    return int(match.group(1)), int(match.group(2))


def _optional_bool(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"parameters.{key} must be a boolean (true or false), got {value!r}",
                      f"parameters.{key}")
    return value


def _prompt(body: dict[str, Any], rule: ModelRule) -> str:
    key = "prompt" if body.get("prompt") is not None else "content"
    value = body.get(key)
    if value is None:
        raise invalid("prompt is required (send it as 'prompt' or 'content')", "prompt")
    if not isinstance(value, str):
        raise invalid(f"{key} must be a string", key)
    if not value.strip():
        raise invalid(f"{key} must not be empty", key)
    if len(value) > rule.prompt_max:
        raise invalid(f"{key} is {len(value)} characters; {rule.name} allows at most "
                      f"{rule.prompt_max}", key)
    return value


def _n(body_has_params: bool, params: dict[str, Any]) -> int:
    if "n" not in params or params["n"] is None:
        return N_DEFAULT_WITH_PARAMETERS if body_has_params else N_DEFAULT_WITHOUT_PARAMETERS
    n = params["n"]
    if not is_int(n) or not N_MIN <= n <= N_MAX:
        raise invalid(f"parameters.n must be an integer from {N_MIN} to {N_MAX}, got {n!r}",
                      "parameters.n")
    return n


def _seed(params: dict[str, Any]) -> int:
    seed = params.get("seed")
    if seed is None:
        return random.randint(0, SEED_MAX)
    if not is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise invalid(f"parameters.seed must be an integer from 0 to {SEED_MAX}, got {seed!r}",
                      "parameters.seed")
    return seed


def _negative_prompt(params: dict[str, Any]) -> str:
    value = params.get("negative_prompt")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid("parameters.negative_prompt must be a string", "parameters.negative_prompt")
    if len(value) > NEGATIVE_PROMPT_MAX:
        raise invalid(f"parameters.negative_prompt is {len(value)} characters; at most "
                      f"{NEGATIVE_PROMPT_MAX} are allowed", "parameters.negative_prompt")
    return value


def _model(body: dict[str, Any]) -> ModelRule:
    model = body.get("model")
    if model is None or model == "":
        raise invalid("model is required", "model")
    if not isinstance(model, str):
        raise invalid("model must be a string", "model")
    rule = MODELS.get(model)
    if rule is None:
        raise ApiError(404, "ModelNotFound", f"Model not exist: the model '{model}' is not "
                       f"supported (known: {', '.join(MODELS)})", "model")
    return rule


def validate(body: Any) -> GenRequest:
    """Check a decoded request body against the model table; raise ApiError on the first fault."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    rule = _model(body)
    prompt = _prompt(body, rule)
    has_params = "parameters" in body and body["parameters"] is not None
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("parameters must be a JSON object", "parameters")
    width, height = parse_size(params.get("size") or rule.default_size)
    problem = rule.size_error(width, height)
    if problem:
        raise invalid(problem, "parameters.size")
    response_format = body.get("response_format") or "url"
    if response_format not in RESPONSE_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got "
                      f"{response_format!r}", "response_format")
    return GenRequest(
        model=rule.name,
        prompt=prompt,
        negative_prompt=_negative_prompt(params),
        prompt_extend=_optional_bool(params, "prompt_extend", True),
        watermark=_optional_bool(params, "watermark", False),
        width=width,
        height=height,
        n=_n(has_params, params),
        seed=_seed(params),
        response_format=response_format,
    )
