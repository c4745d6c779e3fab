"""Every word in both languages: the catalog is complete and compiled, job cards say their messages in
the reader's language, and the language follows the browser or the switch."""

import gettext
import html
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from playwright.sync_api import expect

from gallery.client import ApiError, ErrorKind
from gallery.messages import CATALOG, Message
from gallery.models import Collection, Generation, Image, Quota, ShareLink
from tests.test_pipeline import make_generation

ROOT = Path(__file__).resolve().parent.parent
PO = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
# Left out of makemessages: nothing there is shown to a designer.
NOT_TRANSLATED = {".venv", "var", "bench", "apisim", "tests", ".git", ".ruff_cache", ".pytest_cache", "node_modules"}
CJK = re.compile(r"[\u4e00-\u9fff]")
# Words that stay as they are in Chinese text.
KEPT_WORDS = {"PNG"}


def po_entries(text: str) -> list[dict]:
    """The entries of a .po file: msgid, msgid_plural, msgstr (all forms) and flags."""
    entries = []
    for block in text.split("\n\n"):
        entry = {"flags": set(), "msgid": None, "msgid_plural": None, "msgstr": []}
        key = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] |= {flag.strip() for flag in line[2:].split(",")}
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                value = _unquote(line)
                if key == "msgstr":
                    entry["msgstr"][-1] += value
                elif key:
                    entry[key] += value
            else:
                name, _, rest = line.partition(" ")
                key = "msgstr" if name.startswith("msgstr") else name
                if key == "msgstr":
                    entry["msgstr"].append(_unquote(rest))
                else:
                    entry[key] = _unquote(rest)
        if entry["msgid"]:  # the header has an empty msgid
            entries.append(entry)
    return entries


def _unquote(text: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(.)", lambda match: escapes.get(match[1], match[1]), text.strip()[1:-1])


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> list[dict]:
    """makemessages run over a copy of the project, so the real locale files are never touched."""
    if not shutil.which("xgettext") or not shutil.which("msgfmt"):
        pytest.fail("GNU gettext (xgettext, msgfmt) is needed: apt-get install gettext")
    copy = tmp_path_factory.mktemp("messages") / "project"
    copy.mkdir()
    for path in ROOT.iterdir():
        if path.name in NOT_TRANSLATED:
            continue
        if path.is_dir():
            shutil.copytree(path, copy / path.name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        else:
            shutil.copy2(path, copy / path.name)
    subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--no-obsolete",
         *(f"--ignore={name}" for name in NOT_TRANSLATED)],
        cwd=copy, check=True, capture_output=True, env={"DJANGO_DEBUG": "true", "PATH": os.environ.get("PATH", "")})
    return po_entries((copy / PO.relative_to(ROOT)).read_text(encoding="utf-8"))


# The catalog


def test_every_string_in_the_templates_and_code_is_in_the_catalog_with_a_translation(extracted):
    missing = [entry["msgid"] for entry in extracted
               if "fuzzy" in entry["flags"] or not entry["msgstr"] or not all(entry["msgstr"])]

    assert missing == [], "untranslated or fuzzy in locale/zh_Hans (run makemessages and translate them)"


def test_the_compiled_catalog_is_the_committed_one(tmp_path):
    # given the .po compiled afresh, placeholders checked against the English
    fresh = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(fresh), str(PO)], check=True, capture_output=True)

    # then the .mo in the repository says the same (run compilemessages when this fails)
    with MO.open("rb") as committed, fresh.open("rb") as compiled:
        assert gettext.GNUTranslations(committed)._catalog == gettext.GNUTranslations(compiled)._catalog


# Messages on job cards


# A value for every parameter a message may name (a new one fails every test below until added here).
PARAMETERS = {"reason": Message("provider_busy"), "problem": Message("link_expired"), "detail": "size must be W*H",
              "code": "InvalidParameter", "model": "wan2.6-t2i", "host": "oss.example.com", "error": "ReadTimeout",
              "count": 3, "tries": 8, "kept": 2, "n": 4, "number": 3, "status": 500, "width": 9000, "height": 9000}


def sample(code: str) -> Message:
    return Message(code, **PARAMETERS)


