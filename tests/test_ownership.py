"""Who may see and change what: one rule on the models that every view asks, and one answer for each
"no": 404 for what you may not see (as for what isn't there), 403 for what you see but may not change."""

import re
import uuid

import pytest

from gallery.models import Favourite, Generation, Image
from tests.test_gallery import make_image

REFUSED_PROMPT = "a prompt the content check refused 拒绝"


def main_of(response) -> str:
    return re.search(r"<main.*</main>", response.content.decode(), re.S).group(0)


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bobs_failed_job(bob):
    return Generation.objects.create(
        owner=bob, prompt=REFUSED_PROMPT, negative_prompt="secret negative", model="wan2.2-t2i-flash",
        width=1024, height=1024, seed=3, status="failed", error_code="DataInspectionFailed",
        error_message="The provider's content check rejected this prompt.")


@pytest.fixture
def bobs_queued_job(bob):
    return Generation.objects.create(owner=bob, prompt="bob's queued idea", model="wan2.2-t2i-flash",
                                     width=1024, height=1024, seed=4)


def test_the_rule_lives_on_the_models(alice, bob, bobs_failed_job):
    image = make_image(bob, "bob's lighthouse")
    assert not bobs_failed_job.can_view(alice) and bobs_failed_job.can_view(bob)
    assert image.can_view(alice) and not image.can_change(alice) and image.can_change(bob)
    alice.is_staff = True
    assert bobs_failed_job.can_view(alice) and bobs_failed_job.can_change(alice) and image.can_change(alice)
    bob.is_active = False
    assert not bobs_failed_job.can_view(bob) and not image.can_change(bob)


def test_another_designers_job_card_is_404_and_shows_nothing(client, bobs_failed_job):
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = client.get(f"/jobs/{bobs_failed_job.pk}/", **headers)
        assert response.status_code == 404
        assert REFUSED_PROMPT not in response.content.decode()


def test_not_yours_answers_like_not_there(client, bobs_failed_job):
    theirs = client.get(f"/jobs/{bobs_failed_job.pk}/")
    nothing = client.get(f"/jobs/{uuid.uuid4()}/")
    assert theirs.status_code == nothing.status_code == 404
    assert main_of(theirs) == main_of(nothing)


def test_edit_and_try_again_on_another_designers_job_is_404(client, bobs_failed_job):
    response = client.get("/", {"again": str(bobs_failed_job.pk)})
    assert response.status_code == 404
    assert REFUSED_PROMPT not in response.content.decode()
    assert "secret negative" not in response.content.decode()


def test_another_designers_jobs_are_not_on_my_generate_page(client, bobs_failed_job):
    assert REFUSED_PROMPT not in client.get("/").content.decode()


def test_cancel_of_another_designers_job_is_404_and_changes_nothing(client, bobs_queued_job):
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        assert client.post(f"/jobs/{bobs_queued_job.pk}/cancel/", **headers).status_code == 404
    bobs_queued_job.refresh_from_db()
    assert bobs_queued_job.status == Generation.Status.QUEUED


def test_delete_of_another_designers_image_is_403_and_changes_nothing(client, bob):
    image = make_image(bob, "bob's lighthouse")
    assert client.post(f"/gallery/{image.pk}/delete/").status_code == 403
    assert Image.objects.filter(pk=image.pk).exists()


def test_staff_may_open_cancel_and_retry_anyones_job(client, alice, bobs_failed_job, bobs_queued_job):
    alice.is_staff = True
    alice.save()
    assert client.get(f"/jobs/{bobs_failed_job.pk}/").status_code == 200
    assert client.get("/", {"again": str(bobs_failed_job.pk)}).status_code == 200
    client.post(f"/jobs/{bobs_queued_job.pk}/cancel/")
    bobs_queued_job.refresh_from_db()
    assert bobs_queued_job.status == Generation.Status.CANCELED


def test_team_images_stay_open_to_the_whole_team(client, alice, bob):
    # given an image bob made: the gallery is the team's, so alice may open, reuse and favourite it
    image = make_image(bob, "bob's lighthouse")
    assert client.get(f"/gallery/{image.pk}/").status_code == 200
    assert client.get("/", {"reuse": image.pk}).status_code == 200
    client.post(f"/gallery/{image.pk}/favourite/")
    assert Favourite.objects.filter(user=alice, image=image).exists()


def test_an_inactive_designer_sees_no_job_and_changes_nothing(client, alice):
    own = Generation.objects.create(owner=alice, prompt="mine", model="wan2.2-t2i-flash", width=1024,
                                    height=1024, seed=1)
    alice.is_active = False
    alice.save()
    assert client.get(f"/jobs/{own.pk}/").status_code in {302, 404}
    client.post(f"/jobs/{own.pk}/cancel/")
    own.refresh_from_db()
    assert own.status == Generation.Status.QUEUED


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/", "javascript:alert(1)", "http:evil.example", "\\\\evil.example",
    "/\\evil.example", "https://testserver.evil.example/", " https://evil.example", "data:text/html,hi",
])
def test_favourite_never_redirects_off_the_site(client, bob, target):
    image = make_image(bob, "bob's lighthouse")
    response = client.post(f"/gallery/{image.pk}/favourite/", {"next": target})
    assert response.status_code == 302
    assert response["Location"] == f"/gallery/{image.pk}/"


def test_favourite_returns_to_a_page_of_this_site(client, bob):
    image = make_image(bob, "bob's lighthouse")
    response = client.post(f"/gallery/{image.pk}/favourite/", {"next": "/gallery/?q=lighthouse"})
    assert response["Location"] == "/gallery/?q=lighthouse"
