"""Collections in Chromium: select tiles, add them to a new collection, reorder by drag and by button, remove one,
and find the order kept after a reload; the image page's picker; and the same path with JavaScript off."""

import re

import pytest
from playwright.sync_api import expect

from gallery.models import Collection
from tests.conftest import sign_in
from tests.test_browser import SCREENSHOTS, shoot
from tests.test_collections import order_of, stored_image
from tests.test_csp import assert_within_policy, csp, loaded, wait_in_page  # noqa: F401 (csp is a fixture)

PROMPTS = ["一只小猫在草地上奔跑，电影感", "a lighthouse at dusk, watercolor", "青花瓷茶杯，柔和光线",
           "neon street in the rain, 赛博朋克", "a red kite over the sea",
           "portrait of an old fisherman, oil on canvas"]
PALETTES = [((255, 170, 120), (70, 40, 130)), ((40, 80, 160), (250, 200, 120)), ((230, 240, 255), (30, 70, 170)),
            ((255, 60, 160), (20, 20, 60)), ((120, 200, 255), (230, 60, 50)), ((90, 70, 50), (220, 180, 120))]


@pytest.fixture
def artworks(alice, bob):
    """Six images with real files in S3, newest first."""
    return [stored_image(bob if i % 3 == 2 else alice, prompt, seed=100 + i, minutes_ago=i, size=(512, 512),
                         colors=PALETTES[i]) for i, prompt in enumerate(PROMPTS)]