def english_left(text: str, message: Message) -> list[str]:
    """Latin words in text that are neither a parameter's own value nor kept as they are."""
    for value in message.params.values():
        if isinstance(value, str):
            text = text.replace(value, "")
    return [word for word in re.findall(r"[A-Za-z]{2,}", text) if word not in KEPT_WORDS]


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_every_message_reads_in_chinese_with_no_english_left(code):
    message = sample(code)

    with translation.override("zh-hans"):
        chinese = str(message)

    assert CJK.search(chinese) and english_left(chinese, message) == []
    assert message.english and not CJK.search(message.english)


def test_the_studio_stores_only_codes_the_catalog_knows():
    # A sentence passed where a code belongs would be stored, and shown, in English.
    calls = re.compile(r"\b(?:Message|DownloadError)\(\s*(?:f?)\"([^\"]*)\"")
    unknown = {f"{path.relative_to(ROOT)}: {code}" for path in (ROOT / "gallery").rglob("*.py")
               for code in calls.findall(path.read_text(encoding="utf-8")) if code not in CATALOG}

    assert unknown == set()


def card(job: Generation, language: str) -> str:
    with translation.override(language):
        return render_to_string("gallery/generate.html#job", {"job": job})


def paragraph(page: str, css_class: str) -> str:
    found = re.search(rf'<p class="{css_class}"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", found[1])) if found else ""


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_a_failed_jobs_card_says_its_message_in_chinese(alice, code):
    # given a job that ended with this message
    message = sample(code)
    job = make_generation(alice)
    job.finish(Generation.Status.FAILED, "Code", [message])

    # then its card, read in Chinese, says it in Chinese, and in English in English
    chinese = paragraph(card(job, "zh-hans"), "job-error")
    assert CJK.search(chinese) and english_left(chinese, message) == []
    assert paragraph(card(job, "en"), "job-error") == message.english


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_a_running_jobs_card_says_what_it_is_doing_in_chinese(alice, code):
    message = sample(code)
    job = make_generation(alice, status=Generation.Status.RUNNING, **Generation.saying(message))

    chinese = paragraph(card(job, "zh-hans"), "job-detail")

    assert CJK.search(chinese) and english_left(chinese, message) == []


def test_reasons_of_a_partial_job_run_together_as_chinese_sentences(alice):
    # given a job that kept 2 of 4 images: one link expired, one call was refused
    job = make_generation(alice, n=4)
    expired = Message("image_problem", number=3, problem=Message("link_expired"))
    job.finish(Generation.Status.PARTIAL, "Partial",
               [Message("images_came_back", kept=2, n=4), Message("content_rejected"), expired])

    # then the card reads as Chinese prose, and as English sentences in English
    assert paragraph(card(job, "zh-hans"), "job-error") == (
        "4 张图片中只返回了 2 张。服务方的内容审核拒绝了这条提示词或生成的图片。请换个说法再试。"
        "第 3 张图片：图片链接在保存之前已过期。")
    assert paragraph(card(job, "en"), "job-error") == (
        "2 of 4 images came back. The provider's content check rejected this prompt or the image it made. "
        "Try rewording the prompt. Image 3: The image's link had expired before it could be saved.")


def test_a_provider_error_is_stored_as_a_code_not_a_sentence():
    error = ApiError(ErrorKind.PERMANENT, "DataInspectionFailed", "Input data may contain inappropriate content.")

    assert error.designer_message.to_json() == {"code": "content_rejected", "params": {}}


def test_a_message_survives_its_trip_through_json():
    message = Message("retries_used_up", reason=Message("request_refused", code="X", detail="bad"), tries=8)

    assert Message.from_json(message.to_json()) == message


def test_a_job_from_before_the_codes_still_shows_its_english(alice):
    job = make_generation(alice, status=Generation.Status.FAILED, error_message="An older sentence, kept.")

    assert paragraph(card(job, "zh-hans"), "job-error") == "An older sentence, kept."


def test_the_migration_turns_the_fixed_sentences_of_older_jobs_into_codes(alice):
    # given older jobs with the sentences the studio used to write
    migration = importlib.import_module("gallery.migrations.0005_message_codes")
    waiting = make_generation(alice, status_detail="The job queue can't be reached just now. Your job is saved and "
                                                   "starts when the queue is back.")
    failed = make_generation(alice, status=Generation.Status.FAILED,
                             error_message="The provider did not answer in time.")
    partial = make_generation(alice, status=Generation.Status.PARTIAL, error_message="1 of 2 images came back.")

    # when the migration runs
    migration.to_codes(apps, None)

    # then the fixed ones are codes (and read in Chinese), the one with numbers keeps its words
    for job in (waiting, failed, partial):
        job.refresh_from_db()
    assert waiting.waits_for_the_queue and waiting.status_detail == ""
    assert failed.reasons == [Message("no_answer_in_time")]
    with translation.override("zh-hans"):
        assert failed.error_text == "服务方未能及时响应。"
        assert partial.error_text == "1 of 2 images came back."


# Forms


def test_a_size_the_model_refuses_is_explained_in_chinese(client, alice):
    client.force_login(alice)
    response = client.post("/", {"prompt": "小猫", "model": "wan2.6-t2i", "size": "1024*1024", "n": "1"},
                           headers={"accept-language": "zh-CN"})

    assert response.status_code == 422
    assert "Wan 2.6 要求总像素数在" in response.content.decode()


# Every page, read in Chinese


# Latin words a Chinese page may show: names of things (the studio, its models, file formats, keys),
# the language's own name in the switch, the studio's time zone and the designer's name.
NAMES = {"Qwen", "Studio", "Wan", "Image", "Plus", "Max", "Flash", "Turbo", "preview", "wan", "wanx", "qwen", "image",
         "plus", "max", "flash", "turbo", "PNG", "ZIP", "WebP", "MB", "KB", "English", "Asia", "Shanghai",
         "alice", "YYYY", "MM", "Ctrl", "Shift", "Enter", "Esc", "Tab", "Wanx",
         "kittens"}  # the search box's example of an English word it finds


def visible_words(page: str) -> list[str]:
    """Latin words a reader sees on the page: its text and the titles, labels and placeholders."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    attributes = re.findall(r'\s(?:title|placeholder|aria-label|alt)="([^"]*)"', page)
    text = " ".join([re.sub(r"<[^>]+>", " ", page), *attributes])
    words = re.findall(r"[A-Za-z]{2,}(?:['’][A-Za-z]+)?", html.unescape(text))
    return sorted({word for word in words if word not in NAMES})


@pytest.fixture
def studio(alice):
    """Something on every page: a finished job with its image in a collection and shared, a failed job."""
    alice.is_staff = True
    alice.save()
    job = make_generation(alice, status=Generation.Status.SUCCEEDED, started_at=timezone.now(),
                          finished_at=timezone.now(), billed_images=1, prompt="一只小猫在草地上奔跑",
                          negative_prompt="模糊")
    image = Image.objects.create(generation=job, owner=alice, model=job.model, shape="landscape", index=0,
                                 file="generations/x/0.png", width=1024, height=768, bytes=2_345_678,
                                 sha256="0" * 64, seed=42, revised_prompt="一只可爱的小猫在绿色草地上奔跑")
    failed = make_generation(alice, prompt="被拒绝的提示词", negative_prompt="")
    failed.finish(Generation.Status.FAILED, "DataInspectionFailed", [Message("content_rejected")])
    make_generation(alice, prompt="排队中的任务", negative_prompt="")
    collection = Collection.objects.create(owner=alice, name="春季")
    collection.add([image.pk])
    link = ShareLink.create(alice, image, expiry=ShareLink.Expiry.WEEK, show_parameters=True, allow_downloads=True)
    return {"image": image, "collection": collection, "token": link.token}


def test_no_page_shows_english_to_a_chinese_reader(client, alice, studio):
    client.force_login(alice)
    pages = ["/", "/gallery/", f"/gallery/{studio['image'].pk}/", "/collections/",
             f"/collections/{studio['collection'].pk}/", "/shared/", "/team/", "/usage/",
             f"/s/{studio['token']}/", "/gallery/?q=小猫&model=没有", "/usage/?month=13", "/no-such-page/"]

    english = {}
    for path in pages:
        response = client.get(path, headers={"accept-language": "zh-CN"})
        assert response.status_code in {200, 400, 404}, path
        if words := visible_words(response.content.decode()):
            english[path] = words

    assert english == {}


def test_the_sign_in_page_reads_chinese(client):
    response = client.get(reverse("login"), headers={"accept-language": "zh-CN"})

    assert visible_words(response.content.decode()) == []


# The language follows the browser, or the switch


@pytest.mark.parametrize("accept", ["zh-CN,zh;q=0.9,en;q=0.8", "zh-Hans", "zh", "zh-Hans-CN", "zh-SG"])
def test_a_chinese_browser_gets_the_studio_in_chinese(client, alice, accept):
    client.force_login(alice)

    page = client.get("/", headers={"accept-language": accept}).content.decode()

    assert '<html lang="zh-hans">' in page and "提示词" in page and "生成" in page


def test_an_english_browser_gets_english(client, alice):
    client.force_login(alice)

    page = client.get("/", headers={"accept-language": "en-GB,en;q=0.9"}).content.decode()

    assert '<html lang="en">' in page and "Prompt" in page and "提示词" not in page


def test_the_language_switch_works_without_javascript(client, alice):
    # given an English browser
    client.force_login(alice)
    english = client.get("/", headers={"accept-language": "en"}).content.decode()
    assert re.search(r"<noscript><button[^>]*>Switch language</button></noscript>", english)

    # when the form is sent as a plain form would be
    response = client.post(reverse("set_language"), {"language": "zh-hans", "next": "/"},
                           headers={"accept-language": "en"})

    # then the studio is Chinese from then on, whatever the browser asks for
    assert response.status_code == 302 and response["Location"] == "/"
    chinese = client.get("/", headers={"accept-language": "en"}).content.decode()
    assert '<html lang="zh-hans">' in chinese and "切换语言" in chinese


def test_the_job_card_time_and_quota_follow_the_language(client, alice, settings):
    # given a quota past a thousand and a job made on 5 September
    settings.QWEN_DAILY_IMAGE_QUOTA = 10_000
    Quota.objects.create(user=alice, daily_images=12_000)
    made = timezone.make_aware(timezone.datetime(2026, 9, 5, 14, 3))
    make_generation(alice, status=Generation.Status.FAILED, created=made)
    client.force_login(alice)

    english = client.get("/", headers={"accept-language": "en"}).content.decode()
    chinese = client.get("/", headers={"accept-language": "zh-CN"}).content.decode()

    assert "0 of 12,000 images today" in english and ">Sep 5, 14:03</time>" in english
    assert ">9月5日 14:03</time>" in chinese and "今日图片：0 / 12000 张" in chinese


def test_the_detail_page_dates_the_image_as_the_reader_writes_dates(client, alice):
    job = make_generation(alice, status=Generation.Status.SUCCEEDED,
                          created=timezone.make_aware(timezone.datetime(2026, 9, 5, 14, 3)))
    image = Image.objects.create(generation=job, owner=alice, model=job.model, shape="landscape", index=0,
                                 file="generations/x/0.png", width=1024, height=768, bytes=2_345_678,
                                 sha256="0" * 64, seed=42)
    client.force_login(alice)

    chinese = client.get(reverse("gallery-detail", args=[image.pk]), headers={"accept-language": "zh-CN"})

    assert "2026年9月5日 14:03" in chinese.content.decode()


def test_a_chinese_browser_sees_a_rejected_job_fail_in_chinese(worker, browser, live_server, alice, sim):
    # given a browser that asks for Chinese, signed in
    context = browser.new_context(locale="zh-CN", base_url=live_server.url)
    page = context.new_page()
    try:
        page.goto("/accounts/login/")
        page.locator("input[name=username]").fill("alice")
        page.locator("input[name=password]").fill("correct horse battery")
        page.locator("form button[type=submit]").last.click()
        page.wait_for_url("**/")

        # when it asks for an image the provider's content check refuses
        sim.fault("moderation", match="拒绝的提示词")
        page.get_by_label("提示词", exact=True).fill("一段会被拒绝的提示词")
        page.get_by_role("button", name="生成").click()

        # then the card fails, saying why in Chinese
        job = page.locator("article.job").first
        expect(job).to_have_attribute("data-status", "failed", timeout=30000)
        expect(job.locator(".badge")).to_have_text("失败")
        expect(job.locator(".job-error")).to_have_text("服务方的内容审核拒绝了这条提示词或生成的图片。请换个说法再试。")
    finally:
        context.close()
