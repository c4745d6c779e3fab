"""Daily image quotas: what a designer has used today, what they may use, and when it resets.

A job holds its `n` images from the moment it is queued and, when it ends, is settled to the
images the provider billed (Generation.finish), so a partial job gives back what never came and
a canceled one gives back everything. Days run midnight to midnight in the studio's time zone.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from gallery.models import Generation, Quota


@dataclass(frozen=True)
class Standing:
    used: int
    limit: int
    resets_at: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def allows(self, images: int) -> bool:
        return self.used + images <= self.limit


def midnight(day: date) -> datetime:
    """The start of day in the studio's time zone."""
    return datetime.combine(day, time.min, timezone.get_current_timezone())


def day_start(now: datetime | None = None) -> datetime:
    return midnight(timezone.localdate(now))


def next_reset(now: datetime | None = None) -> datetime:
    return midnight(timezone.localdate(now) + timedelta(days=1))


def used_today_by_owner() -> dict[int, int]:
    """used_today for every designer at once, for the Team page."""
    rows = (Generation.objects.filter(created__gte=day_start()).values("owner")
            .annotate(used=Sum(Coalesce("billed_images", "n"))))
    return {row["owner"]: row["used"] for row in rows}


def daily_limit(user) -> int:
    return limit_of(Quota.objects.filter(user=user).values_list("daily_images", flat=True).first())


def limit_of(own: int | None) -> int:
    """The limit for a designer whose own quota is `own` (None: the studio's default)."""
    return settings.QWEN_DAILY_IMAGE_QUOTA if own is None else own


def used_today(user, now: datetime | None = None) -> int:
    """Images billed today, plus those held by jobs not yet settled."""
    return Generation.objects.filter(owner=user, created__gte=day_start(now)).aggregate(
        used=Coalesce(Sum(Coalesce("billed_images", "n")), 0))["used"]


def standing(user) -> Standing:
    return Standing(used_today(user), daily_limit(user), next_reset())


def reserve(user) -> Standing:
    """The designer's standing, with their row locked until the transaction ends, so that two
    submits at once cannot both take the last images. Call inside transaction.atomic()."""
    Quota.objects.get_or_create(user=user)
    Quota.objects.select_for_update().filter(user=user).first()
    return standing(user)
