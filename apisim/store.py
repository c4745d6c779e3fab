"""Signed, expiring image URLs backed by a bounded in-memory cache."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from . import paint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HUGE_BODY_BYTES = 200 * 1024 * 1024
BODY_KINDS = ("png", "not_png", "huge", "bomb", "truncated")


@dataclass(frozen=True)
class ImageEntry:
    prompt: str
    seed: int
    width: int
    height: int
    kind: str = "png"  # one of BODY_KINDS; anything but "png" comes from an image_body fault


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 50000, height: int = 50000) -> bytes:
    """A tiny PNG whose header claims an enormous image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64, 9)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


class ImageStore:
    """Remembers what each token should show; PNG bytes are cached and repainted on a miss."""

    def __init__(self, max_entries: int = 4096, max_cached: int = 256,
                 max_cached_bytes: int = 256 * 1024 * 1024) -> None:
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[str, ImageEntry] = OrderedDict()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._max_entries = max_entries
        self._max_cached = max_cached
        self._max_cached_bytes = max_cached_bytes
        self._lock = threading.Lock()

    def sign(self, token: str, expires: int) -> str:
        return hmac.new(self._secret, f"{token}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signature_ok(self, token: str, expires: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(token, expires), signature)

    def add(self, entry: ImageEntry, png: bytes | None = None) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._entries[token] = entry
            while len(self._entries) > self._max_entries:
                old, _ = self._entries.popitem(last=False)
                self._drop_cached(old)
            if png is not None:
                self._put_cached(token, png)
        return token

    def url(self, base: str, token: str, expires: int) -> str:
        return f"{base.rstrip('/')}/files/{token}.png?Expires={expires}&Signature={self.sign(token, expires)}"

    def entry(self, token: str) -> ImageEntry | None:
        with self._lock:
            return self._entries.get(token)

    def png(self, token: str, entry: ImageEntry) -> bytes:
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None:
                self._cache.move_to_end(token)
                return cached
        png = paint.paint(entry.prompt, entry.seed, entry.width, entry.height)
        with self._lock:
            self._put_cached(token, png)
        return png

    def _put_cached(self, token: str, png: bytes) -> None:
        self._drop_cached(token)
        self._cache[token] = png
        self._cached_bytes += len(png)
        while self._cache and (len(self._cache) > self._max_cached
                               or self._cached_bytes > self._max_cached_bytes):
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    def _drop_cached(self, token: str) -> None:
        old = self._cache.pop(token, None)
        if old is not None:
            self._cached_bytes -= len(old)


def now() -> int:
    return int(time.time())
