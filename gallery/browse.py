"""Pages of the gallery: filters, search and keyset pagination, never OFFSET.

Newest-first pages continue after the last (created, id) seen, so an image
that arrives between two pages can neither repeat nor push one out.

"Most relevant" goes through every match, tier by tier (search.Query.tiers):
the terms in the prompt before the prompt or revised prompt before anywhere,
whole Chinese words before scattered character pairs; newest first within a
tier. Each tier is searched as a newest-first search is, with a GIN index of
its own, and pages continue after the last (tier, created, id).

PostgreSQL misjudges how many rows a search of several lexemes matches (it
takes them as independent; 青花 and 花瓷 never are), and then either walks the
whole table newest-first for a query that matches nothing or sorts tens of
thousands of matches. So a search looks first among the newest WINDOW rows,
where common words fill a page, and only then asks the index for all
matches. bench/RESULTS.md has the figures at 1M generations.
"""

import base64
import binascii
import functools
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.db import connection
from django.db.models import BooleanField, F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from gallery.models import Image, ImageQuerySet
from gallery.search import FIELDS, Query

PAGE_SIZE = 30
MAX_TIERS = 2 * len(FIELDS)
WINDOW = 10_000
# A collection's newest images are read through its items, one heap page each rather than the gallery's
# newest rows side by side, so its window is smaller.
COLLECTION_WINDOW = 2_000
# The first look at the newest matches reads two pages of them per kind of match (search.Query.tiers: words
# alone, or as a phrase and scattered too): enough that a common word's best tier fills a page there, few enough
# that a word in one image of fifty is found without reading the whole window.
SAMPLE_PER_KIND = 2 * PAGE_SIZE


@dataclass(frozen=True)
class Cursor:
    created: datetime
    id: int
    tier: int | None = None  # of a search by relevance (search.Query.tiers)

    def encode(self) -> str:
        text = f"{self.created.isoformat()}|{self.id}|{'' if self.tier is None else self.tier}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor | None":
        """The cursor in token, or None for anything that isn't one of ours."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            created, pk, tier = text.split("|")
            cursor = cls(datetime.fromisoformat(created), int(pk), int(tier) if tier else None)
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
            return None
        sane = (cursor.created.tzinfo is not None and 1900 <= cursor.created.year <= 9998
                and 0 < cursor.id < 2**63 and (cursor.tier is None or 0 <= cursor.tier < MAX_TIERS))
        return cursor if sane else None


@dataclass
class Page:
    images: list[Image]
    next_cursor: str | None


def filtered(user, filters: dict) -> ImageQuerySet:
    images = Image.objects.all()
    if filters.get("model"):
        images = images.filter(model=filters["model"])
    if filters.get("shape"):
        images = images.filter(shape=filters["shape"])
    if filters.get("mine"):
        images = images.filter(owner=user)
    if filters.get("favourites"):
        images = images.filter(favourites__user=user)
    if filters.get("collection"):
        images = images.in_collection(filters["collection"])
    zone = timezone.get_current_timezone()
    if filters.get("since"):
        images = images.filter(created__gte=datetime.combine(filters["since"], time.min, zone))
    if filters.get("until"):
        images = images.filter(created__lt=datetime.combine(filters["until"] + timedelta(days=1), time.min, zone))
    return images


def page(user, filters: dict, query: Query, cursor: Cursor | None) -> Page:
    images = filtered(user, filters)
    if _by_relevance(filters, query):
        return _relevant(images, query, cursor, user)
    if cursor:
        images = images.before(cursor.created, cursor.id)
    if query.is_empty:
        return _page(list(images.newest_first().for_tiles(user)[: PAGE_SIZE + 1]))
    return _page(_in_order(matching_ids(images, _Match(query), PAGE_SIZE + 1), user))


def matching_ids(images, match: "_Match", limit: int, *, oldest_first: bool = False) -> list[int]:
    """Ids of the newest images that `match` finds, newest first (or the oldest, oldest first), up to `limit`."""
    window_sql, window_params = _window(images, oldest_first)
    match_sql, match_params = match.sql("w.search", screened=True)
    order = "ASC" if oldest_first else "DESC"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT w.id FROM ({window_sql}) w WHERE {match_sql} ORDER BY w.at {order}, w.key {order} LIMIT %s",
            [*window_params, *match_params, limit],
        )
        ids = [row[0] for row in cursor.fetchall()]
    return ids if len(ids) >= limit or _window_holds_all(images) else _indexed_ids(images, match, limit, order)


def _window_holds_all(images) -> bool:
    """Whether the window holds every one of images: a filter to fewer images than its size, such as a
    collection of a few hundred or a new designer's own. Then its matches are all the matches, and no index
    is asked for more (it would read every match of the words in the whole gallery). Not asked of the whole
    gallery unfiltered, which a studio soon fills past the window; a page after a cursor is asked (one index
    read of up to the window's size)."""
    size = _window_size(images)
    return images.query.has_filters() and not images[size - 1:size].exists()


def _window_size(images) -> int:
    return WINDOW if images.page_keys()[0] == "created" else COLLECTION_WINDOW


def _window(images, oldest_first: bool = False) -> tuple[str, list]:
    """The newest (or oldest) WINDOW images as SQL with columns id, search and the (at, key) they are ordered
    by: (created, id), or a collection item's copy of them, so that the order is the index's."""
    at, key = images.page_keys()
    ordered = images.newest_first().reverse() if oldest_first else images.newest_first()
    return ordered.values("id", "search", at=F(at), key=F(key))[:_window_size(images)].query.sql_with_params()


def _indexed_ids(images, match: "_Match", limit: int, order: str = "DESC") -> list[int]:
    """Rare in the newest rows: the GIN indexes find every match, and the newest (or oldest) are taken."""
    # Unordered inside: Image's own ordering (by its generation's date) would join every match's generation.
    all_sql, all_params = match.among(images).order_by().values("id", "created").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH m AS MATERIALIZED ({all_sql}) SELECT id FROM m ORDER BY created {order}, id {order} LIMIT %s",
            [*all_params, limit],
        )
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True)
class _Match:
    """Images whose search vector matches `query` (every term, anywhere). With `tier`, those that match in
    that tier's way (search.Query.tiers) and in no better tier's; with `onwards` too, those in that tier
    or a worse one."""

    query: Query
    tier: int | None = None
    onwards: bool = False

    def sql(self, column: str, *, screened: bool = False) -> tuple[str, list]:
        """The condition on the vector in `column`. With `screened`, a tier's own test comes after the test of
        the whole vector, which every match passes: where rows are tested one by one, as in a window, that test
        is cheap and turns most rows away before ts_filter copies their vector (a window holding none of a
        tier's matches: 21 → 10.5 ms at 1M). An index is asked without it, so that a tier keeps its own."""
        anywhere = self.query.anywhere().sql(column)
        if self.tier is None:
            return anywhere
        *better, this = [tier.sql(column) for tier in self.query.tiers()[: self.tier + 1]]
        if self.onwards:
            this = anywhere
        elif screened and this != anywhere:
            this = (f"{anywhere[0]} AND {this[0]}", [*anywhere[1], *this[1]])
        if not better:
            return this
        return (f"{this[0]} AND NOT coalesce({' OR '.join(sql for sql, _ in better)}, false)",
                [*this[1], *(param for _, params in better for param in params)])

    def among(self, images) -> ImageQuerySet:
        return images.filter(RawSQL(*self.sql(f'"{Image._meta.db_table}"."search"'), output_field=BooleanField()))


