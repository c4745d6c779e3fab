"""The image API over HTTP, built to ../shared/API.md.

Every answer becomes either an Answer or an ApiError whose `kind` tells the
worker what to do with it. Result downloads are guarded here too: only plain
URLs to hosts and ports on the allowlist, only public addresses (private ones
only for a host named exactly), checked again on the connection itself, within
QWEN_DOWNLOAD_SECONDS, at most QWEN_DOWNLOAD_MAX_BYTES, and PNG bytes, checked
before anything decodes them.
"""

import base64
import binascii
import contextlib
import email.utils
import functools
import ipaddress
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util
from django.conf import settings

from gallery.messages import Message

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Sizes past this many pixels are refused from the PNG header, before any decoding.
MAX_RESULT_PIXELS = 4096 * 4096


class ErrorKind(StrEnum):
    THROTTLED = "throttled"  # the provider asks us to slow down; never billed
    TRANSIENT = "transient"  # answered with a fault; retry with backoff
    UNANSWERED = "unanswered"  # cut off: the call may have been billed
    PERMANENT = "permanent"  # retrying cannot help


# A proxy in front of the gateway answers these when it gave up waiting: the task upstream may
# have been made, and billed, all the same.
GATEWAY_STATUSES = {502, 504}
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
    def designer_message(self) -> Message:
        """What the job card says, in a designer's words (the provider's own words stay as it wrote them)."""
        if self.code == "DataInspectionFailed":
            return Message("content_rejected")
        if self.code == "InvalidParameter":
            return Message("settings_refused", detail=self.message)
        if self.code == "Throttling.AllocationQuota":
            return Message("provider_quota_used_up")
        if self.code in ADMIN_CODES:
            return Message("account_problem", code=self.code)
        if self.kind is ErrorKind.UNANSWERED:
            return Message("no_answer_in_time")
        if self.kind in {ErrorKind.THROTTLED, ErrorKind.TRANSIENT}:
            return Message("provider_busy")
        return Message("request_refused", code=self.code, detail=self.message)


class DownloadError(Exception):
    """Why an image could not be fetched: `note` for the job card, str() in English for logs."""

    def __init__(self, code: str, *, retryable: bool, **params):
        self.note = Message(code, **params)
        super().__init__(self.note.english)
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
    except requests.RequestException:
        # Cut in the middle of the answer's body (ChunkedEncodingError and kin): it may have been billed.
        raise ApiError(ErrorKind.UNANSWERED, "ConnectionDropped", "the answer was cut off") from None
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
    elif status in GATEWAY_STATUSES:
        kind = ErrorKind.UNANSWERED
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


