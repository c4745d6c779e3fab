"""A FIFO queue of injected faults, consumed one per admitted generation request."""

from __future__ import annotations

import copy
import threading
from typing import Any

FAULT_TYPES = (
    "latency", "throttle", "quota", "server_error", "error_200", "moderation",
    "invalid_parameter", "auth", "arrearage", "access_denied", "malformed_json",
    "fewer_images", "expired_urls", "drop", "image_body", "foreign_url",
)
SERVER_ERROR_STATUSES = (500, 502, 503, 504)
IMAGE_BODY_KINDS = ("not_png", "huge", "bomb")


class FaultSpecError(ValueError):
    pass


def _number(fault: dict[str, Any], key: str, default: float, minimum: float = 0) -> float:
    value = fault.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise FaultSpecError(f"{fault['type']}.{key} must be a number >= {minimum}, got {value!r}")
    return value


def check_fault(raw: Any) -> dict[str, Any]:
    """Validate one fault spec and fill in defaults; raise FaultSpecError when it is unusable."""
    if not isinstance(raw, dict):
        raise FaultSpecError("each fault must be a JSON object")
    fault = copy.deepcopy(raw)
    kind = fault.get("type")
    if kind not in FAULT_TYPES:
        raise FaultSpecError(f"unknown fault type {kind!r}; known: {', '.join(FAULT_TYPES)}")
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
        if fault["status"] not in SERVER_ERROR_STATUSES:
            raise FaultSpecError(f"server_error.status must be one of {SERVER_ERROR_STATUSES}")
    elif kind == "fewer_images":
        count = fault.setdefault("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise FaultSpecError("fewer_images.count must be an integer >= 0")
    elif kind == "drop":
        fault["after_work"] = bool(fault.get("after_work", False))
    elif kind == "image_body":
        if fault.get("kind") not in IMAGE_BODY_KINDS:
            raise FaultSpecError(f"image_body.kind must be one of {', '.join(IMAGE_BODY_KINDS)}")
    elif kind == "foreign_url":
        if not isinstance(fault.get("url"), str) or not fault["url"]:
            raise FaultSpecError("foreign_url.url must be a non-empty string")
    elif kind == "error_200":
        fault.setdefault("code", "InternalError")
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
