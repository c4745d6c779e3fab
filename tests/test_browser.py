"""A designer's path in Chromium: sign in, generate, watch the job card, open the original."""

import hashlib
import io
from pathlib import Path

import PIL.Image
from playwright.sync_api import expect

from gallery.models import Generation
from tests.conftest import BUCKET

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def fill_form(page, prompt: str, model: str, size: str, n: str = "1", seed: str = "", negative: str = ""):
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Negative prompt", exact=True).fill(negative)
    # Choosing a model always reloads the size field; wait for it, or it may reset the size chosen next.
    with page.expect_response("**/generate/sizes/**"):
        page.get_by_label("Model", exact=True).select_option(model)
    expect(page.locator(f'#id_size option[value="{size}"]')).to_have_count(1)
    page.get_by_label("Size", exact=True).select_option(size)
    page.get_by_label("Number of images", exact=True).fill(n)
    page.get_by_label("Seed", exact=True).fill(seed)


def test_a_generation_from_the_browser_ends_in_s3_with_its_rows(worker, signed_in_page, alice, s3, sim):
    page = signed_in_page
    shoot(page, "generate-empty")

    # when a designer fills every field and presses Generate
    fill_form(page, "一只小猫在草地上奔跑，电影感，自然光影", "wan2.6-t2i", "1600*1200", n="2", seed="1234",
              negative="blurry, low quality")
    page.get_by_label("Watermark").check()
    page.get_by_role("button", name="Generate").click()

    # then a job card appears at once, and its thumbnails replace the placeholders without a reload
    card = page.locator("article.job").first
    expect(card).to_be_visible(timeout=5000)
    expect(card.locator(".job-prompt")).to_have_text("一只小猫在草地上奔跑，电影感，自然光影")
    expect(card).to_have_attribute("data-status", "succeeded", timeout=60000)
    thumbs = card.locator("a.thumb img")
    expect(thumbs).to_have_count(2)
    # A function, not a bare expression: CSP forbids re-evaluating a string on each poll.
    page.wait_for_function(
        "() => [...document.querySelectorAll('a.thumb img')].every(i => i.complete && i.naturalWidth > 0)")
    assert thumbs.first.get_attribute("loading") == "lazy"
    assert thumbs.first.get_attribute("width") == "512" and thumbs.first.get_attribute("height") == "384"
    shoot(page, "generate-done")

    # and each thumbnail opens the original
    with page.context.expect_page() as opened:
        card.locator("a.thumb").first.click()
    original = opened.value
    original.wait_for_load_state()
    body = original.request.get(original.url).body()
    assert PIL.Image.open(io.BytesIO(body)).size == (1600, 1200)

    # and the rows hold everything the designer asked for
    generation = Generation.objects.get()
    assert (generation.owner, generation.model) == (alice, "wan2.6-t2i")
    assert (generation.width, generation.height) == (1600, 1200)
    assert (generation.prompt, generation.negative_prompt, generation.seed, generation.n) == (
        "一只小猫在草地上奔跑，电影感，自然光影", "blurry, low quality", 1234, 2)
    assert generation.watermark is True and generation.prompt_extend is True
    for image in generation.images.all():
        stored = s3.get_object(Bucket=BUCKET, Key=image.file)["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == image.sha256
        assert image.revised_prompt
        assert image.seed == 1234 + image.index
    assert hashlib.sha256(body).hexdigest() in {image.sha256 for image in generation.images.all()}


def test_size_choices_follow_the_chosen_model(signed_in_page):
    page = signed_in_page
    page.get_by_label("Model", exact=True).select_option("qwen-image-plus")
    expect(page.locator("#id_size option").first).to_have_attribute("value", "1328*1328")
    page.get_by_label("Model", exact=True).select_option("wan2.6-t2i")
    expect(page.locator("#id_size option").first).to_have_attribute("value", "1280*1280")
    assert page.locator('#id_size option[value="1024*1024"]').count() == 0


def test_custom_size_fields_appear_only_for_custom(signed_in_page):
    page = signed_in_page
    width = page.get_by_label("Width", exact=True)
    expect(width).to_be_hidden()
    page.get_by_label("Size", exact=True).select_option("custom")
    expect(width).to_be_visible()


def test_invalid_input_shows_the_message_in_the_form_and_queues_nothing(signed_in_page):
    page = signed_in_page
    fill_form(page, "猫" * 501, "wan2.2-t2i-flash", "1024*1024", n="5", seed="-3")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("The prompt is 501 characters; Wan 2.2 Flash takes at most 500.")).to_be_visible()
    expect(page.get_by_text("Ask for 1 to 4 images.")).to_be_visible()
    expect(page.get_by_text("A seed is a whole number from 0 to 2147483647.")).to_be_visible()
    expect(page.locator(".counter.over")).to_have_text("501 / 500")
    shoot(page, "generate-invalid")
    assert not Generation.objects.exists()
    assert page.locator("article.job").count() == 0


def test_a_failed_job_says_why_in_the_card(worker, signed_in_page, sim):
    page = signed_in_page
    sim.fault("moderation", match="forbidden words")
    fill_form(page, "forbidden words in a prompt", "wan2.2-t2i-flash", "1024*1024")
    page.get_by_role("button", name="Generate").click()
    card = page.locator("article.job").first
    expect(card).to_have_attribute("data-status", "failed", timeout=30000)
    expect(card.locator(".job-error")).to_contain_text("content check rejected this prompt")
    shoot(page, "generate-failed")


def test_the_language_switch_turns_the_studio_chinese(signed_in_page):
    page = signed_in_page
    page.get_by_label("Language").select_option("zh-hans")
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    expect(page.get_by_label("提示词", exact=True)).to_be_visible()
    shoot(page, "generate-zh")
