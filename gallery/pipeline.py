"""What a generation job does, from claim to stored images (../shared/DESIGN.md).

Each step is safe to repeat: the job is claimed with a conditional UPDATE, every
API answer is saved before anything is downloaded, storage keys are
deterministic, and Image rows are written last, once their files are in place.
"""

import hashlib
import io
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta

import PIL.Image
import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from gallery import client, search, storage
from gallery.client import ApiError, DownloadError, ErrorKind, Result
from gallery.models import Generation, Image, Rendition
from gallery.slots import NoSlot, provider_slot

logger = logging.getLogger(__name__)

# Lowered from Pillow's default so that no result can make the worker decode a bomb.
PIL.Image.MAX_IMAGE_PIXELS = client.MAX_RESULT_PIXELS // 2
RENDITION_EDGES = {Rendition.Spec.GRID: 512, Rendition.Spec.CARD: 256}
MAX_RETRIES = 8
MAX_THROTTLED_AGE = timedelta(hours=1)
_images = ThreadPoolExecutor(max_workers=4, thread_name_prefix="images")
_uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="uploads")


class TryLater(Exception):
    """The job hit a passing fault; the task should run again after `seconds`."""

    def __init__(self, seconds: float):
        super().__init__(f"try again in {seconds:.1f}s")
        self.seconds = seconds


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def lease() -> timedelta:
    return timedelta(seconds=settings.QWEN_CONNECT_TIMEOUT + settings.QWEN_READ_TIMEOUT + 60)


def backoff(retries: int) -> float:
    """Exponential with full jitter, capped far below the broker's visibility timeout."""
    return min(300.0, 2.0 ** retries) * random.uniform(0.5, 1.0)


def run(generation_id: str) -> None:
    generation = Generation.objects.filter(pk=generation_id).first()
    if generation is None or not generation.claim(lease()):
        logger.info("generation %s: finished, gone, or held by another worker", generation_id)
        return
    try:
        try:
            request_images(generation)
        except ApiError as error:
            if error.kind is not ErrorKind.PERMANENT or not generation.answers:
                raise
            # A later call was refused for good; keep what the earlier calls made.
            generation.error_message = error.designer_message
        problems = store_results(generation)
        finish(generation, problems)
    except ApiError as error:
        handle_api_error(generation, error)
    except NoSlot:
        retry_later(generation, "Waiting for a free slot with the provider.", random.uniform(2, 5), count=False)
    except storage.StorageError as error:
        logger.warning("generation %s: %s", generation.pk, error)
        retry_later(generation, "Waiting for storage to come back.")
    except redis.RedisError as error:
        logger.warning("generation %s: Redis: %s", generation.pk, error)
        retry_later(generation, "Waiting for the queue to come back.")
    except JobFailed as failure:
        generation.finish(Generation.Status.FAILED, failure.code, failure.message)
    except (TryLater, OperationalError, InterfaceError):
        raise  # the task retries; a database hiccup must not fail the job
    except Exception:
        logger.exception("generation %s failed unexpectedly", generation.pk)
        generation.finish(Generation.Status.FAILED, "StudioError",
                          "Something went wrong inside the studio. Please try again; we have logged it.")


def request_images(generation: Generation) -> None:
    """Make each API call the job still needs, saving every answer as it comes."""
    spec = generation.spec
    if spec is None:
        raise JobFailed("ModelNotOffered", f"The model {generation.model} is no longer offered.")
    first_index = 0
    for call_index, count in enumerate(spec.calls_for(generation.n)):
        if call_index < len(generation.answers):
            first_index += count
            continue
        if generation.call_in_flight is not None:
            count_unconfirmed_call(generation)
        body = client.build_request(
            model=generation.model, prompt=generation.prompt, negative_prompt=generation.negative_prompt,
            size=str(generation.size), n=count, seed=generation.seed_for(first_index),
            prompt_extend=generation.prompt_extend, watermark=generation.watermark,
        )
        with provider_slot(lease_seconds=lease().total_seconds()):
            generation.save_progress(
                call_in_flight=call_index, attempts=generation.attempts + 1,
                lease_until=timezone.now() + lease(), status_detail="Generating…",
            )
            started = time.monotonic()
            try:
                answer = client.generate(body)
            except ApiError as error:
                if error.kind is not ErrorKind.UNANSWERED:
                    generation.call_in_flight = None  # it was answered, so it can't have made images
                raise
            finally:
                generation.api_seconds += time.monotonic() - started
        generation.answers.append({
            "first_index": first_index, "n": count, "seed": generation.seed_for(first_index),
            "results": [asdict(result) for result in answer.results],
        })
        generation.save_progress(answers=generation.answers, call_in_flight=None,
                                 api_seconds=generation.api_seconds, status_detail="Saving images…")
        first_index += count


