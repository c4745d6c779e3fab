"""The provider call limits (gallery/limits.py) against the run's own redis-server, PostgreSQL, apisim and
real Celery workers: each limit holds, a slot outlives a dead holder by at most its lease, and a Redis that
lost its data lets no more calls through than the limits allow."""

import json
import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
import redis
import requests
from django.utils import timezone

from gallery import limits, pipeline
from gallery.catalog import ModelSpec, get_model
from gallery.models import Generation
from gallery.tasks import enqueue, run_generation
from tests.conftest import BUCKET, ROOT, TEST_BROKER, wait_for
from tests.test_pipeline import finished, generation_calls, make_generation


def spec(name: str, **rules) -> ModelSpec:
    """A model of the tests' own, so that its slots and starts are nobody else's."""
    return ModelSpec(f"limits-test-{name}", name, "sides", 500, **rules)


def try_acquire(model: ModelSpec) -> str | None:
    try:
        return limits.acquire(model)
    except limits.Busy:
        return None


@pytest.fixture
def limits_ready(limits_redis, db):
    """The limits Redis emptied and past its first look at the database (nothing going on, so no wait)."""
    limits_redis.client().flushdb()
    with limits.slot(spec("primer"), wait=1):
        pass
    return limits_redis


# --- each limit holds -------------------------------------------------------------------------


def test_the_studio_limit_holds_across_models_and_a_release_frees_at_once(limits_ready, settings):
    # given a studio limit of 3 and three calls of two models holding slots
    settings.QWEN_MAX_CONCURRENT = 3
    first, second = spec("first"), spec("second")
    tokens = [limits.acquire(first), limits.acquire(second), limits.acquire(first)]

    # when a fourth call asks, of either model
    with pytest.raises(limits.Busy) as busy:
        limits.acquire(second)

    # then it is refused with "look again soon", and the counts say why
    assert busy.value.seconds == 0
    assert (limits.in_flight(), limits.in_flight(first.name), limits.in_flight(second.name)) == (3, 2, 1)

    # and when one call ends, its slot is free at once
    limits.release(second, tokens[1])
    assert limits.in_flight() == 2
    assert limits.acquire(second)


def test_a_models_own_limit_holds_while_other_models_go_on(limits_ready, settings):
    # given a model allowed 2 calls in flight, in a studio allowed 10
    settings.QWEN_MAX_CONCURRENT = 10
    narrow, wide = spec("narrow", max_in_flight=2), spec("wide")
    limits.acquire(narrow)
    limits.acquire(narrow)

    # when a third call of it asks, then one of another model
    with pytest.raises(limits.Busy) as busy:
        limits.acquire(narrow)
    other = limits.acquire(wide)

    # then only the model at its limit is refused
    assert busy.value.seconds == 0
    assert other
    assert limits.in_flight(narrow.name) == 2


def test_calls_per_minute_wait_until_the_oldest_start_is_a_minute_old(limits_ready):
    # given a model allowed 2 calls a minute, which made two calls a second apart (both already over)
    model = spec("per-minute", per_minute=2)
    first_start = time.monotonic()
    limits.release(model, limits.acquire(model))
    time.sleep(1)
    limits.release(model, limits.acquire(model))

    # when a third call asks, with no slot taken at all
    with pytest.raises(limits.Busy) as busy:
        limits.acquire(model)
    expected = 60 - (time.monotonic() - first_start)

    # then it is told to wait until the first start is 60 s old
    assert abs(busy.value.seconds - expected) < 0.3, (busy.value.seconds, expected)
    assert limits.in_flight(model.name) == 0

    # and a worker's slot() does not sit out such a wait: it gives the message back at once
    started = time.monotonic()
    with pytest.raises(limits.Busy), limits.slot(model, wait=5):
        pass
    assert time.monotonic() - started < 0.5


def test_a_pause_after_a_429_holds_back_that_model_for_its_seconds(limits_ready):
    # given a model paused for 2 s (a 429's Retry-After), then for 1 s by a later 429
    paused, other = spec("paused"), spec("not-paused")
    limits.pause(paused, 2)
    paused_at = time.monotonic()
    limits.pause(paused, 1)

    # when calls ask for slots
    with pytest.raises(limits.Busy) as busy:
        limits.acquire(paused)
    token = limits.acquire(other)

    # then the paused model waits out the longer pause and the other model goes on
    assert 1.7 <= busy.value.seconds <= 2.0, busy.value.seconds
    assert token

    # and once the pause is over, the model's calls go ahead again
    wait_for(lambda: try_acquire(paused), timeout=3, interval=0.05)
    assert 1.9 <= time.monotonic() - paused_at <= 2.5


