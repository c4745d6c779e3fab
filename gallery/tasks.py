"""Thin Celery wrappers: take an id, call the pipeline, turn "try later" into a retry."""

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from gallery import pipeline
from gallery.models import Generation

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=None, acks_late=True)
def run_generation(self, generation_id: str, holder: str | None = None) -> None:
    try:
        pipeline.run(generation_id, holder)
    except pipeline.TryLater as later:
        # A moment past the job's lease, so that the retry always finds it free to take back.
        holder = str(later.holder) if later.holder else None
        raise self.retry(args=[str(later.generation_id or generation_id), holder],
                         countdown=later.seconds + 0.5) from None
    except (OperationalError, InterfaceError) as error:
        logger.warning("generation %s: database unavailable (%s)", generation_id, type(error).__name__)
        raise self.retry(countdown=pipeline.backoff(3)) from None


@shared_task
def sweep() -> int:
    """Re-send jobs whose message was lost and jobs whose worker stopped mid-way."""
    stuck = list(Generation.objects.stuck().values_list("pk", flat=True)[:500])
    for generation_id in stuck:
        # Touching `updated` keeps the next sweeps from sending it again straight away.
        Generation.objects.filter(pk=generation_id).update(updated=timezone.now())
        enqueue(generation_id)
    return len(stuck)


def enqueue(generation_id) -> bool:
    """Send the job to the queue; when the broker is down the sweeper sends it later."""
    try:
        run_generation.delay(str(generation_id))
    except Exception as error:  # kombu and redis raise many kinds; the job is safe in the database
        logger.warning("could not queue generation %s: %s", generation_id, type(error).__name__)
        return False
    return True
