"""The fair queue and the provider limits: round-robin between designers, calls per minute,
a 429 that holds back every worker, and what a queued job's card says.

The first three tests run against the real services (apisim over HTTP, Redis, a Celery
worker in this process); the rest check the queue's database side directly.
"""

import threading
import time
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from gallery import pipeline
from gallery.models import Generation, Image
from gallery.tasks import enqueue
from tests.conftest import wait_for
from tests.test_pipeline import make_generation

FLASH = "wan2.2-t2i-flash"  # no per-model limits: only QWEN_MAX_CONCURRENT applies
SMALL = {"model": FLASH, "width": 512, "height": 512, "n": 1, "prompt_extend": False}


def configure_sim(sim, **config) -> None:
    """Change apisim at runtime (the `sim` fixture's reset puts its defaults back)."""
    requests.post(f"{sim.url}/_sim/config", json=config, timeout=5).raise_for_status()


def sim_state(sim) -> dict:
    return requests.get(f"{sim.url}/_sim/state", timeout=5).json()


def all_finished(jobs: list[Generation], timeout: float) -> None:
    ids = [job.pk for job in jobs]

    def every_job_finished():
        return not Generation.objects.filter(pk__in=ids).exclude(status__in=Generation.FINISHED).exists()
    wait_for(every_job_finished, timeout=timeout, interval=0.25)
    for job in jobs:
        job.refresh_from_db()


def calls_for(sim, prompt: str) -> list[dict]:
    return [call for call in sim.calls() if call["prompt"] == prompt]


# --- against the real services -------------------------------------------------------------------


def test_a_designer_with_one_job_is_not_stuck_behind_a_long_queue(worker, alice, bob, sim, settings):
    # given a provider that takes 2 calls at a time, 2 s each, a studio limited to 2 calls,
    # and 40 one-image jobs from alice whose first calls are under way
    settings.QWEN_MAX_CONCURRENT = 2
    configure_sim(sim, max_concurrent=2, latency=2.0)
    alices = [make_generation(alice, prompt=f"fair queue, alice's lantern {i:02d}", **SMALL) for i in range(40)]
    for job in alices:
        enqueue(job.pk)
    wait_for(lambda: len(sim.calls()) >= 4, timeout=15, interval=0.05)

    # when bob asks for one image
    bob_created = time.time()
    bobs = make_generation(bob, prompt="fair queue, bob's only kite", **SMALL)
    enqueue(bobs.pk)

    # then his call starts at the next slot turnover (2 s at most, and a margin for a busy
    # machine), not after alice's queue (about 38 s)
    all_finished([*alices, bobs], timeout=100)
    calls = sorted(sim.calls(), key=lambda call: call["at"])
    bob_call, = [call for call in calls if call["prompt"] == bobs.prompt]
    waited = bob_call["at"] - bob_created
    assert waited <= 2.0 + 2.0, f"bob's call started {waited:.1f}s after his job was created"
    # At most the two calls whose slot was already granted when his job arrived go before it.
    started_after_bob = [call for call in calls if call["at"] >= bob_created]
    assert started_after_bob.index(bob_call) <= 2
    # and the provider never saw more than 2 calls at once, nor answered any with a 429
    assert sim_state(sim)["peak_in_flight"] <= 2
    assert [call["status"] for call in calls] == [200] * 41
    # and every job ended with its image, with one call each
    assert {job.status for job in [*alices, bobs]} == {Generation.Status.SUCCEEDED}
    assert sorted(call["prompt"] for call in calls) == sorted(job.prompt for job in [*alices, bobs])