def matching(images, query: Query) -> ImageQuerySet:
    """The images among `images` that the search matches, in any tier."""
    return _Match(query).among(images)


def _tier_sql(query: Query, column: str) -> tuple[str, list]:
    """Which tier a match is in (the last when none before it: every match is in that one)."""
    *cases, _ = [tier.sql(column) for tier in query.tiers()]
    whens = " ".join(f"WHEN {condition} THEN {number}" for number, (condition, _) in enumerate(cases))
    return f"CASE {whens} ELSE {len(cases)} END", [param for _, params in cases for param in params]


def neighbours(user, filters: dict, query: Query, image: Image) -> tuple[Image | None, Image | None]:
    """The images just before and after `image` in the gallery's order for these filters and search: the
    Previous and Next of its page. Newest first, or best first when the gallery ranks the search. Each is
    looked for as a page is (matching_ids within a tier, _best past a tier's last image), so a search's rare or
    empty tier costs no walk of the table, and the worse tiers are asked about together, not one by one."""
    images = filtered(user, filters)
    if query.is_empty:
        return (images.after(image.created, image.pk).newest_first().reverse().only("id").first(),
                images.before(image.created, image.pk).newest_first().only("id").first())
    tier = _tier_of(image, query) if _by_relevance(filters, query) else None
    # Newest first, or not a match (opened from elsewhere): step through the matches by date.
    here = _Match(query) if tier is None else _Match(query, tier)
    newer = matching_ids(images.after(image.created, image.pk), here, 1, oldest_first=True)
    older = matching_ids(images.before(image.created, image.pk), here, 1)
    if tier is not None:
        for better in reversed(range(tier)):
            newer = newer or matching_ids(images, _Match(query, better), 1, oldest_first=True)
        if not older and tier + 1 < len(query.tiers()):  # the best of the worse tiers, as the grid's next page
            older = [pk for _, pk in _best(images, query, tier + 1, 1)]
    found = Image.objects.only("id").in_bulk([*newer, *older])
    return (found.get(newer[0]) if newer else None), (found.get(older[0]) if older else None)


