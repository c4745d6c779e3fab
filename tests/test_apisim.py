"""Tests of the standalone API simulator (apisim/), over real HTTP; no Django, no database."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so plain `pytest` finds apisim too

from apisim.paint import paint  # noqa: E402
from apisim.server import make_server  # noqa: E402

AUTH = {"Authorization": "Bearer test-key"}
FLASH = "wan2.2-t2i-flash"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def start(**config: Any) -> tuple[Any, str]:
    server = make_server("127.0.0.1", 0, quiet=True, **config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    server, base = start(api_key=None, max_concurrent=2, latency=0.0, extend_delay=0.0, url_ttl=86400)
    yield base
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> None:
    if "api" in request.fixturenames:
        requests.post(request.getfixturevalue("api") + "/_sim/reset", timeout=5).raise_for_status()


def body(prompt: str = "a red fox in snow", model: str = FLASH, **params: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "parameters": {"size": "512*512", "n": 1, "seed": 7, **params}}


def gen(base: str, payload: Any, headers: dict[str, str] | None = AUTH, **kw: Any) -> requests.Response:
    return requests.post(base + "/v1/images/generations", json=payload, headers=headers, timeout=30, **kw)


def faults(base: str, *specs: dict[str, Any]) -> None:
    requests.post(base + "/_sim/faults", json={"faults": list(specs)}, timeout=5).raise_for_status()


def calls(base: str) -> list[dict[str, Any]]:
    return requests.get(base + "/_sim/calls", timeout=5).json()["calls"]


def ledger(base: str) -> dict[str, Any]:
    return requests.get(base + "/_sim/ledger", timeout=5).json()


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
    return result


def assert_error(resp: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    payload = resp.json()
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["code"] == code
    assert payload["error"]["message"]
    return payload["error"]


def download(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, timeout=30, **kw)


def test_healthz(api: str) -> None:
    resp = requests.get(api + "/healthz", timeout=5)
    assert resp.status_code == 200 and resp.text == "ok"


def test_valid_request_returns_n_pngs_of_requested_size(api: str) -> None:
    resp = gen(api, body(size="640*896", n=3))
    assert resp.status_code == 200, resp.text
    payload = resp.json()
    assert isinstance(payload["created"], int) and abs(payload["created"] - time.time()) < 60
    assert len(payload["data"]) == 3
    for item in payload["data"]:
        assert "Expires=" in item["url"] and "Signature=" in item["url"]
        image = download(item["url"])
        assert image.status_code == 200
        assert image.headers["Content-Type"] == "image/png"
        assert int(image.headers["Content-Length"]) == len(image.content)
        assert image.content.startswith(PNG_MAGIC)
        assert Image.open(io.BytesIO(image.content)).size == (640, 896)


def first_image(base: str, **params: Any) -> bytes:
    resp = gen(base, body(**params))
    assert resp.status_code == 200, resp.text
    return download(resp.json()["data"][0]["url"]).content


def test_images_are_deterministic_per_prompt_and_seed(api: str) -> None:
    assert first_image(api, seed=42) == first_image(api, seed=42)
    assert first_image(api, seed=42) != first_image(api, seed=43)
    resp = gen(api, body(seed=42, n=2)).json()
    second = download(resp["data"][1]["url"]).content
    assert second == first_image(api, seed=43)  # item i uses seed + i


def test_b64_json_response_format(api: str) -> None:
    payload = {**body(n=2), "response_format": "b64_json"}
    resp = gen(api, payload)
    assert resp.status_code == 200, resp.text
    items = resp.json()["data"]
    assert len(items) == 2
    for item in items:
        assert item["url"] == ""
        png = base64.b64decode(item["b64_json"])
        assert Image.open(io.BytesIO(png)).size == (512, 512)
    assert items[0]["b64_json"] != items[1]["b64_json"]


def test_revised_prompt_only_with_prompt_extend(api: str) -> None:
    english = gen(api, body("a lighthouse at dusk")).json()["data"][0]["revised_prompt"]
    assert english.startswith("a lighthouse at dusk") and len(english) > len("a lighthouse at dusk") + 10
    assert english == gen(api, body("a lighthouse at dusk")).json()["data"][0]["revised_prompt"]
    chinese = gen(api, body("一只小猫在草地上奔跑", prompt_extend=True)).json()["data"][0]["revised_prompt"]
    assert chinese.startswith("一只小猫在草地上奔跑") and re.search(r"[\u4e00-\u9fff]{6,}", chinese[10:])
    plain = gen(api, body("a lighthouse at dusk", prompt_extend=False)).json()["data"][0]
    assert plain.get("revised_prompt", "") == ""


def test_n_defaults(api: str) -> None:
    with_params = {"model": FLASH, "prompt": "hills", "parameters": {"size": "512*512"}}
    assert len(gen(api, with_params).json()["data"]) == 4  # the upstream default, billed per image
    assert len(gen(api, {"model": FLASH, "prompt": "hills"}).json()["data"]) == 1


def test_content_is_accepted_instead_of_prompt(api: str) -> None:
    payload = body()
    payload["content"] = payload.pop("prompt")
    resp = gen(api, payload)
    assert resp.status_code == 200, resp.text
    assert calls(api)[-1]["prompt"] == payload["content"]


OK = (200, None)
BAD = (400, "InvalidParameter")


@pytest.mark.parametrize("model,params,expected", [
    (FLASH, {"size": "1024x1024"}, BAD), (FLASH, {"size": "1024*"}, BAD), (FLASH, {"size": 1024}, BAD),
    ("wan2.6-t2i", {"size": "768*2700"}, OK), ("wan2.5-t2i-preview", {"size": "768*2700"}, OK),
    ("wan2.6-t2i", {"size": "1280*1280"}, OK), ("wan2.6-t2i", {"size": "1024*1024"}, BAD),
    ("wan2.6-t2i", {"size": "1440*1441"}, BAD), ("wan2.5-t2i-preview", {"size": "640*2600"}, BAD),
    (FLASH, {"size": "1440*512"}, OK), (FLASH, {"size": "511*1024"}, BAD),
    (FLASH, {"size": "1441*1024"}, BAD), (FLASH, {"size": "768*2700"}, BAD),
    ("wanx2.1-t2i-turbo", {"size": "1024*1024"}, OK), ("qwen-image-plus", {"size": "1328*1328"}, OK),
    ("qwen-image-max", {"size": "1664*928"}, BAD),
    (FLASH, {"n": 0}, BAD), (FLASH, {"n": 5}, BAD), (FLASH, {"n": True}, BAD), (FLASH, {"n": "2"}, BAD),
    (FLASH, {"n": 1.0}, BAD), (FLASH, {"seed": -1}, BAD), (FLASH, {"seed": 2147483648}, BAD),
    (FLASH, {"seed": True}, BAD), (FLASH, {"seed": 2147483647, "n": 2}, OK), (FLASH, {"seed": 0}, OK),
    (FLASH, {"negative_prompt": "x" * 500}, OK), (FLASH, {"negative_prompt": "x" * 501}, BAD),
    (FLASH, {"prompt_extend": "yes"}, BAD), (FLASH, {"watermark": 1}, BAD),
    (FLASH, {"watermark": True, "prompt_extend": False}, OK),
])
def test_parameter_rules(api: str, model: str, params: dict[str, Any], expected: tuple[int, str | None]) -> None:
    resp = gen(api, body(model=model, **params))
    status, code = expected
    if code is None:
        assert resp.status_code == 200, resp.text
    else:
        error = assert_error(resp, status, code)
        assert error["param"].startswith("parameters.")
        assert error["param"].split(".")[1] in error["message"]


@pytest.mark.parametrize("model,limit", [
    ("wan2.6-t2i", 2100), ("wan2.5-t2i-preview", 2000), (FLASH, 500), ("wan2.2-t2i-plus", 500),
    ("wanx2.0-t2i-turbo", 500), ("qwen-image-plus", 800),
])
def test_prompt_limit_counts_characters_not_bytes(api: str, model: str, limit: int) -> None:
    size = "1280*1280" if model.startswith(("wan2.6", "wan2.5")) else "512*512"
    assert gen(api, body("猫" * limit, model=model, size=size)).status_code == 200
    error = assert_error(gen(api, body("猫" * (limit + 1), model=model, size=size)), 400, "InvalidParameter")
    assert error["param"] == "prompt" and str(limit) in error["message"]


@pytest.mark.parametrize("payload", [
    {"model": FLASH, "prompt": ""}, {"model": FLASH, "prompt": "   "}, {"model": FLASH, "content": ""},
    {"model": FLASH, "parameters": {"n": 1}}, {"model": FLASH, "prompt": 42}, {"prompt": "no model"},
    {"model": FLASH, "prompt": "x", "parameters": [1]}, {"model": FLASH, "prompt": "x", "response_format": "png"},
    ["not", "an", "object"],
])
def test_bad_bodies(api: str, payload: Any) -> None:
    assert_error(gen(api, payload), 400, "InvalidParameter")


def test_invalid_json(api: str) -> None:
    resp = requests.post(api + "/v1/images/generations", data=b'{"model": ', headers=AUTH, timeout=5)
    assert_error(resp, 400, "InvalidParameter")


def test_unknown_model(api: str) -> None:
    error = assert_error(gen(api, body(model="dall-e-9")), 404, "ModelNotFound")
    assert "dall-e-9" in error["message"]


@pytest.mark.parametrize("headers", [None, {"Authorization": ""}, {"Authorization": "Bearer "},
                                     {"Authorization": "Basic abc"}])
def test_missing_auth(api: str, headers: dict[str, str] | None) -> None:
    assert_error(gen(api, body(), headers=headers), 401, "InvalidApiKey")


def test_configured_api_key_must_match() -> None:
    server, base = start(api_key="s3cret")
    try:
        assert_error(gen(base, body(), headers={"Authorization": "Bearer wrong"}), 401, "InvalidApiKey")
        assert gen(base, body(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("fault,status,code", [
    ({"type": "throttle", "retry_after": 3}, 429, "Throttling.RateQuota"),
    ({"type": "quota"}, 429, "Throttling.AllocationQuota"),
    ({"type": "server_error"}, 500, "InternalError"),
    ({"type": "server_error", "status": 503}, 503, "InternalError"),
    ({"type": "server_error", "status": 504}, 504, "InternalError"),
    ({"type": "error_200", "code": "DataInspectionFailed", "message": "Output may be unsafe."}, 200,
     "DataInspectionFailed"),
    ({"type": "error_200"}, 200, "InternalError"),
    ({"type": "moderation"}, 400, "DataInspectionFailed"),
    ({"type": "invalid_parameter", "message": "bad thing"}, 400, "InvalidParameter"),
    ({"type": "auth"}, 401, "InvalidApiKey"),
    ({"type": "arrearage"}, 400, "Arrearage"),
    ({"type": "access_denied"}, 403, "AccessDenied"),
])
def test_error_faults(api: str, fault: dict[str, Any], status: int, code: str) -> None:
    faults(api, fault)
    error = assert_error(gen(api, body()), status, code)
    if "message" in fault:
        assert error["message"] == fault["message"]
    assert gen(api, body()).status_code == 200  # the fault was used up
    assert [c["fault"] for c in calls(api)] == [fault["type"], None]
    assert calls(api)[0]["status"] == status


def test_throttle_fault_sets_retry_after(api: str) -> None:
    faults(api, {"type": "throttle", "retry_after": 3}, {"type": "throttle"})
    assert gen(api, body()).headers["Retry-After"] == "3"
    assert gen(api, body()).headers["Retry-After"] == "1"


def test_moderation_message(api: str) -> None:
    faults(api, {"type": "moderation"})
    assert "inappropriate" in gen(api, body()).json()["error"]["message"]


def test_malformed_json_fault(api: str) -> None:
    faults(api, {"type": "malformed_json"})
    resp = gen(api, body())
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        resp.json()


@pytest.mark.parametrize("count", [0, 1, 2])
def test_fewer_images_fault(api: str, count: int) -> None:
    faults(api, {"type": "fewer_images", "count": count})
    resp = gen(api, body(n=3))
    assert resp.status_code == 200 and len(resp.json()["data"]) == count


def test_expired_urls_fault(api: str) -> None:
    faults(api, {"type": "expired_urls"})
    url = gen(api, body()).json()["data"][0]["url"]
    resp = download(url)
    assert resp.status_code == 403 and "<Code>AccessDenied</Code>" in resp.text


def test_url_expires_after_ttl(api: str) -> None:
    requests.post(api + "/_sim/config", json={"url_ttl": -5}, timeout=5).raise_for_status()
    resp = download(gen(api, body()).json()["data"][0]["url"])
    assert resp.status_code == 403 and "expired" in resp.text


def test_bad_signature_and_unknown_token(api: str) -> None:
    url = gen(api, body()).json()["data"][0]["url"]
    tampered = re.sub(r"Signature=[0-9a-f]+", "Signature=" + "0" * 64, url)
    assert download(tampered).status_code == 403
    later = re.sub(r"Expires=\d+", f"Expires={int(time.time()) + 10**6}", url)
    assert download(later).status_code == 403
    unknown = re.sub(r"/files/[0-9a-f]+\.png", "/files/" + "ab" * 16 + ".png", url)
    resp = download(unknown)
    assert resp.status_code == 404 and "<Code>NoSuchKey</Code>" in resp.text
    statuses = [d["status"] for d in requests.get(api + "/_sim/downloads", timeout=5).json()["downloads"]]
    assert statuses == [403, 403, 404]


@pytest.mark.parametrize("after_work", [False, True])
def test_drop_fault(api: str, after_work: bool) -> None:
    faults(api, {"type": "drop", "after_work": after_work})
    with pytest.raises(requests.ConnectionError):
        gen(api, body())
    assert gen(api, body()).status_code == 200
    first = calls(api)[0]
    assert first["status"] is None and first["fault"] == "drop"


def test_image_body_not_png(api: str) -> None:
    faults(api, {"type": "image_body", "kind": "not_png"})
    resp = download(gen(api, body()).json()["data"][0]["url"])
    assert resp.status_code == 200 and resp.content.startswith(JPEG_MAGIC)


def test_image_body_bomb(api: str) -> None:
    faults(api, {"type": "image_body", "kind": "bomb"})
    resp = download(gen(api, body()).json()["data"][0]["url"])
    assert resp.content.startswith(PNG_MAGIC) and len(resp.content) < 1024
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(resp.content))


def test_image_body_huge_is_streamed(api: str) -> None:
    faults(api, {"type": "image_body", "kind": "huge"})
    url = gen(api, body()).json()["data"][0]["url"]
    with download(url, stream=True) as resp:
        assert int(resp.headers["Content-Length"]) > 50 * 1024 * 1024
        head = next(resp.iter_content(1024 * 1024))
        assert head.startswith(PNG_MAGIC)
    assert requests.get(api + "/healthz", timeout=5).status_code == 200


def test_foreign_url_fault(api: str) -> None:
    faults(api, {"type": "foreign_url", "url": "http://evil.example.com/x.png"})
    items = gen(api, body(n=2)).json()["data"]
    assert [item["url"] for item in items] == ["http://evil.example.com/x.png"] * 2


def test_latency_fault(api: str) -> None:
    faults(api, {"type": "latency", "seconds": 0.4})
    started = time.monotonic()
    assert gen(api, body()).status_code == 200
    assert time.monotonic() - started >= 0.4


def test_runtime_config(api: str) -> None:
    requests.post(api + "/_sim/config", json={"latency": 0.3}, timeout=5).raise_for_status()
    assert requests.get(api + "/_sim/state", timeout=5).json()["config"]["latency"] == 0.3
    started = time.monotonic()
    gen(api, body())
    assert time.monotonic() - started >= 0.3
    for bad in ({"latency": "1"}, {"max_concurrent": True}, {"public_url": "http://x"}):
        assert requests.post(api + "/_sim/config", json=bad, timeout=5).status_code == 400
    requests.post(api + "/_sim/reset", timeout=5).raise_for_status()
    assert requests.get(api + "/_sim/state", timeout=5).json()["config"]["latency"] == 0.0


def test_fault_times_match_and_order(api: str) -> None:
    faults(api, {"type": "quota", "match": "cat"}, {"type": "server_error", "times": 2},
           {"type": "moderation"})
    assert gen(api, body("a dog")).status_code == 500
    assert gen(api, body("a cat")).status_code == 429  # the matching fault, although queued first
    assert gen(api, body("a cat")).status_code == 500
    assert gen(api, body("a cat")).status_code == 400
    assert gen(api, body("a cat")).status_code == 200
    assert requests.get(api + "/_sim/faults", timeout=5).json()["faults"] == []


def test_unmatched_fault_stays_queued(api: str) -> None:
    faults(api, {"type": "quota", "match": "zebra"})
    assert gen(api, body("a dog")).status_code == 200
    assert len(requests.get(api + "/_sim/faults", timeout=5).json()["faults"]) == 1


def test_rejected_requests_do_not_consume_faults(api: str) -> None:
    faults(api, {"type": "quota"})
    assert gen(api, body(size="1x1")).status_code == 400
    assert gen(api, body()).status_code == 429


def test_bad_fault_spec_is_rejected(api: str) -> None:
    for spec in ({"type": "nope"}, {"type": "image_body", "kind": "gif"}, {"type": "server_error", "status": 418},
                 {"type": "latency", "secnds": 1}, {"type": "drop", "after_work": "yes"},
                 {"type": "server_error", "after_work": 1}, {"type": "image_body", "kind": "truncated", "index": -1},
                 {"type": "image_body", "kind": "not_png", "index": True}, {"type": "cut_body", "fraction": 1},
                 {"type": "cut_body", "status": 500}):
        resp = requests.post(api + "/_sim/faults", json={"faults": [spec]}, timeout=5)
        assert resp.status_code == 400


def test_calls_log_and_reset(api: str) -> None:
    gen(api, body("one"))
    gen(api, body("two", size="bad"))
    gen(api, body("three"), headers=None)
    logged = calls(api)
    assert [(c["prompt"], c["status"], c["model"]) for c in logged] == [
        ("one", 200, FLASH), ("two", 400, FLASH), ("three", 401, FLASH)]
    assert logged[0]["parameters"] == body()["parameters"] and logged[0]["at"] <= time.time()
    requests.post(api + "/_sim/reset", timeout=5).raise_for_status()
    assert calls(api) == []


def test_concurrency_limit(api: str) -> None:
    faults(api, {"type": "latency", "seconds": 1.0, "times": 2})
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.append(gen(api, body()).status_code)) for _ in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 5
    while requests.get(api + "/_sim/state", timeout=5).json()["in_flight"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    resp = gen(api, body())
    assert_error(resp, 429, "Throttling.RateQuota")
    assert resp.headers["Retry-After"] == "1"
    for worker in workers:
        worker.join()
    assert results == [200, 200]
    assert gen(api, body()).status_code == 200


def test_paint_speed_and_size() -> None:
    paint("warm-up", 1, 64, 64)
    started = time.perf_counter()
    png = paint("一只小猫在草地上奔跑，电影感，自然光影", 42, 1328, 1328)
    elapsed = time.perf_counter() - started
    print(f"\npaint 1328x1328: {elapsed * 1000:.0f} ms, {len(png)} bytes")
    assert elapsed < 2.0
    assert len(png) < 5 * 1024 * 1024
    image = Image.open(io.BytesIO(png))
    assert image.size == (1328, 1328) and image.format == "PNG"
    assert len(image.resize((32, 32)).getcolors(32 * 32)) > 50  # neither flat nor trivially simple
    assert png == paint("一只小猫在草地上奔跑，电影感，自然光影", 42, 1328, 1328)


def test_runs_as_module() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "apisim", "--host", "127.0.0.1", "--port", "0"],
                            cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://[\d.]+:\d+)", line)
        assert match, line
        assert requests.get(match.group(1) + "/healthz", timeout=5).text == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_ledger_bills_a_plain_answer(api: str) -> None:
    # given: a call for three images
    # when
    resp = gen(api, body("a heron at dawn", n=3, seed=11))
    # then: one delivered entry of three images, numbered like its call record
    assert resp.status_code == 200, resp.text
    book = ledger(api)
    assert book["billed_images"] == 3
    [entry] = book["entries"]
    assert {k: v for k, v in entry.items() if k != "at"} == {
        "request": 1, "model": FLASH, "prompt": "a heron at dawn", "seed": 11, "images": 3, "delivered": True}
    assert abs(entry["at"] - time.time()) < 60
    assert calls(api)[0]["request"] == 1


def test_ledger_numbers_every_call_but_bills_only_work(api: str) -> None:
    # given: a rejected size, a call without auth, then a good call without a seed
    gen(api, body(size="1x1"))
    gen(api, body(), headers=None)
    # when
    assert gen(api, {"model": FLASH, "prompt": "no seed given"}).status_code == 200
    # then: three numbered calls, one billed entry, whose seed is null since none was sent
    assert [c["request"] for c in calls(api)] == [1, 2, 3]
    [entry] = ledger(api)["entries"]
    assert (entry["request"], entry["seed"], entry["images"]) == (3, None, 1)


@pytest.mark.parametrize("count,billed", [(0, 0), (2, 2)])
def test_ledger_bills_fewer_images(api: str, count: int, billed: int) -> None:
    # given
    faults(api, {"type": "fewer_images", "count": count})
    # when
    assert len(gen(api, body(n=3)).json()["data"]) == count
    # then: only the images that came back are billed; an empty answer bills nothing
    book = ledger(api)
    assert book["billed_images"] == billed
    assert [(e["images"], e["delivered"]) for e in book["entries"]] == ([(billed, True)] if billed else [])


@pytest.mark.parametrize("after_work", [False, True])
def test_ledger_bills_a_drop_only_after_work(api: str, after_work: bool) -> None:
    # given
    faults(api, {"type": "drop", "after_work": after_work})
    # when
    with pytest.raises(requests.ConnectionError):
        gen(api, body(n=2))
    # then
    entries = ledger(api)["entries"]
    assert [(e["request"], e["images"], e["delivered"]) for e in entries] == ([(1, 2, False)] if after_work else [])


def test_cut_body_sends_part_of_the_answer_and_bills_it(api: str) -> None:
    # given
    faults(api, {"type": "cut_body"})
    # when: the answer announces its full length but stops halfway
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        gen(api, body(n=2))
    # then: the work was done and billed, yet not delivered; the next call is whole
    assert [(e["images"], e["delivered"]) for e in ledger(api)["entries"]] == [(2, False)]
    assert calls(api)[0]["fault"] == "cut_body"
    assert gen(api, body()).status_code == 200


def test_cut_body_keeps_the_full_content_length(api: str) -> None:
    # given
    faults(api, {"type": "cut_body", "fraction": 0.25})
    connection = http.client.HTTPConnection(urlsplit(api).netloc, timeout=30)
    # when
    connection.request("POST", "/v1/images/generations", json.dumps(body(n=4)),
                       {**AUTH, "Content-Type": "application/json"})
    resp = connection.getresponse()
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    connection.close()
    # then: the header promised the whole answer, a quarter of it came before the connection closed
    announced = int(resp.getheader("Content-Length"))
    assert resp.status == 200
    assert len(cut.value.partial) == int(announced * 0.25)
    assert cut.value.partial.startswith(b'{"created": ')


def test_ledger_bills_a_slow_call_once_its_work_completes(api: str) -> None:
    # given: a call slower than the client is willing to wait
    faults(api, {"type": "latency", "seconds": 1.0})
    # when: the client gives up
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(api + "/v1/images/generations", json=body(n=2), headers=AUTH, timeout=0.3)
    # then: nothing is billed yet, and the work is billed, undelivered, when it completes
    assert ledger(api)["entries"] == []
    [entry] = wait_for(lambda: ledger(api)["entries"])
    assert (entry["images"], entry["delivered"]) == (2, False)
    assert entry["at"] - calls(api)[0]["at"] >= 1.0
    wait_for(lambda: calls(api)[0]["status"] == 200)


def test_ledger_bills_a_slow_call_that_was_waited_for_as_delivered(api: str) -> None:
    # given
    faults(api, {"type": "latency", "seconds": 0.4})
    # when
    assert gen(api, body()).status_code == 200
    # then
    assert [(e["images"], e["delivered"]) for e in ledger(api)["entries"]] == [(1, True)]


@pytest.mark.parametrize("after_work", [False, True])
@pytest.mark.parametrize("status", [500, 502, 504])
def test_ledger_bills_a_server_error_only_after_work(api: str, status: int, after_work: bool) -> None:
    # given
    faults(api, {"type": "server_error", "status": status, "after_work": after_work})
    # when
    assert_error(gen(api, body(n=3)), status, "InternalError")
    # then: a proxy's late 5xx hides work that was done and billed
    entries = ledger(api)["entries"]
    assert [(e["images"], e["delivered"]) for e in entries] == ([(3, False)] if after_work else [])


@pytest.mark.parametrize("fault", [{"type": "throttle"}, {"type": "quota"}, {"type": "moderation"},
                                   {"type": "error_200"}, {"type": "malformed_json"}])
def test_errors_before_work_bill_nothing(api: str, fault: dict[str, Any]) -> None:
    # given
    faults(api, fault)
    # when
    gen(api, body())
    # then
    assert ledger(api) == {"entries": [], "billed_images": 0}


def test_reset_empties_the_ledger_and_restarts_numbering(api: str) -> None:
    # given
    gen(api, body(n=2))
    assert ledger(api)["billed_images"] == 2
    # when
    requests.post(api + "/_sim/reset", timeout=5).raise_for_status()
    # then
    assert ledger(api) == {"entries": [], "billed_images": 0}
    gen(api, body())
    assert [e["request"] for e in ledger(api)["entries"]] == [1]


def test_a_call_that_outlives_a_reset_is_not_billed_after_it(api: str) -> None:
    # given: a slow call in flight
    faults(api, {"type": "latency", "seconds": 0.5})
    worker = threading.Thread(target=lambda: gen(api, body()))
    worker.start()
    wait_for(lambda: requests.get(api + "/_sim/state", timeout=5).json()["in_flight"] == 1)
    # when: the simulator is reset under it
    requests.post(api + "/_sim/reset", timeout=5).raise_for_status()
    worker.join()
    # then: its bill went with the ledger it belonged to
    assert ledger(api)["entries"] == []


def test_ledger_is_complete_under_concurrent_calls() -> None:
    # given: a simulator without a concurrency limit
    server, base = start(max_concurrent=0)
    try:
        # when: twenty calls at once
        workers = [threading.Thread(target=lambda i=i: gen(base, body(f"crowd {i}", n=1 + i % 4)))
                   for i in range(20)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        # then: every call is billed once, under its own number
        book = ledger(base)
        assert sorted(e["request"] for e in book["entries"]) == list(range(1, 21))
        assert book["billed_images"] == sum(1 + i % 4 for i in range(20))
    finally:
        server.shutdown()
        server.server_close()


def test_image_body_truncated(api: str) -> None:
    # given
    faults(api, {"type": "image_body", "kind": "truncated"})
    # when
    resp = download(gen(api, body(size="640*512")).json()["data"][0]["url"])
    # then: a complete response whose PNG header is right and whose pixels are cut off
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == len(resp.content)
    assert resp.content.startswith(PNG_MAGIC)
    whole = paint("a red fox in snow", 7, 640, 512)
    assert resp.content == whole[:len(whole) // 2]
    image = Image.open(io.BytesIO(resp.content))
    assert image.size == (640, 512)
    with pytest.raises(OSError, match="truncated"):
        image.load()


@pytest.mark.parametrize("kind", ["not_png", "truncated"])
def test_image_body_index_breaks_only_that_result(api: str, kind: str) -> None:
    # given
    faults(api, {"type": "image_body", "kind": kind, "index": 1})
    # when
    items = gen(api, body(n=3)).json()["data"]
    # then: results 0 and 2 are whole PNGs, result 1 is broken
    bodies = [download(item["url"]).content for item in items]
    for index in (0, 2):
        Image.open(io.BytesIO(bodies[index])).load()
    if kind == "not_png":
        assert bodies[1].startswith(JPEG_MAGIC)
    else:
        with pytest.raises(OSError):
            Image.open(io.BytesIO(bodies[1])).load()


def test_image_body_index_beside_b64_json(api: str) -> None:
    # given: a b64_json call with a broken second result
    faults(api, {"type": "image_body", "kind": "not_png", "index": 1})
    # when
    items = gen(api, {**body(n=2), "response_format": "b64_json"}).json()["data"]
    # then: the others keep the asked format; the broken one is a URL, as with image_body today
    assert items[0]["b64_json"] and items[0]["url"] == ""
    assert download(items[1]["url"]).content.startswith(JPEG_MAGIC)


def set_config(base: str, **changes: Any) -> requests.Response:
    return requests.post(base + "/_sim/config", json=changes, timeout=5)


def test_error_rate_one_fails_every_call_and_bills_nothing(api: str) -> None:
    # given
    set_config(api, error_rate=1.0).raise_for_status()
    faults(api, {"type": "fewer_images", "count": 1})
    # when
    responses = [gen(api, body(n=2)) for _ in range(5)]
    # then: every admitted call is a 500, nothing is billed, and the queued fault waits
    for resp in responses:
        assert_error(resp, 500, "InternalError")
    assert [c["fault"] for c in calls(api)] == ["error_rate"] * 5
    assert ledger(api) == {"entries": [], "billed_images": 0}
    assert len(requests.get(api + "/_sim/faults", timeout=5).json()["faults"]) == 1
    assert_error(gen(api, body(size="1x1")), 400, "InvalidParameter")  # validation comes first


def test_error_rate_zero_fails_no_call(api: str) -> None:
    # given
    set_config(api, error_rate=0).raise_for_status()
    # when
    statuses = [gen(api, body()).status_code for _ in range(20)]
    # then
    assert statuses == [200] * 20 and ledger(api)["billed_images"] == 20


def test_error_rate_in_between_fails_some_calls() -> None:
    # given
    server, base = start(max_concurrent=0, error_rate=0.5)
    try:
        # when
        statuses = [gen(base, body(prompt_extend=False)).status_code for _ in range(60)]
        # then: both outcomes happen, and only the 200s are billed
        assert set(statuses) == {200, 500}
        assert ledger(base)["billed_images"] == statuses.count(200)
    finally:
        server.shutdown()
        server.server_close()


def test_throttle_rate_answers_429_with_retry_after(api: str) -> None:
    # given
    set_config(api, throttle_rate=1).raise_for_status()
    # when
    resp = gen(api, body())
    # then
    assert_error(resp, 429, "Throttling.RateQuota")
    assert resp.headers["Retry-After"] == "1"
    assert calls(api)[0]["fault"] == "throttle_rate" and ledger(api)["entries"] == []


def test_rates_are_validated_and_reset(api: str) -> None:
    # given / when
    for bad in ({"error_rate": 1.5}, {"error_rate": -0.1}, {"error_rate": "0.5"}, {"throttle_rate": True}):
        # then
        assert set_config(api, **bad).status_code == 400
    set_config(api, error_rate=0.25).raise_for_status()
    assert requests.get(api + "/_sim/state", timeout=5).json()["config"]["error_rate"] == 0.25
    requests.post(api + "/_sim/reset", timeout=5).raise_for_status()
    assert requests.get(api + "/_sim/state", timeout=5).json()["config"]["error_rate"] == 0.0


def test_error_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setenv("APISIM_ERROR_RATE", "1")
    # when
    server, base = start()
    try:
        # then
        assert requests.get(base + "/_sim/state", timeout=5).json()["config"]["error_rate"] == 1.0
        assert_error(gen(base, body()), 500, "InternalError")
    finally:
        server.shutdown()
        server.server_close()
