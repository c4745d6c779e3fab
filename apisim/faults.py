"""A FIFO queue of injected faults, consumed one per admitted generation request.

Every fault takes `times` (default 1) and `match` (a substring of the prompt). Types and their options:

- `latency` `seconds`: the call sleeps first; the work still completes (and is billed) if the client gave up.
- `throttle` `retry_after`, `quota`, `moderation`, `invalid_parameter`, `auth`, `arrearage`, `access_denied`:
  the documented error answer before any work (`message` and `param` override its fields); nothing billed.
- `server_error` `status` (500, 502, 503, 504), `after_work` (default false): a 5xx answer; with after_work
  the upstream task completed first (a proxy answering 502/504 late), so its images are billed, undelivered.
- `error_200` `code`: a 200 carrying an error object (the task failed upstream); nothing billed.
- `malformed_json`: a 200 whose body is cut JSON, before any work; nothing billed.
- `fewer_images` `count`: fewer results than asked; the fewer are billed.
- `expired_urls`, `foreign_url` `url`: the answer's URLs are already expired, or point elsewhere.
- `drop` `after_work` (default false): the connection closes without an answer; billed only after work.
- `cut_body` `fraction` (default 0.5): the answer goes out with its full Content-Length but only that
  fraction of the body, then the connection closes; billed, undelivered.
- `image_body` `kind` (not_png, huge, bomb, truncated), `index`: the result files are broken; `index`
  (from 0) breaks only that result of a multi-image answer. `truncated` is a real PNG of the right size
  cut to half its bytes and served as a complete response.

An unknown option or a wrong value is refused (400), so a typo never turns into a silently different test.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

FAULT_TYPES = (
    "latency", "throttle", "quota", "server_error", "error_200", "moderation",
    "invalid_parameter", "auth", "arrearage", "access_denied", "malformed_json",
    "fewer_images", "expired_urls", "drop", "image_body", "foreign_url", "cut_body",
)
SERVER_ERROR_STATUSES = (500, 502, 503, 504)
IMAGE_BODY_KINDS = ("not_png", "huge", "bomb", "truncated")

_COMMON_OPTIONS = ("type", "times", "match")
_ERROR_OPTIONS = ("message", "param")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "latency": ("seconds",),
    "throttle": ("retry_after", *_ERROR_OPTIONS),
    "quota": _ERROR_OPTIONS,
    "server_error": ("status", "after_work", *_ERROR_OPTIONS),
    "error_200": ("code", *_ERROR_OPTIONS),
    "moderation": _ERROR_OPTIONS,
    "invalid_parameter": _ERROR_OPTIONS,
    "auth": _ERROR_OPTIONS,
    "arrearage": _ERROR_OPTIONS,
    "access_denied": _ERROR_OPTIONS,
    "malformed_json": (),
    "fewer_images": ("count",),
    "expired_urls": (),
    "drop": ("after_work",),
    "image_body": ("kind", "index"),
    "foreign_url": ("url",),
    "cut_body": ("fraction",),
}


class FaultSpecError(ValueError):
    pass


def _number(fault: dict[str, Any], key: str, default: float, minimum: float = 0) -> float:
    value = fault.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise FaultSpecError(f"{fault['type']}.{key} must be a number >= {minimum}, got {value!r}")
    return value


def _flag(fault: dict[str, Any], key: str) -> bool:
    value = fault.get(key, False)
    if not isinstance(value, bool):
        raise FaultSpecError(f"{fault['type']}.{key} must be true or false, got {value!r}")
    return value


def _count(fault: dict[str, Any], key: str, default: int | None) -> int | None:
    value = fault.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise FaultSpecError(f"{fault['type']}.{key} must be an integer >= 0, got {value!r}")
    return value


def check_fault(raw: Any) -> dict[str, Any]:
    """Validate one fault spec and fill in defaults; raise FaultSpecError when it is unusable."""
    if not isinstance(raw, dict):
        raise FaultSpecError("each fault must be a JSON object")
    fault = copy.deepcopy(raw)
    kind = fault.get("type")
    if kind not in FAULT_TYPES:
        raise FaultSpecError(f"unknown fault type {kind!r}; known: {', '.join(FAULT_TYPES)}")
    unknown = sorted(set(fault) - set(_COMMON_OPTIONS) - set(_OPTIONS[kind]))
    if unknown:
        allowed = ", ".join((*_COMMON_OPTIONS[1:], *_OPTIONS[kind]))
        raise FaultSpecError(f"{kind} does not take {', '.join(unknown)}; it takes {allowed}")
    times = fault.setdefault("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise FaultSpecError(f"times must be an integer >= 1, got {times!r}")
    if "match" in fault and not isinstance(fault["match"], str):
        raise FaultSpecError("match must be a string")
    if kind == "latency":
        fault["seconds"] = _number(fault, "seconds", 1.0)
    elif kind == "throttle":
        fault["retry_after"] = _number(fault, "retry_after", 1)
    elif kind == "server_error":
        fault.setdefault("status", 500)
        if fault["status"] not in SERVER_ERROR_STATUSES or isinstance(fault["status"], bool):
            raise FaultSpecError(f"server_error.status must be one of {SERVER_ERROR_STATUSES}")
        fault["after_work"] = _flag(fault, "after_work")
    elif kind == "fewer_images":
        fault["count"] = _count(fault, "count", 1)
    elif kind == "drop":
        fault["after_work"] = _flag(fault, "after_work")
    elif kind == "cut_body":
        fraction = fault.setdefault("fraction", 0.5)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise FaultSpecError(f"cut_body.fraction must be a number in [0, 1), got {fraction!r}")
    elif kind == "image_body":
        if fault.get("kind") not in IMAGE_BODY_KINDS:
            raise FaultSpecError(f"image_body.kind must be one of {', '.join(IMAGE_BODY_KINDS)}")
        fault["index"] = _count(fault, "index", None)
    elif kind == "foreign_url":
        if not isinstance(fault.get("url"), str) or not fault["url"]:
            raise FaultSpecError("foreign_url.url must be a non-empty string")
    elif kind == "error_200":
        fault.setdefault("code", "InternalError")
        if not isinstance(fault["code"], str) or not fault["code"]:
            raise FaultSpecError("error_200.code must be a non-empty string")
    for key in _ERROR_OPTIONS:
        if key in fault and fault[key] is not None and not isinstance(fault[key], str):
            raise FaultSpecError(f"{kind}.{key} must be a string")
    return fault


class FaultQueue:
    def __init__(self) -> None:
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, raw_faults: Any) -> int:
        if not isinstance(raw_faults, list):
            raise FaultSpecError('body must be {"faults": [ {...}, ... ]}')
        faults = [check_fault(raw) for raw in raw_faults]  # all or nothing
        with self._lock:
            self._queue.extend(faults)
            return len(self._queue)

    def take(self, prompt: str) -> dict[str, Any] | None:
        """Consume one use of the first queued fault that matches this prompt."""
        with self._lock:
            for index, fault in enumerate(self._queue):
                if fault.get("match") is not None and fault["match"] not in prompt:
                    continue
                fault["times"] -= 1
                if fault["times"] <= 0:
                    del self._queue[index]
                return copy.deepcopy(fault)
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
