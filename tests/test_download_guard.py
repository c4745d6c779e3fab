"""The result-download guard in gallery/client.py, over real sockets: a plain TCP server on 127.0.0.1
keeps every byte it is sent, and each test shows what reaches it. Only the resolver is faked, by
patching socket.getaddrinfo; every connection is real."""

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable

import hypothesis
import PIL.Image
import pytest
import requests
from hypothesis import strategies as st

from gallery.client import DownloadError, Result, address_allowed, fetch_result, host_allowed

REAL_GETADDRINFO = socket.getaddrinfo
PUBLIC_ADDRESS = "47.101.1.1"  # an Aliyun address; the fake resolver answers it, nothing connects to it
OSS_HOST = "dashscope-result-sh.oss-cn-shanghai.aliyuncs.com"
PROBE = b"PROBE / HTTP/1.1\r\n\r\n"
TRICKLE_GIVES_UP = 5  # seconds: a trickling answer stops then, so a broken guard fails the test, not hangs it


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 3), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


PNG = tiny_png()

type Answer = Callable[[socket.socket, threading.Event], None]


def head(length: int, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


def answer_png(conn: socket.socket, stopping: threading.Event) -> None:
    conn.sendall(head(len(PNG)) + PNG)


def trickle(head_part: bytes, slow_part: bytes) -> Answer:
    """An answer that sends head_part at once, then slow_part one byte every 0.2 s."""
    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(head_part)
        gives_up = time.monotonic() + TRICKLE_GIVES_UP
        for index in range(len(slow_part)):
            if stopping.wait(0.2) or time.monotonic() > gives_up:
                return
            conn.sendall(slow_part[index:index + 1])
    return answer


def redirect_to(url: str) -> Answer:
    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(head(0, "302 Found", f"Location: {url}\r\n"))
    return answer


def read_request(conn: socket.socket) -> bytes:
    """The request's head, or the first bytes of anything that is not HTTP (a TLS hello)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := conn.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data or not data[:1].isalpha():
                break
    return data


class Listener:
    """A plain TCP server on 127.0.0.1, one connection at a time, that keeps every byte it is sent."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.stopping = threading.Event()
        self._probed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def settle(self) -> None:
        """Return once every connection made so far has been read: they are served in order."""
        self._probed.clear()
        with socket.socket() as probe:  # not create_connection: a test may have faked the resolver
            probe.connect(("127.0.0.1", self.port))
            probe.sendall(PROBE)
        assert self._probed.wait(10), "the listener stopped serving"

    def close(self) -> None:
        self.stopping.set()
        self._thread.join(10)
        self.server.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = read_request(conn)
                if request == PROBE:
                    self._probed.set()
                    continue
                self.connections += 1
                self.received += request
                if request:
                    with contextlib.suppress(OSError):
                        self.answer(conn, self.stopping)


@pytest.fixture
def listen():
    started = []

    def start(answer: Answer = answer_png) -> Listener:
        started.append(Listener(answer))
        return started[-1]

    yield start
    for listener in started:
        listener.close()


@pytest.fixture
def listener(listen) -> Listener:
    return listen()


def resolve_to(*addresses: str, port: int) -> Callable:
    """A fake resolver: every name, at any port, leads to these addresses at `port`."""
    def getaddrinfo(host, _port, *args, **kwargs):
        return [info for address in addresses for info in REAL_GETADDRINFO(address, port, *args, **kwargs)]
    return getaddrinfo


def rebinding(first: str, then: str, port: int, lookups: list[str]) -> Callable:
    """A fake resolver that answers `first` once, then `then`: DNS rebinding."""
    def getaddrinfo(host, _port, *args, **kwargs):
        lookups.append(host)
        return REAL_GETADDRINFO(first if len(lookups) == 1 else then, port, *args, **kwargs)
    return getaddrinfo


def download(url: str) -> bytes:
    return fetch_result(Result(url=url, b64_json="", revised_prompt=""))


def refusal(url: str) -> DownloadError:
    with pytest.raises(DownloadError) as caught:
        download(url)
    return caught.value


# URLs that parsers read differently


CONFUSING_URLS = {
    "backslash": ("http://127.0.0.1:{port}\\@" + OSS_HOST + "/x.png", ["*.aliyuncs.com"]),
    "userinfo": ("http://" + OSS_HOST + "@127.0.0.1:{port}/x.png", ["*.aliyuncs.com", "127.0.0.1:{port}"]),
    "password": ("http://designer:sk-canary-secret@127.0.0.1:{port}/x.png", ["127.0.0.1:{port}"]),
    "percent-encoded-host": ("http://127.0.0.%31:{port}/x.png", ["127.0.0.1:{port}"]),
    "ipv6-mapped": ("http://[::ffff:127.0.0.1]:{port}/x.png", ["127.0.0.1:{port}", "[::ffff:127.0.0.1]:{port}"]),
    "ipv6-loopback": ("http://[::1]:{port}/x.png", ["[::1]:{port}"]),
    "decimal-integer": ("http://2130706433:{port}/x.png", ["127.0.0.1:{port}", "2130706433:{port}"]),
    "hex-integer": ("http://0x7f000001:{port}/x.png", ["127.0.0.1:{port}", "0x7f000001:{port}"]),
    "hex-dotted": ("http://0x7f.1:{port}/x.png", ["127.0.0.1:{port}", "0x7f.1:{port}"]),
    "octal": ("http://0177.0.0.1:{port}/x.png", ["127.0.0.1:{port}", "0177.0.0.1:{port}"]),
    "short": ("http://127.1:{port}/x.png", ["127.0.0.1:{port}", "127.1:{port}"]),
    "trailing-dot": ("http://" + OSS_HOST + ".:{port}/x.png", ["*.aliyuncs.com:{port}"]),
    "uppercase-scheme": ("HTTP://127.0.0.1:{port}/x.png", ["127.0.0.1:{port}"]),
    "mixed-case-host": ("http://LocalHost:{port}/x.png", ["localhost:{port}"]),
    "non-digit-port": ("http://127.0.0.1:{port}x/x.png", ["127.0.0.1:{port}"]),
    "empty-host": ("http://:{port}/x.png", ["127.0.0.1:{port}"]),
    "control-character": ("http://127.0.0.1:{port}/x.png\r\nX-Injected: 1", ["127.0.0.1:{port}"]),
    "space": ("http://127.0.0.1:{port} /x.png", ["127.0.0.1:{port}"]),
    "other-scheme": ("ftp://127.0.0.1:{port}/x.png", ["127.0.0.1:{port}"]),
}


@pytest.mark.parametrize("url, hosts", CONFUSING_URLS.values(), ids=CONFUSING_URLS.keys())
def test_confusing_url_is_refused_before_connecting(url, hosts, listener, settings, monkeypatch):
    # given every name resolves to the listener, and the allowlist names where the URL seems to go
    monkeypatch.setattr(socket, "getaddrinfo", resolve_to("127.0.0.1", port=listener.port))
    settings.QWEN_DOWNLOAD_HOSTS = [host.format(port=listener.port) for host in hosts]
    url = url.format(port=listener.port)

    # when
    error = refusal(url)

    # then it is refused for its form, says nothing of the URL, and the listener saw no connection
    assert "not a plain web address" in str(error)
    assert not error.retryable
    assert "sk-canary" not in str(error) and "@" not in str(error)
    listener.settle()
    assert (listener.connections, listener.received) == (0, b"")


def test_a_plain_client_follows_the_backslash_url_to_the_listener(listener):
    # The backslash case is live: requests itself goes to 127.0.0.1 while urlsplit sees the OSS host.
    url = f"http://127.0.0.1:{listener.port}\\@{OSS_HOST}/x.png"

    with requests.Session() as plain:
        plain.trust_env = False  # straight there, whatever proxy this machine has
        plain.get(url, timeout=5)

    listener.settle()
    assert listener.received.startswith(b"GET /%5C@" + OSS_HOST.encode())


def test_wildcard_with_another_port_is_refused_before_connecting(listener, settings, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", resolve_to(PUBLIC_ADDRESS, port=listener.port))
    settings.QWEN_DOWNLOAD_HOSTS = ["*.aliyuncs.com"]

    error = refusal(f"http://{OSS_HOST}:{listener.port}/x.png")

    assert "not on the allowed list" in str(error)
    listener.settle()
    assert listener.connections == 0


# Names that lead to private addresses


def test_wildcard_name_resolving_to_loopback_is_refused_before_connecting(listener, settings, monkeypatch):
    # given an OSS-looking name whose DNS answers 127.0.0.1
    monkeypatch.setattr(socket, "getaddrinfo", resolve_to("127.0.0.1", port=listener.port))
    settings.QWEN_DOWNLOAD_HOSTS = [f"*.aliyuncs.com:{listener.port}"]

    # when
    error = refusal(f"http://{OSS_HOST}:{listener.port}/x.png")

    # then
    assert "private network" in str(error)
    assert not error.retryable
    listener.settle()
    assert listener.connections == 0


def test_wildcard_name_with_any_private_address_is_refused(listener, settings, monkeypatch):
    # given a name with a public and a private address
    monkeypatch.setattr(socket, "getaddrinfo", resolve_to(PUBLIC_ADDRESS, "127.0.0.1", port=listener.port))
    settings.QWEN_DOWNLOAD_HOSTS = [f"*.aliyuncs.com:{listener.port}"]

    assert "private network" in str(refusal(f"http://{OSS_HOST}:{listener.port}/x.png"))
    listener.settle()
    assert listener.connections == 0


def test_dns_rebinding_is_refused_by_the_connection_before_a_byte_is_sent(listener, settings, monkeypatch):
    # given DNS that answers a public address to the check, then 127.0.0.1 to the connection
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding(PUBLIC_ADDRESS, "127.0.0.1", listener.port, lookups))
    settings.QWEN_DOWNLOAD_HOSTS = [f"*.aliyuncs.com:{listener.port}"]

    # when
    error = refusal(f"http://{OSS_HOST}:{listener.port}/x.png")

    # then the connection reached the listener, saw where it was, and sent nothing
    assert "private network" in str(error)
    assert lookups == [OSS_HOST, OSS_HOST]
    listener.settle()
    assert (listener.connections, listener.received) == (1, b"")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1", "0.0.0.0", "100.64.0.1",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1%eth0", "fc00::1", "ff0e::1",
    "::ffff:10.0.0.1", "::7f00:1", "64:ff9b::a9fe:a9fe", "2002:c0a8:101::1",
])
def test_non_public_address_is_refused_for_a_wildcard(address):
    assert not address_allowed(address, may_be_private=False)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                     "::ffff:169.254.169.254"])
