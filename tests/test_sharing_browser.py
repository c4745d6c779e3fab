"""Share links in the browser: Share on the image page and a job card, the link opened in a fresh browser
with no session, the grid and its lightbox, Revoke on Shared links; all within the CSP."""

import io
import re
from datetime import timedelta

import PIL.Image
from django.utils import timezone
from playwright.sync_api import expect

from gallery.models import Collection, ShareLink
from gallery.tasks import enqueue
from tests.test_browser import shoot
from tests.test_csp import assert_within_policy, loaded, wait_in_page, watch
from tests.test_pipeline import finished, make_generation

DESKTOP, PHONE = {"width": 1360, "height": 900}, {"width": 390, "height": 844}


def made(owner, prompt: str, **fields):
    generation = make_generation(owner, prompt=prompt, **fields)
    enqueue(generation.pk)
    return finished(generation)


def fresh_page(browser):
    """A browser context of its own: no cookies, no session, as a client opening the link."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    return page, watch(page)


def shoot_both(page, name: str) -> None:
    page.set_viewport_size(DESKTOP)
    shoot(page, f"{name}-1360")
    page.set_viewport_size(PHONE)
    shoot(page, f"{name}-390")
    page.set_viewport_size(DESKTOP)


def test_a_link_made_on_the_image_page_opens_without_a_session_and_ends_on_revoke(worker, browser, page, alice,
                                                                                  signed_in_page, sim):
    csp = watch(page)
    generation = made(alice, "一座灯塔在黄昏，水彩 a lighthouse at dusk", n=2, negative_prompt="blurry")
    image = generation.images.get(index=0)
    studio = signed_in_page
    studio.context.grant_permissions(["clipboard-read", "clipboard-write"])

    # when alice shares the image for 30 days from its page
    studio.goto(f"/gallery/{image.pk}/")
    studio.get_by_role("button", name="Share").click()
    dialog = studio.locator("dialog[open]")
    dialog.get_by_label("Expires").select_option(label="30 days")
    expect(dialog.get_by_label("Show prompt and parameters")).not_to_be_checked()
    expect(dialog.get_by_label("Allow downloads")).to_be_checked()
    shoot(studio, "sharing-dialog-form")
    dialog.get_by_role("button", name="Create link").click()
    link_field = dialog.get_by_label("Link", exact=True)
    expect(link_field).to_have_value(re.compile(r"^http://.+/s/[A-Za-z0-9_-]{32}/$"))
    url = link_field.input_value()
    expect(link_field).to_be_focused()
    shoot(studio, "sharing-dialog-link")
    dialog.get_by_role("button", name="Copy link").click()
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert studio.evaluate("() => navigator.clipboard.readText()") == url
    link = ShareLink.objects.get()
    assert timedelta(days=29, hours=23) < link.expires_at - timezone.now() <= timedelta(days=30)

    # then a browser with no session sees the image, and none of its prompt
    visitor, visitor_csp = fresh_page(browser)
    response = visitor.goto(url)
    assert response.status == 200
    hero = visitor.locator("img.public-hero")
    wait_in_page(visitor, lambda: loaded(hero))
    expect(visitor.get_by_role("heading", name="An image by alice")).to_be_visible()
    assert "灯塔" not in visitor.content() and "lighthouse" not in visitor.content()
    assert visitor.context.cookies() == []
    shoot_both(visitor, "sharing-public-image")

    # and the full size opens over the page
    hero.click()
    expect(visitor.locator("dialog.lightbox")).to_be_visible()
    wait_in_page(visitor, lambda: loaded(visitor.locator(".lightbox-image")))
    visitor.keyboard.press("Escape")
    expect(visitor.locator("dialog.lightbox")).to_be_hidden()

    assert_within_policy(visitor, visitor_csp)

    # when alice revokes it on Shared links
    studio.goto("/shared/")
    expect(studio.get_by_role("heading", name="Shared links")).to_be_visible()
    expect(studio.get_by_label("Link", exact=True)).to_have_value(url)
    wait_in_page(studio, lambda: loaded(studio.locator(".share-cover img")))
    shoot_both(studio, "sharing-shared")
    questions = []
    studio.once("dialog", lambda question: (questions.append(question.message), question.accept()))
    studio.get_by_role("button", name="Revoke").click()
    expect(studio.get_by_text("This link no longer opens.")).to_be_visible()
    assert questions == ["Revoke this link? It stops working at once for everyone who has it."]

    # then the visitor's reload says it is no longer available, and the image route with it
    response = visitor.reload()
    assert response.status == 404
    expect(visitor.get_by_role("heading", name="This link is no longer available")).to_be_visible()
    assert visitor.locator("img").count() == 0
    shoot_both(visitor, "sharing-gone")
    assert visitor.request.get(f"{url}images/{image.pk}/original/", max_redirects=0).status == 404

    assert_within_policy(studio, csp)
    visitor.evaluate("() => 0")
    assert visitor_csp.violations == []  # the dead-link page's own 404 is the only error the console shows
    visitor.context.close()


def test_a_finished_job_card_shares_its_images(worker, browser, page, alice, signed_in_page, sim):
    csp = watch(page)
    generation = made(alice, "青花瓷茶杯，柔和光线", n=3)
    studio = signed_in_page

    studio.goto("/")
    card = studio.locator(f"#job-{generation.pk}")
    card.get_by_role("button", name="Share").click()
    dialog = studio.locator("dialog[open]")
    dialog.get_by_label("Show prompt and parameters").check()
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.get_by_role("button", name="Copy link")).to_be_visible()
    shoot(studio, "sharing-job-card")

    expect(dialog.get_by_label("Link", exact=True)).to_have_value(re.compile(r"/s/[A-Za-z0-9_-]{32}/$"))
    link = ShareLink.objects.get()
    assert link.generation == generation and link.show_parameters and link.allow_downloads
    url = dialog.get_by_label("Link", exact=True).input_value()
    dialog.get_by_role("button", name="Done").click()
    expect(studio.locator("dialog[open]")).to_have_count(0)
    assert_within_policy(studio, csp)

    # and the page it opens shows the three images with their prompt
    visitor, visitor_csp = fresh_page(browser)
    visitor.goto(url)
    expect(visitor.get_by_role("heading", name="青花瓷茶杯，柔和光线")).to_be_visible()
    wait_in_page(visitor, lambda: loaded(visitor.locator(".public-tile img")))
    visitor.locator(".public-details summary").first.click()
    shoot_both(visitor, "sharing-public-generation")

    # and one image of it, shared with its parameters, shows them beside it
    image = generation.images.get(index=1)
    single = ShareLink.create(alice, image, expiry=ShareLink.Expiry.DAY, show_parameters=True, allow_downloads=False)
    visitor.goto(f"{url.split('/s/')[0]}/s/{single.token}/")
    wait_in_page(visitor, lambda: loaded(visitor.locator("img.public-hero")))
    expect(visitor.get_by_text(f"{image.seed}", exact=True)).to_be_visible()
    assert visitor.get_by_role("link", name="Download").count() == 0
    shoot_both(visitor, "sharing-public-image-parameters")
    assert_within_policy(visitor, visitor_csp)
    visitor.context.close()


def test_a_shared_collection_is_a_grid_with_a_lightbox_and_downloads(worker, browser, live_server, alice, sim):
    # given a collection of landscape and portrait images, shared with its parameters
    wide = made(alice, "雪山湖泊，清晨薄雾 a mountain lake at dawn", n=4, width=1280, height=720, seed=11)
    tall = made(alice, "一只橘猫在窗台上睡觉 a ginger cat asleep on a windowsill", n=3, width=768, height=1024, seed=5)
    collection = Collection.objects.create(owner=alice, name="Spring campaign 春季新品")
    images = [*wide.images.order_by("index"), *tall.images.order_by("index")]
    collection.add([image.pk for image in images])
    alice.first_name, alice.last_name = "Alice", "Chen"
    alice.save()
    link = ShareLink.create(alice, collection, expiry=ShareLink.Expiry.WEEK, show_parameters=True,
                            allow_downloads=True)

    # when a client opens it
    visitor, visitor_csp = fresh_page(browser)
    visitor.goto(f"{live_server.url}/s/{link.token}/")

    # then every image shows in the collection's order, with the maker and the collection's name
    tiles = visitor.locator(".public-tile img")
    expect(tiles).to_have_count(7)
    visitor.evaluate("() => document.querySelectorAll('.public-tile img').forEach(i => i.loading = 'eager')")
    wait_in_page(visitor, lambda: loaded(tiles))
    expect(visitor.get_by_role("heading", name="Spring campaign 春季新品")).to_be_visible()
    expect(visitor.get_by_text("Shared by Alice Chen")).to_be_visible()
    shoot_both(visitor, "sharing-public-collection")

    # and a click opens the full size, the arrows step through, Escape closes
    tiles.nth(0).click()
    lightbox = visitor.locator("dialog.lightbox")
    expect(lightbox).to_be_visible()
    expect(lightbox.locator(".lightbox-count")).to_have_text("1 / 7")
    wait_in_page(visitor, lambda: loaded(lightbox.locator(".lightbox-image")))
    shoot(visitor, "sharing-lightbox-1360")
    visitor.keyboard.press("ArrowRight")
    expect(lightbox.locator(".lightbox-count")).to_have_text("2 / 7")
    visitor.keyboard.press("ArrowLeft")
    visitor.keyboard.press("ArrowLeft")
    expect(lightbox.locator(".lightbox-count")).to_have_text("7 / 7")
    visitor.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()

    # and Download saves the original with its parameters
    with visitor.expect_download() as saved:
        visitor.locator(".public-tile").first.get_by_role("link", name="Download").click()
    data = open(saved.value.path(), "rb").read()
    assert saved.value.suggested_filename.startswith("001-雪山湖泊")
    assert "Seed: 11" in PIL.Image.open(io.BytesIO(data)).info["parameters"]
    with visitor.expect_download() as archive:
        visitor.get_by_role("link", name="Download all (ZIP)").click()
    assert archive.value.suggested_filename == "spring-campaign-春季新品.zip"

    link.refresh_from_db()
    assert link.views == 1
    assert_within_policy(visitor, visitor_csp)
    visitor.context.close()
