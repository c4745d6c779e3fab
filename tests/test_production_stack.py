"""The production stack (issue 10). No Docker engine runs here, so docker-compose.yml and the Dockerfile are
read by real parsers (the Compose Specification's schema as check-jsonschema ships it; Docker's own Go parser
through `dockerfile`), and the commands they name (migrate, gunicorn, the worker, beat, redis-server and the
image's collectstatic) are started as their containers would start them, against local PostgreSQL, moto's S3
behind a "public" proxy and apisim, to make one generation through the real form over HTTP."""

import io
import os
import re
import secrets
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
import dockerfile
import PIL.Image
import psycopg
import redis
import requests
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from apisim.paint import paint
from tests.conftest import ROOT, free_port, wait_for
from tests.faults.harness import Service, TcpProxy

COMPOSE_FILE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent  # the venv's bin: its python is the image's python
# Tools a container never runs: they belong in requirements-dev.txt, never in the image.
DEV_ONLY = {"honcho", "supervisor", "circus", "pytest", "pytest-django", "hypothesis", "moto", "playwright", "ruff",
            "coverage", "check-jsonschema", "dockerfile"}
DOCKERFILE_INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                           "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def instructions() -> tuple:
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def requirement_names(path: Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(Requirement(line).name) for line in lines if line and not line.startswith("-r")}


# --- the files, parsed -------------------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification():
    result = check_compose_schema(COMPOSE_FILE)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_misspelt_key(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:", "    healthchek:", 1))

    result = check_compose_schema(broken)

    assert result.returncode == 1 and "healthchek" in result.stdout


def test_every_dependency_and_named_volume_is_declared():
    # what `docker compose config` refuses and a schema can't see
    services, declared = compose()["services"], compose()["volumes"]
    mounted = set()
    for name, service in services.items():
        assert set(service.get("depends_on", [])) <= set(services), f"{name} depends on an unknown service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith((".", "/", "~")), f"{name} mounts a host path, not a named volume"
            mounted.add(source)
    assert mounted == set(declared) == {"postgres", "redis", "minio"}


def test_every_long_running_service_has_a_health_check_and_the_others_are_one_shots():
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        if check is None:
            assert service.get("restart") == "no", f"{name} has no health check and is not a one-shot"
        else:
            assert check["test"] and not check.get("disable"), name
    for name in ("web", "worker", "beat"):
        assert "healthz" in " ".join(services[name]["healthcheck"]["test"])
    assert services["web"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["minio-bucket"]["depends_on"]["minio"] == {"condition": "service_healthy"}


def test_redis_writes_every_message_down_and_never_evicts_one():
    command = " ".join(compose()["services"]["redis"]["command"])

    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_workers_can_be_scaled():
    # --scale worker=N: no fixed container name or host port, and no fixed host name, which would give every
    # replica the same Celery node name
    assert not {"container_name", "ports", "hostname"} & set(compose()["services"]["worker"])


def test_the_image_installs_requirements_txt_only():
    steps = instructions()
    installs = [" ".join(step.value) for step in steps if step.cmd == "RUN" and "pip install" in " ".join(step.value)]

    assert {step.cmd for step in steps} <= DOCKERFILE_INSTRUCTIONS  # the parser takes any word
    assert installs == ["pip install --no-cache-dir -r requirements.txt"]
    assert not [step for step in steps if "requirements-dev" in step.original]
    python = (ROOT / ".python-version").read_text().strip()
    assert steps[0].cmd == "FROM" and steps[0].value[0].startswith(f"python:{python}")


def test_the_image_starts_gunicorn_in_exec_form():
    # exec form: gunicorn is PID 1 and gets compose's SIGTERM itself, not a shell in between
    cmd = instructions()[-1]

    assert cmd.cmd == "CMD" and cmd.json and cmd.value[0] == "gunicorn"


def test_requirements_txt_holds_no_process_manager_or_test_tool():
    runtime = requirement_names(ROOT / "requirements.txt")

    assert not runtime & DEV_ONLY
    assert {"gunicorn", "whitenoise", "celery"} <= runtime
    assert DEV_ONLY - {"supervisor", "circus", "coverage"} <= requirement_names(ROOT / "requirements-dev.txt")
    assert all("==" in line for line in (ROOT / "requirements.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#"))


def test_secrets_and_local_state_stay_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())

    assert {".env", ".venv", "var", ".git"} <= ignored


# --- the commands, run -------------------------------------------------------------------------------------

OURS = ("DJANGO_", "QWEN_", "AWS_", "DATABASE_URL", "CELERY_", "PYTEST_")


def container_environment(**variables: str) -> dict[str, str]:
    """This machine's environment less every studio setting (make's DJANGO_DEBUG=true, say), the venv's bin
    first on PATH, plus `variables`: what a container of the image gets from compose."""
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith(OURS) and name != "DJANGO_SETTINGS_MODULE"}
    return inherited | {"PATH": f"{BIN}{os.pathsep}{inherited.get('PATH', '')}", "PYTHONUNBUFFERED": "1"} | variables


