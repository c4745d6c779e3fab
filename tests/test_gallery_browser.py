"""The gallery in Chromium, on images the real pipeline made."""

import pytest
from playwright.sync_api import expect

from gallery.browse import PAGE_SIZE
from gallery.models import Generation, Image
from gallery.tasks import enqueue
from tests.conftest import BUCKET
from tests.test_browser import shoot
from tests.test_gallery import make_image
from tests.test_pipeline import finished, make_generation


def test_infinite_scroll_loads_the_next_page(signed_in_page, alice):
    # given more images than two pages hold
    for i in range(PAGE_SIZE * 2 + 3):
        make_image(alice, f"一只小猫 number {i}", minutes_ago=i)
    page = signed_in_page
    page.goto("/gallery/")
    tiles = page.locator("figure.tile")
    expect(tiles).to_have_count(PAGE_SIZE)

    # when the designer scrolls to the end, twice
    page.locator("a.more").scroll_into_view_if_needed()
    expect(tiles).to_have_count(PAGE_SIZE * 2)
    page.locator("a.more").scroll_into_view_if_needed()

    # then every image is there once, newest first, and the page never reloaded
    expect(tiles).to_have_count(PAGE_SIZE * 2 + 3)
    expect(page.locator("a.more")).to_have_count(0)
    ids = [int(pk) for pk in tiles.evaluate_all("tiles => tiles.map(t => t.dataset.image)")]
    assert ids == list(Image.objects.newest_first().values_list("pk", flat=True))


def test_reuse_with_seed_reruns_the_same_generation(worker, signed_in_page, alice, sim):
    # given an image the pipeline made
    generation = make_generation(alice, prompt="青花瓷茶杯，柔和光线", model="qwen-image-plus", width=1328,
                                 height=1328, n=2, seed=900)
    enqueue(generation.pk)
    finished(generation)
    second = generation.images.get(index=1)
    page = signed_in_page
    page.goto(f"/gallery/{second.pk}/")
    shoot(page, "gallery-detail")

    # when the designer presses Reuse with seed and then Generate
    page.get_by_role("link", name="Reuse with seed").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value("901")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("article.job")).to_have_count(2)
    expect(page.locator("article.job").first).to_have_attribute("data-status", "succeeded", timeout=30000)

    # then the new generation has the same prompt, model, size and that image's seed
    rerun = Generation.objects.exclude(pk=generation.pk).get()
    assert (rerun.prompt, rerun.model, rerun.width, rerun.height, rerun.seed, rerun.n) == (
        generation.prompt, "qwen-image-plus", 1328, 1328, 901, 1)
    assert rerun.images.get().sha256 == second.sha256


def test_deleting_removes_the_stored_files(worker, signed_in_page, alice, s3, sim):
    generation = make_generation(alice, prompt="to be deleted", n=1)
    enqueue(generation.pk)
    finished(generation)
    image = generation.images.get()
    keys = [image.file, *image.renditions.values_list("file", flat=True)]
    assert len(keys) == 3

    page = signed_in_page
    page.goto(f"/gallery/{image.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("The image and its files were deleted.")).to_be_visible()

    assert not Image.objects.filter(pk=image.pk).exists()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"generations/{generation.pk}/").get("Contents", [])
    assert listed == []


def test_search_and_keyboard_navigation(signed_in_page, alice, bob):
    older = make_image(alice, "一只小猫在草地上奔跑", minutes_ago=3)
    make_image(bob, "草原上的土地", minutes_ago=2)
    newer = make_image(bob, "kittens on the 草地 at dusk", minutes_ago=1)
    page = signed_in_page
    page.goto("/gallery/")
    page.get_by_role("searchbox").fill("草地")
    page.get_by_role("searchbox").press("Enter")
    expect(page.locator("figure.tile")).to_have_count(2)
    assert "q=%E8%8D%89%E5%9C%B0" in page.url
    expect(page.locator("mark").first).to_have_text("草地")
    shoot(page, "gallery-search")

    page.locator("figure.tile").first.click()
    page.wait_for_url(f"**/gallery/{newer.pk}/**")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/gallery/{older.pk}/**")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"**/gallery/{newer.pk}/**")


@pytest.mark.parametrize("width", [1360, 420])
def test_gallery_screenshots(signed_in_page, alice, width):
    for i, prompt in enumerate(["一只小猫在草地上奔跑，电影感", "a lighthouse at dusk, watercolor", "青花瓷茶杯"]):
        make_image(alice, prompt, minutes_ago=i)
    page = signed_in_page
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/gallery/")
    page.locator("figure.tile").first.hover()
    shoot(page, f"gallery-{width}")


def test_a_tile_favourite_toggles_in_place(signed_in_page, alice):
    image = make_image(alice, "a fox under the moon")
    page = signed_in_page
    page.goto("/gallery/")
    tile = page.locator(f'figure.tile[data-image="{image.pk}"]')
    tile.hover()
    tile.get_by_role("button", name="Favourite").click()
    expect(tile.locator("button.is-on")).to_have_count(1)
    assert image.favourites.filter(user=alice).exists()
    page.goto("/gallery/?favourites=on")
    expect(page.locator("figure.tile")).to_have_count(1)


def test_tiles_keep_their_shapes_in_full_rows_across_pages(signed_in_page, alice):
    # given more images of many shapes than two pages hold
    shapes = [(1024, 1024), (1280, 720), (720, 1280), (1440, 1080), (2700, 768), (768, 2700), (1440, 810)]
    images = [make_image(alice, f"shape number {i}", width=shapes[i % 7][0], height=shapes[i % 7][1], minutes_ago=i)
              for i in range(PAGE_SIZE * 2 + 5)]
    page = signed_in_page
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto("/gallery/")
    tiles = page.locator("figure.tile")
    for count in (PAGE_SIZE * 2, PAGE_SIZE * 2 + 5):
        page.locator("a.more").scroll_into_view_if_needed()
        expect(tiles).to_have_count(count)

    # then every tile has its image's shape, a row's tiles share a height, and each row but the last is full
    boxes = tiles.evaluate_all("tiles => tiles.map(t => { const b = t.getBoundingClientRect(); "
                               "return [Number(t.dataset.image), b.left, b.top, b.right, b.width, b.height]; })")
    shape = {image.pk: image.width / image.height for image in images}
    assert [box[0] for box in boxes] == [image.pk for image in images]
    for pk, _, _, _, width, height in boxes:
        assert width / height == pytest.approx(shape[pk], rel=0.012)
    rows: dict[float, list] = {}
    for box in boxes:
        rows.setdefault(round(box[2]), []).append(box)
    right = page.locator("#grid").bounding_box()
    edge = right["x"] + right["width"]
    for top in sorted(rows)[:-1]:
        assert max(box[3] for box in rows[top]) == pytest.approx(edge, abs=1.5)
        assert max(box[5] for box in rows[top]) - min(box[5] for box in rows[top]) < 1.5
    assert len(rows) > 8
