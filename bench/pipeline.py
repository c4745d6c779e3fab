"""Per-image time the worker spends outside the API call, beside Pillow's floor.

Run from the project root:
    .venv/bin/python bench/pipeline.py [--images 30] [--storage s3|local] [--latency MS]

Starts apisim and (for s3) moto's S3 server on free loopback ports, makes each API call
untimed, then times pipeline.store_results + pipeline.finish for one 1328×1328 image.
`--latency` adds that many milliseconds to every S3 request before it is sent, as a storage
across a real network would. The floor is Pillow alone on the same PNG bytes, one step after
the other: decode, convert, both WebP renditions.
"""

import argparse
import io
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import requests

ROOT = Path(__file__).resolve().parent.parent
SIZE = 1328
API_KEY = "bench-key"
WARMUP = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(stack: ExitStack, module: str, args: list[str], health: str, logdir: Path, env=None) -> None:
    """Start `python -m module args`, wait until health answers, stop it when the stack closes."""
    log = stack.enter_context(open(logdir / f"{module}.log", "wb"))
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)  # Ctrl-C reaches us only; we stop it
    stack.callback(stop, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited early; see {log.name}")
        try:
            if requests.get(health, timeout=1).status_code < 500:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{module} did not start; see {log.name}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def start_services(stack: ExitStack, storage_mode: str, workdir: Path) -> None:
    """Start apisim (and moto), then point the studio's environment at them."""
    sim = f"127.0.0.1:{free_port()}"
    host, port = sim.split(":")
    start(stack, "apisim", ["--host", host, "--port", port], f"http://{sim}/healthz", workdir,
          env={"APISIM_API_KEY": API_KEY, "APISIM_QUIET": "1"})
    os.environ.update(QWEN_API_BASE_URL=f"http://{sim}", QWEN_API_KEY=API_KEY, QWEN_DOWNLOAD_HOSTS=sim)
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/qwenstudio")
    if storage_mode == "local":
        os.environ.pop("AWS_STORAGE_BUCKET_NAME", None)
        return
    import boto3

    s3 = f"http://127.0.0.1:{free_port()}"
    start(stack, "moto.server", ["-H", "127.0.0.1", "-p", s3.rsplit(":", 1)[1]], f"{s3}/moto-api/", workdir)
    os.environ.update(AWS_STORAGE_BUCKET_NAME="qwenstudio-bench", AWS_S3_ENDPOINT_URL=s3,
                      AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="qwenstudio-bench")


def setup_django(stack: ExitStack, storage_mode: str, workdir: Path) -> None:
    """django.setup(); for local storage, keep the files in a temporary MEDIA_ROOT."""
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "qwenstudio.settings"
    os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    if storage_mode == "local":
        from django.conf import settings
        from django.test.utils import override_settings

        media = workdir / "media"
        stack.enter_context(override_settings(MEDIA_ROOT=media, STORAGES={
            **settings.STORAGES,
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                        "OPTIONS": {"location": media, "allow_overwrite": True}},
        }))


def floor_ms(png: bytes) -> float:
    """Pillow alone, in one thread: decode the PNG and make both WebP renditions with the
    pipeline's settings (largest first, each scaled from the one above). Like the pipeline, it
    converts only an image that is not RGB already: a copy that is not needed is not the floor."""
    import PIL.Image

    from gallery.pipeline import RENDITION_EDGES

    started = time.perf_counter()
    with PIL.Image.open(io.BytesIO(png), formats=["PNG"]) as picture:
        picture.load()
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
        for edge in sorted(RENDITION_EDGES.values(), reverse=True):
            picture.thumbnail((edge, edge), PIL.Image.Resampling.LANCZOS, reducing_gap=2.0)
            picture.save(io.BytesIO(), "WEBP", quality=82, method=4)
    return (time.perf_counter() - started) * 1000


def add_latency(stack: ExitStack, milliseconds: float) -> None:
    """Every request to S3 waits `milliseconds` before it is sent (botocore's one send path)."""
    from botocore.endpoint import Endpoint

    send = Endpoint._send

    def slow_send(self, request):
        time.sleep(milliseconds / 1000)
        return send(self, request)

    stack.enter_context(mock.patch.object(Endpoint, "_send", slow_send))


