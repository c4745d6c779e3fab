"""Search sorted by relevance: every match in tiers by where its words are (all in the prompt; in the prompt or
the revised prompt; anywhere) and, within each, the phrase or whole Chinese word before scattered words; newest
first within a tier. The pages, the image page's Previous and Next, the indexes behind each tier, the vectors,
the migration that rebuilt them, and the warm-up."""

import base64
import gc
import html
import importlib
import logging
import re
import socket
from dataclasses import dataclass
from datetime import timedelta

import jieba
import pytest
from django.apps import apps
from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gallery import browse, search, warmup
from gallery.browse import PAGE_SIZE
from gallery.models import Collection, Generation, Image
from tests.test_gallery import NOW, make_image, shown

rebuild_migration = importlib.import_module("gallery.migrations.0006_ranked_search")


def make_images(owner, count: int, prompt: str, revised: str = "", negative: str = "", *,
                minutes_ago=lambda i: i) -> list[Image]:
    """`count` images of one prompt, in two INSERTs and one UPDATE; the i-th made minutes_ago(i) minutes ago."""
    created = [NOW - timedelta(minutes=minutes_ago(i)) for i in range(count)]
    generations = Generation.objects.bulk_create(
        Generation(owner=owner, prompt=prompt, negative_prompt=negative, model="wan2.2-t2i-flash", width=1024,
                   height=1024, seed=5, status="succeeded", created=when, started_at=when, finished_at=when)
        for when in created)
    images = Image.objects.bulk_create(
        Image(generation=generation, owner=owner, model="wan2.2-t2i-flash", shape="square", index=0,
              file=f"generations/{generation.pk}/0.png", width=1024, height=1024, bytes=1000, sha256="0" * 64,
              seed=5, revised_prompt=revised, created=generation.created)
        for generation in generations)
    Image.objects.filter(pk__in=[image.pk for image in images]).update(
        search=search.document(prompt, revised, negative))
    return images


def link(response, pattern: str) -> str | None:
    """The href of the first link matching pattern (its attributes before href), as a browser follows it."""
    found = re.search(rf'<a {pattern} href="([^"]+)"', response.content.decode())
    return html.unescape(found.group(1)) if found else None


def more_link(response) -> str | None:
    """Where the page's "More images" link leads, as a browser without JavaScript follows it."""
    return link(response, 'class="more"')


def every_page(client, params: dict) -> list[list[int]]:
    """The ids on each page of the gallery, following "More images" to the end."""
    response = client.get("/gallery/", params)
    assert response.status_code == 200
    pages = [shown(response)]
    while more := more_link(response):
        response = client.get(more)
        assert response.status_code == 200
        pages.append(shown(response))
        assert len(pages) < 50, "the pages never end"
    return pages


def image_page_walk(client, url: str, rel: str) -> list[int]:
    """The ids of the image pages met from url on, following the image page's `rel` link (next or prev)."""
    walked = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        walked.append(int(re.match(r"/gallery/(\d+)/", url).group(1)))
        url = link(response, f'rel="{rel}"')
        assert len(walked) < 500, "the walk never ends"
    return walked


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


# --- ranking -------------------------------------------------------------------------------------------------


def test_a_chinese_word_in_the_prompt_outranks_it_in_the_revision_which_outranks_it_in_the_negative(client, alice):
    # given the same word in one field each, the weakest place the newest, so that dates alone would reverse them
    in_prompt = make_image(alice, "红色灯笼挂在门口", minutes_ago=3)
    in_revision = make_image(alice, "门口的夜景", revised="红色灯笼挂在门口", minutes_ago=2)
    in_negative = make_image(alice, "门口的夜景", negative="红色灯笼挂在门口", minutes_ago=1)

    # when the designer searches for it, most relevant first
    found = shown(client.get("/gallery/", {"q": "灯笼"}))

    # then the prompt comes first and the negative prompt last
    assert found == [in_prompt.pk, in_revision.pk, in_negative.pk]


