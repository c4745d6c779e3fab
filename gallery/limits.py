"""How many provider calls may start now, held in Redis for every worker on every host.

Three limits apply to a call: the studio's QWEN_MAX_CONCURRENT, the model's calls in
flight and the model's calls per minute (both from the catalog). A 429 also pauses
the model for its Retry-After. Every time is Redis's own (`TIME`), so the workers'
clocks never matter.

- A slot is a member of a sorted set scored by when its lease runs out. The holder
  renews it every third of QWEN_SLOT_LEASE, so a worker killed mid-call frees its
  slot within QWEN_SLOT_LEASE seconds and a call of any length keeps its slot.
- Calls per minute are a log of start times kept for 60 s.
- Redis can lose all of this (a restart without persistence). A missing `epoch` key
  says so: acquiring then waits while the database is asked what may still be going
  on. Calls in flight re-register at their next renewal, so the wait is one renewal
  period when some job is mid-call, and a per-minute model is paused until a minute
  after its last call. When nothing was going on there is no wait at all.
"""

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import redis
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from gallery.catalog import ModelSpec

logger = logging.getLogger(__name__)

PREFIX = "qwenstudio:limits:"
EPOCH = PREFIX + "epoch"
ASKING = PREFIX + "asking"
WAITERS = PREFIX + "waiters:{}"
ALL_MODELS = PREFIX + "in-flight"
WINDOW = 60.0  # seconds in a "calls per minute"
POLL = 0.1  # seconds between tries while only a slot is missing
TURN = PREFIX + "turn:{}"
LAST_SWEEP = PREFIX + "last-sweep"

# Every script reads the time from Redis, never from the worker.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: epoch, in flight (all), in flight (model), starts (model), pause (model), asking
# ARGV: studio limit, model limit (0: none), per minute (0: none), lease, token, the wait
# after a loss if the worker that found it dies before it has asked the database
# Returns "" when the slot is taken, else the seconds to wait (0 when unknown: poll), or
# "fresh" when Redis holds no epoch, i.e. it has lost or never had the slot sets; while
# that worker asks the database (`asking`), everyone else polls.
_ACQUIRE = _NOW + """
local lease = tonumber(ARGV[4])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], tostring(now + tonumber(ARGV[6])))
  redis.call('SET', KEYS[6], '1', 'PX', math.floor(tonumber(ARGV[6]) * 1000))
  return 'fresh'
end
if redis.call('EXISTS', KEYS[6]) == 1 then return '0' end
local wait = tonumber(epoch) - now
local pause = redis.call('GET', KEYS[5])
if pause and tonumber(pause) - now > wait then wait = tonumber(pause) - now end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60)
local full = redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1])
local model_limit = tonumber(ARGV[2])
if model_limit > 0 and redis.call('ZCARD', KEYS[3]) >= model_limit then full = true end
local per_minute = tonumber(ARGV[3])
if per_minute > 0 and redis.call('ZCARD', KEYS[4]) >= per_minute then
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local free_at = tonumber(oldest[2]) + 60 - now
  if free_at > wait then wait = free_at end
end
if wait > 0 then return tostring(wait) end
if full then return '0' end
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
redis.call('ZADD', KEYS[4], now, ARGV[5])
return ''
"""

# KEYS: in flight (all), in flight (model); ARGV: lease, token
# Renews a held slot, putting it back if it is gone (Redis lost it, or was away past its
# lease): a call under way is counted whatever happened, so no new call can take its place.
# Returns 0 when it had to be put back.
_RENEW = _NOW + """
local until_ = now + tonumber(ARGV[1])
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], until_, ARGV[2])
redis.call('ZADD', KEYS[2], until_, ARGV[2])
if held then return 1 end
return 0
"""

# KEYS: the model's waiters; ARGV: room, seconds, waiter. 1 when it joined the line, 0 when full.
_JOIN_LINE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""

# KEYS: in flight; counts the unexpired slots.
_COUNT = _NOW + """
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""

# KEYS: a key holding a Redis time; ARGV: seconds from now. Sets it to now + seconds,
# never earlier than it was unless ARGV[2] is "force".
_PUSH_BACK = _NOW + """
local wanted = now + tonumber(ARGV[1])
local current = redis.call('GET', KEYS[1])
if ARGV[2] == 'force' or not current or tonumber(current) < wanted then
  redis.call('SET', KEYS[1], tostring(wanted))
end
return 1
"""


class Busy(Exception):
    """No slot for the model now; `seconds` says when to look again (0: soon, unknown)."""

    def __init__(self, seconds: float):
        super().__init__(f"no provider slot; look again in {seconds:.1f}s")
        self.seconds = seconds


class LineFull(Busy):
    """No slot, and enough turns already wait in line for the model's next one."""


_clients: dict[str, redis.Redis] = {}


def client() -> redis.Redis:
    """One client (and connection pool) per URL for the process; redis-py's are thread-safe."""
    url = settings.QWEN_LIMITS_REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                             health_check_interval=10)
    return _clients[url]


def _in_flight_key(model: str) -> str:
    return f"{PREFIX}in-flight:{model}"


def _starts_key(model: str) -> str:
    return f"{PREFIX}starts:{model}"


def _pause_key(model: str) -> str:
    return f"{PREFIX}pause:{model}"


def lease_seconds() -> float:
    return float(settings.QWEN_SLOT_LEASE)


