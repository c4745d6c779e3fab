"""The studio with JavaScript off, in Chromium: every page is plain links and forms. Sign in, generate and follow
the job with Refresh (a real worker), cancel, search, filter, More images, an image's page and its neighbours,
reuse, favourite, add to a collection, share, and the theme and language switches."""

import pytest
from playwright.sync_api import expect

from gallery.browse import PAGE_SIZE
from gallery.models import Collection, Favourite, Generation, ShareLink
from tests.conftest import sign_in
from tests.test_browser import shoot
from tests.test_gallery import make_image
from tests.test_pipeline import finished, make_generation


@pytest.fixture
def nojs(browser, live_server, alice):
    """A signed-in page in a browser that runs no scripts."""
    context = browser.new_context(java_script_enabled=False, base_url=live_server.url,
                                  viewport={"width": 1366, "height": 768})
    page = context.new_page()
    sign_in(page)
    yield page
    context.close()


def tile_ids(page) -> list[int]:
    return [int(pk) for pk in page.locator("figure.tile").evaluate_all("tiles => tiles.map(t => t.dataset.image)")]


def test_a_generation_is_a_form_post_and_its_card_follows_by_refresh(worker, nojs, sim):
    page = nojs

    # when the designer fills the form and presses Generate
    page.get_by_label("Prompt", exact=True).fill("a paper lantern festival, 灯笼")
    page.get_by_label("Number of images", exact=True).fill("2")
    page.get_by_role("button", name="Generate").click()

    # then the page comes back with the queued job's card, which offers Refresh since it can't poll
    page.wait_for_url("**/")
    expect(page.get_by_role("status")).to_contain_text("Queued")
    card = page.locator("article.job").first
    expect(card.locator(".job-prompt")).to_have_text("a paper lantern festival, 灯笼")
    shoot(page, "nojs-generate-queued")

    # and once the worker is done, Refresh shows the thumbnails
    finished(Generation.objects.get())
    page.get_by_role("link", name="Refresh").click()
    expect(card).to_have_attribute("data-status", "succeeded")
    expect(card.locator("a.thumb img")).to_have_count(2)


def test_cancel_is_a_form_post(nojs, alice):
    job = make_generation(alice, prompt="waiting for its turn")
    page = nojs
    page.goto("/")
    page.locator(f"#job-{job.pk}").get_by_role("button", name="Cancel").click()
    page.wait_for_url("**/")
    expect(page.locator(f"#job-{job.pk}")).to_have_attribute("data-status", "canceled")


def test_search_more_images_and_filters(nojs, alice, bob):
    for i in range(PAGE_SIZE + 3):
        make_image(alice if i % 2 else bob, f"a kitten number {i}", minutes_ago=i)
    make_image(alice, "a lighthouse at dusk", minutes_ago=100)
    page = nojs
    page.goto("/gallery/")

    # the search box submits with Enter
    page.get_by_role("searchbox").fill("kittens")
    page.get_by_role("searchbox").press("Enter")
    page.wait_for_url("**/gallery/?q=kittens*")
    expect(page.locator("figure.tile")).to_have_count(PAGE_SIZE)
    first_page = tile_ids(page)

    # More images is a link to the next page of the same search
    page.get_by_role("link", name="More images").click()
    page.wait_for_url("**cursor=*")
    expect(page.locator("figure.tile")).to_have_count(3)
    assert set(tile_ids(page)).isdisjoint(first_page)
    assert "q=kittens" in page.url

    # filters apply with their own button, shown only without JavaScript
    page.get_by_label("Sort").select_option("newest")
    page.get_by_label("Only mine").check()
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**mine=on**")
    expect(page.locator("figure.tile")).to_have_count((PAGE_SIZE + 3) // 2)
    assert "cursor" not in page.url and "sort=newest" in page.url
    shoot(page, "nojs-gallery")


def test_an_images_page_and_its_actions_are_links_and_forms(nojs, alice):
    images = [make_image(alice, f"a harbour at dawn number {i}", minutes_ago=i) for i in range(3)]
    page = nojs

    # a tile opens the image; Previous and Next step through the gallery
    page.goto("/gallery/")
    page.locator(f'figure.tile[data-image="{images[1].pk}"] .tile-link').click()
    page.wait_for_url(f"**/gallery/{images[1].pk}/")
    page.get_by_role("link", name="Next").click()
    page.wait_for_url(f"**/gallery/{images[2].pk}/")
    page.get_by_role("link", name="Previous").click()
    page.wait_for_url(f"**/gallery/{images[1].pk}/")
    # what only a script can do is not offered
    expect(page.get_by_role("button", name="Copy prompt")).to_be_hidden()

    # Favourite posts and comes back
    page.get_by_role("button", name="Favourite").click()
    page.wait_for_url(f"**/gallery/{images[1].pk}/")
    assert Favourite.objects.filter(user=alice, image=images[1]).exists()

    # Add to collection opens the picker as a page
    page.get_by_role("link", name="Add to collection").click()
    page.get_by_label("Name").fill("Harbours")
    page.get_by_role("button", name="Create and add").click()
    expect(page.get_by_text("1 image added to Harbours")).to_be_visible()
    assert list(Collection.objects.get(name="Harbours").images.all()) == [images[1]]

    # Share opens its form on a page, and Create link lands on Shared links
    page.goto(f"/gallery/{images[1].pk}/")
    page.get_by_role("button", name="Share").click()
    page.get_by_role("button", name="Create link").click()
    page.wait_for_url("**/shared/**")
    assert ShareLink.objects.get().image == images[1]
    expect(page.locator(".share-row")).to_have_count(1)

    # Reuse prompt fills the generate form
    page.goto(f"/gallery/{images[1].pk}/")
    page.get_by_role("link", name="Reuse prompt").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a harbour at dawn number 1")

    # and a tile's favourite is a form too
    page.goto("/gallery/")
    tile = page.locator(f'figure.tile[data-image="{images[0].pk}"]')
    tile.hover()
    tile.get_by_role("button", name="Favourite").click()
    page.wait_for_url("**/gallery/")
    assert Favourite.objects.filter(user=alice, image=images[0]).exists()
    expect(page.locator(f'figure.tile[data-image="{images[0].pk}"] button.is-on')).to_have_count(1)


def test_the_theme_and_language_switches_are_forms(nojs):
    page = nojs
    page.goto("/gallery/")
    page.get_by_label("Theme").select_option("light")
    page.get_by_role("button", name="Apply", exact=True).click()
    page.wait_for_url("**/gallery/")
    assert page.locator("html").get_attribute("data-theme") == "light"

    page.get_by_label("Language").select_option("zh-hans")
    page.locator("form.language button").click()
    page.wait_for_url("**/gallery/")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.locator("html").get_attribute("data-theme") == "light"