def test_a_whole_chinese_word_outranks_its_character_pairs_scattered(client, alice):
    # given 青花瓷 itself, and 青花 and 花瓷 far apart in a newer image
    word = make_image(alice, "青花瓷茶杯放在木桌上", minutes_ago=2)
    scattered = make_image(alice, "青花图案的盘子旁边放着一只小小的花瓷碗", minutes_ago=1)

    found = shown(client.get("/gallery/", {"q": "青花瓷"}))

    assert found == [word.pk, scattered.pk]


def test_an_english_phrase_outranks_its_words_far_apart(client, alice):
    # given the phrase, and its words far apart in a newer image
    phrase = make_image(alice, "a lighthouse at golden hour", minutes_ago=2)
    apart = make_image(alice, "golden fields stretch for miles toward a quiet village in the last hour",
                       minutes_ago=1)

    found = shown(client.get("/gallery/", {"q": "golden hour"}))

    assert found == [phrase.pk, apart.pk]


def test_the_best_match_comes_first_however_old_it_is(client, alice):
    # given many newer weak matches (the word only in their negative prompts) and one old strong match
    strong = make_image(alice, "红色灯笼挂在门口", minutes_ago=60 * 24 * 365)
    weak = make_images(alice, 260, "门口的夜景", negative="灯笼", minutes_ago=lambda i: i)

    # when the designer searches, most relevant first
    response = client.get("/gallery/", {"q": "灯笼"})

    # then the old image leads the page, followed by the newest weak ones
    assert shown(response)[:3] == [strong.pk, weak[0].pk, weak[1].pk]


@dataclass(frozen=True)
class Placed:
    """Where a test puts a query's words in an image, and the tier that placing earns (0 the best): all in the
    prompt (0, 1), all in the prompt or the revised prompt (2, 3), anywhere (4, 5); in each, the phrase or
    the whole Chinese word (0, 2, 4) before the words or pairs scattered (1, 3, 5)."""

    tier: int | None  # None: not a match
    prompt: str
    revised: str = ""
    negative: str = ""


PLACES = {
    "golden hour": [
        Placed(0, "a lighthouse at golden hour"),
        Placed(0, "golden hour over the bay", negative="golden fields"),
        Placed(1, "golden fields stretch toward the last hour of the day"),
        # the prompt holds every word: that beats the phrase in the revision or the negative prompt
        Placed(1, "golden fields at the last hour", revised="a lighthouse at golden hour", negative="golden hour"),
        Placed(2, "a lighthouse by the sea", revised="a lighthouse at golden hour"),
        Placed(2, "golden fields", revised="golden hour on the water"),
        # one word in each field: all in the prompt or revision, never side by side
        Placed(3, "golden fields", revised="the last hour of the day"),
        Placed(3, "a quiet bay", revised="golden light in the last hour"),
        Placed(4, "a night street", negative="golden hour"),
        Placed(4, "golden fields", negative="blurry golden hour"),
        Placed(5, "golden fields", negative="the last hour"),
        Placed(5, "a quiet bay", revised="golden light", negative="hour"),
        Placed(None, "golden fields"),
        Placed(None, "a night street", revised="the hour of the wolf"),
    ],
    "青花瓷": [
        Placed(0, "青花瓷茶杯放在木桌上"),
        Placed(0, "一只青花瓷碗", negative="青花图案"),
        Placed(1, "青花图案的盘子旁边放着一只小小的花瓷碗"),
        Placed(1, "青花图案和花瓷碗", revised="青花瓷茶杯", negative="青花瓷"),
        Placed(2, "木桌上的茶杯", revised="木桌上的青花瓷瓶"),
        Placed(2, "青花图案", revised="一只青花瓷碗"),
        Placed(3, "青花图案的盘子", revised="小小的花瓷碗"),
        Placed(3, "花瓷碗", revised="青花图案"),
        Placed(4, "夜晚的街道", negative="青花瓷茶杯"),
        Placed(4, "青花图案", negative="模糊的青花瓷"),
        Placed(5, "青花图案的盘子", negative="小小的花瓷碗"),
        Placed(5, "木桌", revised="青花图案", negative="花瓷"),
        Placed(None, "青花图案的盘子"),
        Placed(None, "瓷碗", revised="青花图案", negative="瓷花"),
    ],
}


