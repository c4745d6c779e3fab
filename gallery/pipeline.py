"""What a generation job does, from its turn for a provider slot to stored images (../shared/DESIGN.md).

A message names a job, but stands for one turn of work for the job's model: the
database, not the broker, says which queued job gets the next free provider slot
(GenerationQuerySet.take_next, round-robin between designers). Each turn makes one
API call; between calls a job waits `queued`, so it can be canceled, and its card
says how many jobs are ahead of it.

Each step is safe to repeat: an answer is saved before anything is downloaded,
storage keys are deterministic, and Image rows are written once their files are in
place. A job left `running` by a stopped worker is taken back after its lease.
"""

import hashlib
import io
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial

import PIL.Image
import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.db import connection as db_connection
from django.db.models import Min
from django.utils import timezone

from gallery import client, imaging, limits, search, storage
from gallery.catalog import ModelSpec, get_model
from gallery.client import ApiError, DownloadError, ErrorKind, Result
from gallery.messages import Message, dump
from gallery.models import Generation, Image, Rendition

logger = logging.getLogger(__name__)

# Lowered from Pillow's default so that no result can make the worker decode a bomb.
PIL.Image.MAX_IMAGE_PIXELS = client.MAX_RESULT_PIXELS // 2
RENDITION_EDGES = {Rendition.Spec.GRID: 512, Rendition.Spec.CARD: 256}
MAX_RETRIES = 8
MAX_THROTTLED_AGE = timedelta(hours=1)
# How long a task waits in its worker for a provider slot before the broker holds it instead.
SLOT_WAIT = 10.0
_images = ThreadPoolExecutor(max_workers=4, thread_name_prefix="images")
_encodes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="encodes")
_uploads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="uploads")


class TryLater(Exception):
    """The work hit a passing fault or must wait; run the message again after `seconds`,
    for `generation_id` when it names the job that has to be looked after, as its `holder`
    when the job is still held by this turn (so the retry takes it back at once)."""

    def __init__(self, seconds: float, generation_id=None, holder=None):
        super().__init__(f"try again in {seconds:.1f}s")
        self.seconds = seconds
        self.generation_id = generation_id
        self.holder = holder


class JobFailed(Exception):
    def __init__(self, code: str, note: Message):
        super().__init__(note.english)
        self.code = code
        self.note = note


def lease() -> timedelta:
    return timedelta(seconds=settings.QWEN_CONNECT_TIMEOUT + settings.QWEN_READ_TIMEOUT + 60)


def backoff(retries: int) -> float:
    """Exponential with full jitter, capped far below the broker's visibility timeout."""
    return min(300.0, 2.0 ** retries) * random.uniform(0.5, 1.0)


def run(generation_id: str, holder: str | None = None) -> None:
    """One message: take back the job it names if its worker stopped (or this message held it when
    the database failed), then take a turn for its model."""
    origin = Generation.objects.filter(pk=generation_id).first()
    if origin is None:
        logger.info("job=%s step=gone", generation_id)
        return
    if origin.status == Generation.Status.RUNNING and origin.claim(lease(), holder):
        log_step(origin, "resumed")
        carry_on(origin)
    take_turn(origin.model)


def log_step(job: Generation, step: str, **fields) -> None:
    """One structured line per step of a job, for operators: key=value, the job id first."""
    extra = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.info("job=%s step=%s model=%s status=%s %s", job.pk, step, job.model, job.status, extra)


def take_turn(model: str) -> None:
    """Give the model's next free provider slot to the queued job whose turn it is, and make its call.

    A job that goes back to the queue for its next call keeps this message: it takes
    another turn, which the round-robin may give to someone else's job.
    """
    while job := _one_turn(model):
        if job.status != Generation.Status.QUEUED:
            return
        if STOPPING.is_set():
            # The worker is shutting down: no new call, so none is cut off. The retry is a fresh
            # message, so the job keeps one.
            raise TryLater(1.0)


# Set when the worker begins a warm shutdown (gallery/apps.py connects it): calls in flight finish,
# no turn starts a new one.
STOPPING = threading.Event()