DEFAULT_PORTS = {"http": 80, "https": 443}
# The only URLs taken: lowercase http(s), a plain host, a decimal port, then printable ASCII but "\".
_PLAIN_URL = re.compile(r"(https?)://([a-z0-9.-]+)(?::([1-9][0-9]{0,4}))?(?:[/?#][\x21-\x5b\x5d-\x7e]*)?")
# A DNS name whose last label starts with a letter, so IPv4 shorthands (127.1, 0x7f.1, 2130706433) fail it.
_HOST_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z](?:[a-z0-9-]*[a-z0-9])?")
_ENTRY = re.compile(r"(\*\.)?([a-z0-9.-]+)(?::([0-9]{1,5}))?")
# Cloud metadata services (AWS, GCP, Azure, Aliyun) are never an image, whatever the allowlist says.
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"]))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """Where a download connects: what the allowlist and the address checks decide on."""
    scheme: str
    host: str
    port: int


def parse_result_url(url: str) -> tuple[Target, requests.PreparedRequest]:
    """The target of a result URL and the request for it; refuse any URL that parsers could read differently."""
    match = _PLAIN_URL.fullmatch(url)
    if not match or not _plain_host(match[2]) or int(match[3] or 0) > 65535:
        raise _not_plain()
    scheme, host = match[1], match[2]
    target = Target(scheme, host, int(match[3] or DEFAULT_PORTS[scheme]))
    try:
        request = requests.Request("GET", url).prepare()
        # urllib3 parses the URL it sends; requests' adapter picks the pool (host, port) with urlsplit.
        parsed, split = urllib3.util.parse_url(request.url), urlsplit(request.url)
        seen = {(parsed.scheme, parsed.auth, parsed.host, parsed.port or DEFAULT_PORTS.get(parsed.scheme or "")),
                (split.scheme, split.username, split.hostname, split.port or DEFAULT_PORTS.get(split.scheme))}
    except (ValueError, requests.RequestException):
        raise _not_plain() from None
    if seen != {(scheme, None, host, target.port)}:
        raise _not_plain()
    return target, request


def _plain_host(host: str) -> bool:
    """A lowercase DNS name or a dotted-quad IPv4 address, in the one form every parser reads alike."""
    if _HOST_NAME.fullmatch(host):
        return True
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _not_plain() -> DownloadError:
    # The URL itself is not repeated: a confusing one may carry a password or a signature.
    return DownloadError("address_not_plain", retryable=False)


def allowlist_entry(target: Target, allowed: list[str]) -> str | None:
    """The entry that lets target through, an exact one before a wildcard; None if none does."""
    matching = [entry for entry in allowed if _entry_matches(entry, target)]
    exact = [entry for entry in matching if not _is_wildcard(entry)]
    return (exact or matching or [None])[0]


def _entry_matches(entry: str, target: Target) -> bool:
    """`host`, `host:port`, `*.domain` (subdomains only) or `*.domain:port`; no port means the default."""
    match = _ENTRY.fullmatch(entry.strip().lower())
    if not match:
        return False
    wildcard, name, port = match.groups()
    if int(port or DEFAULT_PORTS[target.scheme]) != target.port:
        return False
    return target.host.endswith(f".{name}") if wildcard else target.host == name


def _is_wildcard(entry: str) -> bool:
    return entry.strip().startswith("*.")


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Whether url is a plain http(s) URL whose host and port are on the allowlist (before any lookup)."""
    try:
        target, _ = parse_result_url(url)
    except DownloadError:
        return False
    return allowlist_entry(target, allowed) is not None


def address_allowed(address: str, may_be_private: bool) -> bool:
    """Whether a download may connect to address: a public one, or for an exact entry any but metadata."""
    ip = ipaddress.ip_address(address.partition("%")[0])  # a link-local IPv6 address may carry a %scope
    leads_to = _leads_to(ip)
    if any(each in METADATA_ADDRESSES for each in leads_to):
        return False
    return may_be_private or all(each.is_global and not each.is_multicast for each in leads_to)


def _leads_to(ip: IPAddress) -> list[IPAddress]:
    """ip and every IPv4 address it carries (mapped, compatible, 6to4, Teredo, NAT64), each a destination."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    carried = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64 or int(ip) >> 32 == 0:
        carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [ip, *(each for each in carried if each is not None)]


def _check_address(target: Target, address: str, may_be_private: bool) -> None:
    if not address_allowed(address, may_be_private):
        raise DownloadError("address_private", retryable=False, host=target.host)


class _Guard:
    """One download: where it may connect, and a deadline that shuts its sockets when it passes."""

    def __init__(self, target: Target, may_be_private: bool, seconds: float):
        self.target = target
        self.may_be_private = may_be_private
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._watched: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Guard":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._watched:
                sock.close()
            self._watched.clear()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self) -> None:
        if self.expired or self.remaining() <= 0:
            raise DownloadError("download_too_slow", retryable=True)

    def admit(self, host: str, port: int, sock: socket.socket) -> socket.socket:
        """sock, if it reached an address this download may use; called before a byte is sent."""
        try:
            if (host, port) != (self.target.host, self.target.port):
                raise DownloadError("host_not_allowed", retryable=False, host=host)
            _check_address(self.target, sock.getpeername()[0], self.may_be_private)
            with self._lock:
                self.check_time()
                # A duplicate stays usable however the connection later wraps (TLS) or closes its socket.
                self._watched.append(sock.dup())
        except BaseException:
            sock.close()
            raise
        return sock

    def _expire(self) -> None:
        # Shutting the sockets down ends a blocked read at once, even one fed a byte at a time.
        with self._lock:
            self.expired = True
            for sock in self._watched:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _CheckedConnection(urllib3.connection.HTTPConnection):
    """Checks the address it actually reached, since DNS may answer differently than at the pre-check."""

    def __init__(self, *args, guard: _Guard, **kwargs):
        self.guard = guard
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        return self.guard.admit(self.host, self.port, super()._new_conn())


class _CheckedHTTPSConnection(_CheckedConnection, urllib3.connection.HTTPSConnection):
    """The same check, made before the TLS handshake sends its first byte."""


class _CheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedConnection


class _CheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose pools make only checked connections, all bound to one download's guard."""

    def __init__(self, guard: _Guard):
        self.guard = guard
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": functools.partial(_CheckedHTTPPool, guard=self.guard),
            "https": functools.partial(_CheckedHTTPSPool, guard=self.guard),
        }