def run_one(owner, number: int) -> tuple[float, float, int]:
    """One image through the pipeline: (overhead ms, floor ms, PNG bytes)."""
    from gallery import limits, pipeline, storage
    from gallery.models import Generation

    created = Generation.objects.create(
        owner=owner, prompt=f"bench pipeline image {number}: hills at dusk", model="qwen-image-plus",
        width=SIZE, height=SIZE, n=1, seed=1000 + number, prompt_extend=False, watermark=False)
    generation = Generation.objects.take_next(created.model, pipeline.lease())
    with limits.slot(generation.spec, wait=30) as token:
        pipeline.call(generation, generation.spec, token)
    started = time.perf_counter()
    problems = pipeline.store_results(generation)
    pipeline.finish(generation, problems)
    overhead = (time.perf_counter() - started) * 1000
    if generation.status != Generation.Status.SUCCEEDED:
        raise RuntimeError(f"image {number}: {generation.status} {generation.error_text}")
    png = storage.read(generation.images.get().file)
    return overhead, floor_ms(png), len(png)


def cleanup(owner) -> None:
    """Delete the bench generations, their stored files and the bench user."""
    from gallery import storage
    from gallery.models import Image, Rendition

    images = Image.objects.filter(generation__owner=owner)
    keys = [*images.values_list("file", flat=True),
            *Rendition.objects.filter(image__in=images).values_list("file", flat=True)]
    try:
        storage.delete(keys)
    finally:
        owner.delete()  # cascades to generations, images and renditions


def machine() -> str:
    import PIL

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Pillow {PIL.__version__}"


def report(storage_mode: str, latency: float, samples: list[tuple[float, float, int]]) -> None:
    overhead = [s[0] for s in samples]
    floor = [s[1] for s in samples]
    p90 = statistics.quantiles(overhead, n=10, method="inclusive")[-1] if len(overhead) > 1 else overhead[0]
    ratio = statistics.median(overhead) / statistics.median(floor)
    print(f"date     {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine  {machine()}")
    added = f", {latency:g} ms added to each S3 request" if storage_mode == "s3" else ""
    print(f"storage  {storage_mode}{added}, {SIZE}×{SIZE}, n=1 per generation, {WARMUP} warm-up images untimed\n")
    print(f"{'images':>6}  {'PNG bytes':>10}  {'ours med ms':>11}  {'ours p90 ms':>11}  "
          f"{'floor med ms':>12}  {'ratio':>5}")
    print(f"{len(samples):>6}  {statistics.median(s[2] for s in samples):>10.0f}  "
          f"{statistics.median(overhead):>11.1f}  {p90:>11.1f}  {statistics.median(floor):>12.1f}  "
          f"{ratio:>5.2f}")
    print(f"\ngoal: ours within 1.5× of the floor: {'met' if ratio <= 1.5 else 'NOT met'}")


def bench(stack: ExitStack, args: argparse.Namespace, workdir: Path) -> None:
    """Start the services, run the warm-up and timed images, print the table."""
    start_services(stack, args.storage, workdir)
    setup_django(stack, args.storage, workdir)
    from django.contrib.auth.models import User

    owner, _ = User.objects.get_or_create(username="bench-pipeline")
    stack.callback(cleanup, owner)
    if args.storage == "s3" and args.latency:
        add_latency(stack, args.latency)
    for number in range(WARMUP):
        run_one(owner, number)
    samples = [run_one(owner, WARMUP + number) for number in range(args.images)]
    report(args.storage, args.latency, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--storage", choices=["s3", "local"], default="s3")
    parser.add_argument("--latency", type=float, default=0.0, help="milliseconds added to each S3 request")
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")
    if args.latency < 0 or (args.latency and args.storage != "s3"):
        parser.error("--latency is a number of milliseconds >= 0, for --storage s3")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the ExitStack on kill too
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        with ExitStack() as stack:
            bench(stack, args, workdir)
    except BaseException:
        print(f"service logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
