"""Staff pages: the team's daily quotas, and the images billed and their estimated cost per designer and model."""

from calendar import monthrange
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from gallery import quotas
from gallery.catalog import get_model
from gallery.forms import EARLIEST_DATE, QuotaForm, UsageFilterForm
from gallery.models import Generation, Quota
from gallery.views.common import HtmxHttpRequest, staff_only

User = get_user_model()
# The per-day chart, in SVG user units: a day's column, its bar, and the tallest bar.
DAY_WIDTH, BAR_WIDTH, CHART_HEIGHT = 24, 16, 120


@dataclass
class Member:
    """A designer's row on the Team page."""

    user: User
    used: int
    limit: int
    own: bool  # staff gave them a quota of their own, rather than the studio default
    form: QuotaForm

    @property
    def level(self) -> str:
        if self.used >= self.limit:
            return "spent"
        return "near" if self.used >= self.limit * 0.8 else "ok"


def _member(user, form: QuotaForm | None = None, used: int | None = None) -> Member:
    """user (with select_related("quota")) as a Team row, with form as sent or else their quota to edit."""
    quota = getattr(user, "quota", None)
    own = quota.daily_images if quota else None
    form = form or QuotaForm(initial={"daily_images": own}, auto_id=_auto_id(user))
    used = quotas.used_today(user) if used is None else used
    return Member(user, used, quotas.limit_of(own), own is not None, form)


def _auto_id(user) -> str:
    return f"quota-{user.pk}-%s"  # a form per row, so ids of their own


def _team_context() -> dict:
    return {"default_limit": settings.QWEN_DAILY_IMAGE_QUOTA, "resets_at": quotas.next_reset(),
            "time_zone": settings.TIME_ZONE}


@staff_only
@require_GET
def index(request: HtmxHttpRequest) -> HttpResponse:
    return _team_page(request)


def _team_page(request, rejected: Member | None = None, status: int = 200) -> HttpResponse:
    """/team/: every active designer's images today against their quota; rejected keeps the form that failed."""
    designers = User.objects.filter(is_active=True).select_related("quota").order_by("username")
    used = quotas.used_today_by_owner()  # one query for the whole team
    members = [rejected if rejected and rejected.user.pk == user.pk else _member(user, used=used.get(user.pk, 0))
               for user in designers]
    return render(request, "gallery/team.html", {"members": members, **_team_context()}, status=status)


@staff_only
@require_POST
def set_quota(request: HtmxHttpRequest, user_id: int) -> HttpResponse:
    designers = User.objects.filter(is_active=True).select_related("quota")
    designer = get_object_or_404(designers, pk=user_id)
    form = QuotaForm(request.POST, auto_id=_auto_id(designer))
    if not form.is_valid():
        if request.htmx:
            context = {"member": _member(designer, form), **_team_context()}
            return render(request, "gallery/team.html#member", context, status=422)
        return _team_page(request, rejected=_member(designer, form), status=422)
    daily_images = form.cleaned_data["daily_images"]
    # The row stays when cleared: quotas.reserve locks it, and None already means the default.
    Quota.objects.update_or_create(user=designer, defaults={"daily_images": daily_images})
    designer = designers.get(pk=designer.pk)
    if request.htmx:
        context = {"member": _member(designer), "saved": True, **_team_context()}
        return render(request, "gallery/team.html#member", context)
    if daily_images is None:
        limit = settings.QWEN_DAILY_IMAGE_QUOTA
        said = ngettext("%(designer)s is back on the studio default of %(limit)d image a day.",
                        "%(designer)s is back on the studio default of %(limit)d images a day.", limit)
    else:
        limit = daily_images
        said = ngettext("%(designer)s may now have %(limit)d image a day.",
                        "%(designer)s may now have %(limit)d images a day.", limit)
    messages.success(request, said % {"designer": designer.get_username(), "limit": limit})
    return redirect(f"{reverse('gallery-team')}#member-{designer.pk}")


@dataclass
class Tally:
    """Images billed and their estimated cost; images of a model without a price are counted apart, not as free."""

    images: int = 0
    cost: Decimal = Decimal("0.00")
    unpriced: int = 0

    def add(self, model: str, images: int) -> None:
        self.images += images
        price = _price(model)
        if price is None:
            self.unpriced += images
        else:
            self.cost += price * images

    @property
    def cost_unknown(self) -> bool:
        """Every image here is of a model without a price, so there is no estimate at all."""
        return self.unpriced > 0 and self.unpriced == self.images


def _price(model: str) -> Decimal | None:
    spec = get_model(model)
    return spec.price if spec else None


