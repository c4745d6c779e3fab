"""The image API over HTTP, built to ../shared/API.md.

Every answer becomes either an Answer or an ApiError whose `kind` tells the
worker what to do with it. Result downloads are guarded here too: only hosts on
the allowlist, at most QWEN_DOWNLOAD_MAX_BYTES, and PNG bytes, checked before
anything decodes them.
"""

import base64
import binascii
import email.utils
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import requests
from django.conf import settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Sizes past this many pixels are refused from the PNG header, before any decoding.
MAX_RESULT_PIXELS = 4096 * 4096


class ErrorKind(StrEnum):
    THROTTLED = "throttled"  # the provider asks us to slow down; never billed
    TRANSIENT = "transient"  # answered with a fault; retry with backoff
    UNANSWERED = "unanswered"  # cut off: the call may have been billed
    PERMANENT = "permanent"  # retrying cannot help


ADMIN_CODES = {"Arrearage", "AccessDenied", "InvalidApiKey", "ModelNotFound", "Throttling.AllocationQuota"}


class ApiError(Exception):
    def __init__(self, kind: ErrorKind, code: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{code}: {message}")
        self.kind = kind
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def designer_message(self) -> str:
        """What the job card says, in a designer's words."""
        if self.code == "DataInspectionFailed":
            return ("The provider's content check rejected this prompt or the image it made. "
                    "Try rewording the prompt.")
        if self.code == "InvalidParameter":
            return f"The provider refused these settings: {self.message}"
        if self.code == "Throttling.AllocationQuota":
            return "The studio's image quota with the provider is used up. Please tell your administrator."
        if self.code in ADMIN_CODES:
            return (f"The studio's provider account has a problem ({self.code}). "
                    "Please tell your administrator; nothing was generated.")
        if self.kind is ErrorKind.UNANSWERED:
            return "The provider did not answer in time."
        if self.kind in {ErrorKind.THROTTLED, ErrorKind.TRANSIENT}:
            return "The provider is busy or having trouble."
        return f"The provider refused the request ({self.code}): {self.message}"


class DownloadError(Exception):
    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Result:
    url: str
    b64_json: str
    revised_prompt: str


@dataclass(frozen=True)
class Answer:
    results: tuple[Result, ...]
    raw: dict


def build_request(*, model: str, prompt: str, negative_prompt: str, size: str, n: int, seed: int,
                  prompt_extend: bool, watermark: bool) -> dict:
    parameters = {"prompt_extend": prompt_extend, "watermark": watermark, "size": size, "n": n, "seed": seed}
    if negative_prompt:
        parameters["negative_prompt"] = negative_prompt
    return {"model": model, "prompt": prompt, "parameters": parameters}


_local = threading.local()


def _session() -> requests.Session:
    """One pooled session per thread: workers and the image threads each keep their own."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def generate(body: dict) -> Answer:
    """POST one generation; return its results or raise ApiError."""
    url = settings.QWEN_API_BASE_URL.rstrip("/") + "/v1/images/generations"
    headers = {"Authorization": f"Bearer {settings.QWEN_API_KEY}"}
    try:
        response = _session().post(url, json=body, headers=headers,
                                 timeout=(settings.QWEN_CONNECT_TIMEOUT, settings.QWEN_READ_TIMEOUT))
    except requests.ConnectTimeout:
        raise ApiError(ErrorKind.TRANSIENT, "ConnectTimeout", "could not reach the provider") from None
    except requests.ConnectionError as error:
        # A refused connection was never sent; a reset one may have been billed.
        if _never_sent(error):
            raise ApiError(ErrorKind.TRANSIENT, "ConnectionRefused", "could not reach the provider") from None
        raise ApiError(ErrorKind.UNANSWERED, "ConnectionDropped", "the connection dropped") from None
    except requests.Timeout:
        raise ApiError(ErrorKind.UNANSWERED, "ReadTimeout", "no answer within the read timeout") from None
    return parse_answer(response.status_code, response.content, response.headers.get("Retry-After"))


def _never_sent(error: requests.ConnectionError) -> bool:
    text = repr(error)
    return "NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text


def parse_answer(status: int, content: bytes, retry_after: str | None = None) -> Answer:
    try:
        payload = requests.models.complexjson.loads(content)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        if status == 200:
            raise ApiError(ErrorKind.UNANSWERED, "MalformedAnswer", "the answer was not JSON", status=status)
        raise _error_for(status, {}, retry_after)
    if "error" in payload or status != 200:
        raise _error_for(status, payload.get("error") or {}, retry_after)
    data = payload.get("data")
    if not isinstance(data, list):
        raise ApiError(ErrorKind.UNANSWERED, "MalformedAnswer", "the answer has no data list", status=status)
    results = []
    for item in data:
        if not isinstance(item, dict):
            continue
        url = item.get("url") or ""
        b64 = item.get("b64_json") or ""
        if isinstance(url, str) and isinstance(b64, str) and (url or b64):
            revised = item.get("revised_prompt")
            results.append(Result(url, b64, revised if isinstance(revised, str) else ""))
    return Answer(tuple(results), payload)


def _error_for(status: int, error: dict, retry_after: str | None) -> ApiError:
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or error.get("type") or f"HTTP{status}")
    message = str(error.get("message") or f"the provider answered {status}")
    if code == "Throttling.AllocationQuota":
        kind = ErrorKind.PERMANENT
    elif status == 429 or code.startswith("Throttling"):
        kind = ErrorKind.THROTTLED
    elif status >= 500 or code in {"InternalError", "ServiceUnavailable", "SystemError"}:
        kind = ErrorKind.TRANSIENT
    else:
        kind = ErrorKind.PERMANENT
    return ApiError(kind, code, message, status=status, retry_after=_seconds(retry_after))


def _seconds(retry_after: str | None) -> float | None:
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Whether url's host is on the list of `host`, `host:port` and `*.domain` entries."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return False
    try:
        port = str(parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:  # a port that is not a number
        return False
    host = parts.hostname.lower()
    for entry in allowed:
        name, wanted_port = _split_entry(entry.lower())
        if wanted_port and wanted_port != port:
            continue
        if host == name or name.startswith("*.") and host.endswith(name[1:]):
            return True
    return False


def _split_entry(entry: str) -> tuple[str, str]:
    """("host", "port") from "host", "host:port", "[v6]:port" or "*.domain"."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, rest.lstrip(":")
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, port
    return entry, ""


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header; refuse anything else before it is decoded."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise DownloadError("The provider sent something that is not a PNG image.", retryable=False)
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height or width * height > MAX_RESULT_PIXELS:
        raise DownloadError(f"The provider sent an image of an impossible size ({width}×{height}).",
                            retryable=False)
    return width, height


def fetch_result(result: Result) -> bytes:
    """The PNG bytes of one result, from its b64_json or its URL, guarded."""
    limit = settings.QWEN_DOWNLOAD_MAX_BYTES
    if result.b64_json:
        if len(result.b64_json) > limit * 4 // 3 + 4:
            raise DownloadError("The provider sent an image over the size limit.", retryable=False)
        try:
            data = base64.b64decode(result.b64_json, validate=True)
        except (binascii.Error, ValueError):
            raise DownloadError("The provider sent an image that could not be read.", retryable=False) from None
        if len(data) > limit:
            raise DownloadError("The provider sent an image over the size limit.", retryable=False)
    else:
        data = _download(result.url, limit)
    check_png(data)
    return data


def _download(url: str, limit: int) -> bytes:
    if not host_allowed(url, settings.QWEN_DOWNLOAD_HOSTS):
        raise DownloadError(f"The image's address ({urlsplit(url).hostname}) is not on the allowed list.",
                            retryable=False)
    try:
        with _session().get(url, stream=True, allow_redirects=False,
                          timeout=(settings.QWEN_CONNECT_TIMEOUT, 60)) as response:
            if response.status_code in {403, 404, 410}:
                raise DownloadError("The image's link had expired before it could be saved.", retryable=False)
            if response.status_code != 200:
                raise DownloadError(f"The image download failed ({response.status_code}).",
                                    retryable=response.status_code >= 500 or response.status_code == 429)
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise DownloadError("The provider sent an image over the size limit.", retryable=False)
            chunks, received = [], 0
            for chunk in response.iter_content(chunk_size=256 * 1024):
                received += len(chunk)
                if received > limit:
                    raise DownloadError("The provider sent an image over the size limit.", retryable=False)
                if not chunks and not chunk.startswith(PNG_SIGNATURE[: len(chunk)]):
                    raise DownloadError("The provider sent something that is not a PNG image.",
                                        retryable=False)
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as error:
        raise DownloadError(f"The image download was interrupted ({type(error).__name__}).",
                            retryable=True) from None