def _tier_of(image: Image, query: Query) -> int | None:
    """Which tier of the query's matches image is in; None when it doesn't match."""
    tier = RawSQL(*_tier_sql(query, f'"{Image._meta.db_table}"."search"'))
    return matching(Image.objects.filter(pk=image.pk), query).values_list(tier, flat=True).first()


def _by_relevance(filters: dict, query: Query) -> bool:
    return not query.is_empty and filters.get("sort") != "newest"


def _relevant(images, query: Query, cursor: Cursor | None, user) -> Page:
    """Best first: every match of the best tier, newest first, then every match of the next, and so on."""
    found: list[tuple[int, int]] = []  # (tier, id)
    first = 0
    if cursor and cursor.tier is not None:
        if cursor.tier >= len(query.tiers()):
            return Page([], None)  # another query's cursor, past this one's last tier
        first = cursor.tier
        found = [(first, pk) for pk in
                 matching_ids(images.before(cursor.created, cursor.id), _Match(query, first), PAGE_SIZE + 1)]
        first += 1
    if len(found) <= PAGE_SIZE and first < len(query.tiers()):
        found += _best(images, query, first, PAGE_SIZE + 1 - len(found))
    tiers = {pk: tier for tier, pk in found}
    shown = _in_order([pk for _, pk in found], user)
    for image in shown:
        image.tier = tiers[image.pk]
    return _page(shown)


def _best(images, query: Query, first: int, need: int) -> list[tuple[int, int]]:
    """The `need` best (tier, id) matches in the tiers from `first` on: the newest of the best tier, then
    of the next. The newest WINDOW images answer for each tier that has enough matches among them, or for
    every tier when they are all the images there are; the tier's index answers for the others."""
    window = _window_tiers(images, query, first, need)

    @functools.cache
    def all_in_window() -> bool:
        return _window_holds_all(images)

    if not window and (all_in_window() or not _indexed_ids(images, _Match(query, first, onwards=True), 1)):
        return []  # nothing among the newest, and the index knows of nothing older
    found: list[tuple[int, int]] = []
    for tier in range(first, len(query.tiers())):
        wanted = need - len(found)
        ids = window.get(tier, [])
        if len(ids) < wanted and not all_in_window():
            ids = _indexed_ids(images, _Match(query, tier), wanted)
        found += [(tier, pk) for pk in ids[:wanted]]
        if len(found) >= need:
            break
    return found


def _window_tiers(images, query: Query, first: int, need: int) -> dict[int, list[int]]:
    """The newest `need` matches of each tier from `first` on among the newest WINDOW images, newest first.

    A first look reads the newest SAMPLE_PER_KIND matches per kind only: a common word fills the page from its
    best tier there. Else every match in the window is classed, keeping the newest `need` of each tier."""
    window_sql, window_params = _window(images)
    match_sql, match_params = _Match(query, first, onwards=True).sql("w.search")
    tier_sql, tier_params = _tier_sql(query, "w.search")
    classed = (f"SELECT w.id, w.at, w.key, {tier_sql} AS tier FROM ({window_sql}) w WHERE {match_sql}",
               [*tier_params, *window_params, *match_params])
    with connection.cursor() as cursor:
        sample = SAMPLE_PER_KIND * len(query.tiers()) // len(FIELDS)
        cursor.execute(f"{classed[0]} ORDER BY w.at DESC, w.key DESC LIMIT %s", [*classed[1], sample])
        rows = cursor.fetchall()
        if len(rows) == sample and sum(tier == first for *_, tier in rows) < need:
            cursor.execute(
                "SELECT id, at, key, tier FROM (SELECT c.*, row_number() OVER (PARTITION BY tier "
                f"ORDER BY at DESC, key DESC) AS n FROM ({classed[0]}) c) r WHERE n <= %s ORDER BY at DESC, key DESC",
                [*classed[1], need],
            )
            rows = cursor.fetchall()
    tiers: dict[int, list[int]] = {}
    for pk, *_, tier in rows:
        tiers.setdefault(tier, []).append(pk)
    return tiers


def _page(found: list[Image]) -> Page:
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    if not more:
        return Page(found, None)
    last = found[-1]
    return Page(found, Cursor(last.created, last.pk, getattr(last, "tier", None)).encode())


def _in_order(ids: list[int], user) -> list[Image]:
    by_id = {image.pk: image for image in Image.objects.filter(id__in=ids).for_tiles(user)}
    return [by_id[pk] for pk in ids if pk in by_id]

