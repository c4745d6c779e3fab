"""The Content Security Policy: no inline code in templates or pages, and nothing the browser has to block."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from gallery.browse import PAGE_SIZE
from gallery.models import Image
from gallery.tasks import enqueue
from tests.test_browser import fill_form, shoot
from tests.test_gallery import make_image
from tests.test_pipeline import finished, make_generation

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
FORBIDDEN = {
    "event handler attribute": re.compile(r"\son[a-z]+\s*=(?!=)", re.IGNORECASE),
    "javascript: URL": re.compile(r"javascript:", re.IGNORECASE),
    "style attribute": re.compile(r"\sstyle\s*=(?!=)", re.IGNORECASE),
    "<style> element": re.compile(r"<style\b", re.IGNORECASE),
    # htmx evaluates these as code, which the policy (and htmx-config's allowEval) forbids.
    "hx-on attribute": re.compile(r"\s(?:data-)?hx-on\b", re.IGNORECASE),
    "js: value": re.compile(r"\s(?:data-)?hx-va(?:ls|rs)\s*=\s*[\"']\s*js:", re.IGNORECASE),
}
# Reports every violation to Python; an init script runs before the page's own and the policy doesn't apply to it.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => window.reportCspViolation(
  `${event.effectiveDirective} blocked ${event.blockedURI || "inline"} in ${event.sourceFile}:${event.lineNumber}`
  + ` ${event.sample}`));
"""


def inline_code(html: str) -> list[str]:
    """What in this HTML the policy would block: inline scripts, handlers, javascript: URLs, inline styles."""
    found = [f"inline script: {match.group(0)[:80]!r}" for match in SCRIPT.finditer(html)
             if "src=" not in match.group(1) or match.group(2).strip()]
    for what, pattern in FORBIDDEN.items():
        found += [f"{what}: {html[max(0, m.start() - 30):m.end() + 30]!r}" for m in pattern.finditer(html)]
    return found


def policy(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {name: sources for name, *sources in (part.split() for part in header.split(";") if part.strip())}


def wait_in_page(page, condition, timeout: float = 10):
    """Poll condition() while Playwright runs, since it delivers page callbacks only inside its own calls."""
    for _ in range(int(timeout * 10)):
        if result := condition():
            return result
        page.wait_for_timeout(100)
    raise AssertionError(f"gave up after {timeout}s waiting for the page")


def assert_within_policy(page, csp) -> None:
    page.evaluate("() => 0")  # a round trip delivers the reports the page sent before it
    assert csp.violations == []
    assert csp.errors == []


def loaded(images) -> bool:
    return all(images.evaluate_all("images => images.map(i => i.complete && i.naturalWidth > 0)"))


def ratio(locator) -> float:
    box = locator.bounding_box()
    return box["width"] / box["height"]


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda path: path.relative_to(TEMPLATES))
def test_no_template_holds_inline_code_or_styles(template):
    assert inline_code(template.read_text()) == []


@pytest.fixture
def urls(client, alice):
    client.force_login(alice)
    image = make_image(alice, "a lighthouse at dusk, watercolor")
    return {"generate": "/", "gallery": "/gallery/", "detail": f"/gallery/{image.pk}/",
            "login": "/accounts/login/", "job": f"/jobs/{image.generation_id}/"}


@pytest.mark.parametrize("name", ["generate", "gallery", "detail", "login", "job"])
def test_every_page_sends_a_policy_without_unsafe_inline(client, urls, name):
    response = client.get(urls[name])
    assert response.status_code == 200
    directives = policy(response)
    for directive in ("script-src", "style-src"):
        sources = directives.get(directive, directives["default-src"])
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources, (directive, sources)


@pytest.mark.parametrize("name", ["generate", "gallery", "detail", "login", "job"])
def test_no_rendered_page_holds_inline_code_or_styles(client, urls, name):
    response = client.get(urls[name])
    assert inline_code(response.content.decode()) == []


def watch(page) -> SimpleNamespace:
    """CSP violations, console errors and uncaught exceptions of the page, across navigations."""
    seen = SimpleNamespace(violations=[], errors=[])
    page.expose_function("reportCspViolation", lambda violation: seen.violations.append(violation))
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and seen.errors.append(message.text))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    return seen


@pytest.fixture
def csp(page):
    """watch(page) as a fixture; ask for it before signed_in_page, so that it watches the sign-in too."""
    return watch(page)


