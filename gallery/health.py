"""What /healthz and `manage.py healthz` report: each part the studio needs, and the sweeper's pulse.

Every probe is short (a couple of seconds at most) and says only "ok" or "down": no address, key
or error text, since the answer is public.
"""

import logging
from concurrent.futures import ThreadPoolExecutor

import redis
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection

from gallery import limits

logger = logging.getLogger(__name__)
PROBE_KEY = "healthz/probe"


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2).ping()


def _storage() -> None:
    default_storage.exists(PROBE_KEY)  # a HEAD on S3: reachable and the keys are good


PROBES = {"database": _database, "broker": _broker, "storage": _storage}


def _closing(probe):
    """The probe, then the thread's own database connection closed (it is not a request's)."""
    def run():
        try:
            probe()
        finally:
            connection.close()
    return run


PROBE_SECONDS = 3
_probes = ThreadPoolExecutor(max_workers=6, thread_name_prefix="healthz")


def report() -> dict:
    """{"status": "ok"|"down", "down": [...], each part: "ok"|"down", "last_sweep_seconds": float|None}.

    The probes run side by side, and one that has not answered within PROBE_SECONDS is down: a
    storage that drops packets can't hold the page (or a web worker) for botocore's minute.
    """
    answer: dict = {}
    running = {name: _probes.submit(_closing(probe)) for name, probe in PROBES.items()}
    for name, future in running.items():
        try:
            future.result(timeout=PROBE_SECONDS)
            answer[name] = "ok"
        except Exception as error:  # any failure of a probe means "down"; the log has the kind
            logger.warning("healthz: %s is down (%s)", name, type(error).__name__)
            answer[name] = "down"
    try:
        age = limits.seconds_since_sweep()
    except redis.RedisError:
        age = None
    answer["last_sweep_seconds"] = None if age is None else round(age, 1)
    # The sweeper runs every QWEN_SWEEP_SECONDS; three missed beats mean beat is down.
    late = age is not None and age > 3 * settings.QWEN_SWEEP_SECONDS + 30
    answer["sweeper"] = "down" if late else "ok" if age is not None else "not yet seen"
    down = [name for name in (*PROBES, "sweeper") if answer[name] == "down"]
    return {"status": "down" if down else "ok", "down": down, **answer}
