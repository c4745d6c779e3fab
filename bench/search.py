"""Gallery pages and searches at 1M generations, timed as full GET requests (view + template).

Run from the project root, after `manage.py seed_gallery --count 1000000` into the bench database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/qwenstudio_bench .venv/bin/python bench/search.py [--runs 20]

Each URL is requested once to warm up, then --runs times through django.test.Client, logged in.
Page 1,000 is requested with the cursor that page 999's `a.more` link carries, built from the
(created, id) of row PAGE_SIZE × 999 (1-based) found with one query outside the timing.
Goals (issue 3): p95 ≤ 30 ms for any gallery page, ≤ 50 ms for search.
"""

import argparse
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_plus, urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/qwenstudio_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qwenstudio.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.http import QueryDict  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from gallery import browse, search  # noqa: E402
from gallery.catalog import catalog  # noqa: E402
from gallery.forms import GalleryFilterForm  # noqa: E402
from gallery.models import Generation, Image  # noqa: E402

settings.ALLOWED_HOSTS.append("testserver")
settings.DEBUG = False  # as in production: no query log, no template debug info (set before the first render)

DEEP_PAGE = 1000
PAGE_GOAL_MS, SEARCH_GOAL_MS = 30, 50
# Common to rare (the seed's subjects are Zipf-weighted), Chinese pairs, English stems, mixed, none, filtered.
SEARCHES = [{"q": "草地"}, {"q": "小猫"}, {"q": "樱花"}, {"q": "青花"}, {"q": "水墨"}, {"q": "锦鲤"}, {"q": "月下"},
            {"q": "青花瓷"}, {"q": "kitten"}, {"q": "kittens"}, {"q": "cinematic"}, {"q": "watercolor"},
            {"q": "lighthouse"}, {"q": "jellyfish"}, {"q": "hummingbird"}, {"q": "小猫 watercolor"},
            {"q": "锦鲤 golden hour"}, {"q": "a kitten 草地"}, {"q": "独角兽"}, {"q": "小猫", "mine": "on"}]


def gallery_urls(user) -> list[str]:
    """First and deep pages, unfiltered and with each kind of filter."""
    model = next(iter(catalog()))
    urls = []
    for params in ("", f"model={model}", "shape=portrait", "mine=on"):
        urls.append(f"/gallery/?{params}".rstrip("?&"))
        cursor = deep_cursor(user, params, DEEP_PAGE)
        urls.append(f"/gallery/?{params + '&' if params else ''}cursor={cursor}")
    return urls


def search_urls() -> list[str]:
    """Each search twice: relevance (the default with q) and newest first."""
    return [f"/gallery/?{urlencode(params | sort)}" for params in SEARCHES for sort in ({}, {"sort": "newest"})]


def filters_of(url: str) -> dict:
    form = GalleryFilterForm(QueryDict(url.partition("?")[2]))
    return form.cleaned_data if form.is_valid() else {}


def deep_cursor(user, params: str, page: int) -> str:
    """The cursor page - 1's `a.more` link carries: the (created, id) of its last row, PAGE_SIZE × (page - 1)."""
    images = browse.filtered(user, filters_of(f"?{params}")).newest_first()
    created, pk = images.values_list("created", "id")[browse.PAGE_SIZE * (page - 1) - 1]
    return browse.Cursor(created, pk).encode()


def matches(user, url: str) -> int:
    """How many images the URL's filters and query select (one COUNT, untimed)."""
    filters = filters_of(url)
    images = browse.filtered(user, filters)
    query = search.parse(filters.get("q", ""))
    return images.filter(search=query.tsquery()).count() if not query.is_empty else images.count()


def get(client: Client, url: str) -> float:
    """Milliseconds of one GET of url, which must answer 200."""
    start = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed


def timed(client: Client, url: str, runs: int) -> list[float]:
    """Milliseconds of `runs` GETs of url, after one warm-up."""
    get(client, url)
    return [get(client, url) for _ in range(runs)]


def p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def main_query(client: Client, url: str) -> str:
    """The SQL of the page's image query (the one with LIMIT 41), else its slowest query."""
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    page = [q for q in captured.captured_queries if f"LIMIT {browse.PAGE_SIZE + 1}" in q["sql"]]
    return (page or sorted(captured.captured_queries, key=lambda q: -float(q["time"])))[0]["sql"]


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    ram = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(" on ")[0]
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    return [f"Machine: {os.cpu_count()} CPUs ({cpu}), {ram:.1f} GiB RAM, Python {platform.python_version()}, "
            f"{version}", f"Rows: {Generation.objects.count():,} generations, {Image.objects.count():,} images",
            f"Date: {date}"]


def shorten(url: str, width: int) -> str:
    url = unquote_plus(url)
    return url if len(url) <= width else url[:width - 3] + "..."


def report(title: str, rows: list[tuple], goal: float) -> None:
    """Per-URL p50/p95 and, pooled over all samples of the group, p50/p95 against the goal."""
    print(f"\n{title}\n\n    {'matches':>9} {'p50 ms':>7} {'p95 ms':>7}  url")
    for url, count, samples in rows:
        print(f"    {count:>9,} {statistics.median(samples):>7.1f} {p95(samples):>7.1f}  {shorten(url, 72)}")
    pooled = [s for *_, samples in rows for s in samples]
    worst_url, _, worst = max(rows, key=lambda row: p95(row[2]))
    verdict = {True: "PASS", False: "MISS"}
    print(f"\n    all: p50 {statistics.median(pooled):.1f} ms, p95 {p95(pooled):.1f} ms — "
          f"{verdict[p95(pooled) <= goal]} (goal p95 ≤ {goal} ms)"
          f"\n    worst URL p95 {p95(worst):.1f} ms — {verdict[p95(worst) <= goal]} ({shorten(worst_url, 70)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed requests per URL, after one warm-up")
    runs = parser.parse_args().runs
    users = get_user_model().objects.order_by("pk")
    user = users.filter(username="lin").first() or users.first()
    client = Client()
    client.force_login(user)
    print("\n".join(machine()) + f"\nUser: {user.get_username()}, {runs} runs per URL after 1 warm-up")

    results = {}
    for group, urls in (("Gallery pages", gallery_urls(user)), ("Searches", search_urls())):
        results[group] = [(url, matches(user, url), timed(client, url, runs)) for url in urls]
    report("Gallery pages", results["Gallery pages"], PAGE_GOAL_MS)
    report("Searches", results["Searches"], SEARCH_GOAL_MS)

    pages = results["Gallery pages"]
    slowest_page = max(pages, key=lambda row: p95(row[2]))
    slowest = sorted(results["Searches"], key=lambda row: -p95(row[2]))[:3]
    for url, _, samples in [pages[1], *([slowest_page] if slowest_page is not pages[1] else []), *slowest]:
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) for {shorten(url, 200)} (p95 {p95(samples):.1f} ms)\n")
        sql = main_query(client, url)
        print("    " + re.sub(r"^SELECT .*? FROM", "SELECT … FROM", sql) + "\n")
        print("\n".join("    " + line for line in explain(sql).splitlines()))


if __name__ == "__main__":
    main()