def test_a_model_limited_per_minute_waits_in_the_queue_for_the_next_minute(worker, alice, sim, client):
    # given qwen-image-max, which the provider allows 2 calls a minute, and 4 one-image jobs
    model = {"model": "qwen-image-max", "width": 1328, "height": 1328, "n": 1, "prompt_extend": False}
    jobs = [make_generation(alice, prompt=f"per minute, porcelain cup {i}", **model) for i in range(4)]

    # when the worker runs them
    started = time.monotonic()
    for job in jobs:
        enqueue(job.pk)

    # then within 10 s two calls reach the provider and the other jobs wait, queued and cancelable
    wait_for(lambda: len(sim.calls()) >= 2, timeout=10, interval=0.1)
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    assert sorted(call["prompt"] for call in sim.calls()) == [jobs[0].prompt, jobs[1].prompt]  # oldest first
    for job in jobs:
        job.refresh_from_db()
    assert [job.status for job in jobs[2:]] == [Generation.Status.QUEUED] * 2
    assert jobs[2].reasons == [] and jobs[3].reasons == []
    assert jobs[2].can_cancel(alice)
    # and their cards say where they stand
    assert (jobs[2].jobs_ahead(), jobs[3].jobs_ahead()) == (0, 1)
    client.force_login(alice)
    cards = [client.get(reverse("gallery-job", args=[job.pk])).content.decode() for job in jobs[2:]]
    assert "job-place" in cards[0] and "Next in line for the provider" in cards[0]
    assert "1 job ahead of yours" in cards[1]

    # and once the minute is over they are made too, never more than 2 calls in any minute
    all_finished(jobs, timeout=80)
    assert [job.status for job in jobs] == [Generation.Status.SUCCEEDED] * 4
    starts = sorted(call["at"] for call in sim.calls())
    assert len(starts) == 4
    assert calls_for(sim, jobs[2].prompt)[0]["at"] - starts[0] >= 60
    assert all(later - earlier >= 60 for earlier, later in zip(starts, starts[2:], strict=False))
    assert [job.retries for job in jobs] == [0] * 4


def test_a_429_holds_back_every_worker_for_that_model_only(worker, alice, sim, settings):
    # given an unlimited provider that answers job X's first call with a 429 (Retry-After: 3)
    # and takes 2 s over the other calls of the model, and a studio with 2 slots
    settings.QWEN_MAX_CONCURRENT = 2
    configure_sim(sim, max_concurrent=0)
    sim.fault("throttle", retry_after=3, match="pause-x")
    sim.fault("latency", seconds=2.0, times=10, match="pause-other")
    first_other = make_generation(alice, prompt="pause-other lighthouse 0", **SMALL)
    x = make_generation(alice, prompt="pause-x lantern", **SMALL)
    others = [first_other, *(make_generation(alice, prompt=f"pause-other lighthouse {i}", **SMALL)
                             for i in range(1, 5))]

    # when the worker runs them: the oldest job's call first, then X's in the second slot
    enqueue(first_other.pk)
    wait_for(lambda: calls_for(sim, first_other.prompt), timeout=10, interval=0.05)
    for job in [x, *others[1:]]:
        enqueue(job.pk)

    def the_429():
        return next((call for call in calls_for(sim, x.prompt) if call["status"] == 429 and "ended" in call), None)
    throttled = wait_for(the_429, timeout=15, interval=0.05)
    # and a job of another model comes in during the pause
    other_model = make_generation(alice, prompt="unpaused model, paper boat", **(SMALL | {"model": "wan2.2-t2i-plus"}))
    enqueue(other_model.pk)

    # then X waits its turn again, queued, while the provider asked us to slow down
    def x_waits():
        x.refresh_from_db()
        return x.status == Generation.Status.QUEUED and x.detail_code == "throttled"
    wait_for(x_waits, timeout=3, interval=0.05)

    all_finished([x, *others, other_model], timeout=40)
    calls = sim.calls()
    # and no call of the model started for the 3 s the provider asked for, though a slot was free
    # (the oldest job's call, under way when the 429 came, went on)
    first_call, = calls_for(sim, first_other.prompt)
    assert first_call["at"] < throttled["at"] and first_call["ended"] > throttled["ended"]
    resumed = min(call["at"] for call in calls if call["model"] == FLASH and call["at"] > throttled["ended"])
    assert 3 - 0.2 <= resumed - throttled["ended"] < 3 + 2.5
    # while the other model's job was not held back
    other_call, = calls_for(sim, other_model.prompt)
    assert other_call["at"] - throttled["ended"] < 3 - 0.2
    # and every job succeeded, X with its second call and without counting the 429 as a retry
    assert {job.status for job in [x, *others, other_model]} == {Generation.Status.SUCCEEDED}
    assert [call["status"] for call in calls_for(sim, x.prompt)] == [429, 200]
    assert x.retries == 0
    assert all(job.retries == 0 for job in others)


