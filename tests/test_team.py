"""The staff pages: /team/ shows and sets each designer's daily quota, /usage/ the images billed and their
estimated cost per designer, model and day; nobody else opens either, and no input makes a server error."""

from datetime import datetime, time, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from gallery import quotas
from gallery.catalog import get_model
from gallery.models import Generation, Image, Quota
from tests.test_csp import inline_code
from tests.test_gallery import make_image

HTMX = {"HTTP_HX_REQUEST": "true"}
PRICED, DEARER, UNPRICED = "wan2.6-t2i", "qwen-image-max", "wan2.2-t2i-flash"


@pytest.fixture
def carol(db):
    return User.objects.create_user("carol", "carol@example.com", "correct horse battery", is_staff=True,
                                    first_name="Carol", last_name="Chen")


@pytest.fixture
def staff(client, carol):
    client.force_login(carol)
    return client


def studio_midnight(day) -> datetime:
    return datetime.combine(day, time.min, timezone.get_default_timezone())


def this_month_start() -> datetime:
    return studio_midnight(timezone.localdate(timezone=timezone.get_default_timezone()).replace(day=1))


def billed_job(owner, model: str, images: int, *, n: int | None = None, created: datetime | None = None,
               status: str = "succeeded") -> Generation:
    """A settled job with `images` Image rows, billed for them."""
    generation = make_image(owner, f"{model} job for {owner}", model=model).generation
    for index in range(1, images):
        Image.objects.create(generation=generation, owner=owner, model=model, shape="square", index=index,
                             file=f"generations/{generation.pk}/{index}.png", width=1024, height=1024, bytes=1000,
                             sha256="0" * 64, seed=5 + index)
    if images == 0:
        generation.images.all().delete()
    created = created or timezone.now()
    Generation.objects.filter(pk=generation.pk).update(
        n=n or max(images, 1), billed_images=images, status=status, created=created)
    Image.objects.filter(generation=generation).update(created=created)
    return generation


def open_job(owner, model: str, n: int, status: str = "running") -> Generation:
    return Generation.objects.create(owner=owner, prompt="still going", model=model, width=1024, height=1024,
                                     n=n, seed=1, status=status)


