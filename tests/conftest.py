"""Real services for the tests: moto's S3 server and apisim as subprocesses over HTTP,
Redis db 15 as the broker, a redis-server of the run's own for the provider limits, a
Celery worker in this process, and Debian's Chromium."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import redis
import requests
from django.contrib.auth.models import User
from django.test.utils import override_settings
from django.utils import translation

from qwenstudio.celery import app as celery_app

# Playwright's sync API runs an event loop in this thread; the ORM calls beside it are safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
TEST_BROKER = "redis://127.0.0.1:6379/15"
# A queue of this run's own: two runs on one machine must not take each other's jobs.
TEST_QUEUE = f"qwenstudio-test-{os.getpid()}"
BUCKET = "qwenstudio-test"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(args: list[str], health_url: str, log_name: str) -> subprocess.Popen:
    log = open(ROOT / "var" / log_name, "wb")
    process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[2]} exited early; see var/{log_name}")
        try:
            if requests.get(health_url, timeout=1).status_code < 500:
                return process
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{args[2]} did not start; see var/{log_name}")


class PrivateRedis:
    """A redis-server of this run's own, without persistence, for the provider limits: two runs on one
    machine don't share slots, and a test can restart it with its data gone."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(ROOT / "var" / "test-limits-redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: self._answers(client), timeout=10, interval=0.05)

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """Kill it: whatever it held is gone, as after a crash of a Redis without persistence."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class Sim:
    """The apisim control endpoints, for injecting faults and counting calls."""

    def __init__(self, url: str):
        self.url = url

    def fault(self, type: str, **options) -> None:
        requests.post(f"{self.url}/_sim/faults", json={"faults": [{"type": type, **options}]},
                      timeout=5).raise_for_status()

    def calls(self) -> list[dict]:
        return requests.get(f"{self.url}/_sim/calls", timeout=5).json()["calls"]

    def downloads(self) -> list[dict]:
        return requests.get(f"{self.url}/_sim/downloads", timeout=5).json()["downloads"]

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()


@pytest.fixture(autouse=True)
def _default_language():
    """Each test starts in the default language: LocaleMiddleware leaves a request's language active in
    the thread that served it, which is this one for the test client."""
    translation.deactivate()
    yield
    translation.deactivate()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """A test database of this run's own, so that two runs on one machine don't collide."""
    from django.conf import settings

    settings.DATABASES["default"]["TEST"]["NAME"] = f"test_qwenstudio_{os.getpid()}"


@pytest.fixture(scope="session")
def s3_endpoint():
    (ROOT / "var").mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            f"{url}/moto-api/", "test-moto.log")
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def sim_url():
    (ROOT / "var").mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_args = [sys.executable, "-m", "apisim", "--host", "127.0.0.1", "--port", str(port)]
    process = start_process(env_args, f"{url}/healthz", "test-apisim.log")
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def limits_redis():
    (ROOT / "var").mkdir(exist_ok=True)
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def studio_settings(s3_endpoint, sim_url, limits_redis):
    """Point the studio at the test services for the whole session."""
    from django.conf import settings
    from django.utils.csp import CSP

    celery_app.conf.broker_url = TEST_BROKER
    celery_app.conf.task_default_queue = TEST_QUEUE
    overrides = override_settings(
        ALLOWED_HOSTS=["testserver", "localhost", "127.0.0.1"],
        STORAGES={"default": {"BACKEND": "storages.backends.s3.S3Storage"},
                  "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
        AWS_STORAGE_BUCKET_NAME=BUCKET, AWS_S3_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test", AWS_S3_REGION_NAME="us-east-1",
        QWEN_API_BASE_URL=sim_url, QWEN_API_KEY="test-key", QWEN_READ_TIMEOUT=20,
        QWEN_DOWNLOAD_HOSTS=[sim_url.removeprefix("http://")], CELERY_BROKER_URL=TEST_BROKER,
        QWEN_LIMITS_REDIS_URL=limits_redis.url,
        # Images redirect to moto's signed URLs, as they would to any S3 endpoint's.
        SECURE_CSP={**settings.SECURE_CSP, "img-src": [CSP.SELF, s3_endpoint]},
        # Django's real hasher takes most of a second per user; tests make hundreds.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    overrides.enable()
    yield
    overrides.disable()


@pytest.fixture
def sim(sim_url):
    control = Sim(sim_url)
    control.reset()
    yield control
    control.reset()


@pytest.fixture(scope="session")
def celery_worker_session(studio_settings):
    from celery.contrib.testing.worker import start_worker

    redis.Redis.from_url(TEST_BROKER).delete(TEST_QUEUE)
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False,
                      shutdown_timeout=15, loglevel="WARNING") as worker:
        yield worker
    redis.Redis.from_url(TEST_BROKER).delete(TEST_QUEUE)


@pytest.fixture
def worker(celery_worker_session, transactional_db, sim, limits_redis):
    """A real Celery worker on Redis; tests using it see only committed rows and start with no
    provider slots taken or pauses left by an earlier test."""
    limits_redis.client().flushdb()
    return celery_worker_session


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", "alice@example.com", "correct horse battery")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", "bob@example.com", "correct horse battery")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, username: str = "alice", password: str = "correct horse battery") -> None:
    """Sign in through the real form, as a designer does."""
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


@pytest.fixture
def signed_in_page(page, alice):
    sign_in(page)
    return page


def wait_for(condition, timeout: float = 30, interval: float = 0.2):
    """Poll until condition() is truthy and return it; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    raise AssertionError(f"gave up after {timeout}s waiting for {condition.__name__}")
