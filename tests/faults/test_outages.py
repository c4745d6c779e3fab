"""Services going away under a batch (issue 9): the broker and limits Redis restarted with its data gone,
and the S3 endpoint down for 30 s. Nothing lost, nothing billed twice."""

import time

from django.utils import timezone

from tests.faults.harness import Figures, audit, make_batch, mid_batch, wait_terminal

REDIS_DOWN_SECONDS = 5
S3_DOWN_SECONDS = 30


def test_redis_restarted_empty_mid_batch_loses_nothing_and_pays_once(stack, sim):
    # given 52 jobs of 4 designers in flight, their messages and provider slots in the suite's own Redis
    figures = Figures("2 Redis restarted empty",
                      f"the broker+limits Redis killed mid-batch, started again empty {REDIS_DOWN_SECONDS} s later")
    batch = make_batch("s2", stack=stack)
    try:
        # when Redis dies with calls in flight and comes back with every message, slot and stash gone
        in_flight = mid_batch(batch, finished=12, in_flight=2)
        stack.redis.stop()
        in_flight |= batch.calls_in_flight()
        figures.in_flight_at_fault = len(in_flight)
        time.sleep(REDIS_DOWN_SECONDS)
    finally:
        if stack.redis.process is None:
            stack.redis.start()
    restored_at = timezone.now()

    # then the jobs whose messages were lost are found again in the database, and the audit holds
    done = wait_terminal(batch, timeout=150)
    audit(batch, sim, figures, restored_at=restored_at, allowed_excess=sum(in_flight.values()), finished_in_time=done)


def test_s3_down_for_30_seconds_mid_batch_loses_nothing_and_pays_once(stack, sim):
    # given 52 jobs of 4 designers in flight, the worker storing images through a proxy in front of S3
    figures = Figures("3 S3 down 30 s", f"the S3 endpoint refusing connections for {S3_DOWN_SECONDS} s mid-batch "
                      "(open connections cut)")
    batch = make_batch("s3", stack=stack)
    try:
        # when the endpoint goes away for 30 s
        in_flight = mid_batch(batch, finished=10, in_flight=1)
        stack.s3_proxy.down()
        in_flight |= batch.calls_in_flight()
        figures.in_flight_at_fault = len(in_flight)
        waited_for_storage = set()
        back_at = time.monotonic() + S3_DOWN_SECONDS
        while time.monotonic() < back_at:
            waited_for_storage |= set(batch.jobs().filter(detail_code="waiting_for_storage")
                                      .values_list("pk", flat=True))
            time.sleep(0.5)
    finally:
        stack.s3_proxy.up()
    restored_at = timezone.now()

    figures.faults += f" ({len(waited_for_storage)} jobs seen waiting for storage)"

    # then the answers kept meanwhile are stored once it is back, and the audit holds
    done = wait_terminal(batch, timeout=150)
    audit(batch, sim, figures, restored_at=restored_at, allowed_excess=sum(in_flight.values()), finished_in_time=done)