@dataclass
class UsageRow:
    """A designer's or a model's line on the Usage page."""

    key: str
    label: str
    price: Decimal | None = None
    today: Tally = field(default_factory=Tally)
    month: Tally = field(default_factory=Tally)
    held: int = 0


@dataclass
class ChartDay:
    """A day's bar in the Usage page's chart, in SVG user units: the day's column starts at x."""

    date: date
    tally: Tally
    x: int
    peak: int  # the busiest day's images, drawn CHART_HEIGHT tall

    @property
    def height(self) -> int:
        if not self.tally.images:
            return 0
        return max(2, round(CHART_HEIGHT * self.tally.images / self.peak))  # any image at all shows

    @property
    def bar_x(self) -> int:
        return self.x + (DAY_WIDTH - BAR_WIDTH) // 2

    @property
    def bar_y(self) -> int:
        return CHART_HEIGHT - self.height

    @property
    def label_x(self) -> int:
        return self.x + DAY_WIDTH // 2


@staff_only
@require_GET
def usage(request: HtmxHttpRequest) -> HttpResponse:
    """/usage/: images billed and their estimated cost per designer and model, today and in a month (?month=)."""
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    form = UsageFilterForm(request.GET, today=today)
    valid = form.is_valid()
    month = (form.cleaned_data["month"] if valid else None) or today.replace(day=1)
    context = {"form": form, "today": today, "month": month, "time_zone": settings.TIME_ZONE,
               "previous_month": _month_before(month), "next_month": _month_after(month, today),
               **_usage(month, today)}
    return render(request, "gallery/usage.html", context, status=200 if valid else 400)


def _usage(month: date, today: date) -> dict:
    """The sums of the month's settled jobs, today's and the open ones, and the designers, in four queries,
    tallied per designer, model and day."""
    last = month.replace(day=monthrange(month.year, month.month)[1])
    in_month = Generation.objects.created_between(quotas.midnight(month), quotas.midnight(last + timedelta(days=1)))
    in_today = Generation.objects.created_between(quotas.midnight(today), quotas.midnight(today + timedelta(days=1)))
    billed_in_month = list(in_month.billed_per("owner", "model", "day"))
    billed_today = list(in_today.billed_per("owner", "model"))
    held = list(Generation.objects.held_per("owner", "model"))

    owners = {row["owner"] for row in [*billed_in_month, *billed_today, *held]}
    people = {user.pk: UsageRow(user.get_username(), user.get_full_name())
              for user in User.objects.filter(Q(is_active=True) | Q(pk__in=owners))}
    models: dict[str, UsageRow] = {}

    def person(owner: int) -> UsageRow:
        return people.setdefault(owner, UsageRow(f"#{owner}", ""))  # deleted since the sums were taken

    def model_row(name: str) -> UsageRow:
        spec = get_model(name)
        return models.setdefault(name, UsageRow(name, spec.label if spec else name, _price(name)))

    days = {month + timedelta(days=i): Tally() for i in range(last.day)}
    month_total, today_total = Tally(), Tally()
    for row in billed_in_month:
        for tally in (person(row["owner"]).month, model_row(row["model"]).month, days[row["day"]], month_total):
            tally.add(row["model"], row["images"])
    for row in billed_today:
        for tally in (person(row["owner"]).today, model_row(row["model"]).today, today_total):
            tally.add(row["model"], row["images"])
    for row in held:
        person(row["owner"]).held += row["images"]
        model_row(row["model"]).held += row["images"]

    def busiest(row: UsageRow):
        return -row.month.images, -row.today.images, -row.held, row.key

    return {"designers": sorted(people.values(), key=busiest), "models": sorted(models.values(), key=busiest),
            "month_total": month_total, "today_total": today_total, "chart": _chart(days),
            "held_images": sum(row["images"] for row in held), "held_jobs": sum(row["jobs"] for row in held)}


def _chart(days: dict[date, Tally]) -> dict:
    peak = max((tally.images for tally in days.values()), default=0)
    bars = [ChartDay(day, tally, i * DAY_WIDTH, peak) for i, (day, tally) in enumerate(days.items())]
    return {"days": bars, "peak": peak, "width": len(bars) * DAY_WIDTH, "height": CHART_HEIGHT,
            "bar_width": BAR_WIDTH, "day_width": DAY_WIDTH, "label_y": CHART_HEIGHT + 16,
            "full_height": CHART_HEIGHT + 22}


def _month_before(month: date) -> date | None:
    before = (month - timedelta(days=1)).replace(day=1)
    return before if before >= EARLIEST_DATE else None


def _month_after(month: date, today: date) -> date | None:
    """The next month, unless it hasn't begun yet."""
    after = (month + timedelta(days=31)).replace(day=1)
    return after if after <= today else None
