"""The keyboard in Chromium: Ctrl/⌘+Enter generates, ← → step through images in the gallery's order, the arrow
keys move between tiles, Escape closes what is open, a skip link, and a focus ring on everything in both themes."""

import re

import pytest
from playwright.sync_api import expect

from gallery.models import Collection, Generation, Image
from tests.test_gallery import make_image

SHAPES = [(1024, 1024), (1280, 720), (720, 1280), (1440, 1080), (1080, 1440), (1328, 1328), (1440, 810),
          (768, 1344), (1024, 1024), (1280, 960), (960, 1280), (1440, 720)]
# Which element shows the ring: a tile wears its link's, a tile's checkbox draws it on the round mark beside it.
RING = """
() => {
  const focused = document.activeElement;
  const again = focused.seenByTheTest === true;
  focused.seenByTheTest = true;
  const ringed = focused.matches(".tile-link") ? focused.closest(".tile")
    : focused.matches(".tile-select") ? focused.nextElementSibling : focused;
  const style = getComputedStyle(ringed);
  const name = focused.tagName + "." + focused.className + " " + (focused.textContent || "").trim().slice(0, 20);
  return {again, name,
          style: style.outlineStyle, width: parseFloat(style.outlineWidth), colour: style.outlineColor,
          page: getComputedStyle(document.body).backgroundColor};
}
"""


def focused_image(page) -> int:
    return int(page.evaluate("() => document.activeElement.closest('.tile').dataset.image"))


def rgb(css: str) -> list[float]:
    return [float(part) for part in re.findall(r"[\d.]+", css)[:3]]