def _one_turn(model: str) -> Generation | None:
    if STOPPING.is_set():
        raise TryLater(1.0)
    limits.note_turn(model, SLOT_WAIT)
    spec = get_model(model)
    if spec is None:
        if job := Generation.objects.take_next(model, lease()):
            job.finish(Generation.Status.FAILED, "ModelNotOffered", [Message("model_not_offered", model=model)])
        return job
    now = timezone.now()
    waiting = Generation.objects.waiting_for(model)
    if not waiting.exists():
        return None  # nothing waits: this message's work is done
    if not Generation.objects.ready_for(model, now).exists():
        earliest = waiting.aggregate(Min("not_before"))["not_before__min"]
        if earliest is None:
            return None  # the waiting jobs were canceled or taken meanwhile
        seconds = max((earliest - now).total_seconds(), 0.5)
        limits.note_turn(model, seconds)
        raise TryLater(seconds)
    try:
        with limits.slot(spec, wait=SLOT_WAIT) as token:
            job = Generation.objects.take_next(model, lease())
            if job is None:
                limits.unstart(spec, token)  # no call was made: it uses none of the minute's calls
                return None  # another worker took the last one
            with handling(job):
                call(job, spec, token)
    except limits.Busy as busy:
        # The jobs stay queued; this message looks again when a slot may be free, or, when others
        # already wait in line for it, a while later (they take the next slots; the database still
        # picks the fairest job for each).
        seconds = random.uniform(2, 6) if isinstance(busy, limits.LineFull) else max(busy.seconds,
                                                                                     random.uniform(0.5, 1.5))
        limits.note_turn(model, seconds)
        raise TryLater(seconds) from None
    except redis.RedisError as error:
        logger.warning("provider limits: Redis: %s", type(error).__name__)
        raise TryLater(backoff(2)) from None
    if job.status == Generation.Status.RUNNING:
        carry_on(job)
    return job


def call(job: Generation, spec: ModelSpec, token: str) -> None:
    """Make the job's next API call in the slot held, saving the answer before anything else."""
    if job.call_in_flight is not None:
        settle_call_in_flight(job)
        if not job.calls_left:
            return
    call_index = len(job.answers)
    first_index = sum(answer["n"] for answer in job.answers)
    count = spec.calls_for(job.n)[call_index]
    body = client.build_request(
        model=job.model, prompt=job.prompt, negative_prompt=job.negative_prompt, size=str(job.size),
        n=count, seed=job.seed_for(first_index), prompt_extend=job.prompt_extend, watermark=job.watermark,
    )
    job.save_progress(call_in_flight=call_index, attempts=job.attempts + 1, call_started_at=timezone.now(),
                      lease_until=timezone.now() + lease(), **Generation.saying(Message("generating")))
    try:
        held = limits.holds(spec, token)
    except redis.RedisError:
        held = False
    if not held:
        # Redis lost the slot before the call began (a restart): wait for a turn again.
        job.call_in_flight = None
        job.requeue(attempts=job.attempts - 1)
        raise TryLater(random.uniform(0.5, 1.5), job.pk)
    log_step(job, "call", call=call_index, images=count)
    started = time.monotonic()
    try:
        answer = client.generate(body)
    except ApiError as error:
        if error.kind is not ErrorKind.UNANSWERED:
            job.call_in_flight = None  # it was answered, so it can't have made images
        raise
    finally:
        job.api_seconds += time.monotonic() - started
    saved = {"first_index": first_index, "n": count, "seed": job.seed_for(first_index),
             "results": [asdict(result) for result in answer.results]}
    # Paid for: kept in Redis before anything else, then in the database, however long that takes.
    stash_answer(job, call_index, saved)
    job.answers.append(saved)
    durably(lambda: job.save_progress(answers=job.answers, call_in_flight=None, api_seconds=job.api_seconds,
                                      throttled_since=None, **Generation.saying(Message("saving"))))
    log_step(job, "answered", call=call_index, images=len(answer.results), seconds=f"{time.monotonic() - started:.1f}")


ANSWER_KEY = "qwenstudio:answers:{}:{}"
ANSWER_DAYS = 2  # longer than the provider keeps its result links


