"""Pages of the gallery: filters, search and keyset pagination, never OFFSET.

Newest-first pages continue after the last (created, id) seen, so an image
that arrives between two pages can neither repeat nor push one out.

PostgreSQL misjudges how many rows a search of several lexemes matches (it
takes them as independent; 青花 and 花瓷 never are), and then either walks the
whole table newest-first for a query that matches nothing or sorts tens of
thousands of matches. So a search looks first among the newest WINDOW rows,
where common words fill a page, and only then asks the GIN index for all
matches. Relevance ranks the CANDIDATES newest matches (fewer when the
window already holds a page of them) and pages on (rank, created, id);
bench/RESULTS.md has the figures at 1M images.
"""

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.contrib.postgres.search import SearchRank
from django.db import connection
from django.db.models import F, FloatField, Q
from django.db.models.functions import Cast
from django.utils import timezone

from gallery.models import Image, ImageQuerySet
from gallery.search import Query

PAGE_SIZE = 30
WINDOW = 10_000
CANDIDATES = 200


@dataclass(frozen=True)
class Cursor:
    created: datetime
    id: int
    rank: float | None = None

    def encode(self) -> str:
        text = f"{self.created.isoformat()}|{self.id}|{'' if self.rank is None else repr(self.rank)}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor | None":
        """The cursor in token, or None for anything that isn't one of ours."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            created, pk, rank = text.split("|")
            cursor = cls(datetime.fromisoformat(created), int(pk), float(rank) if rank else None)
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
            return None
        sane = (cursor.created.tzinfo is not None and 1900 <= cursor.created.year <= 9998
                and 0 < cursor.id < 2**63 and (cursor.rank is None or math.isfinite(cursor.rank)))
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
        images = images.filter(collection_items__collection=filters["collection"])
    zone = timezone.get_current_timezone()
    if filters.get("since"):
        images = images.filter(created__gte=datetime.combine(filters["since"], time.min, zone))
    if filters.get("until"):
        images = images.filter(created__lt=datetime.combine(filters["until"] + timedelta(days=1), time.min, zone))
    return images


def page(user, filters: dict, query: Query, cursor: Cursor | None) -> Page:
    images = filtered(user, filters)
    if _by_relevance(filters, query):
        return _relevant(images, query, cursor)
    if cursor:
        images = images.before(cursor.created, cursor.id)
    if query.is_empty:
        return _page(list(_for_tiles(images.newest_first())[: PAGE_SIZE + 1]))
    return _page(_in_order(matching_ids(images, query, PAGE_SIZE + 1)))


def matching_ids(images, query: Query, limit: int, enough: int | None = None) -> list[int]:
    """Ids of the newest matches, newest first: up to `limit`, and from the window alone if it has `enough`."""
    match_sql, match_params = _compiled(images, query.tsquery())
    window_sql, window_params = images.newest_first().values("id", "created", "search")[:WINDOW].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT w.id FROM ({window_sql}) w WHERE w.search @@ {match_sql} "
            "ORDER BY w.created DESC, w.id DESC LIMIT %s",
            [*window_params, *match_params, limit],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if len(ids) >= (enough or limit):
            return ids
        # Rare in the newest rows: let the GIN index find every match, then take the newest.
        all_sql, all_params = images.filter(search=query.tsquery()).values("id", "created").query.sql_with_params()
        cursor.execute(
            f"WITH m AS MATERIALIZED ({all_sql}) SELECT id FROM m ORDER BY created DESC, id DESC LIMIT %s",
            [*all_params, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def neighbours(user, filters: dict, query: Query, image: Image) -> tuple[Image | None, Image | None]:
    """The images just before and after `image` in the gallery's order for these filters and search: the
    Previous and Next of its page. Newest first, or best first when the gallery ranks the search."""
    images = filtered(user, filters)
    if _by_relevance(filters, query):
        ranked = _ranked(images, query)
        rank = ranked.filter(pk=image.pk).values_list("rank", flat=True).first()
        if rank is not None:
            here = Cursor(image.created, image.pk, rank)
            return (ranked.filter(_better(here)).order_by("rank", "created", "id").only("id").first(),
                    ranked.filter(_worse(here)).only("id").first())
        # Not among the ranked matches (opened from elsewhere): step through the matches by date.
    if not query.is_empty:
        images = images.filter(search=query.tsquery())
    return (images.after(image.created, image.pk).order_by("created", "id").only("id").first(),
            images.before(image.created, image.pk).newest_first().only("id").first())


def _by_relevance(filters: dict, query: Query) -> bool:
    return not query.is_empty and filters.get("sort") != "newest"


def _relevant(images, query: Query, cursor: Cursor | None) -> Page:
    ranked = _ranked(images, query)
    if cursor and cursor.rank is not None:
        ranked = ranked.filter(_worse(cursor))
    return _page(list(_for_tiles(ranked)[: PAGE_SIZE + 1]))


def _ranked(images, query: Query) -> ImageQuerySet:
    """The newest matches, best first: the order of a search sorted by relevance."""
    candidates = matching_ids(images, query, CANDIDATES, enough=PAGE_SIZE + 1)
    # ts_rank is a float4, which comes back as its shortest decimal and so never equals itself again: in
    # double precision a rank read from one query matches the same rank in the next (cursors, neighbours).
    return (Image.objects.filter(id__in=candidates)
            .annotate(rank=Cast(SearchRank(F("search"), query.rank_tsquery()), FloatField()))
            .order_by("-rank", "-created", "-id"))


def _worse(cursor: Cursor) -> Q:
    """What comes after cursor in best-first order."""
    return (Q(rank__lt=cursor.rank) | Q(rank=cursor.rank, created__lt=cursor.created)
            | Q(rank=cursor.rank, created=cursor.created, id__lt=cursor.id))


def _better(cursor: Cursor) -> Q:
    return (Q(rank__gt=cursor.rank) | Q(rank=cursor.rank, created__gt=cursor.created)
            | Q(rank=cursor.rank, created=cursor.created, id__gt=cursor.id))


def _page(found: list[Image]) -> Page:
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    if not more:
        return Page(found, None)
    last = found[-1]
    return Page(found, Cursor(last.created, last.pk, getattr(last, "rank", None)).encode())


def _in_order(ids: list[int]) -> list[Image]:
    by_id = {image.pk: image for image in _for_tiles(Image.objects.filter(id__in=ids))}
    return [by_id[pk] for pk in ids if pk in by_id]


def _compiled(images, expression) -> tuple[str, list]:
    query = images.query
    return query.get_compiler(connection=connection).compile(expression.resolve_expression(query))


def _for_tiles(images):
    return images.select_related("generation", "owner").prefetch_related("renditions").defer("search")
