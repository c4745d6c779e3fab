"""The worker's path against real services: apisim over HTTP, moto's S3, Redis and a Celery worker."""

import hashlib
import io
import time
from datetime import timedelta

import PIL.Image
import pytest
from django.db import OperationalError
from django.utils import timezone

from gallery import limits, pipeline
from gallery.models import Generation
from gallery.tasks import enqueue, run_generation
from tests.conftest import BUCKET, wait_for


def make_generation(owner, **fields) -> Generation:
    values = {"prompt": "一只小猫在草地上奔跑，电影感", "negative_prompt": "blurry", "model": "wan2.2-t2i-flash",
              "width": 1024, "height": 768, "n": 1, "seed": 42, "prompt_extend": True, "watermark": False}
    return Generation.objects.create(owner=owner, **(values | fields))


def finished(generation: Generation) -> Generation:
    def is_finished():
        generation.refresh_from_db()
        return generation.is_finished
    wait_for(is_finished, timeout=60)
    return generation


def generation_calls(sim, generation) -> list[dict]:
    return [call for call in sim.calls() if call["prompt"] == generation.prompt]


def test_generation_stores_originals_thumbnails_and_rows(worker, alice, s3, sim):
    # given a queued job for two images
    generation = make_generation(alice, n=2, prompt="a red kite over the sea, 电影感")

    # when the worker runs it
    enqueue(generation.pk)
    finished(generation)

    # then both originals are in S3 byte for byte, with WebP thumbnails beside them
    assert generation.status == Generation.Status.SUCCEEDED, generation.error_text
    images = list(generation.images.prefetch_related("renditions"))
    assert [image.index for image in images] == [0, 1]
    for image in images:
        original = s3.get_object(Bucket=BUCKET, Key=image.file)["Body"].read()
        assert image.file == f"generations/{generation.pk}/{image.index}.png"
        assert hashlib.sha256(original).hexdigest() == image.sha256
        assert len(original) == image.bytes
        assert PIL.Image.open(io.BytesIO(original)).size == (1024, 768) == (image.width, image.height)
        assert image.seed == 42 + image.index
        assert image.revised_prompt and image.revised_prompt != generation.prompt
        specs = {rendition.spec: rendition for rendition in image.renditions.all()}
        assert set(specs) == {"grid", "card"}
        grid = PIL.Image.open(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=specs["grid"].file)["Body"].read()))
        assert grid.format == "WEBP" and grid.size == (512, 384) == (specs["grid"].width, specs["grid"].height)
        assert specs["card"].file == f"generations/{generation.pk}/{image.index}.card.webp"
    assert generation.attempts == 1
    call, = generation_calls(sim, generation)
    assert call["parameters"] == {"negative_prompt": "blurry", "prompt_extend": True, "watermark": False,
                                  "size": "1024*768", "n": 2, "seed": 42}


def test_revised_prompt_is_empty_when_prompt_extend_is_off(worker, alice, sim):
    generation = make_generation(alice, prompt_extend=False)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED
    assert generation.images.get().revised_prompt == ""


def test_one_image_per_call_model_makes_several_calls_with_distinct_seeds(worker, alice, sim):
    generation = make_generation(alice, model="qwen-image-plus", width=1328, height=1328, n=3, seed=7,
                                 prompt="青花瓷茶杯，柔和光线")
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED
    calls = generation_calls(sim, generation)
    assert [(c["parameters"]["n"], c["parameters"]["seed"]) for c in calls] == [(1, 7), (1, 8), (1, 9)]
    assert sorted(generation.images.values_list("seed", flat=True)) == [7, 8, 9]


@pytest.mark.parametrize("fault", [
    {"type": "throttle", "retry_after": 1},
    {"type": "server_error", "status": 500},
    {"type": "server_error", "status": 503},
    {"type": "error_200", "code": "InternalError", "message": "upstream task failed"},
])
def test_passing_faults_recover_by_themselves(worker, alice, sim, fault):
    generation = make_generation(alice, prompt=f"lighthouse at dusk {fault['type']}")
    sim.fault(match=generation.prompt, **fault)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED, generation.error_text
    assert generation.images.count() == 1
    assert len(generation_calls(sim, generation)) == 2