def count_unconfirmed_call(generation: Generation) -> None:
    """The last call was cut off or its worker died: it may have been billed."""
    unconfirmed = generation.unconfirmed_calls + 1
    generation.save_progress(unconfirmed_calls=unconfirmed, call_in_flight=None)
    if unconfirmed >= settings.QWEN_MAX_UNCONFIRMED_CALLS:
        raise JobFailed("NoAnswer", (
            f"The provider did not answer {unconfirmed} times. It may still have charged for those "
            "calls, so the studio stopped rather than risk paying again. Try again later."
        ))


def handle_api_error(generation: Generation, error: ApiError) -> None:
    logger.info("generation %s: %s (%s)", generation.pk, error.code, error.kind)
    if error.kind is ErrorKind.PERMANENT:
        generation.finish(Generation.Status.FAILED, error.code, error.designer_message)
        return
    if error.kind is ErrorKind.THROTTLED:
        if timezone.now() - generation.created > MAX_THROTTLED_AGE:
            generation.finish(Generation.Status.FAILED, error.code,
                              "The provider stayed too busy for an hour. Please try again later.")
            return
        seconds = error.retry_after if error.retry_after is not None else backoff(1)
        retry_later(generation, "The provider is busy; waiting our turn.", min(seconds, 300.0), count=False)
    if generation.retries >= MAX_RETRIES:
        generation.finish(Generation.Status.FAILED, error.code,
                          f"{error.designer_message} The studio tried {MAX_RETRIES} times; please try again later.")
        return
    retry_later(generation, f"{error.designer_message} Trying again…")


def retry_later(generation: Generation, detail: str, seconds: float | None = None, count: bool = True) -> None:
    retries = generation.retries + 1 if count else generation.retries
    seconds = backoff(retries) if seconds is None else seconds
    generation.save_progress(
        retries=retries, status_detail=detail[:300], call_in_flight=generation.call_in_flight,
        lease_until=timezone.now() + timedelta(seconds=seconds),
    )
    raise TryLater(seconds)


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


def store_results(generation: Generation) -> list[str]:
    """Copy every answered image into storage and write its rows; return what could not be kept."""
    done = set(generation.images.values_list("index", flat=True))
    pending = [
        (answer["first_index"] + offset, Result(**result))
        for answer in generation.answers
        for offset, result in enumerate(answer["results"])
        if answer["first_index"] + offset not in done
    ]
    problems = []
    futures = [_images.submit(store_files, generation.pk, index, generation.seed_for(index), result)
               for index, result in pending]
    for future in futures:
        try:
            stored = future.result()
        except DownloadError as error:
            if error.retryable:
                raise storage.StorageError(str(error)) from error
            problems.append(str(error))
            continue
        save_rows(generation, stored)
    return problems


def store_files(generation_id, index: int, seed: int, result: Result) -> Stored:
    """Download, check and store one image and its thumbnails. Touches no database."""
    data = client.fetch_result(result)
    key = storage.original_key(generation_id, index)
    uploads = [_uploads.submit(storage.put, key, data)]
    digest = hashlib.sha256(data).hexdigest()
    with PIL.Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
        width, height = picture.size
        renditions = make_renditions(generation_id, index, picture, uploads)
    for upload in uploads:
        upload.result()
    return Stored(index, result, seed, key, width, height, len(data), digest, renditions)


def make_renditions(generation_id, index: int, picture: PIL.Image.Image, uploads: list) -> list:
    """Encode the WebP thumbnails, largest first; their uploads join `uploads` and run meanwhile."""
    picture = picture.convert("RGBA" if "A" in picture.getbands() or "transparency" in picture.info else "RGB")
    made = []
    for spec, edge in sorted(RENDITION_EDGES.items(), key=lambda item: -item[1]):
        picture.thumbnail((edge, edge), PIL.Image.Resampling.LANCZOS, reducing_gap=2.0)
        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", quality=82, method=4)
        key = storage.rendition_key(generation_id, index, spec)
        uploads.append(_uploads.submit(storage.put, key, buffer.getvalue()))
        made.append((spec, key, picture.width, picture.height, buffer.tell()))
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


def finish(generation: Generation, problems: list[str]) -> None:
    kept = generation.images.count()
    if kept >= generation.n:
        generation.finish(Generation.Status.SUCCEEDED)
        return
    reasons = " ".join(dict.fromkeys([generation.error_message, *problems])).strip()
    if kept:
        message = f"{kept} of {generation.n} images came back. {reasons}".strip()
        generation.finish(Generation.Status.PARTIAL, "Partial", message)
    else:
        generation.finish(Generation.Status.FAILED, "NoImages",
                          reasons or "The provider answered but sent no images. Please try again.")
