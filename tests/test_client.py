"""The image API client (gallery/client.py): the request it builds, how it reads every answer,
and the guards on result downloads; generate() over HTTP against the real apisim."""

import base64
import email.utils
import io
import json
import struct
import time

import PIL.Image
import pytest
import requests

from gallery.client import (
    PNG_SIGNATURE,
    Answer,
    ApiError,
    DownloadError,
    ErrorKind,
    Result,
    build_request,
    check_png,
    fetch_result,
    generate,
    host_allowed,
    parse_answer,
)
from tests.conftest import free_port

ALIYUN = ["*.aliyuncs.com"]


def request_body(**fields) -> dict:
    values = {"model": "wan2.2-t2i-flash", "prompt": "一只小猫在草地上奔跑", "negative_prompt": "blurry",
              "size": "1024*768", "n": 2, "seed": 42, "prompt_extend": True, "watermark": False}
    return build_request(**(values | fields))


def answer_bytes(payload) -> bytes:
    return json.dumps(payload).encode()


def error_bytes(code: str, message: str = "something went wrong") -> bytes:
    return answer_bytes({"error": {"message": message, "type": "x", "param": None, "code": code}})


def api_error(status: int, content: bytes, retry_after: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_answer(status, content, retry_after)
    return caught.value


def png_bytes(width: int = 8, height: int = 8, noise: bool = False) -> bytes:
    picture = PIL.Image.new("RGB", (width, height), "teal")
    if noise:
        picture = PIL.Image.frombytes("RGB", (width, height), bytes(range(256)) * (width * height * 3 // 256 + 1))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    return PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"


def b64_result(data: bytes) -> Result:
    return Result(url="", b64_json=base64.b64encode(data).decode(), revised_prompt="")


# build_request


def test_request_carries_the_prompt_in_prompt():
    body = request_body(prompt="a red kite")

    assert body["prompt"] == "a red kite"
    assert "content" not in body


def test_request_is_exactly_the_documented_body():
    assert request_body() == {
        "model": "wan2.2-t2i-flash",
        "prompt": "一只小猫在草地上奔跑",
        "parameters": {"negative_prompt": "blurry", "prompt_extend": True, "watermark": False,
                       "size": "1024*768", "n": 2, "seed": 42},
    }


def test_request_always_sends_n_inside_parameters():
    body = request_body(n=1)

    assert body["parameters"]["n"] == 1
    assert "n" not in body


def test_request_size_uses_a_star():
    assert request_body(size="1280*720")["parameters"]["size"] == "1280*720"


def test_request_omits_an_empty_negative_prompt():
    assert "negative_prompt" not in request_body(negative_prompt="")["parameters"]


# parse_answer: success


def test_200_with_url_items_becomes_an_answer():
    content = answer_bytes({"created": 1, "data": [{"url": "https://a.aliyuncs.com/1.png", "revised_prompt": "r1"},
                                                   {"url": "https://a.aliyuncs.com/2.png", "b64_json": ""}]})

    answer = parse_answer(200, content)

    assert isinstance(answer, Answer)
    assert answer.results == (Result("https://a.aliyuncs.com/1.png", "", "r1"),
                              Result("https://a.aliyuncs.com/2.png", "", ""))


def test_200_with_b64_items_becomes_an_answer():
    encoded = base64.b64encode(png_bytes()).decode()

    answer = parse_answer(200, answer_bytes({"data": [{"url": "", "b64_json": encoded, "revised_prompt": "r"}]}))

    assert answer.results == (Result("", encoded, "r"),)


@pytest.mark.parametrize("item", [{}, {"revised_prompt": ""}, {"revised_prompt": None},
                                  {"revised_prompt": 42}, {"revised_prompt": ["a"]}],
                         ids=["missing", "empty", "null", "number", "list"])
def test_revised_prompt_that_is_not_text_becomes_empty(item):
    answer = parse_answer(200, answer_bytes({"data": [{"url": "https://a.aliyuncs.com/1.png", **item}]}))

    assert answer.results[0].revised_prompt == ""


def test_fewer_items_than_asked_are_kept():
    answer = parse_answer(200, answer_bytes({"data": [{"url": "https://a.aliyuncs.com/1.png"}]}))

    assert len(answer.results) == 1


# parse_answer: errors


@pytest.mark.parametrize("code, kind", [("InternalError", ErrorKind.TRANSIENT),
                                        ("DataInspectionFailed", ErrorKind.PERMANENT)])
def test_error_key_on_a_200_is_an_error(code, kind):
    error = api_error(200, error_bytes(code))

    assert (error.kind, error.code) == (kind, code)


def test_error_key_beside_data_on_a_200_is_still_an_error():
    content = answer_bytes({"data": [{"url": "https://a.aliyuncs.com/1.png"}],
                            "error": {"code": "InternalError", "message": "task failed"}})

    assert api_error(200, content).kind is ErrorKind.TRANSIENT


@pytest.mark.parametrize("status, code", [
    (400, "InvalidParameter"), (400, "DataInspectionFailed"), (400, "Arrearage"), (401, "InvalidApiKey"),
    (403, "AccessDenied"), (404, "ModelNotFound"), (429, "Throttling.AllocationQuota"),
])
def test_refusals_are_permanent(status, code):
    error = api_error(status, error_bytes(code))

    assert (error.kind, error.code, error.status) == (ErrorKind.PERMANENT, code, status)


@pytest.mark.parametrize("code", ["Throttling", "Throttling.RateQuota"])
def test_throttling_is_throttled(code):
    error = api_error(429, error_bytes(code))

    assert (error.kind, error.code) == (ErrorKind.THROTTLED, code)


def test_retry_after_in_seconds_is_read():
    assert api_error(429, error_bytes("Throttling"), "7").retry_after == 7.0


def test_retry_after_as_an_http_date_is_read():
    # given a Retry-After date 30 s from now
    when = email.utils.formatdate(time.time() + 30, usegmt=True)

    # when
    error = api_error(429, error_bytes("Throttling.RateQuota"), when)

    # then
    assert 27 <= error.retry_after <= 31


def test_retry_after_that_is_junk_is_ignored():
    assert api_error(429, error_bytes("Throttling"), "soon").retry_after is None


def test_429_without_a_json_body_is_throttled():
    assert api_error(429, b"<html>429 Too Many Requests</html>").kind is ErrorKind.THROTTLED


@pytest.mark.parametrize("status", [500, 503])
def test_server_fault_with_a_json_body_is_transient(status):
    error = api_error(status, error_bytes("InternalError"))

    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, status)


@pytest.mark.parametrize("status", [500, 503])
def test_server_fault_with_an_html_body_is_transient(status):
    error = api_error(status, b"<html><body><h1>503 Service Unavailable</h1></body></html>")

    assert (error.kind, error.code) == (ErrorKind.TRANSIENT, f"HTTP{status}")


@pytest.mark.parametrize("status", [502, 504])
@pytest.mark.parametrize("content", [error_bytes("InternalError"), b"<html><h1>504 Gateway Time-out</h1></html>"])
def test_a_proxy_giving_up_counts_as_maybe_billed(status, content):
    # a 502/504 from a proxy in front of the gateway: the upstream task may have been made
    error = api_error(status, content)

    assert (error.kind, error.status) == (ErrorKind.UNANSWERED, status)


def test_malformed_json_on_a_200_is_unanswered():
    assert api_error(200, b'{"created": 17').kind is ErrorKind.UNANSWERED


def test_200_without_a_data_list_is_unanswered():
    assert api_error(200, answer_bytes({"created": 17})).kind is ErrorKind.UNANSWERED


# designer_message


@pytest.mark.parametrize("status, content", [
    (400, error_bytes("DataInspectionFailed")), (400, error_bytes("Arrearage")), (401, error_bytes("InvalidApiKey")),
    (403, error_bytes("AccessDenied")), (404, error_bytes("ModelNotFound")),
    (429, error_bytes("Throttling.AllocationQuota")), (429, error_bytes("Throttling")),
    (500, error_bytes("InternalError")), (502, b"<html><h1>502 Bad Gateway</h1></html>"), (200, b'{"created": 17'),
])
def test_designer_message_is_plain_words(status, content):
    message = str(api_error(status, content).designer_message)

    assert message.endswith(".")
    assert not any(mark in message for mark in ("{", "<", "HTTP", "Traceback", "Throttling"))


def test_designer_message_for_moderation_says_so_plainly():
    message = str(api_error(400, error_bytes("DataInspectionFailed")).designer_message)

    assert "content check" in message


@pytest.mark.parametrize("code", ["Arrearage", "AccessDenied", "InvalidApiKey", "ModelNotFound",
                                  "Throttling.AllocationQuota"])
def test_designer_message_for_an_account_problem_points_to_an_admin(code):
    assert "administrator" in str(api_error(400, error_bytes(code)).designer_message)


@pytest.mark.parametrize("status, code", [(401, "InvalidApiKey"), (403, "AccessDenied"), (400, "Arrearage")])
def test_designer_message_never_repeats_a_key_the_provider_echoes(settings, status, code):
    # given a provider that quotes the key back in its message
    settings.QWEN_API_KEY = "sk-canary-0123456789"
    content = error_bytes(code, "Incorrect API key provided: sk-canary-0123456789")

    # then the designer never sees it
    assert "sk-canary" not in str(api_error(status, content).designer_message)


# host_allowed


def test_wildcard_allows_a_subdomain():
    assert host_allowed("https://dashscope-result-sh.oss-accelerate.aliyuncs.com/1.png?Expires=1", ALIYUN)


def test_wildcard_allows_plain_http():
    assert host_allowed("http://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1.png", ALIYUN)


@pytest.mark.parametrize("url", ["https://aliyuncs.com.evil.com/1.png", "https://evilaliyuncs.com/1.png",
                                 "https://dashscope.aliyuncs.com@evil.com/1.png"])
def test_wildcard_refuses_lookalike_hosts(url):
    assert not host_allowed(url, ALIYUN)


def test_host_with_port_allows_that_port():
    assert host_allowed("http://127.0.0.1:8001/files/a.png", ["127.0.0.1:8001"])


def test_host_with_port_refuses_another_port():
    assert not host_allowed("http://127.0.0.1:8002/files/a.png", ["127.0.0.1:8001"])


def test_host_with_port_matches_the_default_port_of_the_scheme():
    assert host_allowed("https://images.example.com/a.png", ["images.example.com:443"])


def test_plain_host_allows_only_the_default_port():
    assert host_allowed("http://127.0.0.1/files/a.png", ["127.0.0.1"])
    assert not host_allowed("http://127.0.0.1:9999/files/a.png", ["127.0.0.1"])


def test_ipv6_literal_is_refused_even_when_listed():
    assert not host_allowed("http://[::1]:8001/files/a.png", ["[::1]:8001"])


def test_ipv6_host_with_another_port_is_refused():
    assert not host_allowed("http://[::1]:8002/files/a.png", ["[::1]:8001"])


@pytest.mark.parametrize("url", ["ftp://a.aliyuncs.com/1.png", "file://a.aliyuncs.com/etc/passwd",
                                 "gopher://a.aliyuncs.com/1.png", "a.aliyuncs.com/1.png"])
def test_non_http_schemes_are_refused(url):
    assert not host_allowed(url, ALIYUN)


def test_url_with_a_malformed_port_is_refused():
    assert not host_allowed("https://a.aliyuncs.com:notaport/1.png", ALIYUN)


# check_png


def test_png_header_gives_its_size():
    assert check_png(png_bytes(12, 7)) == (12, 7)


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0" + bytes(40), b"GIF89a" + bytes(40), b"", b"<html>"],
                         ids=["jpeg", "gif", "empty", "html"])
def test_non_png_is_refused(data):
    with pytest.raises(DownloadError) as caught:
        check_png(data)

    assert not caught.value.retryable


@pytest.mark.parametrize("length", [8, 16, 20, 23])
def test_truncated_png_header_is_refused(length):
    with pytest.raises(DownloadError):
        check_png(png_header(64, 64)[:length])


@pytest.mark.parametrize("width, height", [(0, 64), (64, 0), (4097, 4096), (100_000, 100_000)])
def test_impossible_declared_size_is_refused(width, height):
    with pytest.raises(DownloadError):
        check_png(png_header(width, height))


def test_largest_allowed_declared_size_is_accepted():
    assert check_png(png_header(4096, 4096)) == (4096, 4096)


# fetch_result with b64_json


def test_b64_png_is_accepted():
    data = png_bytes()

    assert fetch_result(b64_result(data)) == data


def test_invalid_base64_is_refused():
    with pytest.raises(DownloadError):
        fetch_result(Result(url="", b64_json="not base64 at all!", revised_prompt=""))


def test_b64_that_is_not_a_png_is_refused():
    with pytest.raises(DownloadError):
        fetch_result(b64_result(b"\xff\xd8\xff\xe0" + bytes(100)))


def test_b64_over_the_size_limit_is_refused(settings):
    # given a limit far below the image
    data = png_bytes(64, 64, noise=True)
    settings.QWEN_DOWNLOAD_MAX_BYTES = len(data) // 2

    # then
    with pytest.raises(DownloadError) as caught:
        fetch_result(b64_result(data))
    assert not caught.value.retryable


# generate() over HTTP against apisim


def generate_error(body: dict) -> ApiError:
    with pytest.raises(ApiError) as caught:
        generate(body)
    return caught.value


def set_sim_key(sim, key: str | None) -> None:
    requests.post(f"{sim.url}/_sim/config", json={"api_key": key}, timeout=5).raise_for_status()


def test_generate_returns_results_that_download_as_png(sim):
    # when two images are asked for
    answer = generate(request_body(size="512*768", n=2))

    # then both come back and download as PNGs of that size
    assert len(answer.results) == 2
    for result in answer.results:
        assert result.url and result.revised_prompt
        assert check_png(fetch_result(result)) == (512, 768)


def test_generate_sends_the_configured_key(sim, settings):
    # given apisim accepts only the studio's key
    set_sim_key(sim, settings.QWEN_API_KEY)

    # then a call goes through
    assert len(generate(request_body(n=1)).results) == 1


def test_generate_with_a_wrong_key_is_a_permanent_error(sim, settings):
    # given apisim expects another key
    set_sim_key(sim, "the-right-key")
    settings.QWEN_API_KEY = "sk-wrong-canary"

    # when
    error = generate_error(request_body(n=1))

    # then
    assert (error.kind, error.code, error.status) == (ErrorKind.PERMANENT, "InvalidApiKey", 401)
    assert "sk-wrong-canary" not in str(error.designer_message)


def test_generate_with_a_dropped_connection_is_unanswered(sim):
    sim.fault("drop")

    assert generate_error(request_body(n=1)).kind is ErrorKind.UNANSWERED


def test_generate_past_the_read_timeout_is_unanswered(sim, settings):
    # given an answer slower than the read timeout
    settings.QWEN_READ_TIMEOUT = 1
    sim.fault("latency", seconds=3)

    # then
    error = generate_error(request_body(n=1))
    assert (error.kind, error.code) == (ErrorKind.UNANSWERED, "ReadTimeout")


def test_generate_to_a_closed_port_is_transient(settings):
    settings.QWEN_API_BASE_URL = f"http://127.0.0.1:{free_port()}"

    assert generate_error(request_body(n=1)).kind is ErrorKind.TRANSIENT


def test_generate_throttled_by_apisim_carries_retry_after(sim):
    sim.fault("throttle", retry_after=5)

    error = generate_error(request_body(n=1))

    assert (error.kind, error.retry_after) == (ErrorKind.THROTTLED, 5.0)


def test_b64_image_one_byte_over_the_limit_is_refused(settings):
    data = png_bytes(noise=True)
    settings.QWEN_DOWNLOAD_MAX_BYTES = len(data) - 1

    with pytest.raises(DownloadError, match="size limit"):
        fetch_result(b64_result(data))