def test_a_slot_whose_holder_stopped_renewing_is_free_within_its_lease(limits_ready, settings):
    # given a studio limit of 1 and a slot taken with a 3 s lease by a holder that never renews it
    # (acquire() without slot(): as if its worker died right after taking it)
    settings.QWEN_MAX_CONCURRENT = 1
    settings.QWEN_SLOT_LEASE = 3
    model = spec("abandoned")
    limits.acquire(model)
    taken = time.monotonic()
    assert try_acquire(model) is None

    # when other calls keep asking
    wait_for(lambda: try_acquire(model), timeout=5, interval=0.05)
    freed_after = time.monotonic() - taken

    # then the slot came free when its lease ran out, not before
    assert 2.8 <= freed_after <= 3.3, freed_after


def test_the_renewer_keeps_a_slot_held_past_its_lease(limits_ready, settings):
    # given a studio limit of 1 and a 3 s lease
    settings.QWEN_MAX_CONCURRENT = 1
    settings.QWEN_SLOT_LEASE = 3
    model = spec("long-call")

    # when a call holds its slot through slot() for 5 s, longer than the lease
    with limits.slot(model, wait=1) as token:
        held_until = time.monotonic() + 5
        while time.monotonic() < held_until:
            # then it keeps the slot all along and nobody else gets one
            assert limits.holds(model, token)
            assert limits.in_flight(model.name) == 1
            assert try_acquire(model) is None
            time.sleep(0.25)

    # and it gives the slot back when the call ends
    assert limits.in_flight() == 0
    assert try_acquire(model)


# --- Redis losing its data ----------------------------------------------------------------------


def test_after_redis_lost_its_data_with_nothing_mid_call_calls_go_ahead_at_once(limits_redis, db):
    # given Redis that lost everything while no job was mid-call
    model = spec("after-loss")
    limits_redis.client().flushdb()

    # when a call asks for a slot, it is first told to look again at once (the database said: no wait)
    with pytest.raises(limits.Busy) as fresh:
        limits.acquire(model)
    assert fresh.value.seconds == 0
    # then the next try gets one
    assert limits.acquire(model)

    # and a worker's slot() makes both tries by itself, without a noticeable wait
    limits_redis.client().flushdb()
    started = time.monotonic()
    with limits.slot(model, wait=1):
        waited = time.monotonic() - started
    assert waited < 0.5, waited


def test_after_redis_lost_its_data_mid_call_calls_wait_while_the_holder_re_registers(
        limits_redis, db, alice, settings):
    # given a studio limit of 1, a 3 s lease (renewed every second), and a call holding its slot through
    # slot(), whose job the database shows mid-call
    settings.QWEN_MAX_CONCURRENT = 1
    settings.QWEN_SLOT_LEASE = 3
    held, other = spec("held"), spec("other")
    limits_redis.client().flushdb()
    with limits.slot(held, wait=1) as token:
        make_generation(alice, status=Generation.Status.RUNNING, call_in_flight=0, attempts=1,
                        call_started_at=timezone.now(), lease_until=timezone.now() + pipeline.lease())

        # when Redis loses everything and another call asks, again and again
        limits_redis.client().flushdb()
        lost = time.monotonic()
        with pytest.raises(limits.Busy) as fresh:
            limits.acquire(other)
        with pytest.raises(limits.Busy) as waiting:
            limits.acquire(other)
        asked = time.monotonic() - lost
        peak, re_registered, wait_ended, intruder = 0, None, None, None
        while time.monotonic() < lost + 5:
            try:
                intruder = limits.acquire(other)
            except limits.Busy as busy:
                if busy.seconds > 0:
                    wait_ended = time.monotonic() - lost
            count = limits.in_flight()
            peak = max(peak, count)
            if count and re_registered is None:
                re_registered = time.monotonic() - lost
            time.sleep(0.05)

        # then the first finder asked the database, which said: wait one renewal period (3 / 3 + 2 s)
        assert fresh.value.seconds == 0
        assert 2.7 <= waiting.value.seconds + asked <= 3.2, waiting.value.seconds
        assert 2.6 <= wait_ended <= 3.3, wait_ended
        # and the holder's renewer put its slot back within a renewal period, so that after the wait the
        # limit of 1 is full: no second call got through at any moment
        assert re_registered is not None and re_registered <= 1.3, re_registered
        assert intruder is None
        assert peak == 1
        assert limits.holds(held, token)

    # and once the held call ends, the next one goes ahead
    assert limits.acquire(other)


