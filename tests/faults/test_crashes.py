"""Processes dying under a batch (issue 9): the worker killed outright, and the worker's database
connections cut. Nothing lost, nothing billed twice."""

import time

from django.utils import timezone

from tests.faults.harness import Figures, audit, make_batch, mid_batch, terminate_other_backends, wait_terminal


def test_a_worker_killed_mid_batch_and_started_again_loses_nothing_and_pays_once(stack, sim):
    # given 52 jobs of 4 designers in flight against the Procfile's worker and beat
    figures = Figures("1 worker SIGKILL", "the worker's process group SIGKILLed mid-batch, started again 1 s later")
    # (storage made slow, so that some jobs are always storing the images of a saved answer)
    stack.s3_proxy.delay = 0.3
    batch = make_batch("s1", stack=stack)
    try:
        # when the worker's whole process group is killed with calls in flight and answers being stored
        mid_batch(batch, finished=12, in_flight=2, storing=2)
        stack.worker.kill()
        # after the kill the database is frozen for it: these calls were cut off, maybe billed; these
        # answers were saved and must be stored without a new call
        cut_off = batch.calls_in_flight()
        answered = list(batch.storing().values_list("pk", flat=True))
        figures.in_flight_at_fault = len(cut_off)
        figures.faults += f" ({len(cut_off)} jobs cut off mid-call, {len(answered)} after their answer was saved)"
        time.sleep(1)
    finally:
        stack.s3_proxy.delay = 0.0
        if not stack.worker.running:
            stack.worker.start(stack.worker.environment)
    restored_at = timezone.now()

    # then every job ends (the cut-off ones after their lease), those with a saved answer without calling
    # again, and the audit holds
    done = wait_terminal(batch, timeout=180)
    for job in batch.jobs().filter(pk__in=answered):
        if (job.attempts, job.unconfirmed_calls) != (1, 0):
            figures.problems.append(f"{job.prompt[:14]} had its answer saved when the worker died, yet made "
                                    f"{job.attempts} calls (unconfirmed_calls={job.unconfirmed_calls})")
    audit(batch, sim, figures, restored_at=restored_at, allowed_excess=sum(cut_off.values()), finished_in_time=done)


def test_database_connections_terminated_twice_mid_batch_lose_nothing_and_pay_once(stack, sim):
    # given 52 jobs of 4 designers in flight
    figures = Figures("4 PostgreSQL connections terminated",
                      "pg_terminate_backend on all the worker's connections, twice, ~2 s apart, mid-batch")
    batch = make_batch("s4", stack=stack)

    # when every connection of the worker is terminated, twice, with calls in flight
    in_flight = mid_batch(batch, finished=10, in_flight=2)
    terminated = terminate_other_backends()
    in_flight |= batch.calls_in_flight()
    time.sleep(2)
    in_flight |= batch.calls_in_flight()
    terminated += terminate_other_backends()
    in_flight |= batch.calls_in_flight()
    restored_at = timezone.now()
    figures.in_flight_at_fault = len(in_flight)
    figures.faults += f" ({terminated} backends terminated)"

    # then every job ends, the jobs that hit the errors resuming at once (their lease is 68 s), and the audit holds
    done = wait_terminal(batch, timeout=150)
    audit(batch, sim, figures, restored_at=restored_at, allowed_excess=sum(in_flight.values()), finished_in_time=done,
          done_within=30)


def test_a_worker_stopped_warmly_mid_batch_lets_its_calls_finish_and_pays_once(stack, sim):
    # given 52 jobs of 4 designers in flight
    figures = Figures("1b worker SIGTERM", "the worker's process group sent SIGTERM (warm shutdown) mid-batch, "
                      "started again once it exited")
    batch = make_batch("s1b", stack=stack)
    try:
        # when the worker is asked to stop, as by a deploy, with calls in flight
        mid_batch(batch, finished=12, in_flight=2)
        stopping = time.monotonic()
        stack.worker.stop(timeout=60)
        figures.faults += f" (it exited after {time.monotonic() - stopping:.1f} s)"
        # then it let every call it had made finish and saved the answers before it exited
        left = batch.calls_in_flight()
        figures.in_flight_at_fault = len(left)
        if left:
            figures.problems.append(f"{len(left)} calls left cut off by a warm shutdown")
    finally:
        if not stack.worker.running:
            stack.worker.start(stack.worker.environment)
    restored_at = timezone.now()

    # and once started again the batch ends with nothing billed that was not stored
    done = wait_terminal(batch, timeout=120)
    audit(batch, sim, figures, restored_at=restored_at, allowed_excess=0, finished_in_time=done)
