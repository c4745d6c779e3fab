"""The generation call itself: apply a fault, paint the images, build the answer.

An Outcome says what to answer and how many images the upstream task made (`images`): the server bills
those in its ledger, whether or not the answer reaches the client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import paint
from .rules import SEED_MAX, ApiError, GenRequest
from .store import ImageEntry, now

if TYPE_CHECKING:
    from .server import SimState

ERROR_TYPES = {
    "InvalidParameter": "invalid_request_error",
    "DataInspectionFailed": "invalid_request_error",
    "Arrearage": "invalid_request_error",
    "InvalidApiKey": "authentication_error",
    "AccessDenied": "permission_error",
    "ModelNotFound": "not_found_error",
    "Throttling": "rate_limit_error",
    "Throttling.RateQuota": "rate_limit_error",
    "Throttling.AllocationQuota": "rate_limit_error",
    "InternalError": "server_error",
}

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_EXTEND_EN = (
    "bathed in soft golden-hour light, balanced rule-of-thirds composition, rich detail, "
    "shallow depth of field",
    "under gentle diffuse daylight, centred composition with a clear focal point, fine textures, "
    "cinematic colour grading",
    "with dramatic rim lighting and atmospheric haze, wide-angle composition with leading lines, "
    "crisp high-resolution detail",
)
_EXTEND_ZH = (
    "沐浴在柔和的金色夕照中，三分法构图均衡，细节丰富，浅景深",
    "柔和的自然漫射光，主体居中、焦点清晰，质感细腻，电影级调色",
    "戏剧性的轮廓光与空气感薄雾，广角构图带有引导线，画面清晰锐利",
)


@dataclass
class Outcome:
    status: int | None  # None: close the connection without answering
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    images: int = 0  # images the upstream task made: billed, delivered or not
    cut: float | None = None  # send only this fraction of the body, under the full Content-Length


def error_body(code: str, message: str, param: str | None = None, status: int = 400) -> dict[str, Any]:
    fallback = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    kind = ERROR_TYPES.get(code, fallback)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_outcome(status: int, payload: Any, headers: dict[str, str] | None = None) -> Outcome:
    return Outcome(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers or {})


def error_outcome(error: ApiError) -> Outcome:
    payload = error_body(error.code, error.message, error.param, error.status)
    return json_outcome(error.status, payload, error.headers)


def revise_prompt(prompt: str) -> str:
    """A deterministic 'richer' rewrite, in Chinese for CJK prompts and English otherwise."""
    index = hashlib.sha256(prompt.encode("utf-8")).digest()[0] % len(_EXTEND_EN)
    text = prompt.strip().rstrip("。.,，!！")
    if _CJK.search(prompt):
        return f"{text}，{_EXTEND_ZH[index]}。"
    return f"{text}, {_EXTEND_EN[index]}."


_FAULT_ERRORS = {
    "throttle": (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
    "quota": (429, "Throttling.AllocationQuota", "Allocated quota exceeded, please increase your quota limit."),
    "server_error": (500, "InternalError", "An internal error has occurred, please try again later."),
    "moderation": (400, "DataInspectionFailed", "Input data may contain inappropriate content."),
    "invalid_parameter": (400, "InvalidParameter", "The request parameter is invalid."),
    "auth": (401, "InvalidApiKey", "Invalid API-key provided."),
    "arrearage": (400, "Arrearage", "Access denied, please make sure your account is in good standing."),
    "access_denied": (403, "AccessDenied", "Access denied."),
}


def fault_error(fault: dict[str, Any]) -> ApiError | None:
    """The ApiError an error-type fault answers with, or None for other faults."""
    spec = _FAULT_ERRORS.get(fault["type"])
    if spec is None:
        return None
    status, code, message = spec
    headers: dict[str, str] = {}
    if fault["type"] == "throttle":
        retry = fault["retry_after"]
        headers["Retry-After"] = str(int(retry)) if float(retry).is_integer() else str(retry)
    status = fault["status"] if fault["type"] == "server_error" else status
    return ApiError(status, code, fault.get("message") or message,
                    fault.get("param"), headers)


def _item_url(state: SimState, req: GenRequest, seed: int, kind: str, expired: bool) -> dict[str, str]:
    entry = ImageEntry(req.prompt, seed, req.width, req.height, kind)
    png = paint.paint(req.prompt, seed, req.width, req.height) if kind in ("png", "truncated") else None
    token = state.store.add(entry, png)
    expires = now() - 3600 if expired else now() + state.config.url_ttl
    return {"url": state.store.url(state.config.public_url or "", token, expires)}


def _items(state: SimState, req: GenRequest, fault: dict[str, Any] | None) -> list[dict[str, str]]:
    fault = fault or {}
    fault_kind = fault.get("type")
    count = min(req.n, fault["count"]) if fault_kind == "fewer_images" else req.n
    revised = revise_prompt(req.prompt) if req.prompt_extend else None
    items = []
    for i in range(count):
        seed = (req.seed + i) % (SEED_MAX + 1)
        broken = fault_kind == "image_body" and fault["index"] in (None, i)
        expired = fault_kind == "expired_urls"
        if fault_kind == "foreign_url":
            item = {"url": fault["url"]}
        elif req.response_format == "b64_json" and not broken and not expired:
            png = paint.paint(req.prompt, seed, req.width, req.height)
            item = {"url": "", "b64_json": base64.b64encode(png).decode("ascii")}
        else:
            item = _item_url(state, req, seed, fault["kind"] if broken else "png", expired)
        if revised is not None:
            item["revised_prompt"] = revised
        items.append(item)
    return items


def random_error(throttle_rate: float, error_rate: float) -> tuple[str, ApiError] | None:
    """The 429 or 500 that the configured random rates pick for an admitted call, with its rate's name."""
    if throttle_rate > 0 and random.random() < throttle_rate:
        return "throttle_rate", ApiError(429, "Throttling.RateQuota", _FAULT_ERRORS["throttle"][2],
                                         headers={"Retry-After": "1"})
    if error_rate > 0 and random.random() < error_rate:
        return "error_rate", ApiError(500, "InternalError", _FAULT_ERRORS["server_error"][2])
    return None


def run(state: SimState, req: GenRequest, fault: dict[str, Any] | None) -> Outcome:
    """Answer an admitted, valid generation request, honouring the fault if one was taken."""
    kind = fault["type"] if fault else None
    if kind == "latency":
        time.sleep(fault["seconds"])
    time.sleep(state.config.latency)
    error = fault_error(fault) if fault else None
    if error is not None and not fault.get("after_work"):
        return error_outcome(error)
    if kind == "error_200":
        message = fault.get("message") or f"The task failed upstream ({fault['code']})."
        return json_outcome(200, error_body(fault["code"], message, fault.get("param"), 200))
    if kind == "malformed_json":
        return Outcome(200, b'{"created": 17')
    if kind == "drop" and not fault["after_work"]:
        return Outcome(None)
    if req.prompt_extend:
        time.sleep(state.config.extend_delay)
    items = _items(state, req, fault)
    if error is not None:  # server_error after_work: the task is done, the proxy in front answers 5xx
        outcome = error_outcome(error)
    elif kind == "drop":
        outcome = Outcome(None)
    else:
        outcome = json_outcome(200, {"created": now(), "data": items})
    outcome.images = len(items)
    if kind == "cut_body":
        outcome.cut = fault["fraction"]
    return outcome