def test_cloud_metadata_is_refused_even_for_an_exact_entry(address):
    assert not address_allowed(address, may_be_private=True)


@pytest.mark.parametrize("address", [PUBLIC_ADDRESS, "2408:4000::1", "64:ff9b::2f65:101"])
def test_public_address_is_allowed_for_a_wildcard(address):
    assert address_allowed(address, may_be_private=False)


# An exactly listed private host, as apisim is


def test_exactly_listed_loopback_host_downloads_a_png(listener, settings):
    settings.QWEN_DOWNLOAD_HOSTS = ["*.aliyuncs.com", f"127.0.0.1:{listener.port}"]

    data = download(f"http://127.0.0.1:{listener.port}/files/a.png?Expires=1&Signature=abc")

    assert data == PNG
    assert listener.received.startswith(b"GET /files/a.png?Expires=1&Signature=abc HTTP/1.1\r\n")


def test_proxy_from_the_environment_is_not_used(listen, settings, monkeypatch):
    # given a proxy in the environment that would answer too
    proxy, origin = listen(), listen()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    settings.QWEN_DOWNLOAD_HOSTS = [f"127.0.0.1:{origin.port}"]

    # then the download goes straight to the origin
    assert download(f"http://127.0.0.1:{origin.port}/a.png") == PNG
    proxy.settle()
    assert proxy.connections == 0


