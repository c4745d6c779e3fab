"""Gallery pages and searches at 1M generations, timed over HTTP against gunicorn with production settings.

Seed the bench database once (the seed takes minutes), then let PostgreSQL gather its statistics:

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/qwenstudio_bench
    DJANGO_DEBUG=true .venv/bin/python manage.py ensure_database
    DJANGO_DEBUG=true .venv/bin/python manage.py migrate
    DJANGO_DEBUG=true .venv/bin/python manage.py seed_gallery --count 1000000
    psql "$DATABASE_URL" -c "VACUUM ANALYZE"

Then run, from the project root (DATABASE_URL defaults to the bench database above):

    .venv/bin/python bench/search.py [--runs 20] [--base-url http://127.0.0.1:8000]

The bench starts gunicorn as the Dockerfile's CMD does (its own words, read from the Dockerfile), on a free
local port, with production settings: no DJANGO_DEBUG, a new DJANGO_SECRET_KEY, static files collected into a
temporary folder (the only setting changed, through a settings module that imports the studio's). It signs in
as "lin" (seed_gallery makes that designer) by saving a session in the database and sending its cookie, and
makes every request on a fresh connection, as the TLS proxy in front would (X-Forwarded-Proto: https).

It makes, once, three collections of lin's holding 100, 2,000 and 20,000 random images ("bench 100", ...).
Before any timing, the gallery's first page is requested twice per request thread (--workers × --threads of the
CMD), so that every thread has opened its database connection; the restart at the end times a cold start. Each
URL is requested once to warm up, then --runs times; each must answer 200. The gallery's deep page is
page 1,000 (or a filter's last page, if it has fewer), reached with the cursor that the page before's
`a.more` link carries, built from the (created, id) of its last row with one query outside the timing.
The `matches` column counts the images the URL's filters and search select, in this process, untimed.
The image pages are those of the first and the last tile of a few listings' first pages, with the listing's
filters and search, as the grid links them: their Previous and Next are looked for in the listing's order.
Issue 11's goals don't name them; they are held to the gallery pages' goal, to show how far they are from it.

Then it stops gunicorn, starts it again and, as soon as every worker has warmed up, times the very first
search and gallery page, and prints the "warm-up:" lines the workers logged. Last, EXPLAIN (ANALYZE,
BUFFERS) of the page queries of the slowest URLs, run in this process.

With --base-url the bench times a server already running instead (and skips the restart). That server must
use this DATABASE_URL and this process's DJANGO_SECRET_KEY (or both DJANGO_DEBUG=true), since the bench
signs the session cookie itself.

Goals (issue 11): search p95 ≤ 30 ms, any gallery page p95 ≤ 20 ms, the first query after a restart ≤ 100 ms.
"""

import argparse
import html
import http.client
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from urllib.parse import unquote_plus, urlencode

import requests
from pipeline import free_port  # bench/pipeline.py

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: its gunicorn and python
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/qwenstudio_bench")

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.http import QueryDict  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

SETTINGS_MODULE = "bench_search_settings"  # written into a temporary folder: the studio's, STATIC_ROOT aside
USERNAME = "lin"
DEEP_PAGE = 1000
PAGE_GOAL_MS, SEARCH_GOAL_MS, FIRST_GOAL_MS = 20, 30, 100
COLLECTIONS = {"bench 100": 100, "bench 2,000": 2_000, "bench 20,000": 20_000}
SEARCHES = [
    # one word, common to rare (the seed's subjects are Zipf-weighted): Chinese pairs and words, English stems
    "草地", "小猫", "樱花", "青花", "水墨", "锦鲤", "月下", "青花瓷", "kitten", "kittens", "cinematic", "watercolor",
    "lighthouse", "jellyfish", "hummingbird",
    # two common words in one script
    "小猫 草地", "kitten cinematic",
    # mixed scripts; the last matches nothing
    "小猫 watercolor", "锦鲤 golden hour", "a kitten 草地",
    # a single Chinese character
    "猫", "花", "的",
    # nothing matches
    "独角兽", "独角兽飞船", "zebra",
]
FILTERED_SEARCHES = ["小猫", "kitten"]  # to mine=on; the first also to each collection
SECOND_PAGE_SEARCH = "小猫"  # the second page of each sort, through the first page's `a.more` link
# The image pages of each listing's first and last tile (Previous and Next found in the listing's order); the
# 20,000-image collection, and 小猫 in the 2,000-image one, are added with their ids (image_targets).
IMAGE_PAGES_FROM = [{}, {"q": "小猫"}, {"q": "小猫", "sort": "newest"}, {"q": "kitten cinematic"},
                    {"q": "锦鲤 golden hour"}, {"q": "kitten", "mine": "on"}]