def test_throttling_does_not_count_as_a_failed_attempt(worker, alice, sim):
    generation = make_generation(alice, prompt="throttled twice")
    sim.fault("throttle", retry_after=1, times=2, match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED
    assert generation.retries == 0


@pytest.mark.parametrize(("fault", "code", "words"), [
    ("moderation", "DataInspectionFailed", "content check rejected"),
    ("invalid_parameter", "InvalidParameter", "refused these settings"),
    ("quota", "Throttling.AllocationQuota", "quota"),
    ("auth", "InvalidApiKey", "administrator"),
    ("arrearage", "Arrearage", "administrator"),
])
def test_permanent_faults_fail_once_with_a_designer_message(worker, alice, sim, fault, code, words):
    generation = make_generation(alice, prompt=f"rejected by {fault}")
    sim.fault(fault, match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.FAILED
    assert generation.error_code == code
    assert words in generation.error_text
    assert len(generation_calls(sim, generation)) == 1
    assert generation.images.count() == 0


def test_moderation_on_a_200_fails_without_retrying(worker, alice, sim):
    generation = make_generation(alice, prompt="moderated after submission")
    sim.fault("error_200", code="DataInspectionFailed", message="Output data may contain inappropriate content.",
              match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.FAILED
    assert "content check" in generation.error_text
    assert len(generation_calls(sim, generation)) == 1


def test_fewer_images_than_asked_ends_partial_with_what_came(worker, alice, sim, s3):
    generation = make_generation(alice, n=4, prompt="four cats, two come back")
    sim.fault("fewer_images", count=2, match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.PARTIAL
    assert "2 of 4" in generation.error_text
    assert generation.images.count() == 2
    for image in generation.images.all():
        assert s3.head_object(Bucket=BUCKET, Key=image.file)["ContentLength"] == image.bytes


def test_malformed_json_is_retried_within_the_unconfirmed_cap(worker, alice, sim):
    generation = make_generation(alice, prompt="garbled answer once")
    sim.fault("malformed_json", match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED
    assert generation.unconfirmed_calls == 1


def test_calls_cut_off_without_answer_stop_at_the_billing_cap(worker, alice, sim, settings):
    settings.QWEN_MAX_UNCONFIRMED_CALLS = 2
    generation = make_generation(alice, prompt="dropped every time")
    sim.fault("drop", after_work=True, times=5, match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.FAILED
    assert generation.error_code == "NoAnswer"
    assert "may still have charged" in generation.error_text
    assert len(generation_calls(sim, generation)) == 2


def test_expired_result_urls_fail_with_a_clear_message(worker, alice, sim):
    generation = make_generation(alice, prompt="links expired")
    sim.fault("expired_urls", match=generation.prompt)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.FAILED
    assert "expired" in generation.error_text


@pytest.mark.parametrize(("fault", "words"), [
    ({"type": "foreign_url", "url": "http://images.example.net/cat.png"}, "not on the allowed list"),
    ({"type": "image_body", "kind": "not_png"}, "not a PNG"),
    ({"type": "image_body", "kind": "huge"}, "over the size limit"),
    ({"type": "image_body", "kind": "bomb"}, "impossible size"),
])
def test_unsafe_results_are_refused_without_decoding(worker, alice, sim, fault, words):
    generation = make_generation(alice, prompt=f"unsafe result {fault['kind'] if 'kind' in fault else 'url'}")
    sim.fault(match=generation.prompt, **fault)
    enqueue(generation.pk)
    finished(generation)
    assert generation.status == Generation.Status.FAILED
    assert words in generation.error_text
    assert generation.images.count() == 0


def test_a_task_delivered_twice_makes_one_call_and_one_set_of_images(worker, alice, sim, s3):
    # given one job whose message is delivered twice at once
    generation = make_generation(alice, n=2, prompt="delivered twice")
    sim.fault("latency", seconds=1.5, match=generation.prompt)

    # when both deliveries run
    run_generation.delay(str(generation.pk))
    run_generation.delay(str(generation.pk))
    finished(generation)
    run_generation.delay(str(generation.pk))  # and a late third after it finished

    # then there was one API call and one set of stored images
    time.sleep(1.5)  # time for the late delivery to be consumed
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.images.count() == 2
    keys = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"generations/{generation.pk}/")["Contents"]
    assert len(keys) == 6


def test_a_job_that_waited_long_in_the_queue_is_not_failed_by_one_429(worker, alice, sim):
    # given a job queued two hours ago (a long line for a slow model) whose first call gets a 429
    generation = make_generation(alice, prompt="long wait then one 429",
                                 created=timezone.now() - timedelta(hours=2))
    sim.fault("throttle", retry_after=1, match=generation.prompt)

    # when the worker runs it
    enqueue(generation.pk)
    finished(generation)

    # then the provider's hour of grace starts at the 429, so the job is made
    assert generation.status == Generation.Status.SUCCEEDED, generation.error_text
    assert generation.throttled_since is None


def test_a_job_the_provider_throttled_for_an_hour_fails_saying_so(worker, alice, sim):
    # given a job the provider has answered only with 429s for over an hour
    generation = make_generation(alice, prompt="throttled for an hour",
                                 throttled_since=timezone.now() - timedelta(hours=1, minutes=1))
    sim.fault("throttle", retry_after=1, match=generation.prompt)

    # when its next call is throttled too
    enqueue(generation.pk)
    finished(generation)

    # then it fails with the reason
    assert generation.status == Generation.Status.FAILED
    assert "too busy for an hour" in generation.error_text


def test_redelivery_after_an_answered_call_resumes_without_calling_again(transactional_db, alice, sim, s3):
    # given a worker that saved the answer and then died before storing anything
    generation = make_generation(alice, n=1, prompt="worker died after the answer")
    job = Generation.objects.take_next(generation.model, pipeline.lease())
    with limits.slot(job.spec, wait=5) as token:
        pipeline.call(job, job.spec, token)
    assert len(generation_calls(sim, generation)) == 1
    Generation.objects.filter(pk=generation.pk).update(lease_until=timezone.now() - timedelta(seconds=1))

    # when the message is delivered again
    pipeline.run(str(generation.pk))

    # then the images are stored from the saved answer, and the API was not called again
    generation.refresh_from_db()
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.images.count() == 1


def test_redelivery_after_a_call_in_flight_counts_it_as_unconfirmed(transactional_db, alice, sim):
    # given a worker that died while its call was in flight
    generation = make_generation(alice, prompt="worker died mid-call")
    Generation.objects.filter(pk=generation.pk).update(status="running", call_in_flight=0, attempts=1,
                                                       lease_until=timezone.now() - timedelta(seconds=1))

    pipeline.run(str(generation.pk))

    generation.refresh_from_db()
    assert generation.status == Generation.Status.SUCCEEDED
    assert generation.unconfirmed_calls == 1
    assert generation.attempts == 2


def test_sweeper_resends_jobs_whose_message_was_lost(worker, alice, sim, settings):
    # given a job committed while the broker lost its message
    generation = make_generation(alice, prompt="message lost")
    Generation.objects.filter(pk=generation.pk).update(updated=generation.created.replace(year=2020))

    # when the periodic sweeper runs
    from gallery.tasks import sweep
    assert sweep() == 1

    # then the job is done
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED


def test_a_storage_outage_waits_and_resumes_without_calling_again(worker, alice, sim, settings):
    # given storage that can't be reached when the answer comes back
    working = settings.STORAGES
    settings.STORAGES = working | {"default": working["default"] | {"OPTIONS": {"endpoint_url": "http://127.0.0.1:9"}}}
    generation = make_generation(alice, prompt="storage is down for a moment")
    enqueue(generation.pk)

    def waiting_for_storage():
        generation.refresh_from_db()
        return generation.waits >= 1 and generation.detail_code == "waiting_for_storage"
    wait_for(waiting_for_storage)

    # when storage comes back
    settings.STORAGES = working
    finished(generation)

    # then the saved answer is used: one API call, and the image is stored; the wait used up none of
    # the job's retries of the API
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.images.count() == 1
    assert generation.retries == 0


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxy_giving_up_counts_as_a_maybe_billed_call_and_the_card_says_so(worker, alice, sim, status, client):
    # given a gateway behind a proxy that gives up once with a 502/504
    generation = make_generation(alice, prompt=f"proxy gave up {status}")
    sim.fault("server_error", status=status, match=generation.prompt)

    # when the worker runs the job
    enqueue(generation.pk)
    finished(generation)

    # then it is made on the next call, with that call counted as possibly billed, and the card says so
    assert generation.status == Generation.Status.SUCCEEDED
    assert (generation.unconfirmed_calls, len(generation_calls(sim, generation))) == (1, 2)
    client.force_login(alice)
    assert "1 call went unanswered" in client.get(f"/jobs/{generation.pk}/").content.decode()


def test_a_database_error_after_the_answer_loses_nothing_and_calls_once(worker, alice, sim, monkeypatch):
    # given a database that fails the first three times the answer is saved
    generation = make_generation(alice, prompt="database hiccup after the answer")
    save_progress = Generation.save_progress
    failures = []

    def flaky(job, **fields):
        if "answers" in fields and len(failures) < 3:
            failures.append(fields)
            raise OperationalError("server closed the connection unexpectedly")
        return save_progress(job, **fields)
    monkeypatch.setattr(Generation, "save_progress", flaky)

    # when the worker runs the job
    enqueue(generation.pk)
    finished(generation)

    # then the save was retried on a fresh connection: one call, one image
    assert len(failures) == 3
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.images.count() == 1 and generation.unconfirmed_calls == 0


def test_a_turn_whose_database_stayed_away_takes_its_job_back_and_adopts_the_kept_answer(
        worker, alice, sim, monkeypatch):
    # given a database that stays away longer than a turn retries a save in place
    generation = make_generation(alice, prompt="database away for a while after the answer")
    save_progress = Generation.save_progress
    durably = pipeline.durably
    monkeypatch.setattr(pipeline, "durably", lambda write, seconds=60.0: durably(write, seconds=0.5))
    failing = [True]

    def away(job, **fields):
        if "answers" in fields and failing[0]:
            failing[0] = False
            raise OperationalError("the database system is shutting down")
        return save_progress(job, **fields)
    monkeypatch.setattr(Generation, "save_progress", away)
    started = time.monotonic()

    # when the worker runs the job and the database comes back
    enqueue(generation.pk)
    finished(generation)

    # then the same message took the job back at once (not after its lease) and adopted the answer kept
    # in Redis, without calling again
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.unconfirmed_calls == 0
    assert time.monotonic() - started < pipeline.lease().total_seconds() / 2


def test_a_worker_that_died_after_the_answer_reached_redis_only_is_not_billed_again(transactional_db, alice, sim):
    # given a worker that got the answer, kept it in Redis, and died before the database had it
    generation = make_generation(alice, prompt="died between Redis and the database")
    job = Generation.objects.take_next(generation.model, pipeline.lease())
    with limits.slot(job.spec, wait=5) as token:
        pipeline.call(job, job.spec, token)
    Generation.objects.filter(pk=job.pk).update(answers=[], call_in_flight=0,
                                                lease_until=timezone.now() - timedelta(seconds=1))

    # when its message is delivered again
    pipeline.run(str(generation.pk))

    # then the kept answer is used: one call, one image, nothing counted as unconfirmed
    generation.refresh_from_db()
    assert generation.status == Generation.Status.SUCCEEDED
    assert len(generation_calls(sim, generation)) == 1
    assert generation.unconfirmed_calls == 0 and generation.images.count() == 1


def test_the_sweeper_resends_a_lost_backlog_once_not_on_every_sweep(db, alice, limits_redis, settings):
    # given three jobs queued long ago for a model no message has taken a turn for (the broker lost them)
    limits_redis.client().flushdb()
    long_ago = timezone.now() - timedelta(seconds=settings.QWEN_REQUEUE_AFTER + 5)
    jobs = [make_generation(alice, prompt=f"lost backlog {index}") for index in range(3)]
    Generation.objects.filter(pk__in=[job.pk for job in jobs]).update(updated=long_ago)

    # when the sweeper runs twice
    from gallery.tasks import sweep
    first, second = sweep(), sweep()

    # then it re-sent each once, and left them alone the second time: their messages are on the way
    assert (first, second) == (3, 0)


def test_the_sweeper_leaves_a_backlog_alone_while_messages_take_turns(db, alice, limits_redis, settings):
    # given jobs long queued for a model whose messages are taking turns (waiting for slots)
    limits_redis.client().flushdb()
    long_ago = timezone.now() - timedelta(seconds=settings.QWEN_REQUEUE_AFTER + 5)
    jobs = [make_generation(alice, prompt=f"waiting backlog {index}") for index in range(3)]
    Generation.objects.filter(pk__in=[job.pk for job in jobs]).update(updated=long_ago)
    limits.note_turn(jobs[0].model, pipeline.SLOT_WAIT)

    # when the sweeper runs
    from gallery.tasks import sweep

    # then it sends nothing: they are waiting their turn, not lost
    assert sweep() == 0


def test_a_truncated_image_costs_only_itself_not_its_paid_sibling(worker, alice, sim, s3):
    # given a two-image answer whose second file has a valid header and a cut body
    generation = make_generation(alice, n=2, prompt="one damaged file in the answer")
    sim.fault("image_body", kind="truncated", index=1, match=generation.prompt)

    # when the worker runs the job
    enqueue(generation.pk)
    finished(generation)

    # then the good image is kept, the job says which one was damaged, it is billed for what came,
    # and storage holds only the good image's files
    assert generation.status == Generation.Status.PARTIAL
    assert list(generation.images.values_list("index", flat=True)) == [0]
    assert "Image 2" in generation.error_text and "damaged" in generation.error_text
    assert generation.billed_images == 2 and len(generation_calls(sim, generation)) == 1
    keys = sorted(item["Key"] for item in s3.list_objects_v2(
        Bucket=BUCKET, Prefix=f"generations/{generation.pk}/")["Contents"])
    assert keys == sorted(f"generations/{generation.pk}/0{suffix}" for suffix in (".png", ".grid.webp", ".card.webp"))


def test_an_answer_cut_mid_body_counts_as_a_maybe_billed_call(worker, alice, sim):
    # given an answer whose body is cut halfway
    generation = make_generation(alice, prompt="answer cut in the middle")
    sim.fault("cut_body", match=generation.prompt)

    # when the worker runs the job
    enqueue(generation.pk)
    finished(generation)

    # then the job is made on the next call, with the cut one counted as possibly billed
    assert generation.status == Generation.Status.SUCCEEDED
    assert (generation.unconfirmed_calls, len(generation_calls(sim, generation))) == (1, 2)