def recovery_seconds() -> tuple[float, dict[str, float]]:
    """How long Redis that lost its data must refuse calls, from what the database says is going on:
    every model's calls, and each per-minute model's on its own."""
    from gallery.catalog import catalog
    from gallery.models import Generation

    now = timezone.now()
    wait = 0.0
    if Generation.objects.filter(status=Generation.Status.RUNNING, call_in_flight__isnull=False,
                                 lease_until__gt=now).exists():
        wait = lease_seconds() / 3 + 2  # one renewal period, and a margin for a slow renewal
    minute_models = [name for name, spec in catalog().items() if spec.per_minute]
    last_calls = (Generation.objects.filter(model__in=minute_models,
                                            call_started_at__gt=now - timedelta(seconds=WINDOW))
                  .values("model").annotate(last=Max("call_started_at")))
    return wait, {row["model"]: (row["last"] - now).total_seconds() + WINDOW + 1 for row in last_calls}


def acquire(spec: ModelSpec) -> str:
    """Take a slot for one call of the model, or raise Busy. Returns the slot's token."""
    redis_ = client()
    token = uuid.uuid4().hex
    keys = [EPOCH, ALL_MODELS, _in_flight_key(spec.name), _starts_key(spec.name), _pause_key(spec.name), ASKING]
    args = [settings.QWEN_MAX_CONCURRENT, spec.max_in_flight or 0, spec.per_minute or 0, lease_seconds(), token,
            # The wait if the worker that found Redis empty dies before asking the database.
            max(lease_seconds(), WINDOW + 1)]
    answer = redis_.eval(_ACQUIRE, len(keys), *keys, *args).decode()
    if answer == "fresh":
        wait, per_model = recovery_seconds()
        logger.warning("provider limits: Redis held no slots (restarted or new); calls wait %.0fs", wait)
        for model, seconds in per_model.items():
            _pause(model, seconds)
        redis_.eval(_PUSH_BACK, 1, EPOCH, wait, "force")
        redis_.delete(ASKING)
        raise Busy(0)
    if answer:
        raise Busy(float(answer))
    return token


def release(spec: ModelSpec, token: str) -> None:
    try:
        client().pipeline().zrem(ALL_MODELS, token).zrem(_in_flight_key(spec.name), token).execute()
    except redis.RedisError:
        pass  # the lease runs out by itself


def renew(spec: ModelSpec, token: str) -> int:
    return int(client().eval(_RENEW, 2, ALL_MODELS, _in_flight_key(spec.name), lease_seconds(), token))


def unstart(spec: ModelSpec, token: str) -> None:
    """The slot was taken but no call made: it counts against no minute."""
    try:
        client().zrem(_starts_key(spec.name), token)
    except redis.RedisError:
        pass


def holds(spec: ModelSpec, token: str) -> bool:
    return client().zscore(ALL_MODELS, token) is not None


def pause(spec: ModelSpec, seconds: float) -> None:
    """Start no call of the model for `seconds` (a 429's Retry-After), on every worker."""
    _pause(spec.name, seconds)


def _pause(model: str, seconds: float) -> None:
    client().eval(_PUSH_BACK, 1, _pause_key(model), seconds, "")


def in_flight(model: str | None = None) -> int:
    """Calls holding a slot now, for one model or for the studio."""
    return int(client().eval(_COUNT, 1, ALL_MODELS if model is None else _in_flight_key(model)))


@contextmanager
def slot(spec: ModelSpec, wait: float) -> Iterator[str]:
    """Hold a slot for one call of the model, waiting up to `wait` seconds for one.

    Raises Busy when none came; a thread renews the slot while it is held.
    """
    token = _wait_for_slot(spec, wait)
    stop = threading.Event()
    renewer = threading.Thread(target=_keep, args=(spec, token, stop), name="slot-renewer", daemon=True)
    renewer.start()
    try:
        yield token
    finally:
        stop.set()
        renewer.join(timeout=1)
        release(spec, token)


def _wait_for_slot(spec: ModelSpec, wait: float) -> str:
    """Poll for a slot, as one of a few waiters per model: the rest are sent away at once, so a
    long queue for one model never ties up the workers' threads that other models (and the
    sweeper) need."""
    try:
        return acquire(spec)
    except Busy as busy:
        if busy.seconds > POLL:
            raise
    me = uuid.uuid4().hex
    line = WAITERS.format(spec.name)
    room = max(2, min(spec.max_in_flight or settings.QWEN_MAX_CONCURRENT, settings.QWEN_MAX_CONCURRENT))
    if not int(client().eval(_JOIN_LINE, 1, line, room, wait + 5, me)):
        raise LineFull(0)
    try:
        deadline = time.monotonic() + wait
        while True:
            time.sleep(POLL)
            try:
                return acquire(spec)
            except Busy as busy:
                if busy.seconds > POLL or time.monotonic() + POLL > deadline:
                    raise
    finally:
        try:
            client().zrem(line, me)
        except redis.RedisError:
            pass  # its place runs out by itself


def _keep(spec: ModelSpec, token: str, stop: threading.Event) -> None:
    while not stop.wait(lease_seconds() / 3):
        try:
            if renew(spec, token) == 0:
                logger.warning("provider limits: a slot of %s was gone while its call went on; put back", spec.name)
        except redis.RedisError as error:
            logger.warning("provider limits: could not renew a slot of %s: %s", spec.name, type(error).__name__)



def note_turn(model: str, quiet_for: float) -> None:
    """A message took a turn for the model, and looks again within `quiet_for` seconds: the sweeper
    leaves the model's queue alone until then (plus QWEN_REQUEUE_AFTER)."""
    try:
        client().set(TURN.format(model), "1", ex=max(1, int(quiet_for + settings.QWEN_REQUEUE_AFTER)))
    except redis.RedisError:
        pass  # then the sweeper may send a spare message: harmless


def turn_seen(model: str) -> bool:
    return bool(client().exists(TURN.format(model)))


def note_sweep() -> None:
    client().set(LAST_SWEEP, str(time.time()))


def seconds_since_sweep() -> float | None:
    value = client().get(LAST_SWEEP)
    return time.time() - float(value) if value else None