FIRST_AFTER_RESTART = ({"q": "猫"}, {})  # a search by relevance, then the gallery's first page
WARM_UP_SECONDS = 120


@dataclass
class Target:
    """A URL to time, how the report names it, and how many images its filters and search select."""

    url: str
    label: str
    matches: int


# --- the server ----------------------------------------------------------------------------------------------


def dockerfile_command() -> list[str]:
    """The web container's command: the Dockerfile's CMD, in exec form."""
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    return json.loads(line.removeprefix("CMD "))


def production_environment(settings_dir: Path) -> dict[str, str]:
    """This process's environment as production would have it: DJANGO_DEBUG unset, a new secret key, static
    files from settings_dir's settings module, the venv's bin first on PATH."""
    environment = {name: value for name, value in os.environ.items() if name != "DJANGO_DEBUG"}
    python_path = os.pathsep.join(filter(None, [str(settings_dir), str(ROOT), environment.get("PYTHONPATH")]))
    return environment | {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "PYTHONPATH": python_path, "PATH": f"{BIN}{os.pathsep}{environment.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
    }


def write_settings(folder: Path) -> None:
    """The studio's settings with STATIC_ROOT in folder, where collectstatic puts the manifest WhiteNoise and
    {% static %} read in production."""
    static_root = folder / "static"
    (folder / f"{SETTINGS_MODULE}.py").write_text(
        "from qwenstudio.settings import *  # noqa: F403\n\n"
        f"STATIC_ROOT = {str(static_root)!r}\n")


def collect_static(environment: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise SystemExit(f"collectstatic failed:\n{result.stdout}\n{result.stderr}")


class Gunicorn:
    """The Dockerfile's CMD, bound to a free port on 127.0.0.1; its output in log files of `folder`."""

    def __init__(self, environment: dict[str, str], folder: Path, name: str):
        self.environment, self.name = environment, name
        self.access_log, self.error_log = folder / f"{name}-access.log", folder / f"{name}-error.log"
        self.command = dockerfile_command()
        self.workers = int(self.command[self.command.index("--workers") + 1])
        self.threads = int(self.command[self.command.index("--threads") + 1]) if "--threads" in self.command else 1
        self.process: subprocess.Popen | None = None
        self.origin = ""

    def start(self) -> float:
        """Start gunicorn; return the seconds until /healthz answered and every worker logged its warm-up."""
        port = free_port()
        command = list(self.command)
        command[0] = shutil.which(command[0], path=self.environment["PATH"]) or command[0]
        command[command.index("--bind") + 1] = f"127.0.0.1:{port}"  # the bind address only
        self.origin = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        with open(self.access_log, "wb") as out, open(self.error_log, "wb") as err:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.environment, stdout=out, stderr=err)
        self._wait(lambda: self._answers("/healthz"), "to answer /healthz")
        # The other workers may still be loading the studio, and would share the CPUs with the first request.
        if not self._wait(lambda: len(self.warm_up_lines()) >= self.workers, required=False):
            print(f"(gunicorn, {self.name}: only {len(self.warm_up_lines())} of {self.workers} workers logged "
                  f"\"warm-up:\" within {WARM_UP_SECONDS} s)", file=sys.stderr)
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # gunicorn's graceful stop, as compose's
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def warm_up_lines(self) -> list[str]:
        """What gallery.warmup logged, one line per worker."""
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        return [line for line in text.splitlines() if "warm-up:" in line]

    def log_tail(self) -> str:
        """The end of its error log (which goes with the temporary folder when the bench stops)."""
        return self.error_log.read_text(errors="replace")[-3000:]

    def _answers(self, path: str) -> bool:
        try:
            # Waits in the listen queue until a worker has loaded the studio and warmed up.
            requests.get(self.origin + path, headers={"Connection": "close"}, timeout=30)
            return True  # any status: /healthz says 503 when Redis, which the gallery doesn't need, is down
        except (requests.ConnectionError, requests.Timeout):
            return False

    def _wait(self, condition, what: str = "", required: bool = True) -> bool:
        """Poll condition until it holds (True) or WARM_UP_SECONDS pass (stop the bench, unless not required)."""
        deadline = time.monotonic() + WARM_UP_SECONDS
        while not condition():
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn ({self.name}) exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                if required:
                    raise SystemExit(f"gunicorn ({self.name}) took over {WARM_UP_SECONDS} s {what}:\n"
                                     f"{self.log_tail()}")
                return False
            time.sleep(0.05)
        return True