def test_redirect_is_not_followed(listen, settings):
    elsewhere = listen()
    origin = listen(redirect_to(f"http://127.0.0.1:{elsewhere.port}/a.png"))
    settings.QWEN_DOWNLOAD_HOSTS = [f"127.0.0.1:{origin.port}", f"127.0.0.1:{elsewhere.port}"]

    with pytest.raises(DownloadError, match=r"failed \(302\)"):
        download(f"http://127.0.0.1:{origin.port}/a.png")
    elsewhere.settle()
    assert elsewhere.connections == 0


# The deadline for the whole download


@pytest.mark.parametrize("answer", [trickle(head(len(PNG)), PNG), trickle(b"", head(len(PNG)) + PNG)],
                         ids=["body", "headers"])
def test_server_sending_a_byte_at_a_time_is_cut_off_at_the_deadline(answer, listen, settings):
    # given a server that sends one byte every 0.2 s, and a deadline of 1 s
    listener = listen(answer)
    settings.QWEN_DOWNLOAD_HOSTS = [f"127.0.0.1:{listener.port}"]
    settings.QWEN_DOWNLOAD_SECONDS = 1

    # when
    started = time.monotonic()
    error = refusal(f"http://127.0.0.1:{listener.port}/a.png")
    elapsed = time.monotonic() - started

    # then it is cut off at the deadline, not after the last byte
    assert "took too long" in str(error)
    assert error.retryable
    assert 0.9 <= elapsed < 1.8


