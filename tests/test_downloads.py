"""Downloads: the parameters written into a PNG iTXt chunk on the way out, the stored original untouched,
and ZIPs streamed from S3."""

import hashlib
import io
import struct
import zipfile
import zlib

import PIL.Image
import PIL.PngImagePlugin
import pytest
from django.test import Client

from gallery import downloads, storage
from gallery.models import Generation, Image, Rendition
from tests.test_gallery import make_image

PROMPT = "一只小猫在草地上奔跑，电影感, golden hour"
NEGATIVE = "模糊, low quality"
REVISED = "一只橘色小猫在清晨的草地上奔跑，逆光，电影感构图"


def make_png(width: int = 96, height: int = 64, colour=(200, 90, 40)) -> bytes:
    """A real PNG with chunks of its own besides the pixels (a text and a physical size), as providers' may have."""
    picture = PIL.Image.new("RGB", (width, height), colour)
    for x in range(width):
        picture.putpixel((x, x * height // width), (20, 200, 120))
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Software", "apisim")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", pnginfo=info, dpi=(72, 72))
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC on the way."""
    assert data[:8] == downloads.PNG_SIGNATURE
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body, crc = data[at + 4:at + 8], data[at + 8:at + 8 + length], data[at + 8 + length:at + 12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def store_image(owner, prompt: str = PROMPT, *, negative: str = NEGATIVE, revised: str = REVISED, seed: int = 42,
                model: str = "wan2.2-t2i-flash", generation: Generation | None = None, index: int = 0,
                size: tuple[int, int] = (96, 64), colour=(200, 90, 40)) -> Image:
    """An Image row whose original and WebP renditions really are in storage (moto's S3 in the tests)."""
    width, height = size
    generation = generation or Generation.objects.create(
        owner=owner, prompt=prompt, negative_prompt=negative, model=model, width=width, height=height, seed=seed,
        n=1, status="succeeded")
    data = make_png(width, height, colour)
    key = storage.original_key(generation.pk, index)
    storage.put(key, data)
    image = Image.objects.create(
        generation=generation, owner=owner, model=model, shape=generation.size.shape, index=index, file=key,
        width=width, height=height, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        seed=generation.seed_for(index), revised_prompt=revised)
    for spec, edge in ((Rendition.Spec.GRID, 512), (Rendition.Spec.CARD, 48)):
        picture = PIL.Image.open(io.BytesIO(data)).convert("RGB")
        picture.thumbnail((edge, edge))
        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", quality=80)
        rendition_key = storage.rendition_key(generation.pk, index, spec)
        storage.put(rendition_key, buffer.getvalue())
        Rendition.objects.create(image=image, spec=spec, file=rendition_key, width=picture.width,
                                 height=picture.height, bytes=buffer.tell())
    return image


def test_parameters_text_is_the_a1111_layout_with_chinese_intact(alice):
    # given an image with a Chinese prompt, a negative prompt and a revised prompt
    image = make_image(alice, PROMPT, revised=REVISED, negative=NEGATIVE, width=1328, height=1328, seed=42)

    # when its parameters are written out
    text = downloads.parameters_text(image)

    # then they read as A1111 writes them: prompt, negative prompt, then the settings line
    assert text.split("\n") == [
        PROMPT,
        f"Negative prompt: {NEGATIVE}",
        f'Seed: 42, Size: 1328x1328, Model: wan2.2-t2i-flash, Revised prompt: "{REVISED}"',
    ]


def test_parameters_text_leaves_out_what_the_image_does_not_have(alice):
    image = make_image(alice, "a red kite over the sea", seed=7, width=1024, height=768)

    assert downloads.parameters_text(image) == (
        "a red kite over the sea\nSeed: 7, Size: 1024x768, Model: wan2.2-t2i-flash")


def test_the_parameters_chunk_is_read_by_pillow_and_nothing_else_changes():
    # given a PNG with chunks of its own
    original = make_png()
    text = f"{PROMPT}\nNegative prompt: {NEGATIVE}\nSeed: 42, Size: 96x64, Model: wan2.2-t2i-flash"

    # when the parameters are added on the way out
    written = b"".join(downloads.with_parameters([original], text))

    # then Pillow reads them, the pixels are the same, and every other chunk is unchanged and in place
    with PIL.Image.open(io.BytesIO(written)) as picture, PIL.Image.open(io.BytesIO(original)) as before:
        assert picture.info["parameters"] == text
        assert picture.tobytes() == before.tobytes()
    added = png_chunks(written)
    assert added[0][0] == b"IHDR" and added[1][0] == b"iTXt"
    assert added[1][1] == b"parameters\x00\x00\x00\x00\x00" + text.encode("utf-8")
    assert added[:1] + added[2:] == png_chunks(original)


@pytest.mark.parametrize("piece", [1, 7, 33, 10**6])
def test_the_chunk_goes_in_the_same_place_however_storage_cuts_the_file(piece):
    original = make_png()
    pieces = [original[at:at + piece] for at in range(0, len(original), piece)]

    written = b"".join(downloads.with_parameters(pieces, "a prompt"))

    assert written == b"".join(downloads.with_parameters([original], "a prompt"))


@pytest.mark.parametrize("data", [
    b"",
    b"GIF89a" + b"\x00" * 40,
    downloads.PNG_SIGNATURE + b"\x00\x00\x00\x0dIDAT" + b"\x00" * 30,
    downloads.PNG_SIGNATURE[:5],
], ids=["empty", "gif", "no-ihdr-first", "cut-short"])
def test_a_file_that_is_not_a_png_is_refused(data):
    with pytest.raises(ValueError):
        b"".join(downloads.with_parameters([data], "a prompt"))


def test_a_jpeg_is_refused():
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8)).save(buffer, "JPEG")

    with pytest.raises(ValueError):
        b"".join(downloads.with_parameters([buffer.getvalue()], "a prompt"))