# --- the studio's side: the designer, collections, URLs and match counts, in this process -------------------


def designer():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=USERNAME).first()
    if user is None:
        raise SystemExit(f"No user {USERNAME!r} in this database: seed it first (see bench/search.py's docstring)")
    return user


def session_cookie(user, stack: ExitStack) -> str:
    """A signed-in session for user, saved where the server reads sessions, as its Cookie header; deleted when
    the stack closes."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    stack.callback(session.delete)
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def bench_collections(user) -> list:
    """lin's bench collections, each made (once) of that many random images."""
    from gallery.models import Collection, CollectionItem, Image

    collections = []
    for name, size in COLLECTIONS.items():
        collection = Collection.objects.filter(owner=user, name=name).order_by("pk").first()
        if collection is None:
            with transaction.atomic(), connection.cursor() as cursor:
                collection = Collection.objects.create(owner=user, name=name)
                cursor.execute(
                    f"INSERT INTO {CollectionItem._meta.db_table} (collection_id, image_id, image_created, position, "
                    f"added) SELECT %s, id, created, row_number() OVER () - 1, now() "
                    f"FROM (SELECT id, created FROM {Image._meta.db_table} ORDER BY random() LIMIT %s) chosen",
                    [collection.pk, size])
        collections.append(collection)
    with connection.cursor() as cursor:
        # As autovacuum would within a minute of such an insert: the planner must know a collection's size.
        cursor.execute(f"ANALYZE {CollectionItem._meta.db_table}")
    return collections


def filters_of(url: str) -> dict:
    from gallery.forms import GalleryFilterForm

    form = GalleryFilterForm(QueryDict(url.partition("?")[2]))
    return form.cleaned_data if form.is_valid() else {}


def matches(user, url: str) -> int:
    """How many images the URL's filters and search select (one COUNT, untimed)."""
    from gallery import browse, search

    filters = filters_of(url)
    images = browse.filtered(user, filters)
    query = search.parse(filters.get("q", ""))
    return browse.matching(images, query).count() if not query.is_empty else images.count()


def gallery_targets(user, collections: list) -> list[Target]:
    """The first page and page 1,000 (or the last, if fewer), unfiltered and with each kind of filter."""
    from gallery import browse
    from gallery.catalog import catalog

    model = next(iter(catalog()))
    targets = []
    for params in ("", f"model={model}", "shape=portrait", "mine=on", *(f"collection={c.pk}" for c in collections)):
        url = f"/gallery/?{params}".rstrip("?")
        count = matches(user, url)
        targets.append(Target(url, url, count))
        deep = min(DEEP_PAGE, math.ceil(count / browse.PAGE_SIZE))
        if deep >= 2:
            cursor = deep_cursor(user, params, deep)
            joined = f"{params}&" if params else ""
            targets.append(Target(f"/gallery/?{joined}cursor={cursor}", f"/gallery/?{joined}cursor=(page {deep:,})",
                                  count))
    return targets