# Allowlist ports


def test_wildcard_refuses_a_port_it_does_not_name():
    assert not host_allowed(f"http://{OSS_HOST}:8080/x.png", ["*.aliyuncs.com"])


def test_wildcard_with_a_port_allows_that_port_only():
    assert host_allowed(f"http://{OSS_HOST}:8080/x.png", ["*.aliyuncs.com:8080"])
    assert not host_allowed(f"http://{OSS_HOST}/x.png", ["*.aliyuncs.com:8080"])


def test_wildcard_allows_the_default_port_of_either_scheme():
    assert host_allowed(f"http://{OSS_HOST}/x.png", ["*.aliyuncs.com"])
    assert host_allowed(f"https://{OSS_HOST}:443/x.png", ["*.aliyuncs.com"])


def test_wildcard_matches_subdomains_only():
    assert not host_allowed("https://aliyuncs.com/x.png", ["*.aliyuncs.com"])


# Any URL at all


def near_misses(port: int) -> st.SearchStrategy[str]:
    """URLs built from pieces that each nearly say http://127.0.0.1:port, and that text mutates."""
    hosts = st.sampled_from(["127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "localhost", "[::1]",
                             "[::ffff:127.0.0.1]", "127.0.0.1.", "%31%32%37.0.0.1", OSS_HOST, "aliyuncs.com",
                             "a.aliyuncs.com", OSS_HOST.upper(), ""])
    ports = st.sampled_from([f":{port}", "", f":0{port}", f":{port}\\", ":80", ":443", f":{port} ", ":"])
    tails = st.sampled_from(["", "/x.png", "\\x.png", "?a=1", "#f", "/x.png?@evil", f"\\@{OSS_HOST}/"])
    plain = st.builds("{}://{}{}{}".format, st.sampled_from(["http", "https"]), hosts, ports, tails)
    odd = st.tuples(st.sampled_from(["http", "https", "HTTP", "hTtp", "ftp", ""]),
                    st.sampled_from(["://", ":/", ":\\\\", "://\\", "///"]),
                    st.sampled_from(["", "u@", "u:p@", f"{OSS_HOST}@", f"127.0.0.1:{port}@"]),
                    hosts, ports, tails).map("".join)
    exact = f"http://127.0.0.1:{port}/x.png"
    mutated = st.builds(lambda at, text: exact[:at] + text + exact[at:],
                        st.integers(0, len(exact)), st.text(max_size=3))
    return st.one_of(st.text(max_size=40), plain, odd, mutated)


def is_the_listed_url(url: str, port: int) -> bool:
    """Whether url names 127.0.0.1:port plainly; an entry names a host and port, for http and https alike."""
    authority = f"127.0.0.1:{port}"
    for scheme in ("http", "https"):
        prefix = f"{scheme}://{authority}"
        if url.startswith(prefix) and url[len(prefix):][:1] in {"", "/", "?", "#"}:
            return True
    return False


# The fixtures hold the listener and the fake resolver, which every example shares on purpose.
@hypothesis.settings(max_examples=200, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_any_url_reaches_the_listener_only_when_it_is_the_listed_one(data, listener, settings, monkeypatch):
    # given every name resolves to the listener, at whatever port asked for
    monkeypatch.setattr(socket, "getaddrinfo", resolve_to("127.0.0.1", port=listener.port))
    settings.QWEN_DOWNLOAD_HOSTS = ["*.aliyuncs.com", f"127.0.0.1:{listener.port}"]
    url = data.draw(near_misses(listener.port))
    before = listener.connections

    # when
    with contextlib.suppress(DownloadError):
        download(url)

    # then
    listener.settle()
    if listener.connections > before:
        assert is_the_listed_url(url, listener.port), f"{url!r} reached the listener"
