"""Daily image quotas: reserved when a job is queued, settled to what the provider billed when it ends."""

import re
import threading
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from gallery import quotas
from gallery.models import Generation, Quota
from gallery.tasks import enqueue
from tests.conftest import wait_for
from tests.test_generate import VALID
from tests.test_pipeline import finished, generation_calls, make_generation


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


def form_error(response) -> str:
    return " ".join(re.findall(r'class="form-error" role="alert">([^<]*)<', response.content.decode()))


def test_the_generate_page_shows_n_of_m_images_today(client, alice, settings):
    # given a studio default of 20 and three images already made today
    settings.QWEN_DAILY_IMAGE_QUOTA = 20
    make_generation(alice, n=3, status="succeeded", billed_images=3)

    # then the page says so
    assert "3 of 20 images today" in client.get("/").content.decode()


def test_a_request_past_the_quota_is_refused_in_the_form_and_nothing_is_queued(
        client, alice, settings, django_capture_on_commit_callbacks):
    # given a designer with 2 of 5 images left
    settings.QWEN_DAILY_IMAGE_QUOTA = 5
    make_generation(alice, n=3, status="succeeded", billed_images=3)

    # when they ask for 4
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/", VALID | {"n": "4"}, HTTP_HX_REQUEST="true")

    # then the form says why and when it resets, and nothing is queued or sent
    message = form_error(response)
    assert "past your quota" in message and "3 of your 5 images" in message and "resets at midnight" in message
    assert Generation.objects.count() == 1
    assert callbacks == []
    # and a request that fits still goes through
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post("/", VALID | {"n": "2"}, HTTP_HX_REQUEST="true")
    assert Generation.objects.count() == 2 and len(callbacks) == 1


def test_a_designer_at_quota_is_refused_without_htmx_too(client, alice, settings):
    settings.QWEN_DAILY_IMAGE_QUOTA = 1
    make_generation(alice, n=1, status="succeeded", billed_images=1)

    response = client.post("/", VALID)

    assert response.status_code == 422
    assert "past your quota" in form_error(response)
    assert Generation.objects.count() == 1


def test_staffs_own_quota_for_a_designer_wins_over_the_default(client, alice, bob, settings):
    settings.QWEN_DAILY_IMAGE_QUOTA = 1
    Quota.objects.create(user=alice, daily_images=8)
    assert quotas.daily_limit(alice) == 8 and quotas.daily_limit(bob) == 1
    assert "0 of 8 images today" in client.get("/").content.decode()


def test_a_queued_job_holds_its_images_and_canceling_gives_them_back(client, alice):
    # given a queued job for four images
    generation = make_generation(alice, n=4)
    assert quotas.used_today(alice) == 4

    # when it is canceled before any call
    client.post(f"/jobs/{generation.pk}/cancel/")

    # then none are counted
    assert quotas.used_today(alice) == 0


def test_canceling_between_calls_keeps_and_bills_the_images_that_came(worker, alice, sim, s3):
    # given a three-image job of a one-image-per-call model limited to two calls a minute, whose
    # first two calls are done: the third waits in the queue for the minute to pass
    generation = make_generation(alice, model="qwen-image-max", width=1328, height=1328, n=3,
                                 prompt="quota: canceled between calls")
    enqueue(generation.pk)
    wait_for(lambda: Generation.objects.get(pk=generation.pk).images.count() == 2, timeout=30)
    wait_for(lambda: Generation.objects.get(pk=generation.pk).status == Generation.Status.QUEUED, timeout=10)
    assert quotas.used_today(alice) == 3

    # when its maker cancels it
    generation.refresh_from_db()
    assert generation.cancel()

    # then the images that came stay, they alone are billed, and no other call is made
    generation.refresh_from_db()
    assert generation.status == Generation.Status.CANCELED
    assert generation.images.count() == 2 == generation.billed_images
    assert quotas.used_today(alice) == 2
    assert len(generation_calls(sim, generation)) == 2


def test_yesterdays_images_do_not_count_today(alice):
    yesterday = quotas.day_start() - timedelta(minutes=1)
    make_generation(alice, n=4, status="succeeded", billed_images=4, created=yesterday)
    make_generation(alice, n=1, status="succeeded", billed_images=1)

    assert quotas.used_today(alice) == 1


def test_the_day_turns_at_midnight_in_the_studios_time_zone(settings):
    # 16:30 UTC is 00:30 the next day in Shanghai
    moment = datetime(2026, 11, 29, 16, 30, tzinfo=timezone.UTC)
    with timezone.override("Asia/Shanghai"):
        assert quotas.day_start(moment).isoformat() == "2026-11-30T00:00:00+08:00"
        assert quotas.next_reset(moment).isoformat() == "2026-12-01T00:00:00+08:00"


def test_a_partial_job_gives_back_the_images_that_never_came(worker, alice, sim, s3):
    # given a job for four images whose answer carries only two
    generation = make_generation(alice, n=4, prompt="quota: a partial answer")
    sim.fault("fewer_images", count=2, match=generation.prompt)
    assert quotas.used_today(alice) == 4

    # when the worker runs it
    enqueue(generation.pk)
    finished(generation)

    # then it ends partial, billed for two, and the quota counts two
    assert generation.status == Generation.Status.PARTIAL
    assert generation.billed_images == 2 == generation.images.count()
    assert quotas.used_today(alice) == 2


def test_a_failed_job_with_no_answer_bills_nothing(worker, alice, sim):
    generation = make_generation(alice, n=2, prompt="quota: moderation refusal")
    sim.fault("moderation", match=generation.prompt)

    enqueue(generation.pk)
    finished(generation)

    assert generation.status == Generation.Status.FAILED
    assert generation.billed_images == 0 and quotas.used_today(alice) == 0
    assert len(generation_calls(sim, generation)) == 1


@pytest.mark.django_db(transaction=True)
def test_two_submits_at_once_cannot_both_take_the_last_images(alice, settings):
    # given four images left and two browsers asking for four each at the same moment
    settings.QWEN_DAILY_IMAGE_QUOTA = 4
    start = threading.Barrier(2)
    statuses = []

    def submit():
        client = Client()
        client.force_login(alice)
        start.wait()
        try:
            statuses.append(client.post("/", VALID | {"n": "4"}, HTTP_HX_REQUEST="true").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # then exactly one job was queued
    assert sorted(statuses) == [200, 200]  # htmx forms answer 200, with or without an error
    assert Generation.objects.filter(owner=alice).count() == 1
    assert quotas.used_today(alice) == 4


def test_a_designer_sees_the_quota_and_the_refusal_in_the_browser(signed_in_page, alice, settings):
    from playwright.sync_api import expect

    from tests.test_browser import shoot

    # given a designer with one image left of five
    settings.QWEN_DAILY_IMAGE_QUOTA = 5
    make_generation(alice, n=4, status="succeeded", billed_images=4)
    page = signed_in_page
    page.goto("/")
    expect(page.get_by_text("4 of 5 images today")).to_be_visible()

    # when they ask for two
    page.get_by_label("Prompt", exact=True).fill("两只小猫 in the snow")
    page.get_by_label("Number of images", exact=True).fill("2")
    page.get_by_role("button", name="Generate").click()

    # then the form says why, and no job card appears
    expect(page.get_by_role("alert")).to_contain_text("past your quota")
    assert Generation.objects.count() == 1
    shoot(page, "quota-refused")
