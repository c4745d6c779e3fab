"""One limit on API calls in flight across every worker (QWEN_MAX_CONCURRENT).

A Redis sorted set holds one member per call in flight, scored by when its lease
runs out, so a worker that dies mid-call frees its slot by itself. If Redis
restarts, the set starts empty: the worst case is one moment over the limit.
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

KEY = "qwenstudio:provider-slots"

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  return 1
end
return 0
"""


class NoSlot(Exception):
    """Every provider slot stayed taken while we waited."""


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


@contextmanager
def provider_slot(lease_seconds: float, wait_seconds: float = 10.0) -> Iterator[None]:
    client = _client()
    acquire = client.register_script(_ACQUIRE)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_seconds
    while not acquire(keys=[KEY], args=[time.time(), settings.QWEN_MAX_CONCURRENT,
                                        time.time() + lease_seconds, token]):
        if time.monotonic() > deadline:
            raise NoSlot()
        time.sleep(0.2)
    try:
        yield
    finally:
        try:
            client.zrem(KEY, token)
        except redis.RedisError:
            pass  # the lease runs out by itself


def in_use() -> int:
    client = _client()
    client.zremrangebyscore(KEY, "-inf", time.time())
    return client.zcard(KEY)