def test_downloading_from_storage_leaves_the_stored_original_as_it_was(alice, s3):
    # given an original in S3
    image = store_image(alice)

    # when it is downloaded with its parameters
    written = b"".join(downloads.original(image, include_parameters=True))

    # then the download carries them, and the stored file still matches the row's SHA-256
    assert PIL.Image.open(io.BytesIO(written)).info["parameters"] == downloads.parameters_text(image)
    assert hashlib.sha256(storage.read(image.file)).hexdigest() == image.sha256


def test_a_download_that_hides_parameters_drops_every_text_chunk_and_nothing_else(alice, s3):
    # given an original whose provider wrote a text chunk of its own (make_png adds "Software")
    image = store_image(alice)
    stored = png_chunks(storage.read(image.file))
    assert any(kind == b"tEXt" for kind, _ in stored)

    # when it is downloaded with its parameters hidden, streamed in awkward pieces
    data = storage.read(image.file)
    pieces = [data[i:i + 7] for i in range(0, len(data), 7)]
    written = b"".join(downloads.without_text(pieces))

    # then no text chunk is left, every other chunk is unchanged, and the pixels are the same
    assert png_chunks(written) == [(kind, body) for kind, body in stored if kind not in downloads.TEXT_CHUNKS]
    assert PIL.Image.open(io.BytesIO(written)).tobytes() == PIL.Image.open(io.BytesIO(data)).tobytes()
    assert b"".join(downloads.original(image, include_parameters=False)) == written


def test_a_png_cut_short_is_refused_not_passed_on(alice):
    data = make_png()
    with pytest.raises(ValueError):
        b"".join(downloads.without_text([data[:-5]]))