def deep_cursor(user, params: str, page: int) -> str:
    """The cursor page - 1's `a.more` link carries: the (created, id) of its last row, PAGE_SIZE × (page - 1)."""
    from gallery import browse

    images = browse.filtered(user, filters_of(f"?{params}")).newest_first()
    created, pk = images.values_list("created", "id")[browse.PAGE_SIZE * (page - 1) - 1]
    return browse.Cursor(created, pk).encode()


def search_targets(user, collections: list, origin: str, cookie: str) -> list[Target]:
    """Each search by relevance (the default with q) and newest first; the filtered ones; the second pages."""
    searches = [{"q": text} for text in SEARCHES]
    searches += [{"q": text, "mine": "on"} for text in FILTERED_SEARCHES]
    searches += [{"q": FILTERED_SEARCHES[0], "collection": c.pk} for c in collections]
    targets = []
    for params in searches:
        for sort in ({}, {"sort": "newest"}):
            url = f"/gallery/?{urlencode(params | sort)}"
            targets.append(Target(url, unquote_plus(url), matches(user, url)))
    for sort in ({}, {"sort": "newest"}):
        first = f"/gallery/?{urlencode({'q': SECOND_PAGE_SEARCH} | sort)}"
        found = re.search(r'<a class="more" href="([^"]+)"', fetch(origin, first, cookie))
        if found is None:
            print(f"(no second page for {unquote_plus(first)}: too few matches)", file=sys.stderr)
            continue
        url = html.unescape(found.group(1))
        targets.append(Target(url, unquote_plus(first) + "&cursor=(page 2)", matches(user, url)))
    return targets


def image_targets(user, collections: list, origin: str, cookie: str) -> list[Target]:
    """The image pages a designer opens from a listing's first page: its first and its last tile, each with the
    listing's filters and search, so that its Previous and Next are found in the listing's order."""
    listings = [*IMAGE_PAGES_FROM, {"collection": collections[-1].pk}, {"q": "小猫", "collection": collections[1].pk}]
    targets = []
    for params in listings:
        listing = f"/gallery/?{urlencode(params)}".rstrip("?")
        tiles = re.findall(r'<a class="tile-link" href="([^"]+)"', fetch(origin, listing, cookie))
        count = matches(user, listing)
        for which, href in (("first", tiles[0]), ("last", tiles[-1])) if tiles else ():
            targets.append(Target(html.unescape(href), f"{which} of {unquote_plus(listing)}", count))
    return targets


# --- timing -------------------------------------------------------------------------------------------------


def fetch(origin: str, url: str, cookie: str) -> str:
    """The body of one GET on a fresh connection, signed in, as from behind the TLS proxy; it must answer 200.

    Through the standard library's http.client, which requests is built on: requests makes a session and a
    connection pool per call, about a millisecond of this process's time per request on this machine (0.6 ms
    against 1.7 ms for a 40 KB answer from a bare WSGI app under the same gunicorn), which no browser pays."""
    host, _, port = origin.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", url, headers={
            "Connection": "close", "Cookie": cookie, "X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        where = response.getheader("Location", "")
        raise SystemExit(f"{url} answered {response.status} {where}".rstrip())
    return body.decode()


def get(origin: str, url: str, cookie: str) -> float:
    """Milliseconds of one GET of url, from connecting to the last byte of the body."""
    start = time.perf_counter()
    fetch(origin, url, cookie)
    return (time.perf_counter() - start) * 1000


def timed(origin: str, targets: list[Target], cookie: str, runs: int) -> list[tuple[Target, list[float]]]:
    """Milliseconds of `runs` GETs of each target, after one warm-up."""
    results = []
    for target in targets:
        get(origin, target.url, cookie)
        results.append((target, [get(origin, target.url, cookie) for _ in range(runs)]))
    return results


def p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


# --- the report ---------------------------------------------------------------------------------------------


