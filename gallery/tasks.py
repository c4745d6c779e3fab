"""Thin Celery wrappers: take an id, call the pipeline, turn "try later" into a retry."""

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from gallery import limits, pipeline
from gallery.messages import Message
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
        logger.warning("job=%s step=database-error error=%s", generation_id, type(error).__name__)
        raise self.retry(countdown=pipeline.backoff(3)) from None


@shared_task
def sweep() -> int:
    """Re-send lost work, once for each loss: jobs left running by a stopped worker (taken back from
    their last saved step), and the queued jobs of a model no message has taken a turn for lately (a
    broker that lost its messages). A backlog that is only waiting its turn is left alone."""
    limits.note_sweep()
    stranded = list(Generation.objects.stranded().values_list("pk", flat=True)[:500])
    for generation_id in stranded:
        # Touching `updated` keeps the next sweeps from sending it again before it can be taken back.
        Generation.objects.filter(pk=generation_id).update(updated=timezone.now())
        enqueue(generation_id)
    resent = 0
    for model, ids in Generation.objects.waiting_quietly().items():
        if limits.turn_seen(model):
            continue  # messages for the model are alive: these jobs are waiting their turn
        sent = [generation_id for generation_id in ids[:500] if enqueue(generation_id)]
        if sent:
            limits.note_turn(model, settings.QWEN_REQUEUE_AFTER)  # once: the next sweep waits for these
            # Their cards stop saying the queue is down.
            Generation.objects.filter(pk__in=sent, detail_code=Generation.QUEUE_DOWN).update(**Generation.saying(None))
            logger.info("sweep: re-sent %d queued jobs of %s", len(sent), model)
        resent += len(sent)
    return len(stranded) + resent


def enqueue(generation_id) -> bool:
    """Send the job to the queue; when the broker is down, say so on its card: the sweeper sends it later."""
    try:
        run_generation.delay(str(generation_id))
    except Exception as error:  # kombu and redis raise many kinds; the job is safe in the database
        logger.warning("job=%s step=enqueue failed=%s", generation_id, type(error).__name__)
        Generation.objects.filter(pk=generation_id, status=Generation.Status.QUEUED).update(
            **Generation.saying(Message(Generation.QUEUE_DOWN)))
        return False
    return True
