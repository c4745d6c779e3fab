"""Sign-in: failed attempts lock an account and, separately, an address (django-axes) on both sign-in
pages; password reset exists only when mail is configured; hostile input never breaks the form."""

import importlib
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F
from django.test import Client
from django.test.utils import override_settings
from django.urls import NoReverseMatch, clear_url_caches, reverse

import qwenstudio.urls

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "var" / "screenshots"
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
PASSWORD = "correct horse battery"
HOME = "198.51.100.7"
ELSEWHERE = "203.0.113.99"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Every attempt hashes a password; the production hasher would make these tests take minutes."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(db):
    return User.objects.create_user("carol", "carol@example.com", PASSWORD, is_staff=True, is_superuser=True)


@pytest.fixture
def mail_server():
    """A mail server configured at start-up: the URLs are built again with it, and again after."""
    with override_settings(MAILERS={"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}):
        build_urls()
        yield
    build_urls()


def build_urls() -> None:
    importlib.reload(qwenstudio.urls)
    clear_url_caches()


def sign_in(client: Client, username: str, password: str = PASSWORD, address: str = HOME, path: str = LOGIN):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def fail(client: Client, times: int, username: str = "alice", **where) -> None:
    for _ in range(times):
        sign_in(client, username, "wrong password", **where)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def move_attempts_back(minutes: float) -> None:
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=minutes))


def cool_off_minutes() -> float:
    return settings.AXES_COOLOFF_TIME * 60


