"""Start-up from the environment (qwenstudio/settings.py): a malformed setting stops it with a
message naming the variable and no secret. Each case runs in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = "import django; django.setup()"
USE_CATALOG = SETUP + "; from gallery.catalog import catalog; catalog()"
# Secrets a good environment carries; none may ever reach the output.
SECRETS = {"QWEN_API_KEY": "sk-canary-api-key-1f2e3d", "DJANGO_SECRET_KEY": "canary-django-secret-9a8b7c",
           "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-5d4c3b"}
OURS = ("DJANGO_", "QWEN_", "AWS_", "DATABASE_URL", "CELERY_")


def start(code: str = SETUP, drop: tuple[str, ...] = (), **variables: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith(OURS)}
    env |= {"DJANGO_SETTINGS_MODULE": "qwenstudio.settings", **SECRETS, **variables}
    for name in drop:
        env.pop(name)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def assert_refused_naming(process: subprocess.CompletedProcess, variable: str) -> None:
    output = process.stdout + process.stderr
    assert process.returncode != 0
    assert variable in process.stderr.strip().splitlines()[-1], process.stderr
    assert not [secret for secret in SECRETS.values() if secret in output]


def test_good_environment_starts():
    process = start(USE_CATALOG)

    assert process.returncode == 0, process.stderr


def test_debug_off_with_a_secret_key_starts():
    process = start(DJANGO_DEBUG="false")

    assert process.returncode == 0, process.stderr


@pytest.mark.parametrize("variable, value", [
    ("QWEN_MAX_CONCURRENT", "abc"), ("QWEN_MAX_CONCURRENT", "0"), ("DJANGO_DEBUG", "maybe"),
    ("DATABASE_URL", "not-a-url"), ("QWEN_API_BASE_URL", "nonsense"),
])
def test_malformed_setting_stops_start_up_naming_it(variable, value):
    assert_refused_naming(start(**{variable: value}), variable)


def test_debug_off_without_a_secret_key_stops_start_up():
    process = start(drop=("DJANGO_SECRET_KEY",), DJANGO_DEBUG="false")

    assert_refused_naming(process, "DJANGO_SECRET_KEY")


def test_missing_catalog_file_stops_its_first_use_naming_it(tmp_path):
    process = start(USE_CATALOG, QWEN_CATALOG_FILE=str(tmp_path / "missing.json"))

    assert_refused_naming(process, "QWEN_CATALOG_FILE")


@pytest.mark.parametrize("variable, value", [("DATABASE_URL", "postgres//app:hunter2-canary@db:5432/app"),
                                             ("CELERY_BROKER_URL", "redis//:hunter2-canary@redis:6379/0")],
                         ids=["DATABASE_URL", "CELERY_BROKER_URL"])
def test_malformed_url_never_prints_its_password(variable, value):
    # given a URL with a password but a typo in its scheme
    process = start(**{variable: value})

    # then start-up stops, naming the variable but not the password
    assert_refused_naming(process, variable)
    assert "hunter2-canary" not in process.stdout + process.stderr


def test_a_missing_catalog_file_stops_start_up(tmp_path):
    process = start(QWEN_CATALOG_FILE=str(tmp_path / "missing.json"))
    assert_refused_naming(process, "QWEN_CATALOG_FILE")


PRODUCTION = {"DJANGO_DEBUG": "false", "DJANGO_ALLOWED_HOSTS": "studio.example.com",
              "DJANGO_SECRET_KEY": "k3Yq8-canary-production-secret-that-is-long-and-random-0p9o8i7u6y5t",
              "DATABASE_URL": "postgres://studio:hunter2-canary@127.0.0.1:5432/qwenstudio"}


@pytest.mark.parametrize("value, debug", [(None, False), ("", False), ("false", False), ("true", True)])
def test_debug_is_on_only_when_asked_for_by_name(value, debug):
    variables = {"DJANGO_DEBUG": value} if value is not None else {}
    process = start(SETUP + "; from django.conf import settings; print(settings.DEBUG)", **variables)
    assert process.stdout.strip() == str(debug), process.stderr


def test_no_built_in_secret_key_unless_debug_is_asked_for():
    assert_refused_naming(start(drop=("DJANGO_SECRET_KEY",)), "DJANGO_SECRET_KEY")


def test_check_deploy_reports_nothing_under_production_settings():
    env = {name: value for name, value in os.environ.items() if not name.startswith(OURS)} | PRODUCTION
    process = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "System check identified no issues" in process.stdout


# Production pages without running collectstatic first: plain static storage, the rest as deployed.
PRODUCTION_SETUP = SETUP + """
from django.conf import settings
settings.STORAGES = {**settings.STORAGES,
                     "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
"""
BOOM = PRODUCTION_SETUP + """
import sys, types
from django.conf import settings
from django.test import Client
from django.urls import path

def boom(request):
    raise RuntimeError("boom")

urls = types.ModuleType("boom_urls")
urls.urlpatterns = [path("boom/", boom)]
sys.modules["boom_urls"] = urls
settings.ROOT_URLCONF = "boom_urls"
response = Client(raise_request_exception=False).get("/boom/", HTTP_HOST="studio.example.com", secure=True)
print(response.status_code)
print(response.content.decode())
"""


def test_a_server_error_in_production_shows_the_studios_page_and_no_settings():
    process = start(BOOM, **PRODUCTION)
    status, _, body = process.stdout.partition("\n")
    assert status == "500", process.stderr
    assert "Something went wrong on our side" in body
    for leak in ("hunter2-canary", "DATABASE_URL", "Traceback", "canary-production-secret"):
        assert leak not in body


def test_production_sends_hsts_and_redirects_plain_http():
    code = PRODUCTION_SETUP + """
from django.test import Client
client = Client()
plain = client.get("/accounts/login/", HTTP_HOST="studio.example.com")
secure = client.get("/accounts/login/", HTTP_HOST="studio.example.com", HTTP_X_FORWARDED_PROTO="https")
print(plain.status_code, plain["Location"])
print(secure.status_code, secure.get("Strict-Transport-Security"))
"""
    lines = start(code, **PRODUCTION).stdout.splitlines()
    assert lines[0] == "301 https://studio.example.com/accounts/login/"
    assert lines[1].startswith("200 max-age=31536000; includeSubDomains; preload")


def test_the_database_urls_own_server_options_are_kept_beside_the_studios():
    # given an operator's DATABASE_URL that sets a server option of its own
    url = "postgres://postgres@127.0.0.1:5432/qwenstudio?options=-c%20statement_timeout%3D5000"
    show = SETUP + "; from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['options'])"

    # when the studio starts with it, and without it
    given, default = start(show, DATABASE_URL=url), start(show)

    # then both the operator's option and the studio's are sent to PostgreSQL
    assert given.returncode == 0, given.stderr
    assert given.stdout.split("\n")[0] == "-c statement_timeout=5000 -c max_parallel_workers_per_gather=0"
    assert default.stdout.strip() == "-c max_parallel_workers_per_gather=0"
