"""A share link's public page at 1M generations, beside the gallery's own first page.

Run from the project root, after `manage.py seed_gallery --count 1000000` into the bench database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/qwenstudio_bench .venv/bin/python bench/public.py [--runs 50]

Makes (or reuses) a collection of 40 images spread over the table and a link to it, a link to one
image and a link to one generation, then times full GETs through django.test.Client: the public
pages with no session, the gallery's first page signed in. Goal (issue 7): the public page within
the gallery page's own 30 ms.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/qwenstudio_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qwenstudio.settings")
os.environ.setdefault("DJANGO_DEBUG", "true")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402

from gallery.models import Collection, Image, ShareLink  # noqa: E402

settings.ALLOWED_HOSTS.append("testserver")
settings.DEBUG = False  # as in production: no query log, no template debug info
GOAL_MS = 30
NAME = "bench public page"


def links() -> dict[str, str]:
    owner = get_user_model().objects.order_by("pk").first()
    collection = Collection.objects.filter(name=NAME).first()
    if collection is None:
        collection = Collection.objects.create(owner=owner, name=NAME)
        last = Image.objects.order_by("-pk").values_list("pk", flat=True).first()
        step = max(last // 40, 1)
        picked = list(Image.objects.filter(pk__in=range(step, last + 1, step)).values_list("pk", flat=True)[:40])
        collection.add(picked)
    image = collection.ordered_images().first()
    made = {}
    for label, target in (("collection (40)", collection), ("one image", image), ("a generation", image.generation)):
        link = ShareLink.create(owner, target, expiry=ShareLink.Expiry.DAY, show_parameters=True,
                                allow_downloads=True)
        made[label] = f"/s/{link.token}/"
    return made


def timed(client: Client, url: str, runs: int) -> list[float]:
    assert client.get(url).status_code == 200, url  # warm-up, and proof the page works
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    signed_in = Client()
    signed_in.force_login(get_user_model().objects.order_by("pk").first())
    rows = [("gallery, first page (signed in)", timed(signed_in, "/gallery/", runs))]
    for label, url in links().items():
        rows.append((f"public page: {label}", timed(Client(), url, runs)))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {Image.objects.count():,} images; {runs} runs each")
    print(f"{'page':40s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for label, times in rows:
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{label:40s} {statistics.median(times):8.1f} {p95:8.1f}{'' if p95 <= GOAL_MS else '  over goal'}")


if __name__ == "__main__":
    main()