def test_after_redis_lost_its_data_a_per_minute_model_waits_a_minute_from_its_last_call_alone(limits_redis, db, alice):
    # given a model allowed 2 calls a minute whose last call started 10 s ago, and a finished job
    minute_model = get_model("qwen-image-max")
    assert minute_model.per_minute
    make_generation(alice, model="qwen-image-max", width=1328, height=1328, status=Generation.Status.SUCCEEDED,
                    call_started_at=timezone.now() - timedelta(seconds=10))

    # when Redis loses its starts log
    limits_redis.client().flushdb()
    with pytest.raises(limits.Busy) as fresh:
        limits.acquire(minute_model)
    with pytest.raises(limits.Busy) as waiting:
        limits.acquire(minute_model)

    # then its calls wait until that call is a minute old (and a second more), while other models' go ahead
    assert fresh.value.seconds == 0
    assert 50 <= waiting.value.seconds <= 51.2, waiting.value.seconds
    limits.release(spec("other"), limits.acquire(spec("other")))


def test_calls_asking_while_the_database_is_asked_are_not_sent_away_for_a_minute(limits_redis, db, monkeypatch):
    # given Redis that lost everything while nothing was going on, and a worker that found it so and is
    # asking the database what may be going on
    model = spec("meanwhile")
    limits_redis.client().flushdb()
    told = []
    ask_database = limits.recovery_seconds

    def while_the_database_is_asked():
        # when another call asks for a slot meanwhile
        try:
            limits.acquire(model)
        except limits.Busy as busy:
            told.append(busy.seconds)
        return ask_database()
    monkeypatch.setattr(limits, "recovery_seconds", while_the_database_is_asked)
    with pytest.raises(limits.Busy):
        limits.acquire(model)

    # then it is told to look again in a moment (the answer, "no wait", is milliseconds away), not in a
    # minute: a Celery message told so would wait a minute
    assert told == [0], told


# --- a real worker killed mid-call -------------------------------------------------------------


def start_celery(queue: str, log_name: str, sim, s3_endpoint: str, limits_redis, settings) -> subprocess.Popen:
    """The Procfile's worker, in a process group of its own, on a queue of this test's own."""
    database = settings.DATABASES["default"]
    environment = os.environ | {
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": (f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
                         f"{database['PORT'] or 5432}/{database['NAME']}"),
        "CELERY_BROKER_URL": TEST_BROKER,
        "QWEN_LIMITS_REDIS_URL": limits_redis.url,
        "QWEN_SLOT_LEASE": "6",
        "QWEN_API_BASE_URL": sim.url,
        "QWEN_API_KEY": "test-key",
        "QWEN_DOWNLOAD_HOSTS": sim.url.removeprefix("http://"),
        "QWEN_READ_TIMEOUT": "20",
        "AWS_STORAGE_BUCKET_NAME": BUCKET,
        "AWS_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_S3_REGION_NAME": "us-east-1",
    }
    log = open(ROOT / "var" / log_name, "wb")
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "celery"), "-A", "qwenstudio", "worker", "--pool", "threads",
         "--concurrency", "2", "-Q", queue, "-n", f"{queue}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def sim_state(sim) -> dict:
    return requests.get(f"{sim.url}/_sim/state", timeout=5).json()


def slot_lease_left(limits_redis) -> float:
    """Seconds until the only slot held runs out, by Redis's clock."""
    client = limits_redis.client()
    (_token, expires), = client.zrange(limits.ALL_MODELS, 0, -1, withscores=True)
    seconds, microseconds = client.time()
    return expires - (seconds + microseconds / 1_000_000)


def kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def forget_queue(queue: str) -> None:
    """Drop this test's queue, its routing and the message the killed worker left unacknowledged on the broker."""
    broker = redis.Redis.from_url(TEST_BROKER)
    broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    broker.zrem("_kombu.binding_deadlines", queue)
    for tag, raw in broker.hscan_iter("unacked"):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except ValueError:
            continue
        if routing_key == queue:
            broker.pipeline().hdel("unacked", tag).zrem("unacked_index", tag).execute()


