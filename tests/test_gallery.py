"""The gallery: search in Chinese and English, filters, keyset pages, detail, reuse and delete."""

import io
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone, translation
from django.utils.text import Truncator

from gallery import search
from gallery.browse import PAGE_SIZE
from gallery.models import Favourite, Generation, Image, Rendition

NOW = timezone.now()


def make_image(owner, prompt: str, revised: str = "", negative: str = "", *, model: str = "wan2.2-t2i-flash",
               width: int = 1024, height: int = 1024, minutes_ago: float = 0, seed: int = 5) -> Image:
    created = NOW - timedelta(minutes=minutes_ago)
    generation = Generation.objects.create(
        owner=owner, prompt=prompt, negative_prompt=negative, model=model, width=width, height=height, seed=seed,
        status="succeeded", created=created, started_at=created, finished_at=created + timedelta(seconds=9))
    image = Image.objects.create(
        generation=generation, owner=owner, model=model, shape=generation.size.shape, index=0,
        file=f"generations/{generation.pk}/0.png", width=width, height=height, bytes=1000, sha256="0" * 64,
        seed=seed, revised_prompt=revised, created=created)
    Image.objects.filter(pk=image.pk).update(search=search.document(prompt, revised, negative))
    return image


def seed_shown(html: str) -> str:
    """The generate form's seed as filled in ("" when the input has no value)."""
    field = re.search(r'<input[^>]*name="seed"[^>]*>', html).group(0)
    value = re.search(r'value="([^"]*)"', field)
    return value.group(1) if value else ""


def shown(response) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-image="(\d+)"', response.content.decode())]


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def prompts(alice, bob):
    """Matches and near misses for each search of the issue."""
    return {
        "meadow": make_image(alice, "一只小猫在草地上奔跑，电影感", minutes_ago=1),
        "grass_split": make_image(alice, "草原上的土地，辽阔", minutes_ago=2),  # 草 and 地, never 草地
        "kitten_en": make_image(bob, "a kitten sleeping on a windowsill", minutes_ago=3),
        "kittens_en": make_image(bob, "three kittens playing with yarn", minutes_ago=4),
        "cat_only": make_image(bob, "a cat and a dog", minutes_ago=5),
        "teacup": make_image(alice, "青花瓷茶杯，柔和光线", minutes_ago=6),
        "flower": make_image(alice, "一朵青色的花", minutes_ago=7),  # 青 and 花, never 青花
        "mixed": make_image(bob, "小猫 in a cyberpunk street, neon", minutes_ago=8),
        "revised_only": make_image(alice, "雪山湖泊", revised="雪山湖泊，湖边有一只小猫在草地上", minutes_ago=9),
        "negative_only": make_image(alice, "portrait of an old fisherman", negative="blurry kittens",
                                    minutes_ago=10),
    }


@pytest.mark.parametrize(("q", "expected"), [
    ("草地", {"meadow", "revised_only"}),
    ("小猫", {"meadow", "mixed", "revised_only"}),
    ("青花", {"teacup"}),
    ("猫", {"meadow", "mixed", "revised_only"}),
    ("kitten", {"kitten_en", "kittens_en", "negative_only"}),
    ("kittens", {"kitten_en", "kittens_en", "negative_only"}),
    ("小猫 neon", {"mixed"}),
    ("小猫 草地", {"meadow", "revised_only"}),
    ("fisherman", {"negative_only"}),
    ("giraffe", set()),
])
@pytest.mark.parametrize("sort", ["relevance", "newest"])
def test_search_finds_the_right_images_and_only_them(client, prompts, q, expected, sort):
    response = client.get("/gallery/", {"q": q, "sort": sort})
    assert set(shown(response)) == {prompts[name].pk for name in expected}


def test_relevance_puts_prompt_matches_before_revised_and_negative_ones(client, prompts):
    response = client.get("/gallery/", {"q": "小猫"})
    assert shown(response)[-1] == prompts["revised_only"].pk
    response = client.get("/gallery/", {"q": "kittens"})
    assert shown(response)[-1] == prompts["negative_only"].pk