def in_fresh_interpreter(code: str, *arguments: str, **variables: str) -> str:
    """The last line that code prints after django.setup(), with these environment variables."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "qwenstudio.settings", "DJANGO_DEBUG": "true", **variables}
    process = subprocess.run([sys.executable, "-c", "import django; django.setup()\n" + code, *arguments],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    return process.stdout.strip().splitlines()[-1]


def test_the_eleventh_attempt_is_refused_even_with_the_right_password(client, alice):
    fail(client, settings.AXES_FAILURE_LIMIT - 1)
    assert sign_in(client, "alice", "wrong password").status_code == 429

    response = sign_in(client, "alice")

    assert response.status_code == 429
    assert not signed_in(client)
    assert "Sign-in paused" in response.content.decode()


def test_the_admin_sign_in_locks_the_same_way(client, staff):
    fail(client, settings.AXES_FAILURE_LIMIT, "carol", path=ADMIN_LOGIN)

    response = sign_in(client, "carol", path=ADMIN_LOGIN)

    assert response.status_code == 429
    assert not signed_in(client)
    assert "Sign-in paused" in response.content.decode()


def test_failures_on_both_sign_in_pages_add_up(client, staff):
    fail(client, settings.AXES_FAILURE_LIMIT // 2, "carol", path=ADMIN_LOGIN)
    fail(client, settings.AXES_FAILURE_LIMIT - settings.AXES_FAILURE_LIMIT // 2, "carol")

    assert sign_in(client, "carol", path=ADMIN_LOGIN).status_code == 429


def test_failures_for_many_accounts_from_one_address_lock_that_address(client, bob):
    for number in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, f"nobody-{number}", "wrong password")

    response = sign_in(client, "bob")

    assert response.status_code == 429
    assert not signed_in(client)


def test_a_locked_address_does_not_lock_other_addresses(client, bob):
    for number in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, f"nobody-{number}", "wrong password")

    response = sign_in(client, "bob", address=ELSEWHERE)

    assert response.status_code == 302
    assert signed_in(client)


def test_failures_for_one_account_from_many_addresses_lock_that_account(client, alice):
    for number in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "alice", "wrong password", address=f"192.0.2.{number + 1}")

    response = sign_in(client, "alice", address=ELSEWHERE)

    assert response.status_code == 429
    assert not signed_in(client)


def test_a_success_before_the_limit_resets_the_count(alice):
    fail(Client(), settings.AXES_FAILURE_LIMIT - 1)
    assert sign_in(Client(), "alice").status_code == 302

    fail(Client(), settings.AXES_FAILURE_LIMIT - 1)
    client = Client()
    response = sign_in(client, "alice")

    assert response.status_code == 302
    assert signed_in(client)


def test_signing_in_to_ones_own_account_keeps_the_failures_against_another(alice, bob):
    fail(Client(), settings.AXES_FAILURE_LIMIT - 1)
    assert sign_in(Client(), "bob").status_code == 302

    assert sign_in(Client(), "alice", "wrong password").status_code == 429


def test_the_lockout_ends_after_the_cool_off(client, alice):
    fail(client, settings.AXES_FAILURE_LIMIT)
    move_attempts_back(cool_off_minutes() - 1)
    assert sign_in(Client(), "alice").status_code == 429
    move_attempts_back(cool_off_minutes() + 1)

    response = sign_in(client, "alice")

    assert response.status_code == 302
    assert signed_in(client)


def test_an_attempt_during_the_lockout_starts_the_wait_again(client, alice):
    fail(client, settings.AXES_FAILURE_LIMIT)
    move_attempts_back(cool_off_minutes() - 1)
    sign_in(client, "alice")
    move_attempts_back(2)

    assert sign_in(client, "alice").status_code == 429


@override_settings(AXES_FAILURE_LIMIT=3, AXES_COOLOFF_TIME=1 / 60)
def test_the_limit_and_the_wait_follow_the_settings(client, alice):
    fail(client, 3)

    response = sign_in(client, "alice")

    assert response.status_code == 429
    assert "Wait 1 minute, then try again." in response.content.decode()


def test_the_locked_page_is_the_sites_own_and_says_how_long_to_wait(client, alice):
    fail(client, settings.AXES_FAILURE_LIMIT)

    response = sign_in(client, "alice")

    html = response.content.decode()
    assert response.status_code == 429
    assert response["Content-Type"].startswith("text/html")
    assert 'class="topbar"' in html and "studio.css" in html
    assert f"Wait {round(cool_off_minutes())} minutes, then try again." in html
    assert "ask your studio admin" in html
    assert "style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)


def test_the_limit_and_the_wait_come_from_the_environment():
    code = ("from axes.helpers import get_cool_off, get_failure_limit\n"
            "print(get_failure_limit(None, None), get_cool_off())")

    assert in_fresh_interpreter(code, QWEN_LOGIN_FAILURE_LIMIT="4", QWEN_LOGIN_COOLOFF_MINUTES="30") == "4 0:30:00"


@pytest.mark.parametrize("proxies, forwarded_for, expected", [
    ("0", "6.6.6.6", "10.0.0.2"),
    ("1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),
    ("1", None, "10.0.0.2"),
    ("2", "6.6.6.6, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
])
def test_the_address_comes_from_x_forwarded_for_only_behind_trusted_proxies(proxies, forwarded_for, expected):
    code = ("import json, sys\n"
            "from axes.helpers import get_client_ip_address\n"
            "from django.test import RequestFactory\n"
            "request = RequestFactory().post('/accounts/login/', REMOTE_ADDR='10.0.0.2', **json.loads(sys.argv[1]))\n"
            "print(get_client_ip_address(request))")
    headers = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for else {}

    assert in_fresh_interpreter(code, json.dumps(headers), DJANGO_TRUSTED_PROXY_COUNT=proxies) == expected


def test_password_reset_is_not_routed_without_mail(client):
    for path in ["/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/",
                 "/accounts/reset/MQ/set-password/"]:
        assert client.get(path).status_code == 404, path
    with pytest.raises(NoReverseMatch):
        reverse("password_reset")
    assert "Forgot your password?" not in client.get(LOGIN).content.decode()


def test_password_reset_sends_a_link_that_works_when_mail_is_configured(client, alice, mail_server, mailoutbox):
    assert "Forgot your password?" in client.get(LOGIN).content.decode()

    response = client.post("/accounts/password_reset/", {"email": "alice@example.com"})

    assert response.status_code == 302
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["alice@example.com"]
    link = next(word for word in mailoutbox[0].body.split() if "/accounts/reset/" in word)
    assert client.get(link, follow=True).status_code == 200


def test_password_change_needs_a_signed_in_designer(client, db):
    response = client.get("/accounts/password_change/")

    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


def test_there_is_no_sign_up(client, db):
    for path in ["/accounts/signup/", "/accounts/register/", "/signup/"]:
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize("username", [
    "a" * 10_000,
    "ali\x00ce",
    "\x01\x02\x1b[31m\x7f",
    "\u202eecila\u202c\u200f",
    "𝒶" * 150,
    "ａｌｉｃｅ",
    "' OR 1=1 --",
])
def test_a_hostile_username_gets_an_answer_never_an_error(client, alice, username):
    statuses = {sign_in(client, username, "x" * 10_000).status_code for _ in range(settings.AXES_FAILURE_LIMIT + 1)}

    assert statuses <= {200, 400, 429}


def test_a_look_alike_spelling_counts_against_the_account_it_normalises_to(client, alice):
    fail(client, settings.AXES_FAILURE_LIMIT, "ａｌｉｃｅ", address=ELSEWHERE)

    assert sign_in(client, "alice").status_code == 429


def test_a_body_that_is_not_utf8_gets_an_answer_never_an_error(client, alice):
    response = client.generic("POST", LOGIN, b"username=%FF%FE%00%C0&password=%ED%A0%80",
                              content_type="application/x-www-form-urlencoded", REMOTE_ADDR=HOME)

    assert response.status_code in {200, 400}


def test_a_designer_who_is_locked_out_sees_when_to_try_again(page, alice):
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(LOGIN)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("wrong password")
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()

    assert page.get_by_role("heading", name="Sign-in paused").is_visible()
    assert page.get_by_text(f"Wait {round(cool_off_minutes())} minutes, then try again.").is_visible()
    assert not [text for text in console if "Content Security Policy" in text]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "signin-locked.png", full_page=True)