def test_a_worker_killed_mid_call_frees_its_slot_within_the_lease_and_its_job_is_taken_back(
        transactional_db, alice, sim, s3_endpoint, limits_redis, settings):
    # given a real worker (6 s slot lease, renewed every 2 s) some way into a long call for a job on a queue
    # of this test's own
    queue = f"qwenstudio-limits-test-{os.getpid()}"
    limits_redis.client().flushdb()
    generation = make_generation(alice, prompt="a worker dies during this call")
    sim.fault("latency", seconds=12, match=generation.prompt)
    first = second = None
    try:
        first = start_celery(queue, "test-limits-worker-1.log", sim, s3_endpoint, limits_redis, settings)
        run_generation.apply_async(args=[str(generation.pk)], queue=queue)
        wait_for(lambda: any(call.get("ended") is None for call in generation_calls(sim, generation)), timeout=30)
        wait_for(lambda: limits.in_flight(generation.model) == 1, timeout=5)
        time.sleep(2.5)  # past the slot's first renewal
        lease_left = slot_lease_left(limits_redis)
        assert 4.5 < lease_left <= 6, lease_left  # renewed: 3.5 s would be left without a renewal

        # when the worker's whole process group is killed mid-call
        kill(first)
        killed = time.monotonic()
        wait_for(lambda: limits.in_flight() == 0, timeout=10, interval=0.05)
        freed_after = time.monotonic() - killed

        # then its slot is free again when its last renewal runs out, within the lease (6 s)
        print(f"killed worker's slot free after {freed_after:.2f}s (its lease had {lease_left:.2f}s left)")
        assert abs(freed_after - lease_left) < 0.5, (freed_after, lease_left)
        assert freed_after <= 6 + 1.5, freed_after

        # given the job still looks mid-call in the database, with its lease (and last touch) long past
        generation.refresh_from_db()
        assert (generation.status, generation.call_in_flight, generation.attempts) == ("running", 0, 1)
        past = timezone.now() - timedelta(seconds=settings.QWEN_REQUEUE_AFTER + 1)
        Generation.objects.filter(pk=generation.pk).update(lease_until=past, updated=past)
        assert Generation.objects.stranded().filter(pk=generation.pk).exists()  # the sweeper would re-send it

        # when a new worker gets its message again
        second = start_celery(queue, "test-limits-worker-2.log", sim, s3_endpoint, limits_redis, settings)
        run_generation.apply_async(args=[str(generation.pk)], queue=queue)
        finished(generation)

        # then the job ends well, counting the cut-off call as unconfirmed and calling once more
        assert generation.status == Generation.Status.SUCCEEDED, generation.error_text
        assert (generation.unconfirmed_calls, generation.attempts) == (1, 2)
        assert len(generation_calls(sim, generation)) == 2
        assert generation.images.count() == 1
        assert limits.in_flight() == 0
    finally:
        kill(first)
        kill(second)
        forget_queue(queue)
        # apisim goes on with the cut-off call for its 12 s; later tests must find it over
        deadline = time.monotonic() + 15
        while sim_state(sim)["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.2)


# --- Redis restarted empty under load ----------------------------------------------------------


def most_at_once(calls: list[dict]) -> int:
    """The most calls that overlapped in time, from apisim's own records."""
    events = sorted([(call["at"], 1) for call in calls] + [(call["ended"], -1) for call in calls])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_redis_restarted_empty_mid_batch_lets_no_more_than_the_limit_through(
        worker, alice, bob, sim, settings, limits_redis):
    # given a studio limit of 2 (6 s slot lease) in front of a provider that would take any number of
    # 2-second calls, with nothing left in flight by an earlier test
    settings.QWEN_MAX_CONCURRENT = 2
    settings.QWEN_SLOT_LEASE = 6
    wait_for(lambda: sim_state(sim)["in_flight"] == 0, timeout=30)
    sim.reset()
    requests.post(f"{sim.url}/_sim/config", json={"max_concurrent": 0, "latency": 2}, timeout=5).raise_for_status()
    jobs = [make_generation(alice if index % 2 else bob, prompt=f"restart batch {index}") for index in range(12)]
    for job in jobs:
        enqueue(job.pk)
    wait_for(lambda: sim_state(sim)["in_flight"] >= 2, timeout=30, interval=0.05)

    # when the limits Redis restarts with its data gone while 2 calls are in flight
    try:
        limits_redis.restart_empty()
    finally:
        if limits_redis.process is None or limits_redis.process.poll() is not None:
            limits_redis.start()
    for job in jobs:
        finished(job)

    # then never more than 2 calls were in flight, over the whole batch, and every job succeeded
    peak = sim_state(sim)["peak_in_flight"]
    calls = [call for call in sim.calls() if call["prompt"].startswith("restart batch")]
    print(f"peak in flight over the batch: apisim {peak}, from its call records {most_at_once(calls)}")
    assert peak <= 2
    assert most_at_once(calls) <= 2
    assert [job.status for job in jobs] == [Generation.Status.SUCCEEDED] * 12, [job.error_text for job in jobs]
    assert len(calls) == 12
    assert limits.in_flight() == 0


# --- what review found -------------------------------------------------------------------------


def test_a_slot_gone_while_its_call_goes_on_is_put_back_so_no_new_call_takes_its_place(limits_ready, settings):
    # given a studio limit of 1, and a held slot that Redis lost track of while Redis kept its epoch
    # (away past the lease, or an AOF that lost the last writes)
    settings.QWEN_MAX_CONCURRENT = 1
    model = spec("held-through-an-outage")
    token = limits.acquire(model)
    limits.client().zrem(limits.ALL_MODELS, token)

    # when its holder renews
    assert limits.renew(model, token) == 0  # it had to be put back

    # then the call under way is counted again, and a new call must wait
    assert limits.in_flight() == 1
    with pytest.raises(limits.Busy):
        limits.acquire(model)


def test_only_a_few_turns_wait_in_line_for_one_model_the_rest_are_sent_away_at_once(limits_ready, settings):
    # given a model whose one slot is taken, and a line with room for two waiters
    settings.QWEN_MAX_CONCURRENT = 1
    model = spec("long-line")
    token = limits.acquire(model)
    limits.client().zadd(limits.WAITERS.format(model.name), {"w1": time.time() + 60, "w2": time.time() + 60})

    # when a third turn asks for a slot
    started = time.monotonic()
    with pytest.raises(limits.Busy) as busy:
        with limits.slot(model, wait=5):
            pass

    # then it is sent away at once rather than holding a worker's thread for the wait
    assert time.monotonic() - started < 0.5 and busy.value.seconds == 0
    limits.release(model, token)


def test_a_turn_that_made_no_call_uses_none_of_the_minutes_calls(limits_ready):
    # given a model allowed 1 call a minute, whose slot was taken by a turn that found no job left
    model = spec("one-a-minute", per_minute=1)
    token = limits.acquire(model)
    limits.unstart(model, token)
    limits.release(model, token)

    # then the next turn may still call
    limits.release(model, limits.acquire(model))


def test_a_stale_turn_cannot_write_over_the_turn_that_took_its_job(db, alice):
    # given a job taken by one turn, then taken back by another after the first outlived its lease
    make_generation(alice, prompt="outlived its lease")
    stale = Generation.objects.take_next("wan2.2-t2i-flash", pipeline.lease())
    Generation.objects.filter(pk=stale.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    fresh = Generation.objects.get(pk=stale.pk)
    assert fresh.claim(pipeline.lease())

    # when the stale turn tries to put the job back in the queue
    with pytest.raises(Generation.LostHold):
        stale.requeue()

    # then the job stays with the turn that holds it
    fresh.refresh_from_db()
    assert fresh.status == Generation.Status.RUNNING and fresh.holder != stale.holder


def test_a_job_ending_with_a_call_unconfirmed_counts_it_as_maybe_billed(db, alice):
    # given a queued job whose last call timed out (so may have been billed), then canceled
    job = make_generation(alice, prompt="timed out, then canceled", call_in_flight=0, unconfirmed_calls=0)

    # when its maker cancels it
    assert job.cancel()

    # then the card can say a call may have been billed
    assert job.unconfirmed_calls == 1 and job.call_in_flight is None


def test_a_worker_shutting_down_starts_no_new_call(transactional_db, alice, sim):
    # given a worker that has begun a warm shutdown, and a queued job
    job = make_generation(alice, prompt="queued during a shutdown")
    pipeline.STOPPING.set()
    try:
        # when a message for it runs
        with pytest.raises(pipeline.TryLater):
            pipeline.run(str(job.pk))
    finally:
        pipeline.STOPPING.clear()

    # then no call was made and the job still waits for its turn
    job.refresh_from_db()
    assert job.status == Generation.Status.QUEUED and generation_calls(sim, job) == []