def test_newest_sort_orders_matches_by_time(client, prompts):
    response = client.get("/gallery/", {"q": "小猫", "sort": "newest"})
    assert shown(response) == [prompts[name].pk for name in ("meadow", "mixed", "revised_only")]


def test_matched_words_are_highlighted(client, prompts):
    html = client.get("/gallery/", {"q": "kittens"}).content.decode()
    assert "three <mark>kittens</mark> playing" in html
    assert "a <mark>kitten</mark> sleeping" in html
    html = client.get("/gallery/", {"q": "小猫 neon"}).content.decode()
    assert "<mark>小猫</mark> in a cyberpunk street, <mark>neon</mark>" in html
    assert "一只小猫在<mark>草地</mark>上奔跑" in client.get("/gallery/", {"q": "草地"}).content.decode()


def test_the_query_stays_in_the_url_and_the_box(client, prompts):
    html = client.get("/gallery/", {"q": "青花"}).content.decode()
    assert 'type="search" name="q" value="青花"' in html
    assert f'/gallery/{prompts["teacup"].pk}/?q=%E9%9D%92%E8%8A%B1' in html


def test_the_grid_is_the_whole_teams_newest_first(client, prompts):
    assert shown(client.get("/gallery/")) == [image.pk for image in
                                            sorted(prompts.values(), key=lambda i: i.created, reverse=True)]


def test_filters_combine_with_search(client, alice, bob, prompts):
    wide = make_image(alice, "一只小猫在海边", model="wan2.6-t2i", width=1920, height=1080, minutes_ago=11)
    assert set(shown(client.get("/gallery/", {"q": "小猫", "model": "wan2.6-t2i"}))) == {wide.pk}
    assert set(shown(client.get("/gallery/", {"q": "小猫", "shape": "landscape"}))) == {wide.pk}
    assert set(shown(client.get("/gallery/", {"q": "小猫", "mine": "on"}))) == {
        prompts["meadow"].pk, prompts["revised_only"].pk, wide.pk}
    Favourite.objects.create(user=alice, image=prompts["mixed"])
    Favourite.objects.create(user=bob, image=prompts["meadow"])
    assert shown(client.get("/gallery/", {"q": "小猫", "favourites": "on"})) == [prompts["mixed"].pk]


def test_date_range_filters_by_day(client, alice):
    old = make_image(alice, "last week", minutes_ago=60 * 24 * 7)
    new = make_image(alice, "today")
    today = timezone.localdate()
    assert shown(client.get("/gallery/", {"since": today.isoformat()})) == [new.pk]
    last_week = (today - timedelta(days=7)).isoformat()
    assert shown(client.get("/gallery/", {"since": last_week, "until": last_week})) == [old.pk]


@pytest.mark.parametrize("params", [
    {"since": "not-a-date"}, {"since": "2026-05-02", "until": "2026-05-01"}, {"model": "nope"},
    {"cursor": "garbage!!"}, {"q": "x" * 5000}, {"sort": "random"}, {"until": "9999-12-31"},
    {"since": "0001-01-01"}, {"since": "２０２６-01-01x"},
])
def test_bad_gallery_parameters_get_400_with_the_reason_on_the_page(client, prompts, params):
    response = client.get("/gallery/", params)
    assert response.status_code == 400
    assert 'class="error" role="alert"' in response.content.decode()


def test_query_syntax_characters_are_only_words(client, prompts):
    assert client.get("/gallery/", {"q": "'\"&|!():*\\"}).status_code == 200