class DataCells(HTMLParser):
    """Every element of the page with the numbers a test reads (data-images, -cost, -used, -price), as attributes."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if {"data-images", "data-cost", "data-used", "data-price"} & attrs.keys():
            self.found.append(attrs)

    def get(self, **wanted) -> dict:
        """The images and cost of the cells matching wanted, e.g. designer="alice", period="month"."""
        matches = [attrs for attrs in self.found if all(attrs.get(f"data-{k}") == v for k, v in wanted.items())]
        merged = {}
        for attrs in matches:
            merged |= {key.removeprefix("data-"): value for key, value in attrs.items() if key.startswith("data-")}
        assert matches, f"no cell with {wanted}"
        return merged


def page_cells(response) -> DataCells:
    return DataCells(response.content.decode())


# Who may open them

@pytest.mark.parametrize(("method", "path"), [("get", "/team/"), ("post", "/team/{bob}/quota/"), ("get", "/usage/")])
def test_a_designer_who_is_not_staff_gets_403(client, alice, bob, method, path):
    # given a signed-in designer without staff status
    client.force_login(alice)
    # when they open a staff page or post a quota
    response = getattr(client, method)(path.format(bob=bob.pk), {"daily_images": "1000"} if method == "post" else {})
    # then they are refused, and nothing changed
    assert response.status_code == 403
    assert quotas.daily_limit(bob) == settings.QWEN_DAILY_IMAGE_QUOTA


@pytest.mark.parametrize(("method", "path"), [("get", "/team/"), ("post", "/team/{bob}/quota/"), ("get", "/usage/")])
def test_a_visitor_is_sent_to_sign_in(client, bob, method, path):
    response = getattr(client, method)(path.format(bob=bob.pk), {"daily_images": "1000"} if method == "post" else {})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert quotas.daily_limit(bob) == settings.QWEN_DAILY_IMAGE_QUOTA


def test_the_staff_pages_are_in_the_staff_menu_only(client, staff, alice):
    assert 'href="/team/"' in staff.get("/").content.decode()
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert 'href="/team/"' not in page and 'href="/usage/"' not in page


# The Team page

def test_staff_see_each_designers_images_today_against_their_limit(staff, carol, alice, bob):
    # given alice has 3 images billed today and a job of 2 still running, and bob a quota of his own
    billed_job(alice, PRICED, 3)
    open_job(alice, PRICED, 2)
    billed_job(alice, PRICED, 4, created=timezone.now() - timedelta(days=2))
    Quota.objects.create(user=bob, daily_images=40)
    # when staff open the Team page
    response = staff.get("/team/")
    # then every active designer has a row with what the quota counts
    assert response.status_code == 200
    cells = page_cells(response)
    for user in (alice, bob, carol):
        row = cells.get(designer=user.username)
        assert int(row["used"]) == quotas.used_today(user)
        assert int(row["limit"]) == quotas.daily_limit(user)
    assert cells.get(designer="alice", used="5", limit="200", own="false")
    assert cells.get(designer="bob", used="0", limit="40", own="true")
    html = response.content.decode()
    assert "Carol Chen" in html and "Studio default" in html and "Own quota" in html
    assert "at midnight (Asia/Shanghai)" in html


def test_inactive_designers_are_not_listed(staff, alice, bob):
    User.objects.filter(pk=bob.pk).update(is_active=False)
    cells = page_cells(staff.get("/team/"))
    assert cells.get(designer="alice")
    assert not [attrs for attrs in cells.found if attrs.get("data-designer") == "bob"]


def test_setting_a_quota_changes_the_limit_and_shows_on_the_page(staff, alice):
    # when staff give alice 12 images a day
    response = staff.post(f"/team/{alice.pk}/quota/", {"daily_images": "12"}, follow=True)
    # then her limit is 12, the page says so and where it came from
    assert quotas.daily_limit(alice) == 12
    assert response.redirect_chain == [(f"/team/#member-{alice.pk}", 302)]
    assert "alice may now have 12 images a day." in response.content.decode()
    assert page_cells(response).get(designer="alice", limit="12", own="true")
    assert f'id="quota-{alice.pk}-daily_images"' in response.content.decode()


def test_clearing_a_quota_puts_the_designer_back_on_the_default(staff, alice):
    # given alice has a quota of her own
    Quota.objects.create(user=alice, daily_images=12)
    # when staff empty it
    response = staff.post(f"/team/{alice.pk}/quota/", {"daily_images": ""}, follow=True)
    # then she is back on the studio default
    assert quotas.daily_limit(alice) == settings.QWEN_DAILY_IMAGE_QUOTA
    assert Quota.objects.get(user=alice).daily_images is None
    assert f"alice is back on the studio default of {settings.QWEN_DAILY_IMAGE_QUOTA} images" in \
        response.content.decode()
    assert page_cells(response).get(designer="alice", limit=str(settings.QWEN_DAILY_IMAGE_QUOTA), own="false")


def test_use_default_wins_over_the_number_in_the_field(staff, alice):
    # The Use default button sends daily_images="" after the field's own value.
    Quota.objects.create(user=alice, daily_images=12)
    staff.post(f"/team/{alice.pk}/quota/", {"daily_images": ["12", ""]})
    assert quotas.daily_limit(alice) == settings.QWEN_DAILY_IMAGE_QUOTA


def test_a_quota_of_zero_stops_the_designer(staff, alice):
    staff.post(f"/team/{alice.pk}/quota/", {"daily_images": "0"})
    assert quotas.daily_limit(alice) == 0
    assert not quotas.standing(alice).allows(1)


def test_htmx_swaps_only_the_designers_row(staff, alice):
    # when staff save a quota from the page with htmx
    response = staff.post(f"/team/{alice.pk}/quota/", {"daily_images": "30"}, **HTMX)
    # then the answer is alice's row, saying it is saved, and no message waits for the next page
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<li class="member member--ok" id="member-{alice.pk}"')
    assert "<html" not in html and "Saved." in html
    assert page_cells(response).get(designer="alice", limit="30", own="true")
    assert "may now have" not in staff.get("/team/").content.decode()


@pytest.mark.parametrize("value", ["-1", str(10**30), "100001", "lots", "5\x00", "1e3", "1.5", "0x10",
                                   "<script>alert(1)</script>", "9" * 5000])
@pytest.mark.parametrize("htmx", [False, True], ids=["form", "htmx"])
def test_a_hostile_quota_is_refused_with_a_message_and_changes_nothing(staff, alice, value, htmx):
    # given alice has a quota of 12
    Quota.objects.create(user=alice, daily_images=12)
    # when staff send something that is not a number of images
    response = staff.post(f"/team/{alice.pk}/quota/", {"daily_images": value}, **(HTMX if htmx else {}))
    # then it is refused with the reason, on her row, and her quota is unchanged
    assert response.status_code == 422
    html = response.content.decode()
    assert "A daily quota is a whole number of images from 0 to 100000" in html
    assert "<script>alert(1)</script>" not in html
    assert inline_code(html) == []
    assert quotas.daily_limit(alice) == 12


@pytest.mark.parametrize("user_id", ["999999", "9" * 30])
def test_a_quota_for_nobody_is_404(staff, user_id):
    assert staff.post(f"/team/{user_id}/quota/", {"daily_images": "5"}).status_code == 404
    assert not Quota.objects.exists()


def test_a_quota_for_an_inactive_designer_is_404(staff, alice):
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert staff.post(f"/team/{alice.pk}/quota/", {"daily_images": "5"}).status_code == 404
    assert not Quota.objects.filter(user=alice).exists()


def test_get_on_the_quota_url_is_405(staff, alice):
    assert staff.get(f"/team/{alice.pk}/quota/").status_code == 405


def test_staff_set_the_quota_in_the_admin_too(client, alice):
    # given a superuser on alice's page in the admin
    admin = User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    client.force_login(admin)
    page = client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert "Daily image quota" in page and 'name="quota-0-daily_images"' in page
    # when the admin saves it with a quota
    form = {"username": "alice", "email": "alice@example.com", "is_active": "on", "date_joined_0": "2026-01-01",
            "date_joined_1": "10:00:00", "quota-TOTAL_FORMS": "1", "quota-INITIAL_FORMS": "0",
            "quota-MIN_NUM_FORMS": "0", "quota-MAX_NUM_FORMS": "1", "quota-0-user": str(alice.pk),
            "quota-0-daily_images": "25"}
    response = client.post(f"/admin/auth/user/{alice.pk}/change/", form)
    # then it is her limit
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert quotas.daily_limit(alice) == 25


# The Usage page

@pytest.fixture
def studio_work(alice, bob):
    """Two designers, three models (one without a price), settled, partial, canceled and open jobs, and last
    month's work."""
    billed_job(alice, PRICED, 4)
    billed_job(alice, PRICED, 2, n=4, status="partial")
    billed_job(alice, DEARER, 1)
    billed_job(alice, UNPRICED, 3)
    billed_job(bob, PRICED, 1)
    billed_job(bob, DEARER, 1)
    billed_job(bob, DEARER, 1)
    billed_job(bob, UNPRICED, 2)
    billed_job(bob, PRICED, 0, n=2, status="canceled")
    # An hour into the month in the studio's time zone is still the previous day in UTC.
    billed_job(bob, DEARER, 2, created=this_month_start() + timedelta(hours=1))
    # A minute before the month began: last month's.
    billed_job(alice, PRICED, 3, created=this_month_start() - timedelta(minutes=1))
    open_job(alice, DEARER, 1)
    open_job(bob, PRICED, 4, status="queued")


