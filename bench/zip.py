"""A collection's ZIP through a share link, streamed by gunicorn: time to first byte, total time,
and the web worker's peak memory for 10 images and for 200.

Run from the project root: .venv/bin/python bench/zip.py [--images 200] [--small 10] [--megabytes 2]

Makes its own database (qwenstudio_bench_zip) and a temporary media folder with N PNGs of
about --megabytes each (noise, so they don't compress), one collection of the first --small
images and one of all N, a share link to each, then starts gunicorn (one sync worker,
production settings) and downloads both ZIPs over HTTP. Peak memory is the worker's VmHWM,
read from /proc after each download: flat means the ZIP never sits in memory whole.
"""

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from pipeline import free_port  # bench/pipeline.py

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/qwenstudio_bench_zip"


def production_env(media: Path) -> dict:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "AWS_"))}
    return env | {
        "DJANGO_SETTINGS_MODULE": "qwenstudio.settings", "DATABASE_URL": DATABASE_URL, "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-zip-" + "x" * 50, "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SSL_REDIRECT": "false", "DJANGO_SECURE_COOKIES": "false", "QWEN_BENCH_MEDIA": str(media),
    }


def prepare(media: Path, count: int, small: int, megabytes: float) -> tuple[str, str]:
    """Rows, files, two collections and their share links; returns the two tokens."""
    os.environ.update(production_env(media))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    settings.STORAGES["default"] = {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                    "OPTIONS": {"location": str(media), "allow_overwrite": True}}
    call_command("ensure_database")
    call_command("migrate", verbosity=0)
    import PIL.Image

    from gallery import storage
    from gallery.models import Collection, Generation, Image, ShareLink

    Generation.objects.all().delete()
    Collection.objects.all().delete()
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    picture = PIL.Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    data = buffer.getvalue()
    images = []
    for number in range(count):
        generation = Generation.objects.create(
            owner=owner, prompt=f"bench image {number} 水墨山水 misty mountains", model="wan2.2-t2i-flash",
            width=side, height=side, seed=number, status="succeeded")
        key = storage.original_key(generation.pk, 0)
        storage.put(key, data)
        images.append(Image.objects.create(
            generation=generation, owner=owner, model=generation.model, shape="square", index=0, file=key,
            width=side, height=side, bytes=len(data), sha256="0" * 64, seed=number))
    tokens = []
    for size in (small, count):
        collection = Collection.objects.create(owner=owner, name=f"bench {size}")
        collection.add([image.pk for image in images[:size]])
        link = ShareLink.create(owner, collection, expiry=ShareLink.Expiry.DAY, show_parameters=True,
                                allow_downloads=True)
        tokens.append(link.token)
    return tokens[0], tokens[1]


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def download(url: str) -> tuple[float, float, int, bytes]:
    started = time.perf_counter()
    first = None
    received = 0
    tail = b""
    with requests.get(url, stream=True, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(256 * 1024):
            if first is None:
                first = time.perf_counter() - started
            received += len(chunk)
            tail = (tail + chunk)[-65536:]
    return first or 0.0, time.perf_counter() - started, received, tail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=2.0)
    options = parser.parse_args()
    media = Path(tempfile.mkdtemp(prefix="qwenstudio-zip-"))
    try:
        small_token, large_token = prepare(media, options.images, options.small, options.megabytes)
        port = free_port()
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "bench.zip_wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--timeout", "600"], cwd=ROOT, env=production_env(media),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    requests.get(f"{base}/s/warm-up/", timeout=2)
                    break
                except requests.ConnectionError:
                    time.sleep(0.2)
            worker = worker_pid(server.pid)
            idle = peak_kib(worker)
            rows = []
            for label, token in ((options.small, small_token), (options.images, large_token)):
                ttfb, total, size, tail = download(f"{base}/s/{token}/download/")
                rows.append((label, ttfb, total, size, peak_kib(worker)))
                assert tail[-22:-18] == b"PK\x05\x06" or b"PK\x06\x06" in tail, "not a complete ZIP"
        finally:
            server.terminate()
            server.wait(10)
    finally:
        shutil.rmtree(media, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; images of {options.megabytes} MB")
    print(f"worker peak RSS before any ZIP: {idle / 1024:.1f} MiB")
    print("images   ZIP MiB   first byte ms   total s   MiB/s   worker peak RSS MiB")
    for label, ttfb, total, size, peak in rows:
        print(f"{label:6d}   {size / 2**20:7.1f}   {ttfb * 1000:13.1f}   {total:7.2f}   {size / 2**20 / total:5.0f}"
              f"   {peak / 1024:19.1f}")


if __name__ == "__main__":
    main()