def place(owners, q: str, per_place) -> dict[int, int]:
    """Images for each placing of q's words, per_place(tier) of each: a tier's images share minutes with each
    other and with the next tier's, and worse tiers are newer, so newest first alone would order them the
    other way round. Returns the tier of each match, by id."""
    tiers = {}
    for number, placed in enumerate(PLACES[q]):
        start = 2 * (6 - placed.tier) if placed.tier is not None else number
        images = make_images(owners[number % 2], per_place(placed.tier), placed.prompt, placed.revised,
                             placed.negative, minutes_ago=lambda i, start=start: start + i // 4)
        if placed.tier is not None:
            tiers |= {image.pk: placed.tier for image in images}
    return tiers


def best_first(tiers: dict[int, int]) -> list[int]:
    """The matches in the order "Most relevant" promises: by tier, then newest first, then the higher id."""
    created = dict(Image.objects.values_list("id", "created"))
    return sorted(tiers, key=lambda pk: (tiers[pk], -created[pk].timestamp(), -pk))


def newest_first(ids) -> list[int]:
    created = dict(Image.objects.values_list("id", "created"))
    return sorted(ids, key=lambda pk: (created[pk], pk), reverse=True)


@pytest.mark.parametrize("q", PLACES)
def test_relevance_pages_visit_every_match_once_tier_by_tier_newest_first(client, alice, bob, q):
    # given more matches in six tiers (two kinds: phrase and scattered) than the first look reads, 16 to 26 a
    # tier, four made each minute, the worse tiers newer, and near misses among them
    counts = {0: 24, 1: 20, 2: 18, 3: 24, 4: 16, 5: 26, None: 10}
    tiers = place((alice, bob), q, counts.get)
    assert len(tiers) > browse.SAMPLE_PER_KIND * 2 and set(tiers.values()) == set(range(6))

    # when the designer scrolls through every page, most relevant first
    pages = every_page(client, {"q": q})

    # then each match comes once, tier by tier, and newest first within a tier (the higher id first on a tie)
    assert [len(page) for page in pages] == [PAGE_SIZE] * (len(tiers) // PAGE_SIZE) + [len(tiers) % PAGE_SIZE]
    assert [pk for page in pages for pk in page] == best_first(tiers)

    # and newest first, the same matches come once each by date
    newest = [pk for page in every_page(client, {"q": q, "sort": "newest"}) for pk in page]
    assert newest == newest_first(tiers)


def test_a_single_word_has_three_tiers_across_pages(client, alice, bob):
    # given a word in the prompt (the oldest), in the revision, and in the negative prompt (the newest), five
    # images a minute and the tiers' minutes overlapping, more than two pages of them
    fields = [("红色灯笼挂在门口", "", ""), ("门口的夜景", "红色灯笼", ""), ("门口的夜景", "", "灯笼")]
    tiers = {}
    for tier, texts in enumerate(fields):
        made = make_images((alice, bob)[tier % 2], 25, *texts, minutes_ago=lambda i, t=tier: 9 - 3 * t + i // 5)
        tiers |= {image.pk: tier for image in made}

    # when the designer scrolls through every page, most relevant first
    pages = every_page(client, {"q": "灯笼"})

    # then the prompt's matches come first, then the revision's, then the negative prompt's, each newest first
    assert [pk for page in pages for pk in page] == best_first(tiers)
    assert [len(page) for page in pages] == [PAGE_SIZE, PAGE_SIZE, 15]


@pytest.mark.parametrize("sort", ["", "newest"])
@pytest.mark.parametrize("q", PLACES)
def test_the_image_pages_previous_and_next_walk_the_gallerys_order(client, alice, bob, q, sort):
    # given three or four images of each placing, more than a page, crossing every tier's boundary
    tiers = place((alice, bob), q, lambda tier: 3 + (tier or 0) % 2)
    params = {"q": q, "sort": sort} if sort else {"q": q}
    order = [pk for page in every_page(client, params) for pk in page]
    assert order == (newest_first(tiers) if sort else best_first(tiers))

    # when the designer opens the first image from the gallery and presses Next to the end, then Previous back
    first = link(client.get("/gallery/", params), 'class="tile-link"')
    forwards = image_page_walk(client, first, "next")
    backwards = image_page_walk(client, re.sub(r"/gallery/\d+/", f"/gallery/{forwards[-1]}/", first), "prev")

    # then the image pages go through the same order as the gallery's pages, both ways
    assert forwards == order
    assert backwards == order[::-1]


@pytest.mark.parametrize(("q", "indexes"), [
    ("灯笼", ["image_search_prompt", "image_search_main", "image_search"]),
    ("golden hour", ["image_search_prompt"] * 2 + ["image_search_main"] * 2 + ["image_search"] * 2),
    ("青花瓷", ["image_search_prompt"] * 2 + ["image_search_main"] * 2 + ["image_search"] * 2),
])
def test_each_tier_is_read_from_the_index_of_its_fields(alice, q, indexes):
    # given matches of every kind (the index is asked for a tier's matches when the newest rows don't hold them)
    make_images(alice, 5, "红色灯笼 a lighthouse at golden hour, 青花瓷", negative="blurry")
    make_images(alice, 5, "夜景 golden fields", revised="灯笼 青花图案", negative="the last hour, 花瓷碗")
    query = search.parse(q)
    assert len(query.tiers()) == len(indexes)

    for tier, index in enumerate(indexes):
        sql, params = browse._Match(query, tier).among(Image.objects.all()).values("id", "created") \
            .query.sql_with_params()
        # when PostgreSQL plans the tier's query (reading a table this small whole is cheaper, which says nothing
        # of a million rows: pricing that out, for this transaction only, asks which index serves the tier)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())

        # then the index over the tier's fields finds its matches
        assert re.search(rf"Index Scan on {index}\b", plan), f"tier {tier}:\n{plan}"


@pytest.mark.parametrize("sort", ["", "newest"])
@pytest.mark.parametrize("q", ["unicorn", "独角兽", "独角兽 unicorn", "silver lantern", "灯笼 moon", "the", "the of",
                               "麒麟瓷器"])
def test_a_search_that_matches_nothing_shows_an_empty_page(client, alice, q, sort):
    # given images, none of which holds all the words (or only stop words were typed)
    make_images(alice, 40, "红色灯笼 a red lantern at golden hour", revised="warm light", negative="blurry")
    make_image(alice, "a silver moon", negative="瓷器")

    response = client.get("/gallery/", {"q": q, "sort": sort})

    assert response.status_code == 200
    assert shown(response) == [] and more_link(response) is None


def cursor_token(created: str, pk: str, tier: str) -> str:
    """A page cursor as the gallery writes one, with whatever parts a hostile link holds."""
    return base64.urlsafe_b64encode(f"{created}|{pk}|{tier}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(("cursor", "status"), [
    (cursor_token(NOW.isoformat(), "9999999", "-1"), 400),
    (cursor_token(NOW.isoformat(), "9999999", str(browse.MAX_TIERS)), 400),
    (cursor_token(NOW.isoformat(), "9999999", "99999999999999999999999999"), 400),
    (cursor_token(NOW.isoformat(), "9999999", "1.5"), 400),
    (cursor_token(NOW.isoformat(), "9999999", "２"), None),  # int() reads other digits: tier 2, a real one
    (cursor_token(NOW.isoformat(), "9999999", str(browse.MAX_TIERS - 1)), None),  # in range, past this query's
    (cursor_token((NOW + timedelta(days=1)).isoformat(), "1", "3"), None),
    (cursor_token(NOW.isoformat(), "9999999", ""), None),  # a newest-first page's cursor
    (cursor_token("0001-01-01T00:00:00+00:00", "1", "0"), 400),
])
def test_a_hostile_relevance_cursor_gets_a_400_or_a_page_of_matches(client, alice, bob, cursor, status):
    # given a single word's three tiers of matches (more than a page) and images that don't match
    tiers = {}
    for tier, fields in enumerate([("红色灯笼", "", ""), ("门口的夜景", "红色灯笼", ""), ("门口的夜景", "", "灯笼")]):
        tiers |= {image.pk: tier for image in make_images((alice, bob)[tier % 2], 15, *fields)}
    make_images(bob, 5, "蓝色的海")

    # when a link carries a cursor that the gallery never wrote for this search
    response = client.get("/gallery/", {"q": "灯笼", "cursor": cursor})

    # then it's refused as a broken link, or it's a page of this search's matches, and its pages end
    assert response.status_code in ({400} if status == 400 else {200})
    found = shown(response)
    assert set(found) <= set(tiers) and len(found) == len(set(found))
    if status == 400:
        assert 'class="error" role="alert"' in response.content.decode()
        return
    seen = list(found)
    while more := more_link(response):
        response = client.get(more)
        assert response.status_code == 200
        seen += shown(response)
        assert len(seen) <= 2 * len(tiers), "the pages never end"
    assert set(seen) <= set(tiers) and len(seen) == len(set(seen))


@pytest.mark.parametrize(("pages", "tier"), [(1, 1), (3, 5)])
def test_a_cursor_from_another_search_gets_a_page_of_this_ones_matches(client, alice, bob, pages, tier):
    # given a phrase's six tiers of matches, 16 each, and a word's three, of the same minutes; and the cursor
    # after a page of the phrase's, in one of its tiers (the last past the word's tiers)
    place((alice, bob), "golden hour", lambda tier: 8)
    word = {}
    for number, texts in enumerate([("红色灯笼", "", ""), ("门口的夜景", "红色灯笼", ""), ("门口的夜景", "", "灯笼")]):
        word |= {image.pk: number for image in make_images(alice, 12, *texts, minutes_ago=lambda i: 5 + i)}
    response = client.get("/gallery/", {"q": "golden hour"})
    for _ in range(pages - 1):
        response = client.get(more_link(response))
    cursor = browse.Cursor.decode(re.search(r"cursor=([^&]+)", more_link(response)).group(1))
    assert cursor.tier == tier

    # when it is sent with the word's search
    response = client.get("/gallery/", {"q": "灯笼", "cursor": cursor.encode()})

    # then the page holds only the word's matches, once each; from the cursor's place on in the word's order when
    # the word has that tier
    assert response.status_code == 200
    found = shown(response)
    assert set(found) <= set(word) and len(found) == len(set(found))
    if tier < 3:
        created = dict(Image.objects.values_list("id", "created"))
        after = [pk for pk in best_first(word)
                 if word[pk] > tier or (word[pk] == tier and (created[pk], pk) < (cursor.created, cursor.id))]
        assert found == after[:PAGE_SIZE] and found


# --- the window and the index ----------------------------------------------------------------------------------


@pytest.fixture
def index_asked(monkeypatch):
    """Pages of 4 and a window of 40 images, so that a few dozen images fill it; returns a list that says
    "the index" each time the index is asked for matches."""
    for name, value in [("PAGE_SIZE", 4), ("SAMPLE_PER_KIND", 8), ("WINDOW", 40), ("COLLECTION_WINDOW", 40)]:
        monkeypatch.setattr(browse, name, value)
    asked, indexed_ids = [], browse._indexed_ids

    def ask_index(*args, **kwargs):
        asked.append("the index")
        return indexed_ids(*args, **kwargs)

    monkeypatch.setattr(browse, "_indexed_ids", ask_index)
    return asked


def filter_to_mine(alice, images) -> dict:
    return {"mine": "on"}


def filter_to_a_collection(alice, images) -> dict:
    collection = Collection.objects.create(owner=alice, name="Lanterns")
    collection.add([image.pk for image in images])
    return {"collection": collection.pk}


@pytest.mark.parametrize("sort", ["", "newest"])
@pytest.mark.parametrize("narrowed", [filter_to_mine, filter_to_a_collection])
def test_a_search_among_fewer_images_than_the_window_asks_no_index(client, alice, bob, index_asked, narrowed, sort):
    # given 3 matches among a designer's 8 images (a collection of them, or their own), and a colleague's 100
    # matches, all newer: more than a page and a window of them in the whole gallery
    mine = make_images(alice, 3, "a red lantern by the gate", minutes_ago=lambda i: 200 + 2 * i)
    others = make_images(alice, 5, "a quiet bay at noon", minutes_ago=lambda i: 201 + 2 * i)
    make_images(bob, 100, "a red lantern by the gate")
    params = {"q": "lantern", **narrowed(alice, [*mine, *others]), **({"sort": sort} if sort else {})}

    # when the designer searches among them, and opens the first match's page
    pages = every_page(client, params)
    response = client.get(f"/gallery/{mine[0].pk}/", params)

    # then the window held every one of them: the three come, and no index was asked for more
    assert pages == [[image.pk for image in mine]]
    assert link(response, 'rel="next"') is not None and link(response, 'rel="prev"') is None
    assert index_asked == []


@pytest.mark.parametrize("narrowing", [{}, {"mine": "on"}])
def test_a_search_among_more_images_than_the_window_asks_the_index(client, alice, index_asked, narrowing):
    # given 3 matches among the newest 40 images and 2 older ones, all the designer's own
    ages = [0, 10, 20, 45, 60]
    matches = make_images(alice, len(ages), "a red lantern by the gate", minutes_ago=lambda i: ages[i])
    make_images(alice, 60, "a quiet bay at noon", minutes_ago=lambda i: 1 + i if i < 39 else 100 + i)

    # when the designer searches the whole gallery, or their own images
    pages = every_page(client, {"q": "lantern", "sort": "newest", **narrowing})

    # then the index finds the older two
    assert [pk for page in pages for pk in page] == [image.pk for image in matches]
    assert "the index" in index_asked


def test_the_image_pages_cross_tiers_the_window_does_not_hold(client, alice, bob, index_asked):
    # given a word in the negative prompt of the newest images, then a window of images without it, the word in
    # the prompt and in the revision of older ones, and a window of images without it older still: the newest
    # and the oldest windows hold no match of the prompt's or the revision's tier
    negative = make_images(alice, 3, "门口的夜景", negative="灯笼", minutes_ago=lambda i: i)
    make_images(bob, 45, "a quiet bay at noon", minutes_ago=lambda i: 10 + i)
    prompt = make_images(alice, 5, "红色灯笼挂在门口", minutes_ago=lambda i: 100 + i)
    revised = make_images(bob, 5, "门口的夜景", "红色灯笼", minutes_ago=lambda i: 102 + i)
    make_images(bob, 45, "a quiet bay at noon", minutes_ago=lambda i: 200 + i)
    order = best_first({image.pk: tier for tier, images in enumerate([prompt, revised, negative]) for image in images})
    assert [pk for page in every_page(client, {"q": "灯笼"}) for pk in page] == order

    # when the designer opens the first match's page and presses Next to the end, then Previous back
    forwards = image_page_walk(client, f"/gallery/{order[0]}/?q=灯笼", "next")
    backwards = image_page_walk(client, f"/gallery/{order[-1]}/?q=灯笼", "prev")

    # then the image pages cross from tier to tier in the gallery's order both ways, the index finding the tiers
    # that the windows don't hold
    assert forwards == order
    assert backwards == order[::-1]
    assert "the index" in index_asked


# --- the vectors -------------------------------------------------------------------------------------------------

CJK_CHARACTER = re.compile(search.CJK_RUN.pattern[:-1])  # one character of a Chinese run
HOSTILE = st.lists(st.one_of(
    st.characters(exclude_categories=["Cs"]),
    st.sampled_from(["'", '"', "\\", ":", ",", ";", "!", "&", "|", "(", ")", "*", " ", "\t", "\n", "''", "\\'",
                     "':1", "'a':1A", ":1,2"]),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4E20),  # few characters, so pairs and words repeat
    st.sampled_from(["青花瓷", "茶杯", "草地", "小猫", "灯笼", "\u3400", "\u4dbf", "\uf900", "\ufaff", "\u9fff"]),
), max_size=200).map("".join)


def parsed(vector: str) -> dict[str, list[int]]:
    """The lexemes and positions PostgreSQL reads from a tsvector's text form."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT lexeme, positions FROM unnest(%s::tsvector)", [vector])
        return {lexeme: positions for lexeme, positions in cursor.fetchall()}


def written(vector: str) -> dict[str, list[int]]:
    """The positions cjk_vector wrote for each lexeme (before PostgreSQL caps anything itself)."""
    return {lexeme: [int(p) for p in places.split(",")]
            for lexeme, places in re.findall(r"'([^']+)':([0-9,]+)", vector)}


def expected_characters_and_pairs(text: str) -> dict[str, list[int]]:
    """Every Chinese character and each pair of neighbours, at its 1-based offset in the whole text."""
    found: dict[str, set[int]] = {}
    for offset, char in enumerate(text):
        if CJK_CHARACTER.match(char):
            found.setdefault(char, set()).add(min(offset + 1, search.MAX_POSITION))
            if offset + 1 < len(text) and CJK_CHARACTER.match(text[offset + 1]):
                found.setdefault(text[offset:offset + 2], set()).add(min(offset + 1, search.MAX_POSITION))
    return {lexeme: sorted(places)[:search.MAX_POSITIONS] for lexeme, places in found.items()}


def test_chinese_lexemes_sit_at_their_characters_offsets_in_mixed_text(db):
    text = "a kitten 小猫 in 草地, 小猫"
    vector = search.cjk_vector(text)

    positions = parsed(vector)

    assert positions["小猫"] == [10, 20] and positions["小"] == [10, 20] and positions["猫"] == [11, 21]
    assert positions["草地"] == [16] and positions["地"] == [17]
    assert "猫在" not in positions and "a" not in positions  # no pair across Latin text; no Latin at all


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=HOSTILE)
@example(text="'" + "草" * 300 + "\\':")
@example(text="x" * 16380 + "青花瓷茶杯" * 3)
def test_any_text_makes_a_vector_postgresql_reads_back_as_written(db, text):
    vector = search.cjk_vector(text)

    positions = parsed(vector)  # never raises

    assert set(positions) == set(written(vector)) == set(search.cjk_positions(text))
    assert all(len(places) <= search.MAX_POSITIONS and max(places) <= search.MAX_POSITION
               for places in written(vector).values())
    for lexeme, places in positions.items():
        assert places == written(vector)[lexeme]
        # every lexeme starts where it says (below the cap, where PostgreSQL can tell)
        assert all(text[place - 1:place - 1 + len(lexeme)] == lexeme
                   for place in places if place < search.MAX_POSITION)
    assert {lexeme: places for lexeme, places in positions.items() if len(lexeme) <= 2} == \
        expected_characters_and_pairs(text)


def test_long_chinese_texts_are_capped_at_the_last_position_and_256_places_a_lexeme(db):
    # given a run of Chinese longer than a tsvector can place, after Latin text, that ends in 龙凤
    text = "a" * 100 + "".join(chr(0x4E00 + i % 13) for i in range(20_000)) + "龙凤"

    vector = search.cjk_vector(text)

    # then what lies past the last position sits on it, and a lexeme keeps its first 256 places
    written_positions = written(vector)
    assert written_positions["龙"] == written_positions["龙凤"] == written_positions["凤"] == [search.MAX_POSITION]
    assert written_positions[chr(0x4E00)] == [101 + 13 * i for i in range(search.MAX_POSITIONS)]
    assert max(len(places) for places in written_positions.values()) == search.MAX_POSITIONS
    assert parsed(vector) == written_positions


def old_vector_sql(prompt: str, revised: str, negative: str) -> tuple[str, list]:
    """A vector as 0005 stored it: Chinese lexemes without positions (so without weights either)."""
    parts, params = [], []
    for text, weight in ((prompt, "A"), (revised, "B"), (negative, "C")):
        parts.append(f"setweight(to_tsvector('english', %s), '{weight}') || array_to_tsvector(%s::text[])")
        params += [search.latin_text(text), sorted(search.cjk_positions(text))]
    return " || ".join(parts), params


def test_the_migration_rebuilds_old_vectors_with_chinese_positions(alice, monkeypatch):
    # given images whose vectors were stored the old way, more than a batch of them
    texts = [("一只小猫在草地上奔跑", "一只可爱的小猫在草地上", "模糊"), ("a kitten 小猫", "", "blurry 模糊"),
             ("青花瓷茶杯", "青花瓷茶杯，柔和光线", ""), ("golden hour", "golden hour, warm", "文字"), ("雪山", "", "")]
    images = [make_image(alice, *fields) for fields in texts]
    for image, fields in zip(images, texts, strict=True):
        sql, params = old_vector_sql(*fields)
        Image.objects.filter(pk=image.pk).update(search=RawSQL(sql, params))
    monkeypatch.setattr(rebuild_migration, "BATCH", 2)

    # when the migration's data step runs
    with connection.schema_editor() as editor:
        rebuild_migration.rebuild_vectors(apps, editor)

    # then each vector is what a new image of the same texts gets
    for image, fields in zip(images, texts, strict=True):
        document = search.document(*fields)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT search::text, ({document.sql})::text FROM gallery_image WHERE id = %s",
                           [*document.params, image.pk])
            stored, expected = cursor.fetchone()
        assert stored == expected
    assert "'草地':6A," in Image.objects.values_list("search", flat=True).get(pk=images[0].pk)


def test_rebuilt_vectors_put_a_word_in_the_prompt_in_a_better_tier_than_in_the_negative(client, alice):
    # given old vectors, whose Chinese lexemes have no weight, so the prompt's word is no better placed than the
    # negative prompt's, and the newer image comes first
    in_prompt = make_image(alice, "红色灯笼", minutes_ago=2)
    in_negative = make_image(alice, "夜景", negative="红色灯笼", minutes_ago=1)
    for image, fields in ((in_prompt, ("红色灯笼", "", "")), (in_negative, ("夜景", "", "红色灯笼"))):
        sql, params = old_vector_sql(*fields)
        Image.objects.filter(pk=image.pk).update(search=RawSQL(sql, params))
    assert in_prompt_weight("灯笼") == set()
    assert shown(client.get("/gallery/", {"q": "灯笼"})) == [in_negative.pk, in_prompt.pk]

    # when the migration's data step runs
    with connection.schema_editor() as editor:
        rebuild_migration.rebuild_vectors(apps, editor)

    # then the word in the prompt is weighted as the prompt's, and the older image with it there comes first
    assert in_prompt_weight("灯笼") == {in_prompt.pk}
    assert shown(client.get("/gallery/", {"q": "灯笼"})) == [in_prompt.pk, in_negative.pk]


def in_prompt_weight(lexeme: str) -> set[int]:
    """The images whose vectors hold lexeme with the prompt's weight, A."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM gallery_image WHERE ts_filter(search, '{a}') @@ to_tsquery('simple', %s)",
                       [lexeme])
        return {row[0] for row in cursor.fetchall()}


