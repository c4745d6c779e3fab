"""The generate page: sign-in, the form's rules, and what a submit queues."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from kombu.exceptions import OperationalError

from gallery.models import Generation
from gallery.tasks import run_generation
from tests.test_pipeline import finished

VALID = {"prompt": "一只小猫在草地上奔跑", "negative_prompt": "", "model": "wan2.2-t2i-flash",
         "size": "1024*1024", "n": "1", "seed": "", "prompt_extend": "on"}


def errors(response) -> list[str]:
    return re.findall(r'class="error" role="alert">([^<]*)<', response.content.decode())


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


def test_the_page_needs_sign_in(db):
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_form_has_every_labelled_field_and_a_generate_button(client):
    html = client.get("/").content.decode()
    for label in ["Prompt", "Negative prompt", "Model", "Size", "Number of images", "Seed", "Prompt extend",
                  "Watermark"]:
        assert re.search(rf"<label[^>]*>\s*(<input[^>]*>\s*<span>)?{label}<", html), label
    assert ">Generate</button>" in html


def test_size_choices_follow_the_model(client):
    html = client.get("/generate/sizes/", {"model": "wan2.6-t2i"}).content.decode()
    sizes = re.findall(r'<option value="(\d+\*\d+)"', html)
    assert "1280*1280" in sizes and "1024*1024" not in sizes
    html = client.get("/generate/sizes/", {"model": "qwen-image-plus"}).content.decode()
    assert re.findall(r'<option value="(\d+\*\d+)"', html)[0] == "1328*1328"


def test_a_valid_submit_queues_one_generation_with_a_chosen_seed(client, alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/", VALID, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    generation = Generation.objects.get()
    assert generation.owner == alice
    assert (generation.model, generation.width, generation.height, generation.n) == ("wan2.2-t2i-flash", 1024, 1024, 1)
    assert 0 <= generation.seed <= 2147483647
    assert generation.prompt_extend is True and generation.watermark is False
    assert len(callbacks) == 1
    assert f'id="job-{generation.pk}"' in response.content.decode()
    assert 'hx-swap-oob="afterbegin:#jobs"' in response.content.decode()


def test_a_given_seed_and_custom_size_are_kept(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        client.post("/", VALID | {"seed": "0", "size": "custom", "width": "600", "height": "1400"})
    generation = Generation.objects.get()
    assert (generation.seed, generation.width, generation.height) == (0, 600, 1400)


@pytest.mark.parametrize(("changes", "message"), [
    ({"prompt": ""}, "Write a prompt"),
    ({"prompt": "   "}, "Write a prompt"),
    ({"prompt": "猫" * 501}, "The prompt is 501 characters; Wan 2.2 Flash takes at most 500."),
    ({"model": "wan2.6-t2i", "size": "1280*1280", "prompt": "x" * 2101}, "takes at most 2100"),
    ({"negative_prompt": "x" * 501}, "the limit is 500"),
    ({"size": "1920*1080"}, "each side between 512 and 1440"),
    ({"model": "wan2.6-t2i", "size": "1024*1024"}, "pixels in all"),
    ({"model": "wan2.6-t2i", "size": "custom", "width": "2900", "height": "700"}, "1:4 to 4:1"),
    ({"size": "custom", "width": "", "height": ""}, "both a width and a height"),
    ({"size": "big"}, "Choose a size"),
    ({"n": "0"}, "1 to 4 images"),
    ({"n": "5"}, "1 to 4 images"),
    ({"n": "two"}, "1 to 4 images"),
    ({"seed": "-1"}, "0 to 2147483647"),
    ({"seed": "2147483648"}, "0 to 2147483647"),
    ({"seed": "1.5"}, "0 to 2147483647"),
    ({"model": "dall-e-3"}, "Select a valid choice"),
])
def test_invalid_input_is_refused_with_a_message_and_nothing_queued(client, changes, message,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/", VALID | changes, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert any(message in error for error in errors(response)), errors(response)
    assert not Generation.objects.exists()
    assert callbacks == []


def test_invalid_input_without_htmx_gets_the_whole_page_back(client):
    response = client.post("/", VALID | {"n": "9"})
    assert response.status_code == 422
    assert "<html" in response.content.decode()
    assert not Generation.objects.exists()


def test_job_status_stops_polling_once_finished(client, alice):
    generation = Generation.objects.create(owner=alice, prompt="done", model="wan2.2-t2i-flash", width=1024,
                                           height=1024, seed=1, status="succeeded")
    assert client.get(f"/jobs/{generation.pk}/", HTTP_HX_REQUEST="true").status_code == 286
    Generation.objects.filter(pk=generation.pk).update(status="running")
    response = client.get(f"/jobs/{generation.pk}/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'hx-trigger="every 1s"' in response.content.decode()


def test_a_queued_job_can_be_canceled_by_its_owner_only(client, alice, bob):
    generation = Generation.objects.create(owner=bob, prompt="bob's", model="wan2.2-t2i-flash", width=1024,
                                           height=1024, seed=1)
    assert client.post(f"/jobs/{generation.pk}/cancel/").status_code == 404
    client.force_login(bob)
    client.post(f"/jobs/{generation.pk}/cancel/")
    generation.refresh_from_db()
    assert generation.status == Generation.Status.CANCELED


def test_a_broker_outage_keeps_the_job_for_the_sweeper(transactional_db, client, monkeypatch):
    # given a broker that refuses messages, as kombu reports it
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    monkeypatch.setattr(run_generation, "apply_async", broker_down)

    # when a designer submits (committed at once, as in production)
    response = client.post("/", VALID, HTTP_HX_REQUEST="true")

    # then they still get the job card, saying plainly that the queue is down, and the job waits in the
    # database for the sweeper
    assert response.status_code == 200
    generation = Generation.objects.get()
    assert f'id="job-{generation.pk}"' in response.content.decode()
    assert "The job queue can&#x27;t be reached just now" in response.content.decode()
    assert Generation.objects.waiting_quietly() == {}  # not yet: the sweeper waits QWEN_REQUEUE_AFTER
    assert generation.status == Generation.Status.QUEUED and generation.waits_for_the_queue


def test_the_page_speaks_simplified_chinese_when_asked(client):
    html = client.get("/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    for label in ["提示词", "反向提示词", "模型", "尺寸", "图片数量", "种子", "智能改写", "水印"]:
        assert f">{label}<" in html, label
    assert ">生成</button>" in html


def test_a_form_error_speaks_the_designers_language(client):
    response = client.post("/", VALID | {"n": "7"}, HTTP_HX_REQUEST="true", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "请选择 1 到 4 张图片。" in errors(response)


def test_a_failed_job_can_be_tried_again_with_its_settings(client, alice):
    generation = Generation.objects.create(
        owner=alice, prompt="被拒绝的提示词", negative_prompt="文字", model="wan2.6-t2i", width=1920, height=1080,
        n=3, seed=9, status="failed", error_message="The provider's content check rejected this prompt.")
    page = client.get("/").content.decode()
    assert f'href="/?again={generation.pk}"' in page

    html = client.get("/", {"again": str(generation.pk)}).content.decode()
    assert re.search(r'id="id_prompt">\s*被拒绝的提示词</textarea>', html)
    assert '<option value="wan2.6-t2i" selected>' in html
    assert '<option value="1920*1080" selected>' in html
    assert re.search(r'name="n"[^>]*value="3"', html)
    assert not re.search(r'<input[^>]*name="seed"[^>]*value=', html)


def test_a_malformed_reuse_link_gets_400_and_an_empty_form(client):
    for params in [{"again": "not-a-uuid"}, {"reuse": "²"}, {"reuse": "9" * 30}, {"reuse": "1", "with": "all"}]:
        response = client.get("/", params)
        assert response.status_code == 400, params
        assert "That reuse link is broken" in response.content.decode()
        assert re.search(r'id="id_prompt">\s*</textarea>', response.content.decode())


def test_a_reuse_link_to_nothing_is_404(client):
    assert client.get("/", {"reuse": "999999"}).status_code == 404
    assert client.get("/", {"again": "2b4c06a4-7a8f-4c1e-9d55-0d6b0e0d1c11"}).status_code == 404


def test_control_and_bidi_characters_are_stripped_from_prompts(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        client.post("/", VALID | {"prompt": "a \u202ecat\u202c\x00 in\x07 \u2066grass\u2069\n夜景",
                                  "negative_prompt": "\u200fblur\x1b[31m"}, HTTP_HX_REQUEST="true")
    generation = Generation.objects.get()
    assert generation.prompt == "a cat in grass\n夜景"
    assert generation.negative_prompt == "blur[31m"


def test_once_the_queue_is_back_the_sweeper_sends_the_job_and_its_card_stops_saying_it_is_down(
        worker, alice, sim, monkeypatch, settings):
    # given a job submitted while the broker was down, quiet for longer than the sweeper waits
    from gallery.tasks import sweep
    client = Client()
    client.force_login(alice)
    send = run_generation.apply_async

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    monkeypatch.setattr(run_generation, "apply_async", broker_down)
    client.post("/", VALID | {"prompt": "submitted while the queue was down"})
    generation = Generation.objects.get()
    assert generation.waits_for_the_queue
    Generation.objects.filter(pk=generation.pk).update(
        updated=timezone.now() - timedelta(seconds=settings.QWEN_REQUEUE_AFTER + 1))

    # when the broker is back and the sweeper runs
    monkeypatch.setattr(run_generation, "apply_async", send)
    assert sweep() == 1

    # then the card no longer says the queue is down, and the job is made
    assert "queue can" not in client.get(f"/jobs/{generation.pk}/").content.decode()
    finished(generation)
    assert generation.status == Generation.Status.SUCCEEDED