def machine() -> list[str]:
    from gallery.models import Generation, Image

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    ram = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(" on ")[0]
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    return [f"Machine: {os.cpu_count()} CPUs ({cpu}), {ram:.1f} GiB RAM, Python {platform.python_version()}, "
            f"{version}", f"CPU check: {cpu_check():.0f} ms for a fixed Python loop (median of 5; a shared machine's "
            "speed varies from day to day: compare runs by it)",
            f"Rows: {Generation.objects.count():,} generations, {Image.objects.count():,} images", f"Date: {date}"]


def cpu_check() -> float:
    """Milliseconds for three million additions in a Python loop, the median of five tries."""
    times = []
    for _ in range(5):
        start, total = time.perf_counter(), 0
        for number in range(3_000_000):
            total += number
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def report(title: str, rows: list[tuple[Target, list[float]]], goal: float) -> None:
    """Per-URL p50/p95 and, pooled over all samples of the group, p50/p95 against the goal."""
    print(f"\n{title}\n\n    {'matches':>9} {'p50 ms':>7} {'p95 ms':>7}  url")
    for target, samples in rows:
        print(f"    {target.matches:>9,} {statistics.median(samples):>7.1f} {p95(samples):>7.1f}  "
              f"{shorten(target.label, 72)}")
    pooled = [s for _, samples in rows for s in samples]
    worst_target, worst = max(rows, key=lambda row: p95(row[1]))
    print(f"\n    all: p50 {statistics.median(pooled):.1f} ms, p95 {p95(pooled):.1f} ms — "
          f"{verdict(p95(pooled) <= goal)} (goal p95 ≤ {goal} ms)"
          f"\n    worst URL p95 {p95(worst):.1f} ms — {verdict(p95(worst) <= goal)} "
          f"({shorten(worst_target.label, 70)})")


def page_queries(user, url: str) -> list[tuple[str, float]]:
    """The (SQL, ms) of every query the gallery's page function runs for url, in this process."""
    from gallery import browse, search

    filters = filters_of(url)
    with CaptureQueriesContext(connection) as captured:
        browse.page(user, filters, search.parse(filters.get("q", "")), filters.get("cursor"))
    return [(q["sql"], float(q["time"]) * 1000) for q in captured.captured_queries]


def main_query(queries: list[tuple[str, float]]) -> str:
    """The slowest of the page's image queries (those with LIMIT PAGE_SIZE + 1), else its slowest query."""
    from gallery import browse

    page = [query for query in queries if f"LIMIT {browse.PAGE_SIZE + 1}" in query[0]]
    return max(page or queries, key=lambda query: query[1])[0]


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def explain_slowest(user, pages: list, searches: list) -> None:
    """EXPLAIN the unfiltered deep page, the slowest gallery page and the three slowest searches."""
    deep = next((row for row in pages if "cursor=" in row[0].url), pages[0])
    slowest_page = max(pages, key=lambda row: p95(row[1]))
    slowest = sorted(searches, key=lambda row: -p95(row[1]))[:3]
    for target, samples in [deep, *([slowest_page] if slowest_page is not deep else []), *slowest]:
        queries = page_queries(user, target.url)
        sql = main_query(queries)
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) for {target.label} (p95 {p95(samples):.1f} ms; its {len(queries)} "
              f"queries took {', '.join(f'{ms:.1f}' for _, ms in queries)} ms here), the slowest page query:\n")
        print("    " + re.sub(r"^SELECT .*? FROM", "SELECT … FROM", sql) + "\n")
        print("\n".join("    " + line for line in explain(sql).splitlines()))


# --- the run ------------------------------------------------------------------------------------------------


@contextmanager
def log_on_failure(server: "Gunicorn | None"):
    """A request that failed, with the end of gunicorn's log (its traceback), which goes with the temporary
    folder."""
    try:
        yield
    except SystemExit as failure:
        if server is None:
            raise
        raise SystemExit(f"{failure}\n\nThe end of gunicorn's log:\n{server.log_tail()}") from None