def test_the_watch_sees_a_blocked_inline_script(csp, page):
    page.goto("/accounts/login/")
    page.evaluate("() => document.head.append(Object.assign(document.createElement('script'), {text: '1'}))")
    wait_in_page(page, lambda: csp.violations)
    assert csp.violations[0].startswith("script-src-elem blocked inline")


def test_generating_polls_the_job_to_its_end_and_switches_language_within_the_policy(worker, csp, signed_in_page,
                                                                                     sim):
    page = signed_in_page

    # the prompt counter counts as the designer types
    page.get_by_label("Prompt", exact=True).fill("一只小猫")
    expect(page.locator('[data-counter-for="id_prompt"]')).to_have_text(re.compile(r"^4 / \d+$"))

    # placeholders take the job's shape while it runs, then thumbnails replace them by polling
    sim.fault("latency", seconds=2, match="lighthouse")
    # 1280*960 is not a size of the default model, so fill_form waits until the size field has followed
    fill_form(page, "a lighthouse at dusk, watercolor", "wan2.2-t2i-flash", "1280*960", n="2")
    page.get_by_role("button", name="Generate").click()
    card = page.locator("article.job").first
    expect(card.locator(".placeholder")).to_have_count(2)
    assert ratio(card.locator(".placeholder").first) == pytest.approx(4 / 3, rel=0.02)
    shoot(page, "csp-generate-running")
    expect(card).to_have_attribute("data-status", "succeeded", timeout=60000)
    thumbs = card.locator("a.thumb img")
    expect(thumbs).to_have_count(2)
    wait_in_page(page, lambda: loaded(thumbs))
    assert ratio(card.locator("a.thumb").first) == pytest.approx(4 / 3, rel=0.02)
    shoot(page, "csp-generate-1360")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "csp-generate-390")

    # the language menu submits itself
    page.get_by_label("Language").select_option("zh-hans")
    expect(page.get_by_role("button", name="生成")).to_be_visible()

    assert_within_policy(page, csp)


def test_the_gallery_scrolls_filters_and_favourites_within_the_policy(worker, csp, signed_in_page, alice, sim):
    for i in range(PAGE_SIZE):
        make_image(alice, f"an older sketch number {i}", minutes_ago=60 + i)
    generation = make_generation(alice, prompt="青花瓷茶杯，柔和光线", n=2)
    enqueue(generation.pk)
    finished(generation)
    page = signed_in_page
    page.goto("/gallery/")
    tiles = page.locator("figure.tile")
    expect(tiles).to_have_count(PAGE_SIZE)
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    shoot(page, "csp-gallery-1360")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "csp-gallery-390")
    page.set_viewport_size({"width": 1360, "height": 900})

    # a tile's favourite toggles in place
    newest = tiles.first
    newest.hover()
    newest.get_by_role("button", name="Favourite").click()
    expect(newest.locator("button.is-on")).to_have_count(1)

    # the next page loads at the end of the grid
    page.locator("a.more").scroll_into_view_if_needed()
    expect(tiles).to_have_count(PAGE_SIZE + 2)

    # a filter applies as soon as it changes
    page.get_by_label("Favourites", exact=True).check()
    page.wait_for_url("**favourites=on**")
    expect(tiles).to_have_count(1)

    assert_within_policy(page, csp)


def test_the_detail_page_copies_and_confirms_a_delete_within_the_policy(worker, csp, signed_in_page, alice, sim):
    generation = make_generation(alice, prompt="一只小猫在草地上奔跑，电影感", n=2)
    enqueue(generation.pk)
    finished(generation)
    image = generation.images.get(index=0)
    page = signed_in_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"/gallery/{image.pk}/")
    wait_in_page(page, lambda: loaded(page.locator("main img")))
    shoot(page, "csp-detail-1360")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "csp-detail-390")
    page.set_viewport_size({"width": 1360, "height": 900})

    # Copy prompt puts the prompt on the clipboard
    page.get_by_role("button", name="Copy prompt").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("() => navigator.clipboard.readText()") == generation.prompt

    # Delete asks first; no keeps the image, yes deletes it
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Delete").click()
    wait_in_page(page, lambda: questions)
    assert Image.objects.filter(pk=image.pk).exists()
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("The image and its files were deleted.")).to_be_visible()
    assert questions == ["Delete this image and its files for everyone?"] * 2
    assert not Image.objects.filter(pk=image.pk).exists()

    assert_within_policy(page, csp)