def stash_answer(job: Generation, call_index: int, saved: dict) -> None:
    try:
        limits.client().set(ANSWER_KEY.format(job.pk, call_index), json.dumps(saved), ex=ANSWER_DAYS * 86400)
    except redis.RedisError as error:
        logger.warning("job=%s step=stash failed=%s", job.pk, type(error).__name__)


def stashed_answer(job: Generation, call_index: int) -> dict | None:
    try:
        raw = limits.client().get(ANSWER_KEY.format(job.pk, call_index))
    except redis.RedisError:
        return None
    return json.loads(raw) if raw else None


def durably(write, seconds: float = 60.0):
    """Run a database write, retrying on a fresh connection while the database is away (up to `seconds`)."""
    deadline = time.monotonic() + seconds
    pause = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            if time.monotonic() + pause > deadline:
                raise
            close_old_connections()
            db_connection.close()
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def settle_call_in_flight(job: Generation) -> None:
    """A call of the job was cut off, or its worker stopped mid-call: adopt its answer if it was kept,
    else count it as possibly billed."""
    saved = stashed_answer(job, job.call_in_flight)
    if saved is not None and len(job.answers) == job.call_in_flight:
        job.answers.append(saved)
        job.save_progress(answers=job.answers, call_in_flight=None)
        log_step(job, "adopted", call=len(job.answers) - 1)
        return
    count_unconfirmed_call(job)


def carry_on(job: Generation) -> None:
    """Take a held job on from its last saved step: store what was answered, then finish it or queue
    it for its next call."""
    with handling(job):
        if job.call_in_flight is not None:
            settle_call_in_flight(job)  # its worker stopped mid-call, or the database went away
        problems = store_results(job)
        if job.calls_left > 0:
            job.save_progress(error_notes=dump([*job.reasons, *problems]))
            job.requeue()
            log_step(job, "queued", calls_left=job.calls_left)
            return
        finish(job, problems)
        log_step(job, "finished", images=job.images.count(), billed=job.billed_images,
                 unconfirmed=job.unconfirmed_calls)


@contextmanager
def handling(job: Generation) -> Iterator[None]:
    """Turn what went wrong with a held job into its next state: a retry, a wait, or the end.

    A database error, in the work or in saving its outcome, never fails the job: this message takes
    it back as soon as the database answers. A turn that lost the job to another stops quietly.
    """
    try:
        try:
            yield
        except ApiError as error:
            handle_api_error(job, error)
        except storage.StorageError as error:
            logger.warning("job=%s step=wait-storage error=%s", job.pk, error)
            retry_later(job, Message("waiting_for_storage"))
        except redis.RedisError as error:
            logger.warning("job=%s step=wait-redis error=%s", job.pk, type(error).__name__)
            retry_later(job, Message("waiting_for_queue"))
        except JobFailed as failure:
            job.finish(Generation.Status.FAILED, failure.code, [failure.note])
            log_step(job, "failed", code=failure.code)
        except (TryLater, limits.Busy, OperationalError, InterfaceError, Generation.LostHold):
            raise
        except Exception:
            logger.exception("job=%s step=studio-error", job.pk)
            job.finish(Generation.Status.FAILED, "StudioError", [Message("studio_fault")])
    except (OperationalError, InterfaceError) as error:
        logger.warning("job=%s step=database-error error=%s", job.pk, type(error).__name__)
        raise TryLater(backoff(2), job.pk, holder=job.holder) from None
    except Generation.LostHold:
        logger.warning("job=%s step=lost-hold: another turn took it over", job.pk)


def count_unconfirmed_call(generation: Generation) -> None:
    """The last call was cut off or its worker died: it may have been billed."""
    unconfirmed = generation.unconfirmed_calls + 1
    generation.save_progress(unconfirmed_calls=unconfirmed, call_in_flight=None)
    if unconfirmed >= settings.QWEN_MAX_UNCONFIRMED_CALLS:
        raise JobFailed("NoAnswer", Message("calls_unanswered", count=unconfirmed))