def first_after_restart(server: Gunicorn, cookie: str) -> None:
    """Start gunicorn again and time its very first search and gallery page."""
    ready = server.start()
    print(f"\nFirst requests after a restart (gunicorn answered /healthz and its {server.workers} workers had "
          f"warmed up {ready:.1f} s after it started)\n")
    for params in FIRST_AFTER_RESTART:
        url = f"/gallery/?{urlencode(params)}".rstrip("?")
        elapsed = get(server.origin, url, cookie)
        print(f"    {elapsed:>7.1f} ms  {unquote_plus(url):<24} — {verdict(elapsed <= FIRST_GOAL_MS)} "
              f"(goal ≤ {FIRST_GOAL_MS} ms)")
    server.stop()
    print("\n    The workers' warm-up, as they logged it:")
    for line in server.warm_up_lines():
        print(f"    {line.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed requests per URL, after one warm-up")
    parser.add_argument("--base-url", help="time this running server (http://host:port) instead of starting "
                        "gunicorn; no restart")
    args = parser.parse_args()

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-search-")))
        environment = None
        if not args.base_url:
            write_settings(folder)
            environment = production_environment(folder)
            os.environ.pop("DJANGO_DEBUG", None)
            os.environ.update({name: environment[name] for name in ("DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE")})
            sys.path.insert(0, str(folder))
        elif not (os.environ.get("DJANGO_SECRET_KEY") or os.environ.get("DJANGO_DEBUG")):
            raise SystemExit("With --base-url, set DJANGO_SECRET_KEY to the server's (or DJANGO_DEBUG=true for a "
                             "server started with it): the bench signs the session cookie")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qwenstudio.settings")
        django.setup()

        user = designer()
        collections = bench_collections(user)
        cookie = session_cookie(user, stack)
        print("\n".join(machine()))
        if environment:
            print("Collecting static files…", file=sys.stderr)
            collect_static(environment)
            server = Gunicorn(environment, folder, "timed")
            stack.callback(server.stop)
            server.start()
            origin = server.origin
            # Each request thread opens its database connection on its first request: the restart below times
            # that, so here every thread has its connection before any timing (at most twice over, since which
            # thread takes a request is up to gunicorn).
            for _ in range(2 * server.workers * server.threads):
                fetch(origin, "/gallery/", cookie)
            print(f"Server: {' '.join(server.command)} (bound to 127.0.0.1), production settings")
        else:
            server, origin = None, args.base_url.rstrip("/")
            print(f"Server: {origin}, already running")
        print(f"User: {user.get_username()}, {args.runs} runs per URL after 1 warm-up, a fresh connection each; "
              f"collections: " + ", ".join(f"{c.name} (id {c.pk}, {c.items.count():,} images)" for c in collections))

        print("Counting matches and finding cursors…", file=sys.stderr)
        pages = gallery_targets(user, collections)
        with log_on_failure(server):
            searches = search_targets(user, collections, origin, cookie)
            images = image_targets(user, collections, origin, cookie)
            print(f"Timing {len(pages)} gallery pages, {len(searches)} searches and {len(images)} image pages…",
                  file=sys.stderr)
            results = {"pages": timed(origin, pages, cookie, args.runs),
                       "searches": timed(origin, searches, cookie, args.runs),
                       "images": timed(origin, images, cookie, args.runs)}
        if server:
            server.stop()
        report("Gallery pages", results["pages"], PAGE_GOAL_MS)
        report("Searches", results["searches"], SEARCH_GOAL_MS)
        report("Image pages, opened from a listing's first page (matches: the listing's; not in issue 11's goals, "
               "held to the gallery pages' to show the gap)", results["images"], PAGE_GOAL_MS)
        if environment:
            restarted = Gunicorn(environment, folder, "restarted")
            stack.callback(restarted.stop)
            with log_on_failure(restarted):
                first_after_restart(restarted, cookie)
        explain_slowest(user, results["pages"], results["searches"])


if __name__ == "__main__":
    main()