def run(args: list[str], environment: dict[str, str]) -> None:
    result = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def collectstatic_step() -> tuple[list[str], dict[str, str]]:
    """The image's collectstatic command and the variables its RUN line gives it."""
    line = next(step.value[0] for step in instructions() if step.cmd == "RUN" and "collectstatic" in step.value[0])
    words = shlex.split(line.split("&&")[0])
    assignments = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
    return [word for word in words if word.split("=", 1)[0] not in assignments], assignments


class FormFields(HTMLParser):
    """What a browser submits from the form that posts to `action`: its inputs, ticked boxes, chosen options and
    text areas."""

    def __init__(self, action: str):
        super().__init__()
        self.action, self.inside, self.fields = action, False, {}
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("action") == self.action
        elif not self.inside:
            return
        elif tag == "input" and attrs.get("name") and attrs.get("type") not in ("submit", "button"):
            if attrs.get("type") not in ("checkbox", "radio") or "checked" in attrs:
                self.fields[attrs["name"]] = attrs.get("value") or ("on" if attrs.get("type") == "checkbox" else "")
        elif tag == "select":
            self._select = attrs.get("name")
        elif tag == "option" and self._select and ("selected" in attrs or self._select not in self.fields):
            self.fields[self._select] = attrs.get("value", "")
        elif tag == "textarea":
            self._textarea = attrs.get("name")
            self.fields[self._textarea] = ""

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag in ("select", "textarea"):
            self._select = self._textarea = None

    def handle_data(self, data):
        if self.inside and self._textarea:
            self.fields[self._textarea] += data.removeprefix("\n") if not self.fields[self._textarea] else data

    @classmethod
    def of(cls, html: str, action: str) -> dict[str, str]:
        parser = cls(action)
        parser.feed(html)
        return parser.fields