# --- the queue in the database --------------------------------------------------------------------

BASE = timezone.now() - timedelta(minutes=10)


def queued(owner, minute: int, label: str, **fields) -> Generation:
    """A queued job of FLASH created `minute` minutes after BASE (so its age is explicit)."""
    return make_generation(owner, prompt=label, created=BASE + timedelta(minutes=minute), **(SMALL | fields))


def served_at(owner, minutes_ago: float) -> Generation:
    """A finished job of FLASH whose call started `minutes_ago`: the designer's last turn."""
    when = timezone.now() - timedelta(minutes=minutes_ago)
    return make_generation(owner, prompt=f"served {minutes_ago} min ago", status=Generation.Status.SUCCEEDED,
                           call_started_at=when, created=when, finished_at=when, **SMALL)


def take_all(model: str = FLASH) -> list[str]:
    """Take the queued jobs one by one as workers would, each call starting as it is taken."""
    order = []
    while job := Generation.objects.take_next(model, pipeline.lease()):
        job.save_progress(call_started_at=timezone.now())
        job.finish(Generation.Status.SUCCEEDED)
        order.append(job.prompt)
    return order


def test_take_next_goes_round_the_designers_oldest_job_first(alice, bob):
    # given alice queued three jobs and bob two afterwards, neither served before
    for minute, owner, label in [(0, alice, "a1"), (1, alice, "a2"), (2, alice, "a3"), (3, bob, "b1"),
                                 (4, bob, "b2")]:
        queued(owner, minute, label)

    # when workers take them one by one
    order = take_all()

    # then the designers take turns, each one's oldest job first
    assert order == ["a1", "b1", "a2", "b2", "a3"]


def test_take_next_serves_the_designer_served_longest_ago_first(alice, bob):
    # given alice was served a minute ago and bob five minutes ago, and alice's jobs are older
    served_at(alice, 1)
    served_at(bob, 5)
    queued(alice, 0, "a1")
    queued(alice, 1, "a2")
    queued(bob, 2, "b1")

    # then bob goes first, though his job is the newest
    assert take_all() == ["b1", "a1", "a2"]


def test_a_designer_with_a_call_running_goes_after_one_with_none(alice, bob):
    # given alice has a call running that started long ago, bob was served just now, and both wait
    make_generation(alice, prompt="running", status=Generation.Status.RUNNING,
                    call_started_at=timezone.now() - timedelta(minutes=9),
                    lease_until=timezone.now() + timedelta(minutes=1), **SMALL)
    served_at(bob, 0.01)
    queued(alice, 0, "a2")
    queued(bob, 1, "b2")

    # when a worker takes the next job
    job = Generation.objects.take_next(FLASH, pipeline.lease())

    # then it is bob's: fewer calls running beats having waited longer
    assert job.prompt == "b2"
    assert job.status == Generation.Status.RUNNING
    assert Generation.objects.get(prompt="a2").status == Generation.Status.QUEUED


def test_take_next_leaves_other_models_and_jobs_waiting_out_a_backoff(alice):
    # given a job of another model and a job told to wait a minute before its retry
    queued(alice, 0, "other model", model="wan2.2-t2i-plus")
    queued(alice, 1, "backing off", not_before=timezone.now() + timedelta(minutes=1))
    queued(alice, 2, "ready")

    # then only the ready job of the model is taken
    assert take_all() == ["ready"]