def test_keyset_pages_never_repeat_or_skip_when_images_arrive(client, alice):
    # given more images than one page holds
    from gallery.browse import PAGE_SIZE
    first = [make_image(alice, f"picture {i}", minutes_ago=100 + i) for i in range(PAGE_SIZE * 2 + 5)]
    page1 = client.get("/gallery/")
    cursor = re.search(r'hx-get="/gallery/\?cursor=([^"]+)"', page1.content.decode()).group(1)

    # when new images arrive before the next page is fetched
    for i in range(7):
        make_image(alice, f"new arrival {i}", minutes_ago=-i)
    page2 = client.get("/gallery/", {"cursor": cursor}, HTTP_HX_REQUEST="true")
    cursor = re.search(r'hx-get="/gallery/\?cursor=([^"]+)"', page2.content.decode()).group(1)
    page3 = client.get("/gallery/", {"cursor": cursor}, HTTP_HX_REQUEST="true")

    # then the three pages hold every earlier image exactly once, in order
    seen = shown(page1) + shown(page2) + shown(page3)
    assert seen == [image.pk for image in first]
    assert "<html" not in page2.content.decode()


def test_the_detail_shows_every_parameter_and_the_revision(client, alice):
    image = make_image(alice, "一只小猫在草地上", revised="一只可爱的小猫在绿色草地上", negative="模糊", seed=77)
    html = client.get(f"/gallery/{image.pk}/").content.decode()
    for text in ["Wan 2.2 Flash", "1024 × 1024", "77", "模糊", "alice", "9.0 s", "Reuse prompt",
                 "Reuse with seed", "Use revised prompt", "Download", "Delete", "Copy prompt"]:
        assert text in html, text
    assert "<ins>可爱的</ins>" in html and "<ins>绿色</ins>" in html
    assert f'src="/images/{image.pk}/original/"' in html


def test_the_detail_links_to_its_gallery_neighbours_within_the_search(client, alice):
    older = make_image(alice, "小猫 one", minutes_ago=3)
    make_image(alice, "dog in between", minutes_ago=2)
    middle = make_image(alice, "小猫 two", minutes_ago=1)
    newer = make_image(alice, "小猫 three")
    html = client.get(f"/gallery/{middle.pk}/", {"q": "小猫"}).content.decode()
    assert f'rel="prev" href="/gallery/{newer.pk}/?q=' in html
    assert f'rel="next" href="/gallery/{older.pk}/?q=' in html


def test_relevance_pages_go_on_past_equal_ranks(client, alice):
    # given more equally ranked matches than a page holds
    for i in range(PAGE_SIZE + 5):
        make_image(alice, f"小猫 {i}", minutes_ago=i)

    # when the designer scrolls to the second page of the search
    first = client.get("/gallery/", {"q": "小猫"}).content.decode()
    cursor = re.search(r'cursor=([^"&]+)', first).group(1)
    second = client.get("/gallery/", {"q": "小猫", "cursor": cursor}).content.decode()

    # then it holds the rest, none seen before
    found = re.findall(r'data-image="(\d+)"', first) + re.findall(r'data-image="(\d+)"', second)
    assert len(found) == len(set(found)) == PAGE_SIZE + 5


def tile(html: str, image: Image) -> str:
    """One tile's HTML, from its figure to the next."""
    return re.search(rf'<figure class="tile[^"]*" data-image="{image.pk}">.*?</figure>', html, re.DOTALL).group(0)


def test_a_tile_shows_its_thumbnail_prompt_and_links(client, alice, bob):
    plain = make_image(bob, "a lighthouse at dusk", width=1024, height=576)
    revised = make_image(alice, "a <b>kitten</b> & a teacup", revised="a small kitten beside a teacup", minutes_ago=1)
    Rendition.objects.create(image=plain, spec="grid", file=f"{plain.file}.webp", width=512, height=288, bytes=9)
    Favourite.objects.create(user=alice, image=revised)
    html = client.get("/gallery/", {"q": "kitten", "sort": "newest", "model": "wan2.2-t2i-flash"}).content.decode()
    shown = tile(html, revised)
    assert f'href="/gallery/{revised.pk}/?q=kitten&amp;sort=newest&amp;model=wan2.2-t2i-flash"' in shown
    assert "a &lt;b&gt;<mark>kitten</mark>&lt;/b&gt; &amp; a teacup" in shown  # escaped, then marked
    assert '<span class="tile-missing" aria-hidden="true">1024×1024</span>' in shown  # no thumbnail yet
    assert "alice · 1024×1024 · wan2.2-t2i-flash" in shown
    assert f'href="/?reuse={revised.pk}"' in shown and f'href="/?reuse={revised.pk}&amp;with=seed"' in shown
    assert f'href="/?reuse={revised.pk}&amp;with=revised"' in shown
    assert f'formaction="/gallery/{revised.pk}/favourite/"' in shown and 'aria-pressed="true"' in shown

    shown = tile(client.get("/gallery/").content.decode(), plain)
    assert f'<img src="/images/{plain.pk}/grid/" width="512" height="288" alt="">' in shown
    assert f'href="/gallery/{plain.pk}/"' in shown
    assert "with=revised" not in shown  # no revised prompt to use
    assert 'aria-pressed="false"' in shown