class BehindTheProxy:
    """A browser on https as gunicorn sees it behind the TLS proxy: X-Forwarded-Proto on every request, and
    cookies kept by hand, since requests would hold back the Secure ones over plain http."""

    def __init__(self, origin: str):
        self.origin, self.cookies = origin, {}

    def request(self, method: str, path: str, **options) -> requests.Response:
        headers = {"X-Forwarded-Proto": "https", "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if method == "POST":
            public = "https://" + urlsplit(self.origin).netloc
            headers |= {"Origin": public, "Referer": public + path}
        response = requests.request(method, self.origin + path, headers=headers, allow_redirects=False, timeout=15,
                                    **options)
        for header in response.raw.headers.getlist("Set-Cookie"):
            self.cookies |= {name: morsel.value for name, morsel in SimpleCookie(header).items()}
        return response

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def submit(self, path: str, **changes: str) -> requests.Response:
        """GET the page, then POST its form (the one posting to the page) with these fields changed, as a
        person filling it in would."""
        page = self.get(path)
        assert page.status_code == 200, page.status_code
        fields = FormFields.of(page.text, path)
        assert set(changes) <= set(fields), f"the form has no {set(changes) - set(fields)}"
        return self.request("POST", path, data=fields | changes)


def own_database(name: str) -> str:
    """A new, empty database on the test server, and its URL."""
    from django.conf import settings

    server = settings.DATABASES["default"]
    credentials = quote(server["USER"] or "postgres", safe="")
    if server.get("PASSWORD"):
        credentials += ":" + quote(server["PASSWORD"], safe="")
    with psycopg.connect(host=server["HOST"] or "127.0.0.1", port=server["PORT"] or 5432, user=server["USER"],
                         password=server.get("PASSWORD") or None, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgres://{credentials}@{server['HOST'] or '127.0.0.1'}:{server['PORT'] or 5432}/{name}"


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_commands_compose_names_serve_a_generation_through_gunicorn(sim, s3_endpoint, tmp_path):
    services = compose()["services"]
    tag = f"stack-{os.getpid()}"
    web_port, broker_port = free_port(), free_port()
    moto = urlsplit(s3_endpoint)
    public = TcpProxy(moto.hostname, moto.port)  # the TLS proxy in front of MinIO that browsers reach
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=tag)  # what minio-bucket does

    # compose's redis command, on a port and folder of this test's own
    redis_server = Service("redis", [*services["redis"]["command"], "--port", str(broker_port), "--bind", "127.0.0.1",
                                     "--dir", str(tmp_path)], "Ready to accept connections", "test-stack-redis.log")
    beat_command = list(services["beat"]["command"])
    beat_command[beat_command.index("--schedule") + 1] = str(tmp_path / "celerybeat-schedule")
    web_command = list(instructions()[-1].value)
    web_command[web_command.index("--bind") + 1] = f"127.0.0.1:{web_port}"  # the bind address only
    processes = [redis_server,
                 Service("worker", services["worker"]["command"], " ready.", "test-stack-worker.log"),
                 Service("beat", beat_command, "beat: Starting", "test-stack-beat.log"),
                 Service("web", web_command, "Listening at:", "test-stack-web.log")]
    database_url = own_database(f"test_qwenstudio_{tag.replace('-', '_')}")
    environment = container_environment(
        DJANGO_DEBUG="false", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=database_url, CELERY_BROKER_URL=f"redis://127.0.0.1:{broker_port}/0",
        AWS_STORAGE_BUCKET_NAME=tag, AWS_S3_ENDPOINT_URL=s3_endpoint, AWS_S3_PUBLIC_URL=public.url,
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_S3_REGION_NAME="us-east-1",
        QWEN_API_BASE_URL=sim.url, QWEN_API_KEY="test-key", QWEN_DOWNLOAD_HOSTS=urlsplit(sim.url).netloc)
    assert set(services["web"]["environment"]) <= set(environment)
    try:
        public.up()
        redis_server.start(environment)
        run(services["migrate"]["command"], environment)
        static_command, build_variables = collectstatic_step()
        run(static_command, container_environment(**build_variables))
        run(["python", "manage.py", "createsuperuser", "--no-input", "--username", "designer", "--email",
             "designer@example.com"], environment | {"DJANGO_SUPERUSER_PASSWORD": "a long studio pass phrase"})
        for process in processes[1:]:
            process.start(environment)
        origin = f"http://127.0.0.1:{web_port}"
        wait_for(lambda: requests.get(f"{origin}/healthz", timeout=5).status_code == 200, timeout=30)

        # the compose health checks: /healthz over plain http inside the network, `manage.py healthz`
        health = requests.get(f"{origin}/healthz", timeout=10)
        assert (health.status_code, health.json()["down"]) == (200, [])
        run([word for word in services["worker"]["healthcheck"]["test"] if word != "CMD"], environment)
        # the worker that answered had warmed jieba and the gallery's queries as it loaded the studio
        web_log = processes[-1].log_path.read_text(errors="replace").rsplit("\n==== ", 1)[-1]
        assert re.search(r"warm-up: jieba \d+ ms, templates \d+ ms, database \d+ ms", web_log), web_log[-3000:]
        # redis really runs with the compose file's flags
        with redis.Redis(port=broker_port) as broker:
            assert broker.config_get("appendonly")["appendonly"] == "yes"
            assert broker.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # plain http from outside is sent to https: production settings are on
        assert requests.get(f"{origin}/", allow_redirects=False, timeout=10).headers["Location"].startswith("https://")

        # sign in and make one generation through the real form
        browser = BehindTheProxy(origin)
        signed_in = browser.submit("/accounts/login/", username="designer",
                                   password="a long studio pass phrase")
        assert signed_in.status_code == 302, signed_in.text[:2000]
        prompt, seed = f"a paper crane on a desk, {tag}, 纸鹤", 4242
        queued = browser.submit("/", prompt=prompt, seed=str(seed), n="1")
        assert queued.status_code == 302, queued.text[:2000]
        page = browser.get("/")
        job = re.search(r'id="job-([0-9a-f-]{36})"', page.text).group(1)

        def job_finished():
            card = browser.get(f"/jobs/{job}/").text
            status = re.search(r'data-status="(\w+)"', card).group(1)
            return card if status in ("succeeded", "partial", "failed", "canceled") else None
        card = wait_for(job_finished, timeout=40, interval=0.5)
        assert 'data-status="succeeded"' in card, card

        # the original, through the signed URL on the public address
        original = browser.get(re.search(r'href="(/images/\d+/original/)"', card).group(1))
        assert original.status_code == 302
        assert urlsplit(original.headers["Location"]).netloc == urlsplit(public.url).netloc
        image = requests.get(original.headers["Location"], timeout=10)
        assert image.status_code == 200
        size = PIL.Image.open(io.BytesIO(image.content)).size
        assert image.content == paint(prompt, seed, *size)
        # pages let the browser load images from there
        assert public.url in page.headers["Content-Security-Policy"]

        # static files: hashed by the manifest, served by WhiteNoise under gunicorn
        stylesheet = re.search(r'href="(/static/css/studio\.[0-9a-f]{12}\.css)"', page.text).group(1)
        css = browser.get(stylesheet)
        assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
        assert "immutable" in css.headers["Cache-Control"] and ".job" in css.text
    finally:
        for process in reversed(processes):
            process.stop(timeout=15)
        public.down()
        drop_database(database_url)