def images_in(start: datetime, end: datetime, **lookup) -> int:
    return Image.objects.filter(generation__created__gte=start, generation__created__lt=end, **lookup).count()


def price_of(model: str) -> Decimal | None:
    return get_model(model).price


def test_usage_totals_equal_the_images_stored_per_designer_and_model(staff, studio_work, alice, bob):
    # when staff open the Usage page
    response = staff.get("/usage/")
    assert response.status_code == 200
    cells = page_cells(response)
    start = this_month_start()
    end = studio_midnight((start + timedelta(days=32)).date().replace(day=1))
    # then each designer's images this month are the images stored for their jobs this month
    for user in (alice, bob):
        month = cells.get(designer=user.username, period="month")
        assert int(month["images"]) == images_in(start, end, owner=user)
        expected_cost = sum(price_of(m) * images_in(start, end, owner=user, model=m) for m in (PRICED, DEARER))
        assert Decimal(month["cost"]) == expected_cost
    # and each model's images and cost are its stored images times its catalog price
    for model in (PRICED, DEARER):
        month = cells.get(model=model, period="month")
        assert int(month["images"]) == images_in(start, end, model=model)
        assert Decimal(month["cost"]) == price_of(model) * images_in(start, end, model=model)
    # and a model without a price shows unknown, and is left out of the total cost with a note
    assert price_of(UNPRICED) is None
    unpriced = cells.get(model=UNPRICED, period="month")
    assert int(unpriced["images"]) == images_in(start, end, model=UNPRICED) == 5
    assert unpriced["cost"] == "unknown"
    assert cells.get(model=UNPRICED, price="unknown")
    total = cells.get(total="month", period="month")
    assert int(total["images"]) == images_in(start, end)
    assert Decimal(total["cost"]) == sum(price_of(m) * images_in(start, end, model=m) for m in (PRICED, DEARER))
    html = response.content.decode()
    assert "Cost excludes 5 images of models without a price" in html
    assert "unknown" in html