@pytest.mark.parametrize("language", ["en", "zh-hans"])
@pytest.mark.parametrize("prompt", ["cafe\u0301 " * 60, "cafe\u0301 " * 40, "cafe\u0301"])
def test_a_tiles_caption_is_cut_as_truncatechars_cuts_it(client, alice, prompt, language):
    """Combining marks take no place of their own: a decomposed é is one character of the 220 shown (300, 200
    and 5 characters as typed; 240, 160 and 4 as read), and the text comes back composed, cut or not, with the
    reader's language's ellipsis (Django's Chinese catalog has three dots)."""
    image = make_image(alice, prompt)
    shown = tile(client.get("/gallery/", HTTP_ACCEPT_LANGUAGE=language).content.decode(), image)
    with translation.override(language):
        assert f'<span class="tile-prompt">{Truncator(prompt).chars(220)}</span>' in shown


def test_a_tile_makes_no_query_of_its_own(client, alice, bob):
    """What tiles show from other rows (prompt, designer, thumbnail, favourite) comes with the page's images."""
    def queries() -> dict[str, int]:
        counts = {}
        for label, params in [("grid", {}), ("search", {"q": "kitten"}), ("newest", {"q": "kitten", "sort": "newest"})]:
            with CaptureQueriesContext(connection) as captured:
                assert client.get("/gallery/", params).status_code == 200
            counts[label] = len(captured)
        return counts

    images = [make_image(bob if number % 2 else alice, f"kitten number {number}", minutes_ago=number)
              for number in range(PAGE_SIZE + 5)]
    plain = queries()
    for image in images:
        Rendition.objects.create(image=image, spec="grid", file=f"{image.file}.webp", width=512, height=384, bytes=9)
        Favourite.objects.create(user=alice, image=image)
    Image.objects.update(revised_prompt="a kitten, revised")
    assert queries() == plain
    assert plain["grid"] == 3  # the session, the designer, the page


def test_the_cached_filter_row_shows_each_requests_own_filters_errors_and_language(client, alice):
    """The row is a cached fragment (gallery.html): whatever came before, each page shows its own."""
    make_image(alice, "kitten")
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
    newest_portrait = {"shape": "portrait", "sort": "newest"}
    visits = [
        (newest_portrait, {}, ['<option value="portrait" selected>', '<option value="newest" selected>', "Sort"]),
        ({}, {}, ['<option value="portrait">', '<option value="newest">', "Sort"]),
        (newest_portrait, zh, ["排序", '<option value="newest" selected>最新']),
        ({"since": "2020-13-01"}, {}, ['value="2020-13-01" aria-invalid="true" aria-describedby="id_since_error"']),
        ({"since": "2020-12-01"}, {}, ['<input type="date" name="since" value="2020-12-01" id="id_since">']),
        ({"mine": "on"}, {}, ['name="mine" id="id_mine" checked']),
        ({}, {}, ['name="mine" id="id_mine">']),
    ]
    for params, headers, expected in visits * 2:  # the second time round, every row comes from the cache
        html = client.get("/gallery/", params, **headers).content.decode()
        row = re.search(r'<div class="filter-row".*?</div>', html, re.DOTALL).group(0)
        for text in expected:
            assert text in row, (params, headers, text)
        assert ("aria-invalid" in row) == (params.get("since") == "2020-13-01")
        assert ("排序" in row) == (headers == zh)