def handle_api_error(job: Generation, error: ApiError) -> None:
    log_step(job, "api-error", code=error.code, kind=error.kind)
    if error.kind is ErrorKind.PERMANENT:
        if not job.answers:
            job.finish(Generation.Status.FAILED, error.code, [error.designer_message])
            return
        # A later call was refused for good: the job makes no more calls and keeps what the
        # earlier ones made (the caller stores them and finishes it).
        first_index = sum(answer["n"] for answer in job.answers)
        for count in job.spec.calls_for(job.n)[len(job.answers):]:
            job.answers.append({"first_index": first_index, "n": count, "seed": job.seed_for(first_index),
                                "results": [], "refused": error.code})
            first_index += count
        job.save_progress(answers=job.answers, call_in_flight=None,
                          error_notes=dump([*job.reasons, error.designer_message]))
        return
    if error.kind is ErrorKind.THROTTLED:
        job.throttled_since = job.throttled_since or timezone.now()
        if timezone.now() - job.throttled_since > MAX_THROTTLED_AGE:
            job.finish(Generation.Status.FAILED, error.code, [Message("busy_for_an_hour")])
            return
        # Every worker holds back from the model, not only this one; the job waits its turn again.
        seconds = min(error.retry_after if error.retry_after is not None else backoff(1), 300.0)
        try:
            limits.pause(job.spec, seconds)
        except redis.RedisError:
            pass  # this job still waits its turn; other workers may meet the 429 themselves
        job.requeue(Message("throttled"), throttled_since=job.throttled_since)
        raise TryLater(seconds, job.pk)
    if job.retries >= MAX_RETRIES:
        job.finish(Generation.Status.FAILED, error.code,
                   [Message("retries_used_up", reason=error.designer_message, tries=MAX_RETRIES)])
        return
    seconds = backoff(job.retries + 1)
    job.requeue(Message("retrying", reason=error.designer_message),
                not_before=timezone.now() + timedelta(seconds=seconds), retries=job.retries + 1)
    raise TryLater(seconds, job.pk)


def retry_later(job: Generation, detail: Message) -> None:
    """Keep the job held until the outage (storage, Redis) may have passed; the message takes it back
    then. Waiting out an outage never uses up the job's retries of the API: it only ends when it is over."""
    waits = min(job.waits + 1, 1000)
    seconds = backoff(waits)
    job.save_progress(waits=waits, **Generation.saying(detail), call_in_flight=job.call_in_flight,
                      lease_until=timezone.now() + timedelta(seconds=seconds))
    raise TryLater(seconds, job.pk)


@dataclass
class Stored:
    index: int
    result: Result
    seed: int
    key: str
    width: int
    height: int
    size: int
    sha256: str
    renditions: list[tuple[str, str, int, int, int]]
    uploads: list = field(default_factory=list, repr=False)

    def wait_for_uploads(self) -> None:
        """Return once the original and every rendition are in storage; raise StorageError if one is not."""
        for upload in self.uploads:
            upload.result()


def store_results(generation: Generation) -> list[Message]:
    """Copy every answered image into storage and write its rows; return what could not be kept."""
    done = set(generation.images.values_list("index", flat=True))
    pending = [
        (answer["first_index"] + offset, Result(**result))
        for answer in generation.answers
        for offset, result in enumerate(answer["results"])
        if answer["first_index"] + offset not in done
    ]
    problems, passing = [], None
    futures = [(index, _images.submit(store_files, generation.pk, index, generation.seed_for(index), result))
               for index, result in pending]
    # Every image that can be kept is kept, whatever happens to its siblings.
    for index, future in futures:
        try:
            stored = future.result()
            durably(partial(save_rows, generation, stored))
        except (storage.StorageError, DownloadError) as error:
            if isinstance(error, storage.StorageError) or error.retryable:
                passing = passing or str(error)
            else:
                problems.append(Message("image_problem", number=index + 1, problem=error.note))
            continue
        except Exception:
            logger.exception("job=%s step=store image=%s", generation.pk, index)
            problems.append(Message("image_fault", number=index + 1))
            continue
        generation.save_progress(lease_until=timezone.now() + lease())  # still ours, for a while more
        log_step(generation, "stored", image=index)
    if passing:
        raise storage.StorageError(passing)
    return problems


