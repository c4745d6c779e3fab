"""What a download carries: the stored original with its parameters in a PNG iTXt chunk, and ZIPs
of many images, both streamed so that no file is ever held whole in memory or on disk.

The stored original never changes (its SHA-256 still matches the row): the chunk is added on the
way out, right after IHDR, in the text layout the AUTOMATIC1111 web UI writes and most image
browsers read.
"""

import itertools
import json
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator

from django.utils.text import slugify
from zipstream import ZIP_STORED, ZipStream

from gallery import storage
from gallery.client import PNG_SIGNATURE
from gallery.models import Image

PROMPT_WORDS = 6


def parameters_text(image: Image) -> str:
    """The prompt, then `Negative prompt: …`, then `Seed: …, Size: WxH, Model: …` and the revised prompt."""
    generation = image.generation
    lines = [generation.prompt]
    if generation.negative_prompt:
        lines.append(f"Negative prompt: {generation.negative_prompt}")
    settings = [f"Seed: {image.seed}", f"Size: {image.width}x{image.height}", f"Model: {image.model}"]
    if image.revised_prompt:
        # Quoted as A1111 quotes a value with commas or newlines in it.
        settings.append(f"Revised prompt: {json.dumps(image.revised_prompt, ensure_ascii=False)}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed international-text chunk: UTF-8, so Chinese prompts survive."""
    data = keyword.encode("latin-1") + b"\x00" + b"\x00\x00" + b"\x00" + b"\x00" + text.encode("utf-8")
    body = b"iTXt" + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


TEXT_CHUNKS = {b"tEXt", b"iTXt", b"zTXt"}


def with_parameters(chunks: Iterable[bytes], text: str) -> Iterator[bytes]:
    """The PNG in chunks, with a `parameters` iTXt chunk right after IHDR; nothing else changes."""
    return rewrite(chunks, add_text=text)


def without_text(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The PNG without any text chunk, in case the provider wrote the prompt into one."""
    return rewrite(chunks, drop_text=True)


def rewrite(chunks: Iterable[bytes], *, add_text: str | None = None, drop_text: bool = False) -> Iterator[bytes]:
    """Stream a PNG chunk by chunk, adding our text after IHDR and/or dropping text chunks.

    Only chunk headers are held in memory; chunk bodies pass through in the pieces they came in.
    """
    reader = _Reader(chunks)
    if reader.take(8) != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    yield PNG_SIGNATURE
    first = True
    while header := reader.take(8):
        length, kind = struct.unpack(">I4s", header)
        if first and (kind != b"IHDR" or length != 13):
            raise ValueError("not a PNG with its IHDR first")
        if drop_text and kind in TEXT_CHUNKS:
            reader.skip(length + 4)
        else:
            yield header
            yield from reader.pieces(length + 4)  # the body and its CRC
        if first and add_text is not None:
            yield itxt_chunk("parameters", add_text)
        first = False


class _Reader:
    """Exact-length reads over an iterator of byte pieces of any size."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = b""

    def _fill(self) -> bool:
        piece = next(self._chunks, None)
        if piece is None:
            return False
        self._buffer += piece
        return True

    def take(self, size: int) -> bytes:
        """Exactly size bytes, or b"" at a clean end; a PNG cut short is an error."""
        while len(self._buffer) < size and self._fill():
            pass
        if not self._buffer:
            return b""
        if len(self._buffer) < size:
            raise ValueError("the PNG ends in the middle of a chunk")
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def pieces(self, size: int) -> Iterator[bytes]:
        """The next size bytes, as they come."""
        while size:
            if not self._buffer and not self._fill():
                raise ValueError("the PNG ends in the middle of a chunk")
            piece, self._buffer = self._buffer[:size], self._buffer[size:]
            size -= len(piece)
            yield piece

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass


def original(image: Image, include_parameters: bool) -> Iterator[bytes]:
    """The stored original with its parameters added, or without any text at all when they must stay hidden.

    Storage is read here, before the caller answers, so a missing file raises StorageError now
    rather than cutting a response already sent as 200.
    """
    stored = storage.chunks(image.file)
    chunks = itertools.chain([next(stored, b"")], stored)
    return with_parameters(chunks, parameters_text(image)) if include_parameters else without_text(chunks)


def download_name(image: Image, number: int) -> str:
    """`<number>-<prompt words>-<seed>.png`, so a folder of downloads says what each image is."""
    words = slugify(" ".join(image.generation.prompt.split()[:PROMPT_WORDS]), allow_unicode=True)[:60].strip("-")
    return f"{number:03d}-{words or 'image'}-{image.seed}.png"


def zip_of(images: Iterable[Image], include_parameters: bool,
           name: Callable[[Image, int], str] = download_name) -> ZipStream:
    """A ZIP of the images in order; each file is read from storage only when the ZIP reaches it."""
    archive = ZipStream(compress_type=ZIP_STORED)
    for number, image in enumerate(images, start=1):
        archive.add(_lazy(image, include_parameters), name(image, number))
    return archive


def _lazy(image: Image, include_parameters: bool) -> Iterator[bytes]:
    yield from original(image, include_parameters)
