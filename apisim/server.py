"""HTTP front of the simulator: routing, auth, concurrency limit, files and control endpoints.

Control endpoints: GET /_sim/calls, /_sim/downloads, /_sim/state, /_sim/faults, /_sim/ledger;
POST /_sim/faults, /_sim/config, /_sim/reset. Every generation call gets a request number (1-based
since the last reset) in its call record and in the billing ledger:

    GET /_sim/ledger -> {"entries": [{"request", "model", "prompt", "seed", "images", "delivered", "at"}],
                         "billed_images": <sum of images>}

A call is billed once its upstream task has made images, at that moment: a 200 answer bills its results
(delivered), and so does work whose answer never arrived whole (delivered false): drop after_work,
cut_body, server_error after_work, and a slow call whose client had already hung up. Errors before
the work bill nothing; `seed` is the seed the client sent (null when it sent none).

Runtime config (POST /_sim/config, or APISIM_<NAME> in the environment) includes `error_rate` and
`throttle_rate` (0 to 1, default 0): the chance that an admitted call (past auth, validation and the
concurrency limit) answers 500 InternalError or 429 Throttling.RateQuota (Retry-After: 1) before any
work, without taking a queued fault; such calls show `"fault": "error_rate"` / `"throttle_rate"`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import select
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import generate, paint
from .faults import FaultQueue, FaultSpecError
from .rules import ApiError, GenRequest, validate
from .store import HUGE_BODY_BYTES, PNG_SIGNATURE, ImageStore, bomb_png, now

GENERATION_PATH = "/v1/images/generations"
_CHUNK = 64 * 1024
_NOT_JSON = object()


@dataclass
class Config:
    api_key: str | None = None
    public_url: str | None = None
    url_ttl: int = 86400
    max_concurrent: int = 2  # 0 means unlimited
    latency: float = 0.0
    extend_delay: float = 0.0
    quiet: bool = False
    error_rate: float = 0.0  # chance that an admitted call answers 500 InternalError, before any work
    throttle_rate: float = 0.0  # chance that an admitted call answers 429 Throttling.RateQuota (Retry-After 1)

    def __post_init__(self) -> None:
        for name in ("error_rate", "throttle_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, overrides: dict[str, Any]) -> Config:
        """Defaults, then APISIM_* environment variables, then explicit keyword overrides."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(known)
        if unknown:
            raise TypeError(f"unknown apisim config: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, f in known.items():
            raw = os.environ.get(f"APISIM_{name.upper()}")
            if raw is None or raw == "":
                continue
            if f.type in ("bool", bool):
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif f.type in ("int", int):
                values[name] = int(raw)
            elif f.type in ("float", float):
                values[name] = float(raw)
            else:
                values[name] = raw
        values.update(overrides)
        return cls(**values)

    def updated(self, changes: Any) -> Config:
        """A copy with runtime-adjustable fields changed, type-checked (for POST /_sim/config)."""
        if not isinstance(changes, dict):
            raise TypeError("body must be a JSON object")
        for key, value in changes.items():
            kinds = _RUNTIME_FIELDS.get(key)
            if kinds is None:
                raise ValueError(f"{key!r} cannot be changed; allowed: {', '.join(_RUNTIME_FIELDS)}")
            if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
                raise TypeError(f"{key} has the wrong type: {value!r}")
        return dataclasses.replace(self, **changes)


_RUNTIME_FIELDS: dict[str, tuple[type, ...]] = {
    "max_concurrent": (int,), "latency": (int, float), "extend_delay": (int, float),
    "url_ttl": (int,), "api_key": (str, type(None)), "quiet": (bool,),
    "error_rate": (int, float), "throttle_rate": (int, float),
}


class SimState:
    def __init__(self, config: Config) -> None:
        self.initial_config = dataclasses.replace(config)
        self.config = config
        self.store = ImageStore()
        self.faults = FaultQueue()
        self.calls: list[dict[str, Any]] = []
        self.downloads: list[dict[str, Any]] = []
        self.ledger: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # the most generation calls admitted at once since the last reset
        self.lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self.lock:
            limit = self.config.max_concurrent
            if limit > 0 and self.in_flight >= limit:
                return False
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return True

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def record_call(self, body: Any) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        call = {"request": 0, "model": body.get("model"), "prompt": body.get("prompt", body.get("content")),
                "parameters": body.get("parameters"), "status": None, "fault": None, "at": time.time()}
        with self.lock:
            self.calls.append(call)
            call["request"] = len(self.calls)  # calls only grow between resets
        return call

    def bill(self, call: dict[str, Any], model: str, prompt: str, seed: int | None, images: int,
             delivered: bool) -> None:
        entry = {"request": call["request"], "model": model, "prompt": prompt, "seed": seed,
                 "images": images, "delivered": delivered, "at": time.time()}
        with self.lock:
            # A slow call that outlived a reset belongs to the ledger that was emptied.
            if call["request"] <= len(self.calls) and self.calls[call["request"] - 1] is call:
                self.ledger.append(entry)

    def record_download(self, token: str, status: int, sent: int) -> None:
        with self.lock:
            self.downloads.append({"token": token, "status": status, "bytes": sent, "at": time.time()})

    def snapshot(self, what: str) -> dict[str, Any]:
        # Copy under the lock, serialise outside it, so a slow reader never blocks generation.
        with self.lock:
            if what == "calls":
                return {"calls": [dict(call) for call in self.calls]}
            if what == "downloads":
                return {"downloads": [dict(item) for item in self.downloads]}
            if what == "ledger":
                return {"entries": [dict(entry) for entry in self.ledger],
                        "billed_images": sum(entry["images"] for entry in self.ledger)}
            config = dataclasses.asdict(self.config) | {"api_key": bool(self.config.api_key)}
            return {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight, "config": config}

    def reset(self) -> None:
        self.faults.clear()
        with self.lock:
            self.calls.clear()
            self.downloads.clear()
            self.ledger.clear()
            self.peak_in_flight = self.in_flight
            self.config = dataclasses.replace(self.initial_config)


def oss_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n'
            f"  <Message>{message}</Message>\n  <RequestId>{os.urandom(12).hex().upper()}</RequestId>\n"
            f"  <HostId>apisim</HostId>\n</Error>\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "apisim/1.0"
    server: SimServer

    @property
    def state(self) -> SimState:
        return self.server.state

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request; the path only, never headers (the Authorization header stays private).
        if not self.state.config.quiet:
            path = urlsplit(self.path).path
            sys.stderr.write(f"apisim {self.address_string()} {self.command} {path} {code}\n")

    def log_message(self, format: str, *args: Any) -> None:
        if not self.state.config.quiet:
            sys.stderr.write(f"apisim {self.address_string()} {format % args}\n")

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head and self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                       "application/json", headers)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def read_json(self) -> Any:
        try:
            return json.loads(self.read_body() or b"null")
        except (ValueError, UnicodeDecodeError):
            return None

    def do_GET(self) -> None:
        self.route_get(head=False)

    def do_HEAD(self) -> None:
        self.route_get(head=True)

    def route_get(self, head: bool) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/files/"):
            self.serve_file(url.path[len("/files/"):], parse_qs(url.query), head)
        elif url.path == "/healthz":
            self.send_body(200, b"ok", "text/plain; charset=utf-8", head=head)
        elif url.path in ("/_sim/calls", "/_sim/downloads", "/_sim/state", "/_sim/ledger"):
            self.send_json(200, self.state.snapshot(url.path.rsplit("/", 1)[1]))
        elif url.path == "/_sim/faults":
            self.send_json(200, {"faults": self.state.faults.snapshot()})
        elif url.path == GENERATION_PATH:
            self.send_json(405, generate.error_body("MethodNotAllowed", "use POST", None, 405))
        else:
            self.send_json(404, generate.error_body("NotFound", f"no route for {url.path}", None, 404))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path == GENERATION_PATH:
            self.handle_generation()
        elif path == "/_sim/faults":
            self.handle_add_faults()
        elif path == "/_sim/reset":
            self.read_body()
            self.state.reset()
            self.send_json(200, {"ok": True})
        elif path == "/_sim/config":
            self.handle_config()
        else:
            self.read_body()
            self.send_json(404, generate.error_body("NotFound", f"no route for {path}", None, 404))

    def handle_add_faults(self) -> None:
        body = self.read_json()
        try:
            queued = self.state.faults.add(body.get("faults") if isinstance(body, dict) else body)
        except FaultSpecError as exc:
            self.send_json(400, generate.error_body("InvalidParameter", str(exc), "faults"))
            return
        self.send_json(200, {"queued": queued})

    def handle_config(self) -> None:
        body = self.read_json()
        try:
            updated = self.state.config.updated(body)
        except (TypeError, ValueError) as exc:
            self.send_json(400, generate.error_body("InvalidParameter", str(exc), None))
            return
        with self.state.lock:
            self.state.config = updated
        self.send_json(200, {"ok": True})

    def check_auth(self) -> None:
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        expected = self.state.config.api_key
        if scheme.lower() != "bearer" or not token or (
                expected and not hmac.compare_digest(token.encode(), expected.encode())):
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")

    def handle_generation(self) -> None:
        raw = self.read_body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = _NOT_JSON
        call = self.state.record_call(body)
        try:
            self.check_auth()
            if body is _NOT_JSON:
                raise ApiError(400, "InvalidParameter", "request body is not valid JSON")
            req = validate(body)
        except ApiError as error:
            call["status"] = error.status
            self.answer(generate.error_outcome(error))
            return
        if not self.state.try_acquire():
            call["status"] = 429
            self.answer(generate.error_outcome(ApiError(
                429, "Throttling.RateQuota", "Requests rate limit exceeded, too many requests in flight; "
                "please try again later.", headers={"Retry-After": "1"})))
            return
        try:
            config = self.state.config
            unlucky = generate.random_error(config.throttle_rate, config.error_rate)
            if unlucky is not None:  # decided before a fault is taken, so the queued faults stay queued
                call["fault"], error = unlucky
                outcome = generate.error_outcome(error)
            else:
                outcome = self.run_task(call, req)
            if outcome.images:
                # Billed as the task ends, before the answer travels, so a client that got it sees the entry.
                delivered = outcome.status == 200 and outcome.cut is None and not self.client_gone()
                params = body.get("parameters") or {}
                self.state.bill(call, req.model, req.prompt, params.get("seed"), outcome.images, delivered)
        finally:
            # The task is over upstream before its answer travels back, as with the real gateway.
            call["ended"] = time.time()
            self.state.release()
        call["status"] = outcome.status
        self.answer(outcome)

    def run_task(self, call: dict[str, Any], req: GenRequest) -> generate.Outcome:
        fault = self.state.faults.take(req.prompt)
        call["fault"] = fault["type"] if fault else None
        try:
            return generate.run(self.state, req, fault)
        except Exception:  # a simulator bug should still look like an upstream 500, not a hang
            traceback.print_exc()
            return generate.error_outcome(ApiError(500, "InternalError", "apisim crashed; see its log"))

    def client_gone(self) -> bool:
        """Whether the client hung up while the task ran (it timed out, say): its answer cannot arrive."""
        poller = select.poll()  # not select.select, which fails past 1024 descriptors
        poller.register(self.connection, select.POLLIN)
        try:
            return bool(poller.poll(0)) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def answer(self, outcome: generate.Outcome) -> None:
        if outcome.status is None:
            self.drop_connection()
            return
        try:
            if outcome.cut is None:
                self.send_body(outcome.status, outcome.body, outcome.content_type, outcome.headers)
                return
            self.send_response(outcome.status)
            self.send_header("Content-Type", outcome.content_type)
            self.send_header("Content-Length", str(len(outcome.body)))
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(outcome.body[:int(len(outcome.body) * outcome.cut)])
            self.wfile.flush()
            self.drop_connection("cut short")
        except OSError:  # the client is gone; its call was already recorded and billed
            self.close_connection = True

    def drop_connection(self, what: str = "dropped without an answer") -> None:
        self.log_message("%s %s %s", self.command, urlsplit(self.path).path, what)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def serve_file(self, name: str, query: dict[str, list[str]], head: bool) -> None:
        token = name[:-len(".png")] if name.endswith(".png") else ""
        entry = self.state.store.entry(token) if token else None
        if entry is None:
            self.file_error(token or name, 404, "NoSuchKey", "The specified key does not exist.", head)
            return
        expires_raw = (query.get("Expires") or [""])[0]
        signature = (query.get("Signature") or [""])[0]
        if not expires_raw.isdigit() or not self.state.store.signature_ok(token, int(expires_raw), signature):
            self.file_error(token, 403, "AccessDenied", "The request signature we calculated does not match "
                            "the signature you provided.", head)
            return
        if int(expires_raw) < now():
            self.file_error(token, 403, "AccessDenied", "Request has expired.", head)
            return
        if entry.kind == "huge":
            self.stream_huge(token, head)
            return
        if entry.kind == "not_png":
            body = paint.to_jpeg(entry.prompt, entry.seed, entry.width, entry.height)
        elif entry.kind == "bomb":
            body = bomb_png()
        elif entry.kind == "truncated":
            whole = self.state.store.png(token, entry)
            body = whole[:len(whole) // 2]  # a valid header and half the pixel data, sent as if complete
        else:
            body = self.state.store.png(token, entry)
        # not_png keeps the image/png label on purpose: clients must sniff the bytes, not trust the header.
        # Recorded before answering, so a client that reads /_sim/downloads next always sees it.
        self.state.record_download(token, 200, 0 if head else len(body))
        self.send_body(200, body, "image/png", head=head)

    def file_error(self, token: str, status: int, code: str, message: str, head: bool) -> None:
        self.state.record_download(token, status, 0)
        self.send_body(status, oss_error(code, message), "application/xml", head=head)

    def stream_huge(self, token: str, head: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(HUGE_BODY_BYTES))
        self.end_headers()
        sent = 0
        if not head:
            zeros = bytes(_CHUNK)
            try:
                self.wfile.write(PNG_SIGNATURE)
                sent = len(PNG_SIGNATURE)
                while sent < HUGE_BODY_BYTES:
                    chunk = zeros[:min(_CHUNK, HUGE_BODY_BYTES - sent)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True
        self.state.record_download(token, 200, sent)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], config: Config) -> None:
        super().__init__(address, Handler)
        self.state = SimState(config)
        if not config.public_url:
            host, port = self.server_address[:2]
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind is not a fetchable host
            self.state.initial_config.public_url = self.state.config.public_url = f"http://{host}:{port}"


def make_server(host: str = "127.0.0.1", port: int = 0, **config: Any) -> SimServer:
    """Bind (port 0 picks a free port) without serving; call serve_forever() in a thread or process."""
    return SimServer((host, port), Config.from_env(config))
