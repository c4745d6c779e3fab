"""The studio's own error pages, as a designer meets them in the browser."""

from playwright.sync_api import expect

from tests.test_browser import shoot


def test_a_missing_image_shows_the_studios_404_page(signed_in_page):
    response = signed_in_page.goto("/gallery/987654321/")
    assert response.status == 404
    expect(signed_in_page.get_by_role("heading", name="Nothing here")).to_be_visible()
    expect(signed_in_page.get_by_role("link", name="Back to Create")).to_be_visible()
    shoot(signed_in_page, "error-404")


def test_a_broken_reuse_link_shows_the_form_and_says_why(signed_in_page):
    response = signed_in_page.goto("/?reuse=%C2%B2")
    assert response.status == 400
    expect(signed_in_page.get_by_text("That reuse link is broken")).to_be_visible()
    expect(signed_in_page.get_by_label("Prompt", exact=True)).to_have_value("")
    shoot(signed_in_page, "error-reuse-400")


def test_a_bad_gallery_date_is_explained_beside_the_filters(signed_in_page):
    response = signed_in_page.goto("/gallery/?until=9999-12-31")
    assert response.status == 400
    expect(signed_in_page.get_by_text("Choose a date between 1900 and 9998.")).to_be_visible()
    shoot(signed_in_page, "error-gallery-date")