def shoot_window(page, name: str) -> None:
    """The window only: a full-page shot would show a modal dialog where the window was, not where it sits."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")


def shown_ids(page) -> list[int]:
    return [int(pk) for pk in page.locator("figure.tile").evaluate_all("tiles => tiles.map(t => t.dataset.image)")]


def pks(artworks, *indexes) -> list[int]:
    return [artworks[i].pk for i in indexes]


def test_a_collection_built_in_the_browser_keeps_its_order(csp, signed_in_page, artworks):  # noqa: F811
    page = signed_in_page
    page.goto("/gallery/")
    expect(page.locator("figure.tile")).to_have_count(len(artworks))
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    bar = page.locator("form.selection-bar")
    expect(bar).to_be_hidden()

    # when the designer ticks the first tile, shift-clicks the third (a range) and clicks the fifth
    page.get_by_label(f"Select: {PROMPTS[0]}").click()
    page.get_by_label(f"Select: {PROMPTS[2]}").click(modifiers=["Shift"])
    page.locator("figure.tile").nth(4).locator(".tile-link").click()  # while selecting, a tile click selects
    expect(bar).to_be_visible()
    expect(bar.locator("[data-selection-count]")).to_have_text("4 selected")
    assert page.url.endswith("/gallery/")
    page.mouse.move(5, 5)
    shoot(page, "collections-gallery-selection-1360")

    # and adds them to a new collection, Spring campaign
    bar.get_by_role("button", name="Add to collection").click()
    dialog = page.get_by_role("dialog", name="Add to collection")
    expect(dialog.get_by_label("Name")).to_be_focused()
    dialog.get_by_label("Name").fill("Spring campaign")
    shoot_window(page, "collections-picker-1360")
    dialog.get_by_role("button", name="Create and add").click()

    # then it says so, the selection is cleared, and the collection holds them in the gallery's order
    expect(dialog).to_contain_text("4 images added to Spring campaign")
    expect(bar).to_be_hidden()
    shoot_window(page, "collections-picker-added-1360")
    collection = Collection.objects.get()
    assert order_of(collection) == pks(artworks, 0, 1, 2, 4)
    dialog.get_by_role("link", name="Open Spring campaign").click()
    page.wait_for_url(f"**/collections/{collection.pk}/")
    tiles = page.locator("figure.collection-tile")
    expect(tiles).to_have_count(4)

    # when the designer drags the last image to the front
    with page.expect_response(f"**/collections/{collection.pk}/order/"):
        tiles.nth(3).drag_to(tiles.nth(0), target_position={"x": 30, "y": 120})
    expect(tiles.first).to_have_attribute("data-image", str(artworks[4].pk))
    assert order_of(collection) == pks(artworks, 4, 0, 1, 2)

    # and moves it one later with the keyboard's way
    moved = page.locator(f"#image-{artworks[4].pk}")
    moved.hover()
    with page.expect_response(f"**/collections/{collection.pk}/move/"):
        moved.get_by_role("button", name="Move later").click()
    expect(tiles.nth(1)).to_have_attribute("data-image", str(artworks[4].pk))
    expect(page.locator(f"#image-{artworks[4].pk}").get_by_role("button", name="Move later")).to_be_focused()
    page.keyboard.press("Enter")  # the focus stays on the moved image, so the next press moves it again
    expect(tiles.nth(2)).to_have_attribute("data-image", str(artworks[4].pk))

    # and removes the lighthouse
    gone = page.locator(f"#image-{artworks[1].pk}")
    gone.hover()
    gone.get_by_role("button", name="Remove").click()
    expect(tiles).to_have_count(3)

    # then after a reload the page shows the order the database keeps
    page.reload()
    expect(tiles).to_have_count(3)
    assert shown_ids(page) == order_of(collection) == pks(artworks, 0, 4, 2)
    expect(page.locator(".collection-meta")).to_contain_text("3 images")
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    page.mouse.move(5, 5)
    shoot(page, "collections-collection-1360")
    tiles.nth(1).hover()
    page.wait_for_timeout(300)  # the controls fade in
    shoot(page, "collections-collection-hover-1360")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "collections-collection-390")
    assert_within_policy(page, csp)


def test_the_image_page_adds_its_image_to_an_existing_collection(csp, signed_in_page, alice, artworks):  # noqa: F811
    # given
    autumn = Collection.objects.create(owner=alice, name="Autumn lookbook")
    autumn.add(pks(artworks, 1))
    Collection.objects.create(owner=alice, name="Client: Acme kites")
    page = signed_in_page
    page.goto(f"/gallery/{artworks[3].pk}/")

    # when
    page.get_by_role("link", name="Add to collection").click()
    dialog = page.get_by_role("dialog", name="Add to collection")
    choice = dialog.get_by_role("button", name=re.compile("^Autumn lookbook"))
    expect(choice).to_contain_text("1 image")
    wait_in_page(page, lambda: loaded(dialog.locator("img")))
    shoot_window(page, "collections-picker-detail-1360")
    choice.click()

    # then
    expect(dialog).to_contain_text("1 image added to Autumn lookbook")
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    assert order_of(autumn) == pks(artworks, 1, 3)
    assert page.url.endswith(f"/gallery/{artworks[3].pk}/")
    assert_within_policy(page, csp)


def test_space_selects_a_focused_tile_and_escape_clears(csp, signed_in_page, artworks):  # noqa: F811
    page = signed_in_page
    page.goto("/gallery/")
    box = page.get_by_label(f"Select: {PROMPTS[1]}")
    box.focus()
    page.keyboard.press("Space")
    expect(box).to_be_checked()
    expect(page.locator("[data-selection-count]")).to_have_text("1 selected")
    page.keyboard.press("Escape")
    expect(box).not_to_be_checked()
    expect(page.locator("form.selection-bar")).to_be_hidden()
    assert_within_policy(page, csp)


def test_the_gallery_selection_and_picker_on_a_phone(csp, signed_in_page, alice, artworks):  # noqa: F811
    Collection.objects.create(owner=alice, name="Spring campaign").add(pks(artworks, 0, 1))
    page = signed_in_page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/gallery/")
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    page.get_by_label(f"Select: {PROMPTS[3]}").click()
    page.get_by_label(f"Select: {PROMPTS[5]}").click(modifiers=["Shift"])
    expect(page.locator("[data-selection-count]")).to_have_text("3 selected")
    shoot(page, "collections-gallery-selection-390")
    page.locator("form.selection-bar").get_by_role("button", name="Add to collection").click()
    dialog = page.get_by_role("dialog", name="Add to collection")
    expect(dialog.get_by_role("button", name=re.compile("^Spring campaign"))).to_be_visible()
    shoot_window(page, "collections-picker-390")
    dialog.get_by_role("button", name=re.compile("^Spring campaign")).click()
    expect(dialog).to_contain_text("3 images added to Spring campaign")
    assert order_of(Collection.objects.get()) == pks(artworks, 0, 1, 3, 4, 5)
    assert_within_policy(page, csp)


@pytest.mark.parametrize("width", [1360, 390])
def test_the_collections_list_screenshots(csp, signed_in_page, alice, bob, artworks, width):  # noqa: F811
    for name, owner, members in [("Spring campaign", alice, (0, 2, 4)), ("Client: Acme kites", bob, (4, 1)),
                                 ("Moodboard · 青花瓷", alice, (2, 3, 5, 0)), ("Empty for now", bob, ())]:
        Collection.objects.create(owner=owner, name=name).add(pks(artworks, *members))
    page = signed_in_page
    page.set_viewport_size({"width": width, "height": 900 if width > 400 else 844})
    page.goto("/collections/")
    expect(page.locator(".collection-card")).to_have_count(4)
    wait_in_page(page, lambda: loaded(page.locator(".collection-card img")))
    shoot(page, f"collections-list-{width}")
    page.get_by_role("searchbox").fill("acme")
    page.get_by_role("searchbox").press("Enter")
    expect(page.locator(".collection-card")).to_have_count(1)
    assert_within_policy(page, csp)


def test_without_javascript_the_same_path_is_plain_forms(browser, live_server, alice, artworks):
    # given a browser with JavaScript off, signed in
    context = browser.new_context(java_script_enabled=False, base_url=live_server.url,
                                  viewport={"width": 1360, "height": 900})
    page = context.new_page()
    sign_in(page)

    # when the designer ticks two tiles and presses Add to collection
    page.goto("/gallery/")
    page.get_by_label(f"Select: {PROMPTS[1]}").check()
    page.get_by_label(f"Select: {PROMPTS[3]}").check()
    page.locator("form.selection-bar").get_by_role("button", name="Add to collection").click()

    # then the picker is a page, and a new collection takes them
    page.wait_for_url("**/collections/picker/?images=*")
    expect(page.get_by_role("heading", name="Add 2 images to a collection")).to_be_visible()
    shoot(page, "collections-picker-page-nojs-1360")
    page.get_by_label("Name").fill("No-script picks")
    page.get_by_role("button", name="Create and add").click()
    expect(page.get_by_text("2 images added to No-script picks.")).to_be_visible()
    collection = Collection.objects.get()
    assert order_of(collection) == pks(artworks, 1, 3)

    # and Move earlier works as a plain form too
    page.locator(f"#image-{artworks[3].pk}").get_by_role("button", name="Move earlier").click()
    expect(page.locator("figure.collection-tile").first).to_have_attribute("data-image", str(artworks[3].pk))
    assert order_of(collection) == pks(artworks, 3, 1)
    context.close()


def test_rename_in_place_then_show_it_in_the_gallery(csp, signed_in_page, alice, artworks):  # noqa: F811
    collection = Collection.objects.create(owner=alice, name="Spring campaign")
    collection.add(pks(artworks, 5, 1, 3))
    page = signed_in_page
    page.goto(f"/collections/{collection.pk}/")

    # when the designer renames it, first with an empty name
    page.get_by_text("Rename", exact=True).click()
    page.get_by_label("Name").fill("   ")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert").filter(has_text="Give the collection a name.")).to_be_visible()
    page.get_by_label("Name").fill("Spring campaign — final picks")
    page.get_by_role("button", name="Save").click()

    # then the heading changes in place and the database has it
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring campaign — final picks")
    collection.refresh_from_db()
    assert collection.name == "Spring campaign — final picks"
    page.get_by_text("Rename", exact=True).click()
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    shoot(page, "collections-rename-1360")  # last: Playwright's shot leaves a style="" that htmx would copy on
    # Chrome logs every 4xx answer on the console; the empty name's 422 was meant.
    csp.errors[:] = [error for error in csp.errors if "status of 422" not in error]

    # and Show in gallery filters the gallery to its images
    page.get_by_role("link", name="Show in gallery").click()
    page.wait_for_url(f"**/gallery/?collection={collection.pk}")
    expect(page.locator("figure.tile")).to_have_count(3)
    assert sorted(shown_ids(page)) == sorted(pks(artworks, 5, 1, 3))
    expect(page.locator(".collection-filter")).to_contain_text("Spring campaign — final picks")
    wait_in_page(page, lambda: loaded(page.locator("figure.tile img")))
    shoot(page, "collections-gallery-filtered-1360")
    page.get_by_role("link", name="Show the whole gallery").click()
    expect(page.locator("figure.tile")).to_have_count(len(artworks))
    assert_within_policy(page, csp)