def test_usage_counts_only_what_was_billed_and_shows_open_jobs_as_held(staff, studio_work, alice, bob):
    cells = page_cells(staff.get("/usage/"))
    # the partial job counts the 2 images that came, the canceled one nothing
    assert int(cells.get(designer="alice", period="month")["images"]) == 4 + 2 + 1 + 3
    assert int(cells.get(designer="bob", period="month")["images"]) == 1 + 1 + 1 + 2 + 2
    # jobs still open are held apart, not billed
    assert cells.get(designer="alice", period="held")["images"] == "1"
    assert cells.get(designer="bob", period="held")["images"] == "4"
    assert cells.get(total="held")["images"] == "5"


def test_usage_today_counts_todays_jobs_only(staff, alice):
    billed_job(alice, PRICED, 3)
    yesterday = timezone.now() - timedelta(days=1)
    billed_job(alice, PRICED, 2, created=yesterday)
    cells = page_cells(staff.get("/usage/"))
    today = cells.get(designer="alice", period="today")
    assert (today["images"], today["cost"]) == ("3", "0.60")
    assert cells.get(total="today", period="today")["images"] == "3"


def test_the_chart_has_a_bar_per_day_adding_up_to_the_month(staff, studio_work):
    response = staff.get("/usage/")
    cells = page_cells(response)
    days = [attrs for attrs in cells.found if "data-day" in attrs]
    month = this_month_start()
    assert days[0]["data-day"] == month.date().isoformat()
    assert len(days) == ((month + timedelta(days=32)).replace(day=1) - month).days
    assert sum(int(day["data-images"]) for day in days) == int(cells.get(total="month", period="month")["images"])
    # the job an hour into the month, in the studio's time zone, is on day 1
    assert int(days[0]["data-images"]) >= 2
    assert response.content.decode().count('class="chart-bar"') == sum(1 for day in days if day["data-images"] != "0")


def test_last_months_jobs_count_in_last_month_only(staff, studio_work, alice):
    # given alice's 3 images from a minute before this month began
    last_month = (this_month_start() - timedelta(days=1)).strftime("%Y-%m")
    # then this month leaves them out, and last month has only them
    this_month = page_cells(staff.get("/usage/")).get(designer="alice", period="month")
    assert this_month["images"] == "10"
    response = staff.get("/usage/", {"month": last_month})
    assert response.status_code == 200
    cells = page_cells(response)
    assert cells.get(designer="alice", period="month")["images"] == "3"
    assert cells.get(designer="bob", period="month")["images"] == "0"
    assert cells.get(total="month", period="month")["images"] == "3"
    assert [d["data-images"] for d in cells.found if "data-day" in d][-1] == "3"
    # and its note speaks of today's unpriced images only, since last month had none
    html = response.content.decode()
    assert "Today's cost excludes 5 images of models without a price." in html
    assert "Cost excludes" not in html


def test_a_month_without_work_says_so(staff, alice):
    response = staff.get("/usage/", {"month": "2001-02"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "No images were billed in February 2001." in html
    assert len([attrs for attrs in page_cells(response).found if "data-day" in attrs]) == 28


@pytest.mark.parametrize("month", ["1900-01", "9998-12"])
def test_the_first_and_last_months_open(staff, studio_work, month):
    response = staff.get("/usage/", {"month": month})
    assert response.status_code == 200
    assert page_cells(response).get(total="month", period="month")["images"] == "0"


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "0000-01", "1899-12", "9999-12", "10000-01", "2026-1",
                                   "2026/11", "November", "2026-11-01", "\x00", "2026-11\x00", "x" * 10000,
                                   "٢٠٢٦-١١", "-001-01", "' OR 1=1 --", "<script>alert(1)</script>"])
def test_a_hostile_month_is_a_400_with_a_message(staff, studio_work, month):
    response = staff.get("/usage/", {"month": month})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Choose a month between 1900-01 and 9998-12, written as YYYY-MM." in html
    assert "<script>alert(1)</script>" not in html
    assert inline_code(html) == []


def test_the_staff_pages_hold_no_inline_code_or_styles(staff, studio_work):
    for path in ("/team/", "/usage/"):
        assert inline_code(staff.get(path).content.decode()) == []


def test_the_team_page_asks_the_same_few_queries_however_many_designers(staff, django_assert_max_num_queries):
    # given twenty designers, each with a job today and half with a quota of their own
    for number in range(20):
        designer = User.objects.create_user(f"designer{number}")
        Generation.objects.create(owner=designer, prompt="x", model="wan2.6-t2i", width=1280, height=1280, seed=1)
        if number % 2:
            Quota.objects.create(user=designer, daily_images=number)

    # then the page costs a handful of queries, not two per designer
    with django_assert_max_num_queries(8):
        assert staff.get("/team/").status_code == 200