def test_takers_at_once_serve_different_designers(transactional_db, alice, bob):
    # given three queued jobs from each of two designers, none served yet
    for index in range(3):
        queued(alice, index, f"a{index + 1}")
        queued(bob, 3 + index, f"b{index + 1}")
    taken: list[Generation] = []
    together = threading.Barrier(2)

    def take():
        try:
            together.wait(10)
            taken.append(Generation.objects.take_next(FLASH, pipeline.lease()))
        finally:
            connection.close()

    # when two workers take a turn at the same moment, several times over
    for _ in range(3):
        threads = [threading.Thread(target=take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)

    # then each pair went one to each designer (the second taker saw the first's claim), oldest first
    pairs = [sorted(job.prompt for job in taken[index:index + 2]) for index in range(0, 6, 2)]
    assert pairs == [["a1", "b1"], ["a2", "b2"], ["a3", "b3"]]


@pytest.mark.parametrize(("last_served", "expected"), [
    # alice has 3 queued, bob 1; whoever was served longer ago goes first in each round
    ("alice", {"b1": 0, "a1": 1, "a2": 2, "a3": 3}),
    ("bob", {"a1": 0, "b1": 1, "a2": 2, "a3": 3}),
])
def test_jobs_ahead_matches_the_order_jobs_are_taken(alice, bob, last_served, expected):
    # given alice with 3 queued jobs, bob with 1, and one of them served more recently
    served_at(alice, 1 if last_served == "alice" else 5)
    served_at(bob, 1 if last_served == "bob" else 5)
    jobs = [queued(alice, 0, "a1"), queued(alice, 1, "a2"), queued(alice, 2, "a3"), queued(bob, 3, "b1")]

    # when each card asks how many jobs are ahead
    ahead = {job.prompt: job.jobs_ahead() for job in jobs}

    # then the figures are the expected ones, and the order the round-robin takes them in
    assert ahead == expected
    assert take_all() == sorted(ahead, key=ahead.get)


def test_jobs_ahead_counts_a_running_call_against_its_designer(alice, bob):
    # given alice has a call running and one job queued, and bob, served just now, one queued
    make_generation(alice, prompt="running", status=Generation.Status.RUNNING,
                    call_started_at=timezone.now() - timedelta(minutes=9), **SMALL)
    served_at(bob, 0.01)
    a2, b2 = queued(alice, 0, "a2"), queued(bob, 1, "b2")

    # then bob's job is next and alice's has one ahead of it
    assert (b2.jobs_ahead(), a2.jobs_ahead()) == (0, 1)


def test_jobs_ahead_ignores_other_models_and_finished_jobs(alice, bob):
    queued(bob, 0, "other model", model="wan2.2-t2i-plus")
    make_generation(bob, prompt="done", status=Generation.Status.SUCCEEDED, **SMALL)
    make_generation(bob, prompt="canceled", status=Generation.Status.CANCELED, **SMALL)
    mine = queued(alice, 1, "mine")
    assert mine.jobs_ahead() == 0


def test_jobs_ahead_between_designers_never_served_follows_the_oldest_job(alice, bob):
    # given alice and bob, neither ever served by this model, bob's first job the older
    jobs = [queued(bob, 0, "b1"), queued(alice, 1, "a1"), queued(alice, 2, "a2"), queued(bob, 3, "b2")]

    # then take_next starts bob's first, and the cards agree (not both "Next in line")
    ahead = {job.prompt: job.jobs_ahead() for job in jobs}
    assert ahead == {"b1": 0, "a1": 1, "b2": 2, "a2": 3}
    assert take_all() == ["b1", "a1", "b2", "a2"]


def test_a_queued_jobs_card_says_where_it_stands(alice, bob, client):
    # given alice served a minute ago with 3 jobs queued, and bob, served long ago, with 1
    served_at(alice, 1)
    served_at(bob, 5)
    a1, _, a3 = queued(alice, 0, "a1"), queued(alice, 1, "a2"), queued(alice, 2, "a3")
    b1 = queued(bob, 3, "b1")

    # when each owner looks at the card of a job of theirs
    client.force_login(alice)
    a3_card = client.get(reverse("gallery-job", args=[a3.pk]))
    a1_card = client.get(reverse("gallery-job", args=[a1.pk])).content.decode()
    client.force_login(bob)
    b1_card = client.get(reverse("gallery-job", args=[b1.pk])).content.decode()

    # then the cards say how many jobs are ahead, or that it is next
    assert a3_card.status_code == 200
    a3_card = a3_card.content.decode()
    assert 'class="job-detail job-place"' in a3_card
    assert "3 jobs ahead of yours" in a3_card
    assert "1 job ahead of yours" in a1_card
    assert "Next in line for the provider" in b1_card and "ahead of yours" not in b1_card
    # and a queued card offers Cancel
    assert reverse("gallery-job-cancel", args=[b1.pk]) in b1_card


def test_a_running_jobs_card_says_nothing_about_the_queue(alice, client):
    job = make_generation(alice, prompt="running card", status=Generation.Status.RUNNING,
                          detail_code="generating", **SMALL)
    client.force_login(alice)
    card = client.get(reverse("gallery-job", args=[job.pk])).content.decode()
    assert "Generating…" in card
    assert "job-place" not in card and "Next in line" not in card
    assert reverse("gallery-job-cancel", args=[job.pk]) not in card


def test_cancel_of_a_queued_job_keeps_the_images_of_its_earlier_calls(alice):
    # given a 3-image job of a one-image-per-call model, queued for its second call after the first made one
    job = make_generation(alice, prompt="cancel between calls", model="qwen-image-plus", width=1328, height=1328,
                          n=3, seed=7)
    job.save_progress(answers=[{"first_index": 0, "n": 1, "seed": 7,
                                "results": [{"url": "http://sim/files/x.png", "revised_prompt": ""}]}],
                      call_started_at=timezone.now())
    Image.objects.create(generation=job, owner=alice, model=job.model, shape="square", index=0,
                         file=f"generations/{job.pk}/0.png", width=1328, height=1328, bytes=1, sha256="0" * 64,
                         seed=7)
    assert job.calls_left == 2 and job.can_cancel(alice)

    # when alice cancels it
    assert job.cancel() is True

    # then it ends canceled with the image it made, billed for that one image only
    job.refresh_from_db()
    assert job.status == Generation.Status.CANCELED
    assert job.finished_at is not None
    assert job.billed_images == 1
    assert list(job.images.values_list("index", flat=True)) == [0]
    assert not job.can_cancel(alice)
    # and no worker takes it any more
    assert Generation.objects.take_next(job.model, pipeline.lease()) is None


def test_cancel_of_a_running_job_is_refused(alice):
    # given a job whose call is under way
    job = make_generation(alice, prompt="running, can't take it back", status=Generation.Status.RUNNING,
                          call_in_flight=0, lease_until=timezone.now() + timedelta(minutes=1), **SMALL)
    assert not job.can_cancel(alice)

    # when cancel is asked for, then it is refused and the job goes on
    assert job.cancel() is False
    job.refresh_from_db()
    assert job.status == Generation.Status.RUNNING
    assert job.call_in_flight == 0 and job.finished_at is None


def test_only_the_owner_cancels_through_the_view(alice, bob, client):
    job = queued(alice, 0, "alice's to cancel")
    running = make_generation(alice, prompt="running via view", status=Generation.Status.RUNNING, **SMALL)
    assert not job.can_cancel(bob)

    # bob can't see alice's job, so can't cancel it
    client.force_login(bob)
    assert client.post(reverse("gallery-job-cancel", args=[job.pk])).status_code == 404
    job.refresh_from_db()
    assert job.status == Generation.Status.QUEUED

    # alice can; her running job is left as it is
    client.force_login(alice)
    assert client.post(reverse("gallery-job-cancel", args=[job.pk])).status_code == 302
    client.post(reverse("gallery-job-cancel", args=[running.pk]))
    job.refresh_from_db()
    running.refresh_from_db()
    assert job.status == Generation.Status.CANCELED
    assert running.status == Generation.Status.RUNNING