def _download_session(guard: _Guard) -> requests.Session:
    """A session for one download: checked connections, and no proxy or credentials from the environment."""
    session = requests.Session()
    session.trust_env = False
    adapter = _CheckedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header; refuse anything else before it is decoded."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise DownloadError("not_png", retryable=False)
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height or width * height > MAX_RESULT_PIXELS:
        raise DownloadError("impossible_size", retryable=False, width=width, height=height)
    return width, height


def fetch_result(result: Result) -> bytes:
    """The PNG bytes of one result, from its b64_json or its URL, guarded."""
    limit = settings.QWEN_DOWNLOAD_MAX_BYTES
    if result.b64_json:
        if len(result.b64_json) > limit * 4 // 3 + 4:
            raise DownloadError("too_large", retryable=False)
        try:
            data = base64.b64decode(result.b64_json, validate=True)
        except (binascii.Error, ValueError):
            raise DownloadError("unreadable", retryable=False) from None
        if len(data) > limit:
            raise DownloadError("too_large", retryable=False)
    else:
        data = _download(result.url, limit)
    check_png(data)
    return data


def _download(url: str, limit: int) -> bytes:
    target, request = parse_result_url(url)
    entry = allowlist_entry(target, settings.QWEN_DOWNLOAD_HOSTS)
    if entry is None:
        raise DownloadError("host_not_allowed", retryable=False, host=target.host)
    # Only a host named exactly (apisim on 127.0.0.1) may be private; a wildcard may match anything.
    may_be_private = not _is_wildcard(entry)
    with _Guard(target, may_be_private, settings.QWEN_DOWNLOAD_SECONDS) as guard:
        for address in _addresses(target):
            _check_address(target, address, may_be_private)
        try:
            return _fetch(request, guard, limit)
        except (OSError, urllib3.exceptions.HTTPError) as error:
            guard.check_time()
            raise DownloadError("download_interrupted", retryable=True, error=type(error).__name__) from None


def _addresses(target: Target) -> list[str]:
    try:
        found = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise DownloadError("host_not_found", retryable=True, host=target.host) from None
    return [info[4][0] for info in found]


def _fetch(request: requests.PreparedRequest, guard: _Guard, limit: int) -> bytes:
    guard.check_time()
    timeout = (min(settings.QWEN_CONNECT_TIMEOUT, guard.remaining()), guard.remaining())
    with (_download_session(guard) as session,
          session.send(request, stream=True, allow_redirects=False, proxies={}, timeout=timeout) as response):
        if response.status_code in {403, 404, 410}:
            raise DownloadError("link_expired", retryable=False)
        if response.status_code != 200:
            raise DownloadError("download_failed", status=response.status_code,
                                retryable=response.status_code >= 500 or response.status_code == 429)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise DownloadError("too_large", retryable=False)
        return _read_body(response.raw, guard, limit)


def _read_body(raw: urllib3.BaseHTTPResponse, guard: _Guard, limit: int) -> bytes:
    data = bytearray()
    # read1 returns as soon as any bytes arrive, so the deadline is looked at however slowly they come.
    while chunk := raw.read1(64 * 1024):
        guard.check_time()
        data += chunk
        if len(data) > limit:
            raise DownloadError("too_large", retryable=False)
        if not data.startswith(PNG_SIGNATURE[: len(data)]):
            raise DownloadError("not_png", retryable=False)
    guard.check_time()  # a socket shut at the deadline ends the body early, and looks like its end
    return bytes(data)
