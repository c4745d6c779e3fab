"""/healthz and `manage.py healthz`: what compose's health checks ask, against the real services."""

import json

import pytest
from django.core.management import CommandError, call_command

from gallery import limits
from tests.conftest import free_port


def closed_port_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def test_healthz_answers_ok_as_json_without_signing_in(client, db, limits_redis):
    # given every part up and a sweep a moment ago
    limits.note_sweep()

    # when compose asks, with no session
    response = client.get("/healthz")

    # then
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    report = response.json()
    assert report["status"] == "ok" and report["down"] == []
    assert (report["database"], report["broker"], report["storage"], report["sweeper"]) == ("ok",) * 4
    assert 0 <= report["last_sweep_seconds"] < 5


def storage_down(settings):
    working = settings.STORAGES
    unreachable = {"OPTIONS": {"endpoint_url": closed_port_url("http")}}
    settings.STORAGES = working | {"default": working["default"] | unreachable}


def broker_down(settings):
    settings.CELERY_BROKER_URL = closed_port_url("redis") + "/0"


@pytest.mark.parametrize(("part", "make_down"), [("broker", broker_down), ("storage", storage_down)])
def test_healthz_names_the_part_that_is_down_with_a_503(client, db, settings, part, make_down):
    # given one part unreachable (nothing listens on its port)
    make_down(settings)

    # when
    response = client.get("/healthz")

    # then it is named, and nothing of its address is in the answer
    assert response.status_code == 503
    report = response.json()
    assert report["down"] == [part] and report[part] == "down"
    assert "127.0.0.1" not in response.content.decode()


def test_a_sweeper_three_beats_late_is_down(client, db, settings, limits_redis):
    # given a last sweep long before three beats
    limits.client().set(limits.LAST_SWEEP, "1000000000")

    # then beat is named as down
    report = client.get("/healthz").json()
    assert report["sweeper"] == "down" and "sweeper" in report["down"]


def test_the_healthz_command_prints_the_same_and_fails_when_a_part_is_down(db, settings, capsys, limits_redis):
    limits.note_sweep()
    call_command("healthz")
    assert json.loads(capsys.readouterr().out)["status"] == "ok"

    broker_down(settings)
    with pytest.raises(CommandError, match="down: broker"):
        call_command("healthz")


def test_healthz_refuses_post(client, db):
    assert client.post("/healthz").status_code == 405


def compose() -> dict:
    import yaml

    from tests.conftest import ROOT
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_lets_the_longest_call_finish_before_it_kills_a_worker():
    # Celery's warm shutdown waits for calls in flight; compose must wait longer than the longest one.
    grace = compose()["services"]["worker"]["stop_grace_period"]
    seconds = int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]]
    from qwenstudio import settings as defaults

    assert seconds >= defaults.QWEN_CONNECT_TIMEOUT + defaults.QWEN_READ_TIMEOUT + 30


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_compose_checks_the_health_of_each_studio_service(service):
    check = " ".join(compose()["services"][service]["healthcheck"]["test"])
    assert "healthz" in check


def test_a_storage_that_never_answers_is_down_within_seconds(client, db, settings):
    # given a storage endpoint that accepts connections and then says nothing (packets dropped)
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        working = settings.STORAGES
        endpoint = {"OPTIONS": {"endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}"}}
        settings.STORAGES = working | {"default": working["default"] | endpoint}

        # when compose asks
        started = time.monotonic()
        response = client.get("/healthz")

        # then storage is down, said within a few seconds rather than botocore's minute
        assert time.monotonic() - started < 5
        assert response.status_code == 503 and response.json()["down"] == ["storage"]
    finally:
        silent.close()