def store_files(generation_id, index: int, seed: int, result: Result) -> Stored:
    """Download and check one image, encode its thumbnails and start every upload. Touches no database.

    The original and each rendition go up side by side, so a slow storage costs one request's
    latency per image, not three; the uploads run on while save_rows writes the rows. The original
    goes up while it decodes, on the core the decoding leaves free; if it proves damaged, it is taken
    back out of storage."""
    data = client.fetch_result(result)
    key = storage.original_key(generation_id, index)
    uploads = [_uploads.submit(storage.put, key, data)]
    digest = hashlib.sha256(data).hexdigest()
    try:
        picture = PIL.Image.open(io.BytesIO(data), formats=["PNG"])
        picture.load()  # the whole image decodes before its row can be written
    except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError):
        take_back(key, uploads[0])
        raise DownloadError("damaged", retryable=False) from None
    with picture:
        width, height = picture.size
        renditions = make_renditions(generation_id, index, picture, uploads)
    return Stored(index, result, seed, key, width, height, len(data), digest, renditions, uploads)


def take_back(key: str, upload) -> None:
    """Remove the file stored for an image that gets no row, once its upload is over. If storage
    can't remove it now, it stays, unseen: no row points at it."""
    try:
        upload.result()
        storage.delete([key])
    except storage.StorageError as error:
        logger.warning("step=take-back key=%s error=%s", key, error)


def make_renditions(generation_id, index: int, picture: PIL.Image.Image, uploads: list) -> list:
    """Make the WebP thumbnails: each size is scaled from the one above it (on two threads), and
    encoded and uploaded beside the next scaling. Their uploads join `uploads`; returns each
    rendition's row values."""
    mode = "RGBA" if "A" in picture.getbands() or "transparency" in picture.info else "RGB"
    if picture.mode != mode:  # converting to its own mode would only copy it
        picture = picture.convert(mode)
    encodes = {}
    for spec, edge in sorted(RENDITION_EDGES.items(), key=lambda item: -item[1]):
        picture = imaging.scaled(picture, edge, _encodes)
        key = storage.rendition_key(generation_id, index, spec)
        encodes[_encodes.submit(imaging.encode_webp, picture)] = (spec, key, picture.size)
    made = []
    for encode in as_completed(encodes):  # the smaller one, finished first, goes up first
        spec, key, (width, height) = encodes[encode]
        data = encode.result()
        uploads.append(_uploads.submit(storage.put, key, data))
        made.append((spec, key, width, height, len(data)))
    return made


def save_rows(generation: Generation, stored: Stored) -> None:
    with transaction.atomic():
        image, _ = Image.objects.get_or_create(
            generation=generation, index=stored.index,
            defaults={
                "owner_id": generation.owner_id, "model": generation.model, "shape": generation.size.shape,
                "file": stored.key, "width": stored.width, "height": stored.height, "bytes": stored.size,
                "sha256": stored.sha256, "seed": stored.seed, "revised_prompt": stored.result.revised_prompt,
                "search": search.document(generation.prompt, stored.result.revised_prompt,
                                          generation.negative_prompt),
            },
        )
        Rendition.objects.bulk_create([
            Rendition(image=image, spec=spec, file=key, width=width, height=height, bytes=size)
            for spec, key, width, height, size in stored.renditions
        ], ignore_conflicts=True)
        # Written while the files go up, committed only once all of them are there: a row never
        # points at a missing file, and the database's time hides behind the storage's.
        stored.wait_for_uploads()


def finish(generation: Generation, problems: list[Message]) -> None:
    kept = generation.images.count()
    if kept >= generation.n:
        generation.finish(Generation.Status.SUCCEEDED)
        return
    reasons = [*generation.reasons, *problems]
    if kept:
        generation.finish(Generation.Status.PARTIAL, "Partial",
                          [Message("images_came_back", kept=kept, n=generation.n), *reasons])
    else:
        generation.finish(Generation.Status.FAILED, "NoImages", reasons or [Message("no_images")])
