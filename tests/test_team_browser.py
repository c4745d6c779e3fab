"""The staff pages in Chromium: set a quota from the Team page's row, read the Usage page and step through
months; all within the CSP. Screenshots go to var/screenshots/team-*.png and usage-*.png."""

from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from gallery import quotas
from gallery.models import Quota
from tests.test_browser import shoot
from tests.test_csp import assert_within_policy, watch
from tests.test_sharing_browser import shoot_both
from tests.test_team import DEARER, PRICED, UNPRICED, billed_job, open_job, studio_midnight


def a_month_of_work(alice):
    """Five designers' jobs on the days of this month so far, one of them still running."""
    people = [alice] + [User.objects.create_user(name, f"{name}@example.com", "x", first_name=first, last_name=last)
                        for name, first, last in [("bob", "Bob", "Li"), ("mei", "Mei", "Zhang"),
                                                  ("omar", "Omar", "Haddad"), ("yuki", "Yuki", "Sato")]]
    User.objects.filter(pk=alice.pk).update(is_staff=True, first_name="Alice", last_name="Wang")
    Quota.objects.create(user=people[2], daily_images=40)
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    for day in range(1, today.day + 1):
        start = studio_midnight(today.replace(day=day)) + timedelta(hours=10)
        for i, person in enumerate(people[: 1 + (day * 7) % 5]):
            model = (PRICED, DEARER, UNPRICED)[(day + i) % 3]
            billed_job(person, model, 1 + (day + 2 * i) % 4, created=start + timedelta(minutes=i))
    open_job(people[1], DEARER, 1)
    return people


def test_staff_set_a_quota_in_place_and_read_the_usage_within_the_policy(page, alice, signed_in_page):
    csp = watch(page)
    bob = a_month_of_work(alice)[1]
    page = signed_in_page

    # the Team page lists everyone against their quota
    page.goto("/team/")
    expect(page.get_by_role("heading", name="Team")).to_be_visible()
    rows = page.locator("li.member")
    expect(rows).to_have_count(5)
    shoot_both(page, "team")

    # a quota saved from a row replaces that row only, and holds
    row = page.locator(f"#member-{bob.pk}")
    row.get_by_label("Daily images for bob").fill("50")
    row.get_by_role("button", name="Save").click()
    expect(row.get_by_text("Saved.")).to_be_visible()
    expect(row.get_by_text("Own quota", exact=True)).to_be_visible()
    assert quotas.daily_limit(bob) == 50
    shoot(page, "team-saved")

    # a number past the limit, sent past the browser's own check, comes back on the row with the reason
    field = row.get_by_label("Daily images for bob")
    field.evaluate("input => input.removeAttribute('max')")
    field.fill("100001")
    row.get_by_role("button", name="Save").click()
    expect(row.get_by_role("alert")).to_contain_text("from 0 to 100000")
    assert quotas.daily_limit(bob) == 50
    shoot(page, "team-refused")

    # Use default puts him back on the studio default
    row.get_by_role("button", name="Use default").click()
    expect(row.get_by_text("Studio default", exact=True)).to_be_visible()
    assert Quota.objects.get(user=bob).daily_images is None

    # the Usage page: totals, the chart of the month, and the tables
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    expect(page.locator("rect.chart-bar").first).to_be_visible()
    shoot_both(page, "usage")

    # the previous month is a click away, and empty here
    page.get_by_role("link", name="Previous month").click()
    page.wait_for_url("**/usage/?month=*")
    expect(page.get_by_text("No images were billed in")).to_be_visible()
    shoot(page, "usage-previous-month")

    # and any month is a pick away
    this_month = timezone.localdate(timezone=timezone.get_default_timezone()).strftime("%Y-%m")
    page.get_by_label("Month").fill(this_month)
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"**/usage/?month={this_month}")
    expect(page.locator("rect.chart-bar").first).to_be_visible()

    # Chrome logs every 4xx answer on the console; the refused quota's 422 was meant.
    csp.errors[:] = [error for error in csp.errors if "status of 422" not in error]
    assert_within_policy(page, csp)