def test_a_zip_streams_the_originals_from_s3_with_names_that_say_what_they_are(alice, s3):
    # given three images of one generation in S3
    generation = Generation.objects.create(owner=alice, prompt="红色风筝 over the sea", model="wan2.2-t2i-flash",
                                           width=96, height=64, seed=42, n=3, status="succeeded")
    images = [store_image(alice, generation=generation, index=i, colour=(40 * i, 80, 160)) for i in range(3)]

    # when they are zipped
    archive = zipfile.ZipFile(io.BytesIO(b"".join(downloads.zip_of(images, include_parameters=True))))

    # then the ZIP is valid, its members are in order and named for what they are
    assert archive.testzip() is None
    assert archive.namelist() == ["001-红色风筝-over-the-sea-42.png", "002-红色风筝-over-the-sea-43.png",
                                  "003-红色风筝-over-the-sea-44.png"]
    # and each member is the stored original with the parameters chunk added, nothing else changed
    for name, image in zip(archive.namelist(), images, strict=True):
        member, stored = archive.read(name), storage.read(image.file)
        assert PIL.Image.open(io.BytesIO(member)).info["parameters"] == downloads.parameters_text(image)
        chunks = png_chunks(member)
        assert chunks[:1] + chunks[2:] == png_chunks(stored)


def test_the_team_download_carries_the_parameters_under_a_name_that_says_what_it_is(client, alice, s3):
    # given an image in S3, and its maker's colleague signed in
    image = store_image(alice, "a red kite over the sea", seed=42)
    client.force_login(alice)

    # when Download is clicked on the image page
    response = client.get(f"/images/{image.pk}/original/", {"download": "1"})

    # then the original arrives with its parameters, as an attachment named for it
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'attachment; filename="001-a-red-kite-over-the-sea-42.png"'
    body = b"".join(response.streaming_content)
    assert PIL.Image.open(io.BytesIO(body)).info["parameters"] == downloads.parameters_text(image)
    assert hashlib.sha256(storage.read(image.file)).hexdigest() == image.sha256


def test_a_download_whose_file_is_missing_answers_503_not_a_cut_off_200(alice, s3):
    # given an image row whose original has gone from storage
    image = store_image(alice)
    storage.delete([image.file])
    client = Client()
    client.force_login(alice)

    # when it is downloaded
    response = client.get(f"/images/{image.pk}/original/", {"download": "1"})

    # then the answer says so before any byte of a PNG is promised
    assert response.status_code == 503
    assert "could not be read from storage" in response.content.decode()


def test_a_zip_of_200_images_streams_in_the_memory_of_a_zip_of_10(alice, s3):
    import os
    import tracemalloc

    from gallery.models import Collection

    # given 200 images of 64 kB each in S3 (noise, so they don't compress), and collections of 10 and of all
    side = 148
    data = io.BytesIO()
    PIL.Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(data, "PNG", compress_level=0)
    data = data.getvalue()
    generation = Generation.objects.create(owner=alice, prompt="内存 flat zip", model="wan2.2-t2i-flash", width=side,
                                           height=side, seed=1, n=1, status="succeeded")
    images = []
    for index in range(200):
        key = f"bench/{generation.pk}/{index}.png"
        storage.put(key, data)
        images.append(Image(generation=generation, owner=alice, model=generation.model, shape="square", index=index,
                            file=key, width=side, height=side, bytes=len(data), sha256="0" * 64, seed=index))
    Image.objects.bulk_create(images)
    small, large = Collection.objects.create(owner=alice, name="10"), Collection.objects.create(owner=alice, name="200")
    ids = list(Image.objects.filter(generation=generation).order_by("index").values_list("pk", flat=True))
    small.add(ids[:10])
    large.add(ids)

    def streamed_peak(collection) -> tuple[int, int]:
        archive = downloads.zip_of(collection.ordered_images().select_related("generation"), include_parameters=True)
        tracemalloc.start()
        try:
            size = sum(len(piece) for piece in archive)
            return size, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # when each ZIP is streamed to the end
    small_size, small_peak = streamed_peak(small)
    large_size, large_peak = streamed_peak(large)

    # then the large one is twenty times the bytes, yet its peak memory is about the small one's
    assert large_size > 19 * small_size > 19 * 10 * len(data)
    assert large_peak < 2 * small_peak + 1024 * 1024, (small_peak, large_peak)
    assert large_peak < large_size / 8
