"""Light and dark themes in Chromium: the system's by default, a switch that repaints at once and is kept in a
cookie for the server's first paint, and every page readable in both (AA contrast, no dark panels in light)."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from gallery.models import Collection, ShareLink
from tests.conftest import sign_in
from tests.test_gallery import make_image

CSS = Path(__file__).resolve().parent.parent / "static" / "css"
COLOUR = re.compile(r"#[0-9a-fA-F]{3,8}\b|\b(?:rgba?|hsla?|hwb|lab|lch|oklab|oklch)\(|\b(?:white|black)\b(?!-)")

# Canvas turns any CSS colour into RGBA. A text's background is its ancestors' colours laid over one another;
# text over a gradient (the primary buttons) or over an image (tiles, covers, the lightbox) is not judged here.
READABILITY = """
(theme) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 1;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1);
    ctx.fillStyle = "rgba(0, 0, 0, 0)";
    ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1);
    const d = ctx.getImageData(0, 0, 1, 1).data;
    return [d[0], d[1], d[2], d[3] / 255];
  };
  const over = (top, below) => [0, 1, 2].map(i => top[i] * top[3] + below[i] * (1 - top[3])).concat([1]);
  const luminance = (c) => {
    const linear = (v) => (v /= 255) <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    const [r, g, b] = c.slice(0, 3).map(linear);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const contrast = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const skipped = [".tile", ".collection-cover", ".lightbox", ".visually-hidden", "[aria-hidden=true]", "noscript",
                   "option", "dialog:not([open])"].join(", ");
  function background(element) {
    const chain = [];
    for (let e = element; e; e = e.parentElement) chain.unshift(e);
    let colour = [255, 255, 255, 1];
    for (const e of chain) {
      const style = getComputedStyle(e);
      if (style.backgroundImage !== "none" && e !== document.body && e !== document.documentElement) return null;
      colour = over(rgba(style.backgroundColor), colour);
    }
    return colour;
  }
  function shown(element) {
    if (!element.getClientRects().length || element.closest(skipped) || element.closest(":disabled")) return false;
    for (let e = element; e; e = e.parentElement) {
      const style = getComputedStyle(e);
      if (style.visibility === "hidden" || Number(style.opacity) < 1) return false;
    }
    return true;
  }
  const unreadable = [], wrongPanels = [];
  for (const element of document.body.querySelectorAll("*")) {
    if (!shown(element)) continue;
    const style = getComputedStyle(element);
    const classes = typeof element.className === "string" ? element.className.trim() : "";
    const named = element.tagName.toLowerCase() + (classes ? "." + classes.split(/\\s+/).join(".") : "");
    const fill = rgba(style.backgroundColor);
    const box = element.getBoundingClientRect();
    if (fill[3] > 0.5 && box.width * box.height > 400 && element.tagName !== "MARK") {
      const lum = luminance(fill);
      if (theme === "light" ? lum < 0.3 : lum > 0.45) wrongPanels.push(`${named} ${style.backgroundColor}`);
    }
    const hasText = [...element.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!hasText && !element.matches("input:not([type=checkbox]):not([type=hidden]), select, textarea")) continue;
    const below = background(element);
    if (!below) continue;
    const ink = over(rgba(style.color), below);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    const ratio = contrast(ink, below);
    const text = (element.textContent || element.value || "").trim().slice(0, 30);
    if (ratio < needed) unreadable.push(`${named} "${text}" ${ratio.toFixed(2)}`);
  }
  return {unreadable, wrongPanels};
}
"""


# The computed colour as 0–255 RGB, whatever notation the browser uses for it (rgb(), color(srgb …)).
AS_RGB = """
([selector, property]) => {
  const css = getComputedStyle(document.querySelector(selector)).getPropertyValue(property);
  const ctx = Object.assign(document.createElement("canvas"), {width: 1, height: 1}).getContext("2d");
  ctx.fillStyle = css;
  ctx.fillRect(0, 0, 1, 1);
  return Array.from(ctx.getImageData(0, 0, 1, 1).data.slice(0, 3));
}
"""


def colours(page, selector: str, prop: str = "background-color") -> list[int]:
    """The colour's red, green and blue, its transparency aside."""
    return page.evaluate(AS_RGB, [selector, prop])


def brightness(rgb: list[int]) -> float:
    return sum(rgb) / 3


