"""Lighthouse on the studio's pages, served the way production serves them, in both themes (issue 10).

Run from the project root (PostgreSQL running; Node 20, npm and Debian's chromium installed):

    .venv/bin/python bench/lighthouse.py [--pages gallery,public] [--themes dark] [--runs 3] [--screenshots]
                                         [--grain 4]

Fills its own database (qwenstudio_lighthouse, or DATABASE_URL if it names a "lighthouse" database)
with one designer's generations: real PNGs painted as apisim paints them and WebP thumbnails made
by the pipeline's own code, in var/lighthouse/media; a collection, and share links. Then it runs
collectstatic into a temporary STATIC_ROOT, starts gunicorn with DJANGO_DEBUG=false (WhiteNoise
serves the hashed, compressed files), signs in through the login form and runs Lighthouse from
bench/node_modules (`npm ci --prefix bench` when missing; mobile form factor, simulated throttling)
on each page in light and dark. It prints a table of scores and the audits below 100, writes
every JSON report to var/lighthouse/, and exits 1 when a goal is missed: accessibility, best
practices and performance >= 95 on every page, SEO >= 95 on the public share pages.
--screenshots also saves bench/screenshots.py's pictures of the same pages.
"""

import argparse
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = ROOT / "var" / "lighthouse"
MEDIA = OUT / "media"
LIGHTHOUSE = BENCH / "node_modules" / ".bin" / "lighthouse"
CHROMIUM = os.environ.get("CHROME_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/qwenstudio_lighthouse"
CATEGORIES = ["accessibility", "best-practices", "performance", "seo"]
GOAL = 95
THEMES = ["light", "dark"]
# Each theme is asked for twice: by the studio's theme cookie and by Chromium's preferred colour scheme
# (Blink: 0 dark, 1 light), so the page is in it whether it follows the cookie or prefers-color-scheme.
COLOR_SCHEME = {"dark": 0, "light": 1}
USERNAME = "lin"
PROMPTS = [
    ("一只小猫在草地上奔跑，电影感，自然光影", "模糊，低质量", "wan2.2-t2i-flash", (1024, 1024), 2),
    ("a lighthouse on a cliff at dusk, volumetric fog, golden hour", "", "qwen-image-plus", (1328, 1328), 1),
    ("江南水乡，古镇石桥，水墨风格，柔和色调", "", "wan2.6-t2i", (1280, 1280), 1),
    ("an astronaut floating above the clouds, pastel colors, wide angle", "blurry, low quality",
     "wan2.2-t2i-plus", (1280, 960), 4),
    ("樱花树下的女孩，宫崎骏风格，高细节", "", "qwen-image-max", (1080, 1440), 1),
    ("koi fish in a still pond, 水墨, minimalist", "文字，水印", "wanx2.1-t2i-turbo", (1280, 720), 2),
    ("a cup of coffee by the window, film grain, shallow depth of field", "", "wan2.2-t2i-flash",
     (1024, 1024), 1),
    ("雪山湖泊，湖边倒影，超写实，8K", "oversaturated", "qwen-image-plus", (1440, 1080), 2),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(static_root: Path, secret: str) -> dict:
    """Production settings on plain http: no SSL redirect, cookies without Secure, local storage."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "AWS_"))}
    database = os.environ.get("DATABASE_URL", DATABASE_URL)
    if "lighthouse" not in database.rsplit("/", 1)[-1]:
        sys.exit("DATABASE_URL must name a database with 'lighthouse' in its name: this bench empties it")
    return env | {
        "DJANGO_SETTINGS_MODULE": "qwenstudio.settings", "DATABASE_URL": database, "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secret, "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "DJANGO_SSL_REDIRECT": "false",
        "DJANGO_SECURE_COOKIES": "false", "QWEN_LIGHTHOUSE_MEDIA": str(MEDIA),
        "QWEN_LIGHTHOUSE_STATIC": str(static_root),
    }


def configure() -> None:
    """Point media and STATIC_ROOT at the bench's folders, before Django builds its storages."""
    from django.conf import settings

    settings.STORAGES = settings.STORAGES | {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": os.environ["QWEN_LIGHTHOUSE_MEDIA"], "allow_overwrite": True}}}
    settings.STATIC_ROOT = os.environ["QWEN_LIGHTHOUSE_STATIC"]


def wsgi():
    """gunicorn's entry: `gunicorn 'bench.lighthouse:wsgi()'` with production_env()."""
    configure()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


@dataclass
class Studio:
    base: str
    cookies: dict[str, str]
    pages: dict[str, str]
    theme_cookie: str
    public_pages: set[str] = field(default_factory=set)  # SEO counts here
    signed_out_pages: set[str] = field(default_factory=set)  # opened without the session, as a visitor would

    def cookies_for(self, page: str, theme: str) -> dict[str, str]:
        return ({} if page in self.signed_out_pages else self.cookies) | {self.theme_cookie: theme}


def grainy(data: bytes, grain: float) -> bytes:
    """The picture with Gaussian noise: apisim's smooth paintings make PNGs of a few hundred KB, real
    results several MB (grain 4 makes a 1328×1328 original about 2 MB)."""
    import PIL.Image
    import PIL.ImageChops

    with PIL.Image.open(io.BytesIO(data)) as picture:
        noise = PIL.Image.effect_noise(picture.size, grain).convert("RGB")
        buffer = io.BytesIO()
        PIL.ImageChops.add(picture.convert("RGB"), noise, offset=-128).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def seed(password: str, grain: float = 0) -> dict[str, str]:
    """Empty the bench database and media, then fill them as a designer's week would; return page paths."""
    import PIL.Image
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from apisim.paint import paint
    from gallery.client import Result
    from gallery.models import Collection, Generation, ShareLink
    from gallery.pipeline import Stored, make_renditions, save_rows

    call_command("flush", interactive=False, verbosity=0)
    shutil.rmtree(MEDIA, ignore_errors=True)
    MEDIA.mkdir(parents=True)
    users = get_user_model()
    designer = users.objects.create_user(USERNAME, "lin@example.com", password, first_name="Lin", last_name="Wei")
    colleague = users.objects.create_user("maya", "maya@example.com", None, first_name="Maya")
    now = datetime.now(timezone.utc)
    images = []
    for number, (prompt, negative, model, (width, height), n) in enumerate(PROMPTS):
        created = now - timedelta(hours=3 * (len(PROMPTS) - number))
        owner = colleague if number % 4 == 3 else designer
        generation = Generation.objects.create(
            owner=owner, prompt=prompt, negative_prompt=negative, model=model, width=width, height=height, n=n,
            seed=1000 + number, status=Generation.Status.SUCCEEDED, attempts=1, billed_images=n, api_seconds=12.5,
            created=created, started_at=created, finished_at=created + timedelta(seconds=14))
        for index in range(n):
            data = paint(prompt, generation.seed + index, width, height)
            data = grainy(data, grain) if grain else data
            key = f"generations/{generation.pk}/{index}.png"
            (MEDIA / key).parent.mkdir(parents=True, exist_ok=True)
            (MEDIA / key).write_bytes(data)
            uploads = []
            with PIL.Image.open(MEDIA / key) as picture:
                renditions = make_renditions(generation.pk, index, picture, uploads)
            for upload in uploads:
                upload.result()
            revised = f"{prompt}，画面构图平衡，主体清晰" if number % 2 == 0 else ""
            save_rows(generation, Stored(index, Result("", "", revised), generation.seed + index, key, width, height,
                                         len(data), hashlib.sha256(data).hexdigest(), renditions))
        images.extend(generation.images.order_by("index"))
    with transaction.atomic():
        collection = Collection.objects.create(owner=designer, name="Spring campaign 春季")
        collection.add([image.pk for image in images if image.owner_id == designer.pk][:8])
        Collection.objects.create(owner=colleague, name="Moodboard").add([images[-1].pk, images[0].pk])
        public = ShareLink.create(designer, collection, expiry=ShareLink.Expiry.WEEK, show_parameters=True,
                                  allow_downloads=True)
        single = ShareLink.create(designer, images[1], expiry=ShareLink.Expiry.NEVER, show_parameters=False,
                                  allow_downloads=True)
        ShareLink.create(designer, images[0].generation, expiry=ShareLink.Expiry.DAY, show_parameters=False,
                         allow_downloads=False)
    detail = next(image for image in images if image.revised_prompt and image.generation.n > 1)
    return {
        "sign-in": "/accounts/login/", "generate": "/", "gallery": "/gallery/", "image": f"/gallery/{detail.pk}/",
        "collections": "/collections/", "collection": f"/collections/{collection.pk}/", "shared-links": "/shared/",
        "public": f"/s/{public.token}/", "public-image": f"/s/{single.token}/",
    }


def sign_in(base: str, password: str) -> dict[str, str]:
    """A session cookie from the login form itself, as a designer gets one."""
    with requests.Session() as session:
        session.get(f"{base}/accounts/login/", timeout=10).raise_for_status()
        answer = session.post(f"{base}/accounts/login/", timeout=10, allow_redirects=False, data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"], "username": USERNAME, "password": password,
            "next": "/"})
        if answer.status_code != 302 or "sessionid" not in session.cookies:
            raise RuntimeError(f"sign-in failed: {answer.status_code}")
        return {"sessionid": session.cookies["sessionid"], "csrftoken": session.cookies["csrftoken"]}


@contextmanager
def studio(workers: int = 3, grain: float = 0):
    """Seed, collect static files, serve with gunicorn and sign in; yields a Studio, stops gunicorn after."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwenstudio-static-") as static_root:
        env = production_env(Path(static_root), secrets.token_urlsafe(50))
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        configure()
        import django

        django.setup()
        from django.core.management import call_command

        from gallery.views.preferences import THEME_COOKIE

        call_command("ensure_database")
        call_command("migrate", verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        password = secrets.token_urlsafe(16)
        pages = seed(password, grain)
        port = free_port()
        with open(OUT / "gunicorn.log", "wb") as log:
            server = subprocess.Popen(
                [str(ROOT / ".venv/bin/gunicorn"), "bench.lighthouse:wsgi()", "--bind", f"127.0.0.1:{port}",
                 "--workers", str(workers), "--access-logfile", "-"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base, server)
            public = {"public", "public-image"}
            yield Studio(base, sign_in(base, password), pages, THEME_COOKIE, public, public | {"sign-in"})
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_until_up(base: str, server: subprocess.Popen) -> None:
    for _ in range(300):
        if server.poll() is not None:
            raise RuntimeError("gunicorn exited; see var/lighthouse/gunicorn.log")
        try:
            status = requests.get(f"{base}/accounts/login/", timeout=10).status_code
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
            continue
        if status != 200:
            raise RuntimeError(f"the sign-in page answered {status}; see var/lighthouse/gunicorn.log")
        return
    raise RuntimeError("gunicorn did not answer; see var/lighthouse/gunicorn.log")


def ensure_lighthouse() -> str:
    if not LIGHTHOUSE.exists():
        subprocess.run(["npm", "ci", "--prefix", str(BENCH), "--no-audit", "--no-fund"], check=True)
    return subprocess.run([str(LIGHTHOUSE), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def answers(site: Studio, page: str) -> int:
    """The page's own status: a redirect to the sign-in page must not be measured in its place."""
    return requests.get(site.base + site.pages[page], cookies=site.cookies_for(page, "dark"), allow_redirects=False,
                        timeout=30).status_code


def lighthouse(url: str, cookies: dict[str, str], theme: str, report: Path) -> dict:
    """One Lighthouse run in a Chromium of its own (a fresh profile, so a cold cache) that already holds the
    cookies: Lighthouse's --extra-headers reach the page but not its images, which then met the sign-in page."""
    port = free_port()
    flags = [*CHROMIUM_FLAGS, f"--blink-settings=preferredColorScheme={COLOR_SCHEME[theme]}"]
    with tempfile.TemporaryDirectory(prefix="qwenstudio-chromium-", ignore_cleanup_errors=True) as profile:
        chromium = subprocess.Popen([CHROMIUM, *flags, f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                     "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            set_cookies(port, url, cookies)
            subprocess.run(
                [str(LIGHTHOUSE), url, f"--port={port}", "--disable-storage-reset", "--quiet", "--output=json",
                 f"--output-path={report}", f"--only-categories={','.join(CATEGORIES)}",
                 "--max-wait-for-load=60000"], check=True, timeout=300)
        finally:
            chromium.terminate()
            chromium.wait(timeout=30)
    return json.loads(report.read_text())


def set_cookies(port: int, url: str, cookies: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/json/version", timeout=2).raise_for_status()
            break
        except requests.RequestException:
            time.sleep(0.1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        host = urlsplit(url).hostname  # for the whole site: a cookie given a URL covers that URL's path only
        browser.contexts[0].add_cookies([{"name": name, "value": value, "domain": host, "path": "/"}
                                         for name, value in cookies.items()])
        browser.close()  # only disconnects: the default context, and its cookies, stay


def scores(result: dict) -> dict[str, int]:
    return {name: round(category["score"] * 100) for name, category in result["categories"].items()
            if category["score"] is not None}


def failing(result: dict) -> list[str]:
    """The scored audits that pulled a category below 100 (id, title, what Lighthouse measured), then on
    one line the unweighted ones that failed in it too, as hints for why."""
    lines = []
    for name, category in result["categories"].items():
        if category["score"] is None or category["score"] >= 1:
            continue
        hints = []
        for ref in category["auditRefs"]:
            audit = result["audits"][ref["id"]]
            if audit["score"] is None or audit["score"] >= 1 or audit["scoreDisplayMode"] in {
                    "notApplicable", "manual", "informative"}:
                continue
            if not ref.get("weight"):
                hints.append(audit["id"])
                continue
            shown = f" ({audit['displayValue']})" if audit.get("displayValue") else ""
            lines.append(f"{name}: {audit['id']} — {audit['title']}{shown}")
        if hints:
            lines.append(f"{name} hints: {', '.join(hints)}")
    if result["audits"].get("is-crawlable", {}).get("score") == 0:
        lines.append(f"seo without is-crawlable (the share pages' noindex): {seo_if_crawlable(result)}")
    return lines


def seo_if_crawlable(result: dict) -> int:
    """What SEO would score if the page allowed indexing, everything else as measured."""
    refs = [ref for ref in result["categories"]["seo"]["auditRefs"] if ref.get("weight")]
    earned = sum(ref["weight"] * (1 if ref["id"] == "is-crawlable" else result["audits"][ref["id"]]["score"] or 0)
                 for ref in refs)
    return round(earned / sum(ref["weight"] for ref in refs) * 100)


def metrics(result: dict) -> str:
    audits = result["audits"]
    if not audits:
        return "no report: Lighthouse could not load the page"
    return "  ".join(f"{label} {audits[key].get('displayValue', '-')}" for label, key in (
        ("FCP", "first-contentful-paint"), ("LCP", "largest-contentful-paint"), ("TBT", "total-blocking-time"),
        ("CLS", "cumulative-layout-shift"), ("SI", "speed-index")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", help="comma-separated page names; all by default")
    parser.add_argument("--themes", default=",".join(THEMES))
    parser.add_argument("--runs", type=int, default=1, help="runs per page and theme; the median performance is kept")
    parser.add_argument("--screenshots", action="store_true", help="also save bench/screenshots.py's pictures")
    parser.add_argument("--grain", type=float, default=0,
                        help="noise in the originals, for PNGs as large as real ones (4: about 2 MB at 1328×1328)")
    options = parser.parse_args()
    themes = options.themes.split(",")
    version = ensure_lighthouse()
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.split(" built")[0]
    rows, missed = [], []
    with studio(grain=options.grain) as site:
        wanted = options.pages.split(",") if options.pages else list(site.pages)
        print(f"Lighthouse {version}, {chromium}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}),"
              f" {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; mobile, simulated throttling; grain {options.grain}")
        for page in wanted:
            if (status := answers(site, page)) != 200:
                print(f"  {page:13s} answered {status}, not measured; see var/lighthouse/gunicorn.log", flush=True)
                missed.append(f"{page} answered {status}")
                continue
            for theme in themes:
                runs = []
                for run in range(options.runs):
                    report = OUT / f"{page}-{theme}{f'-{run + 1}' if options.runs > 1 else ''}.json"
                    load = os.getloadavg()[0]
                    result = {"categories": {}, "audits": {}}  # if Lighthouse fails each time: it says why
                    for _ in range(3):  # a busy machine sometimes loses the trace (NO_NAVSTART)
                        try:
                            result = lighthouse(site.base + site.pages[page], site.cookies_for(page, theme), theme,
                                                report)
                            break
                        except subprocess.CalledProcessError:
                            continue
                    runs.append((scores(result), load, result))
                # A run Lighthouse could not finish counts only when none could.
                runs = sorted([run for run in runs if run[0]] or runs, key=lambda run: run[0].get("performance", 0))
                score, load, result = runs[len(runs) // 2]
                perf_runs = [run[0].get("performance") for run in runs]
                rows.append((page, theme, score, load, perf_runs, result))
                goals = ["accessibility", "best-practices", "performance"]
                goals += ["seo"] if page in site.public_pages else []
                missed += [f"{page} {theme} {goal} {score.get(goal)}" for goal in goals if score.get(goal, 0) < GOAL]
                print(f"  {page:13s} {theme:5s} " + " ".join(f"{score.get(name, '-'):>4}" for name in CATEGORIES)
                      + f"  load {load:.2f}", flush=True)
        if options.screenshots:
            import screenshots

            screenshots.capture(site, themes)
    print(f"\n{'page':13s} {'theme':5s} {'a11y':>5s} {'bp':>5s} {'perf':>5s} {'seo':>5s} {'load1':>6s}  perf runs")
    for page, theme, score, load, perf_runs, _ in rows:
        print(f"{page:13s} {theme:5s} " + " ".join(f"{score.get(name, '-'):>5}" for name in CATEGORIES)
              + f" {load:6.2f}  {' '.join(map(str, perf_runs))}")
    for page, theme, _, _, _, result in rows:
        lines = failing(result)
        print(f"\n{page} {theme}: {metrics(result)}")
        for line in lines:
            print(f"  {line}")
    summary = [{"page": page, "theme": theme, "scores": score, "load1": round(load, 2), "performance_runs": perf_runs,
                "failing": failing(result)} for page, theme, score, load, perf_runs, result in rows]
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if missed:
        print(f"\ngoal (>= {GOAL}) missed: " + "; ".join(missed))
        sys.exit(1)
    print(f"\nevery goal met (>= {GOAL}); reports in var/lighthouse/")


if __name__ == "__main__":
    main()