# --- the warm-up -------------------------------------------------------------------------------------------------


@pytest.fixture
def cold_jieba():
    """jieba as a new process has it: its dictionary not loaded yet."""
    jieba.dt.initialized = False
    yield
    jieba.initialize()
    gc.unfreeze()  # warm() freezes what the process holds, which a test process must not keep doing


def test_the_warm_up_loads_jieba_and_runs_the_gallerys_queries(transactional_db, alice, cold_jieba, caplog):
    make_image(alice, "一只小猫 a kitten")

    with caplog.at_level(logging.INFO, logger="gallery.warmup"):
        timings = warmup.warm()

    assert set(timings) == {"jieba", "templates", "database"} and all(ms > 0 for ms in timings.values())
    assert jieba.dt.initialized
    assert re.search(r"^warm-up: jieba \d+ ms, templates \d+ ms, database \d+ ms$", caplog.messages[-1])


def test_the_warm_up_starts_the_studio_without_its_database(transactional_db, cold_jieba, caplog):
    # given a database that doesn't answer (it may come up after the web server)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens on it: bound, never listening
        database = connection.settings_dict
        saved = database["PORT"]
        connection.close()
        database["PORT"] = port
        try:
            # when a worker warms up
            with caplog.at_level(logging.INFO, logger="gallery.warmup"):
                timings = warmup.warm()
        finally:
            database["PORT"] = saved
            connection.close()

    # then jieba is ready, the database part is skipped with a warning, and nothing raised
    assert set(timings) == {"jieba", "templates"} and jieba.dt.initialized
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["warm-up: database skipped: OperationalError"]
    assert re.search(r"^warm-up: jieba \d+ ms, templates \d+ ms$", caplog.messages[-1])
    assert Image.objects.count() == 0  # and the connection works again afterwards