@pytest.mark.parametrize(("mode", "prompt", "seed"), [
    ("", "一只小猫在草地上", ""), ("seed", "一只小猫在草地上", "77"), ("revised", "一只可爱的小猫", ""),
])
def test_reuse_fills_the_generate_form(client, bob, mode, prompt, seed):
    image = make_image(bob, "一只小猫在草地上", revised="一只可爱的小猫", negative="模糊", model="qwen-image-plus",
                       width=1328, height=1328, seed=77)
    html = client.get("/", {"reuse": image.pk, "with": mode}).content.decode()
    assert re.search(rf'id="id_prompt">\s*{prompt}</textarea>', html)
    assert '<option value="qwen-image-plus" selected>' in html
    assert '<option value="1328*1328" selected>' in html
    assert seed_shown(html) == seed


def test_reuse_of_a_custom_size_fills_width_and_height(client, alice):
    image = make_image(alice, "tall", model="wan2.2-t2i-flash", width=600, height=1400)
    html = client.get("/", {"reuse": image.pk}).content.decode()
    assert '<option value="custom" selected>' in html
    assert 'value="600"' in html and 'value="1400"' in html


def test_favourite_toggles(client, alice, prompts):
    image = prompts["teacup"]
    client.post(f"/gallery/{image.pk}/favourite/")
    assert Favourite.objects.filter(user=alice, image=image).exists()
    client.post(f"/gallery/{image.pk}/favourite/")
    assert not Favourite.objects.filter(user=alice, image=image).exists()


def test_a_tiles_favourite_answers_htmx_with_the_button_in_its_new_state(client, alice, prompts):
    image = prompts["teacup"]
    for pressed, heart in [("true", "♥"), ("false", "♡")]:
        button = client.post(f"/gallery/{image.pk}/favourite/", {"tile": "1"}, HTTP_HX_REQUEST="true")
        html = button.content.decode().strip()
        assert html.startswith('<button class="fav tile-favourite') and html.endswith(f"{heart}</button>")
        assert f'aria-pressed="{pressed}"' in html and f'hx-post="/gallery/{image.pk}/favourite/"' in html
    assert not Favourite.objects.filter(user=alice, image=image).exists()


def test_another_users_image_can_be_viewed_but_not_deleted(client, bob):
    image = make_image(bob, "bob's lighthouse")
    assert client.get(f"/gallery/{image.pk}/").status_code == 200
    assert "Delete" not in client.get(f"/gallery/{image.pk}/").content.decode()
    assert client.post(f"/gallery/{image.pk}/delete/").status_code == 403
    assert Image.objects.filter(pk=image.pk).exists()


def test_staff_can_delete_anyones_image(client, alice, bob, s3):
    alice.is_staff = True
    alice.save()
    image = make_image(bob, "bob's lighthouse")
    assert client.post(f"/gallery/{image.pk}/delete/").status_code == 302
    assert not Image.objects.filter(pk=image.pk).exists()


def test_the_gallery_needs_sign_in(db):
    assert Client().get("/gallery/").status_code == 302


def test_seed_gallery_fills_searchable_rows_without_files(client):
    from django.core.management import call_command

    call_command("seed_gallery", count=300, stdout=io.StringIO())

    assert Generation.objects.count() == 300
    assert Image.objects.count() >= 300
    assert not Image.objects.filter(search__isnull=True).exists()
    assert not Image.objects.filter(renditions__isnull=False).exists()
    chinese = set(shown(client.get("/gallery/", {"q": "小猫", "sort": "newest"})))
    english = set(shown(client.get("/gallery/", {"q": "kittens", "sort": "newest"})))
    assert chinese and english
    assert all("小猫" in Image.objects.get(pk=pk).generation.prompt + Image.objects.get(pk=pk).revised_prompt
               for pk in chinese)