def contrast(first: str, second: str) -> float:
    def luminance(colour):
        linear = [v / 255 / 12.92 if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4 for v in rgb(colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    high, low = sorted([luminance(first), luminance(second)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_ctrl_enter_generates_from_any_field_of_the_form(worker, sim, signed_in_page):
    # (with the worker and the API stand-in: the jobs run, and end before the database is emptied after the
    # test, which a worker still writing them would deadlock)
    page = signed_in_page
    prompt = page.get_by_label("Prompt", exact=True)

    # Enter alone is a new line of the prompt
    prompt.fill("a paper boat")
    prompt.press("Enter")
    expect(page.locator("article.job")).to_have_count(0)

    # when the designer presses Ctrl+Enter in the prompt, then ⌘+Enter in the seed
    prompt.fill("a paper boat on a pond")
    prompt.press("Control+Enter")
    expect(page.locator("article.job")).to_have_count(1)
    # the form comes back too, focus and all: the seed is typed into that one
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Seed", exact=True).press("Meta+Enter")

    # then each queued a job, as Generate does, without leaving the page
    expect(page.locator("article.job")).to_have_count(2)
    expect(page.locator("article.job .job-prompt").first).to_have_text("a paper boat on a pond")
    jobs = Generation.objects.order_by("created")
    assert [job.prompt for job in jobs] == ["a paper boat on a pond"] * 2
    assert jobs.last().seed == 7
    # and both run to the end, like any other job
    expect(page.locator('article.job[data-status="succeeded"]')).to_have_count(2, timeout=60000)


def test_arrow_keys_step_through_images_in_the_gallery_order(signed_in_page, alice):
    # given a search ranked by relevance, whose order is not the newest first: prompts rank above revised ones
    make_image(alice, "a quiet garden", revised="a quiet garden with a kitten", minutes_ago=1)
    make_image(alice, "a kitten on a sofa", minutes_ago=2)
    make_image(alice, "a harbour", negative="kittens", minutes_ago=3)
    make_image(alice, "a kitten in the snow", minutes_ago=4)
    make_image(alice, "a dog", minutes_ago=5)
    page = signed_in_page
    page.goto("/gallery/?q=kitten")
    tiles = page.locator("figure.tile")
    expect(tiles).to_have_count(4)
    order = [int(pk) for pk in tiles.evaluate_all("tiles => tiles.map(t => t.dataset.image)")]
    newest = list(Image.objects.filter(pk__in=order).newest_first().values_list("pk", flat=True))
    assert order != newest

    # when the designer opens the first and presses → to the end, then ←
    page.locator(".tile-link").first.click()
    page.wait_for_url(f"**/gallery/{order[0]}/?q=*")
    for pk in order[1:]:
        page.keyboard.press("ArrowRight")
        page.wait_for_url(f"**/gallery/{pk}/?q=*")

    # then → did nothing past the last, and ← goes back the same way
    expect(page.locator("a[rel=next]")).to_have_count(0)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"**/gallery/{order[-2]}/?q=*")
    assert "q=kitten" in page.url


def test_arrow_keys_move_between_tiles(signed_in_page, alice):
    images = [make_image(alice, f"shape {w}×{h}", width=w, height=h, minutes_ago=i)
              for i, (w, h) in enumerate(SHAPES)]
    page = signed_in_page
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto("/gallery/")
    page.locator(".tile-link").first.focus()
    shown = [int(pk) for pk in page.locator("figure.tile").evaluate_all("tiles => tiles.map(t => t.dataset.image)")]
    assert shown == [image.pk for image in images]

    # → and ← go along the reading order; ← on the first stays put
    page.keyboard.press("ArrowRight")
    assert focused_image(page) == shown[1]
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert focused_image(page) == shown[0]

    # ↓ goes to the tile of the next row nearest below, ↑ comes back up
    tops = page.locator("figure.tile").evaluate_all("tiles => tiles.map(t => t.getBoundingClientRect().top)")
    page.keyboard.press("ArrowDown")
    below = focused_image(page)
    assert tops[shown.index(below)] > tops[0]
    assert all(top == tops[0] for top in tops[:shown.index(below)] if top < tops[shown.index(below)])
    page.keyboard.press("ArrowUp")
    assert tops[shown.index(focused_image(page))] == tops[0]

    # and Enter opens the focused image
    page.keyboard.press("ArrowRight")
    target = focused_image(page)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/gallery/{target}/")


def test_escape_closes_dialogs_and_rename(signed_in_page, alice):
    image = make_image(alice, "a lighthouse at dusk")
    page = signed_in_page
    page.goto(f"/gallery/{image.pk}/")

    for opener in ["Share", "Add to collection"]:
        page.locator(".actions").get_by_text(opener).click()
        dialog = page.locator("dialog[open]")
        expect(dialog).to_have_count(1)
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)

    collection = Collection.objects.create(owner=alice, name="Harbours")
    page.goto(f"/collections/{collection.pk}/")
    page.get_by_text("Rename").click()
    name = page.get_by_label("Name", exact=True)
    expect(name).to_be_visible()
    name.focus()
    page.keyboard.press("Escape")
    expect(name).to_be_hidden()
    assert page.evaluate("() => document.activeElement.textContent.trim()") == "Rename"


def test_the_skip_link_leads_to_the_page(signed_in_page, alice):
    page = signed_in_page
    page.goto("/gallery/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert skip.bounding_box()["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.closest('main') !== null")


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("url", ["/", "/gallery/", "detail"])
def test_everything_the_keyboard_reaches_shows_a_ring(signed_in_page, alice, theme, url):
    images = [make_image(alice, f"shape {w}×{h}", width=w, height=h, minutes_ago=i)
              for i, (w, h) in enumerate(SHAPES[:4])]
    page = signed_in_page
    page.context.add_cookies([{"name": "theme", "value": theme, "url": page.url}])
    page.goto(f"/gallery/{images[0].pk}/" if url == "detail" else url)
    seen, missing = 0, []
    for _ in range(60):
        page.keyboard.press("Tab")
        ring = page.evaluate(RING)
        if ring["again"] or ring["name"].startswith("BODY"):
            break
        seen += 1
        if ring["style"] == "none" or ring["width"] < 2 or contrast(ring["colour"], ring["page"]) < 3:
            missing.append(ring)
    assert seen > 10
    assert missing == []