@pytest.fixture
def studio_pages(alice):
    """A page of each kind, with something on it."""
    images = [make_image(alice, f"一只小猫 number {i}", width=w, height=h, minutes_ago=i)
              for i, (w, h) in enumerate([(1024, 1024), (1280, 720), (720, 1280), (1440, 1080)])]
    collection = Collection.objects.create(owner=alice, name="Spring campaign")
    collection.add([image.pk for image in images])
    link = ShareLink.create(alice, collection, expiry="7", show_parameters=True, allow_downloads=True)
    return {"generate": "/", "gallery": "/gallery/?q=小猫", "detail": f"/gallery/{images[0].pk}/",
            "collections": "/collections/", "collection": f"/collections/{collection.pk}/", "shared": "/shared/",
            "public": f"/s/{link.token}/", "picker": f"/collections/picker/?images={images[0].pk}"}


def test_no_stylesheet_names_a_colour_outside_the_palette():
    # given the studio's stylesheets, when each is read, then colours appear only in the :root palette
    for sheet in sorted(CSS.glob("*.css")):
        text = re.sub(r"/\*.*?\*/", "", sheet.read_text(), flags=re.DOTALL)
        outside = re.sub(r":root\s*\{[^}]*\}", "", text)
        # the palette block of studio.css is the only one allowed
        assert COLOUR.findall(outside) == [], sheet.name


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_visitor_gets_the_systems_theme(browser, live_server, scheme):
    context = browser.new_context(base_url=live_server.url, color_scheme=scheme)
    page = context.new_page()
    page.goto("/accounts/login/")
    body = brightness(colours(page, "body"))
    assert body > 200 if scheme == "light" else body < 40
    assert page.locator("html").get_attribute("data-theme") is None
    expect(page.get_by_label("Theme")).to_have_value("system")
    context.close()


def test_the_switch_repaints_at_once_and_the_choice_is_kept(browser, live_server, alice):
    # given a designer whose system is dark
    context = browser.new_context(base_url=live_server.url, color_scheme="dark")
    page = context.new_page()
    sign_in(page)
    dark = {part: colours(page, selector) for part, selector in
            [("body", "body"), ("topbar", ".topbar"), ("panel", ".panel"), ("input", "#id_prompt")]}
    page.evaluate("() => { window.stillHere = true; }")

    # when they choose Light
    with page.expect_response("**/preferences/theme/") as saved:
        page.get_by_label("Theme").select_option("light")
    assert saved.value.status == 204

    # then the page turns light without a reload, each part of it
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    light = {part: colours(page, selector) for part, selector in
             [("body", "body"), ("topbar", ".topbar"), ("panel", ".panel"), ("input", "#id_prompt")]}
    assert page.evaluate("() => window.stillHere") is True
    for part in dark:
        assert brightness(light[part]) > brightness(dark[part]) + 100, (part, dark[part], light[part])
    assert brightness(colours(page, "body", "color")) < 60

    # and the next page is painted light by the server, with Light chosen
    page.goto("/gallery/")
    assert re.search(r'<html lang="en" data-theme="light">', page.content())
    expect(page.get_by_label("Theme")).to_have_value("light")
    assert {cookie["name"]: cookie["value"] for cookie in context.cookies()}["theme"] == "light"

    # and System goes back to following the system, forgetting the choice
    with page.expect_response("**/preferences/theme/"):
        page.get_by_label("Theme").select_option("system")
    assert brightness(colours(page, "body")) < 40
    page.reload()
    assert page.locator("html").get_attribute("data-theme") is None
    assert "theme" not in {cookie["name"] for cookie in context.cookies()}
    context.close()


def test_the_switch_works_without_javascript(browser, live_server, alice):
    context = browser.new_context(base_url=live_server.url, color_scheme="light", java_script_enabled=False)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.get_by_label("Theme").select_option("dark")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**/accounts/login/")
    assert page.locator("html").get_attribute("data-theme") == "dark"
    assert brightness(colours(page, "body")) < 40
    context.close()


def test_a_wrong_theme_is_refused(client):
    response = client.post("/preferences/theme/", {"theme": "purple"})
    assert response.status_code == 400
    assert "theme" not in response.cookies


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_is_readable_in_both_themes(browser, live_server, alice, studio_pages, theme):
    # given a designer who chose this theme, on a phone-sized and a laptop-sized window
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 768})
    context.add_cookies([{"name": "theme", "value": theme, "url": live_server.url}])
    page = context.new_page()
    sign_in(page)
    problems = {}
    for name, url in {"login": "/accounts/login/", **studio_pages}.items():
        assert page.goto(url).ok, name
        # the public page has no switch and follows the system, which is emulated to match
        page.emulate_media(color_scheme=theme)
        found = page.evaluate(READABILITY, theme)
        if found["unreadable"] or found["wrongPanels"]:
            problems[name] = found
    assert problems == {}
    context.close()
