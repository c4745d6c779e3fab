"""Pages of the gallery: filters, search and keyset pagination, never OFFSET.

Newest-first pages continue after the last (created, id) seen, so an image
that arrives between two pages can neither repeat nor push one out. Relevance
ranks at most CANDIDATES of the newest matches (ranking every match of a
common word costs 80–200 ms at 1M rows) and pages on (rank, created, id).
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.contrib.postgres.search import SearchRank
from django.db.models import F, Q
from django.utils import timezone

from gallery.models import Image
from gallery.search import Query

PAGE_SIZE = 40
CANDIDATES = 1000


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
            return cls(datetime.fromisoformat(created), int(pk), float(rank) if rank else None)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None


@dataclass
class Page:
    images: list[Image]
    next_cursor: str | None


def filtered(user, filters: dict) -> "Image.objects":
    images = Image.objects.all()
    if filters.get("model"):
        images = images.filter(model=filters["model"])
    if filters.get("shape"):
        images = images.filter(shape=filters["shape"])
    if filters.get("mine"):
        images = images.filter(owner=user)
    if filters.get("favourites"):
        images = images.filter(favourites__user=user)
    zone = timezone.get_current_timezone()
    if filters.get("since"):
        images = images.filter(created__gte=datetime.combine(filters["since"], time.min, zone))
    if filters.get("until"):
        images = images.filter(created__lt=datetime.combine(filters["until"] + timedelta(days=1), time.min, zone))
    return images


def page(user, filters: dict, query: Query, cursor: Cursor | None) -> Page:
    images = filtered(user, filters)
    if query.is_empty:
        return _newest(images, cursor)
    images = images.filter(search=query.tsquery())
    if filters.get("sort") == "newest":
        return _newest(images, cursor)
    return _relevant(images, query, cursor)


def _newest(images, cursor: Cursor | None) -> Page:
    if cursor:
        images = images.before(cursor.created, cursor.id)
    found = list(_for_tiles(images.newest_first())[: PAGE_SIZE + 1])
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    return Page(found, Cursor(found[-1].created, found[-1].pk).encode() if more else None)


def _relevant(images, query: Query, cursor: Cursor | None) -> Page:
    newest_matches = images.newest_first().values("id")[:CANDIDATES]
    ranked = (Image.objects.filter(id__in=newest_matches)
              .annotate(rank=SearchRank(F("search"), query.rank_tsquery()))
              .order_by("-rank", "-created", "-id"))
    if cursor and cursor.rank is not None:
        ranked = ranked.filter(
            Q(rank__lt=cursor.rank)
            | Q(rank=cursor.rank, created__lt=cursor.created)
            | Q(rank=cursor.rank, created=cursor.created, id__lt=cursor.id)
        )
    found = list(_for_tiles(ranked)[: PAGE_SIZE + 1])
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    last = found[-1] if found else None
    return Page(found, Cursor(last.created, last.pk, last.rank).encode() if more else None)


def _for_tiles(images):
    return images.select_related("generation", "owner").prefetch_related("renditions").defer("search")
