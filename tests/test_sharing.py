"""Share links: making them, managing them on /shared/, and the public pages under /s/<token>/ that
check the link on every request."""

import base64
import hashlib
import html
import io
import re
import zipfile
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import PIL.Image
import pytest
import requests
from django.test import Client
from django.utils import timezone

from gallery import downloads, storage
from gallery.models import Collection, Generation, ShareLink
from tests.test_downloads import png_chunks, store_image

SECRET_PROMPT = "秘密的灯塔 secret-lighthouse-campaign"
SECRET_NEGATIVE = "hush-negative 模糊"
SECRET_REVISED = "hush-revised 一座秘密的灯塔在黄昏"
SECRET_SEED = 987654321
SECRET_MODEL = "qwen-image-plus"
SECRETS = [SECRET_PROMPT, "secret-lighthouse", "秘密", SECRET_NEGATIVE, "hush-negative", SECRET_REVISED,
           "hush-revised", str(SECRET_SEED), SECRET_MODEL, "Qwen-Image Plus"]
GONE = "This link is no longer available"


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def visitor():
    """Someone outside the studio: no session, no cookies."""
    return Client()


@pytest.fixture
def secret_image(alice, s3):
    return store_image(alice, SECRET_PROMPT, negative=SECRET_NEGATIVE, revised=SECRET_REVISED, seed=SECRET_SEED,
                       model=SECRET_MODEL)


@pytest.fixture
def generation(alice, s3):
    """A finished generation of two images, both in S3."""
    job = Generation.objects.create(owner=alice, prompt=SECRET_PROMPT, negative_prompt=SECRET_NEGATIVE,
                                    model=SECRET_MODEL, width=96, height=64, seed=SECRET_SEED, n=2,
                                    status="succeeded")
    for index in range(2):
        store_image(alice, generation=job, index=index, revised=SECRET_REVISED, colour=(60 * index, 120, 200))
    return job


@pytest.fixture
def collection(alice, s3):
    """A collection of three images in S3, in a chosen order."""
    images = [store_image(alice, f"collected picture {i}", seed=100 + i, colour=(30 * i, 60, 90)) for i in range(3)]
    collection = Collection.objects.create(owner=alice, name="Spring campaign 春季")
    collection.add([images[2].pk, images[0].pk, images[1].pk])
    return collection


def share(target, owner=None, **settings) -> tuple[ShareLink, str]:
    """A link to target and its path under /s/."""
    options = {"expiry": ShareLink.Expiry.WEEK, "show_parameters": False, "allow_downloads": True} | settings
    link = ShareLink.create(owner or target.owner, target, **options)
    return link, f"/s/{link.token}/"


def routes(link: ShareLink) -> list[str]:
    """Every path under the link: the page, each image in each variant, and the ZIP."""
    base = f"/s/{link.token}/"
    images = [f"{base}images/{image.pk}/{variant}/" for image in link.images()
              for variant in ("grid", "card", "original", "download")]
    return [base, *images, f"{base}download/"]


def link_url(response) -> str:
    """The value of the read-only Link input in a Share answer."""
    return html.unescape(re.search(r'class="share-url" type="text" value="([^"]+)"', response.content.decode())[1])


def meta(response, name: str) -> str:
    found = re.search(rf'<meta (?:property|name)="{re.escape(name)}" content="([^"]*)"', response.content.decode())
    return html.unescape(found[1]) if found else ""


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def follow_to_storage(response) -> requests.Response:
    """What a browser gets at the end of an image route's redirect to a signed S3 URL, with no cookies."""
    assert response.status_code == 302, response.status_code
    return requests.get(response["Location"], timeout=10)


def assert_gone(response) -> None:
    assert response.status_code == 404
    assert GONE in response.content.decode()
    assert response["Cache-Control"] == "no-store"


# Making a link

@pytest.mark.parametrize("kind", ["image", "generation", "collection"])
def test_share_makes_a_link_and_answers_its_url_ready_to_copy(client, visitor, secret_image, generation, collection,
                                                              kind):
    # given something alice may see
    target = {"image": secret_image, "generation": generation, "collection": collection}[kind]

    # when she shares it for 30 days with downloads off
    response = client.post(f"/share/{kind}/{target.pk}/", {"expiry": "30", "allow_downloads": ""},
                           HTTP_HX_REQUEST="true")

    # then one link exists with those settings, and its absolute URL opens for anyone
    assert response.status_code == 200
    link = ShareLink.objects.get()
    assert (link.owner, link.target, link.show_parameters, link.allow_downloads) == (
        target.owner, target, False, False)
    assert timedelta(days=29, hours=23) < link.expires_at - timezone.now() <= timedelta(days=30)
    url = link_url(response)
    assert url == f"http://testserver/s/{link.token}/"
    assert visitor.get(urlsplit(url).path).status_code == 200


def test_the_share_form_offers_the_expiry_and_safe_defaults(client, secret_image):
    response = client.get(f"/share/image/{secret_image.pk}/", HTTP_HX_REQUEST="true")

    page = response.content.decode()
    assert response.status_code == 200
    assert re.findall(r'<option value="([^"]+)"', page) == ["1", "7", "30", "never"]
    assert re.search(r'<input type="checkbox" name="show_parameters"(?![^>]*checked)[^>]*>', page)
    assert re.search(r'<input type="checkbox" name="allow_downloads"[^>]*checked', page)
    for label in ("Expires", "Show prompt and parameters", "Allow downloads", "Create link"):
        assert label in page


def test_without_javascript_share_lands_on_shared_links_with_the_new_link(client, secret_image):
    form = client.get(f"/share/image/{secret_image.pk}/")
    assert form.status_code == 200 and "Create link" in form.content.decode()

    response = client.post(f"/share/image/{secret_image.pk}/", {"expiry": "never", "show_parameters": "on"})

    link = ShareLink.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/shared/#link-{link.pk}"
    assert link.expires_at is None and link.show_parameters
    assert f"http://testserver/s/{link.token}/" in client.get("/shared/").content.decode()


def test_a_bad_expiry_is_refused_and_makes_no_link(client, secret_image):
    response = client.post(f"/share/image/{secret_image.pk}/", {"expiry": "3650"}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and "Create link" in response.content.decode()
    assert not ShareLink.objects.exists()


def test_a_designer_cannot_share_a_job_they_cannot_see(bob, generation):
    # given bob signed in, and alice's job (a job is its maker's alone)
    client = Client()
    client.force_login(bob)

    # when he tries to share it
    response = client.post(f"/share/generation/{generation.pk}/", {"expiry": "7"}, HTTP_HX_REQUEST="true")

    # then it is not there for him, and no link is made
    assert response.status_code == 404
    assert not ShareLink.objects.exists()


@pytest.mark.parametrize("kind", ["image", "collection"])
def test_a_designer_sees_a_colleagues_work_but_only_its_maker_sends_it_outside(bob, secret_image, collection, kind):
    # given bob signed in, and alice's image and collection, which the whole team sees
    client = Client()
    client.force_login(bob)
    target = secret_image if kind == "image" else collection
    page = f"/gallery/{secret_image.pk}/" if kind == "image" else f"/collections/{collection.pk}/"

    # when he opens it and tries to share it
    html = client.get(page).content.decode()
    response = client.post(f"/share/{kind}/{target.pk}/", {"expiry": "7", "show_parameters": "on"},
                           HTTP_HX_REQUEST="true")

    # then he is offered no Share, is refused (visible, not his: 403), and no link is made
    assert f"/share/{kind}/{target.pk}/" not in html
    assert response.status_code == 403
    assert not ShareLink.objects.exists()


def test_a_departed_designers_link_is_not_shown_as_live(alice, secret_image):
    link, _ = share(secret_image)
    alice.is_active = False
    alice.save()
    link.refresh_from_db()
    assert not link.is_live
    assert not ShareLink.objects.live().exists()


@pytest.mark.parametrize("path", ["/share/user/1/", "/share/image/abc/", "/share/image/-1/", "/share/image/٣/",
                                  "/share/image/99999999999999999999999/", "/share/collection/0/",
                                  "/share/generation/not-a-uuid/",
                                  "/share/generation/00000000-0000-0000-0000-000000000000/"])
def test_share_answers_404_for_what_is_not_there(client, path):
    assert client.post(path, {"expiry": "7"}).status_code == 404
    assert not ShareLink.objects.exists()


# The token

def test_the_token_is_random_long_and_never_stored(secret_image):
    # given two links to the same image
    first, _ = share(secret_image)
    second, _ = share(secret_image)

    # then each token has at least 128 bits, they differ, and no column of the row holds one
    for link in (first, second):
        assert len(base64.urlsafe_b64decode(link.token)) * 8 >= 128
        row = ShareLink.objects.filter(pk=link.pk).values().get()
        assert link.token not in {str(value) for value in row.values()}
        assert row["digest"] == hashlib.sha256(link.token.encode()).hexdigest() != link.token
    assert first.token != second.token and first.secret != second.secret


def test_a_database_reader_alone_cannot_open_a_link(visitor, secret_image):
    link, _ = share(secret_image)
    row = ShareLink.objects.filter(pk=link.pk).values().get()

    for stored in (row["secret"], row["digest"], str(row["id"])):
        assert_gone(visitor.get(f"/s/{stored}/"))


def test_copy_link_on_shared_links_gives_the_same_working_url(client, visitor, secret_image):
    # given a link alice made through Share
    made = link_url(client.post(f"/share/image/{secret_image.pk}/", {"expiry": "7"}, HTTP_HX_REQUEST="true"))
    link = ShareLink.objects.get()

    # when she copies it again from /shared/
    page = client.get("/shared/").content.decode()
    copied = html.unescape(re.search(rf'id="link-url-{link.pk}"[^>]*value="([^"]+)"', page)[1])

    # then it is the same URL, and it opens
    assert copied == made
    assert visitor.get(urlsplit(copied).path).status_code == 200


# /shared/

def test_shared_links_lists_my_live_links_only(client, bob, secret_image, collection):
    mine, _ = share(secret_image)
    ended, _ = share(collection)
    ended.revoke()
    theirs, _ = share(store_image(bob, "bob's harbour"), owner=bob)

    page = client.get("/shared/").content.decode()

    assert f'id="link-{mine.pk}"' in page
    assert f'id="link-{ended.pk}"' not in page and f'id="link-{theirs.pk}"' not in page
    assert "Shared links" in page and "Revoke" in page and "Copy link" in page


def test_shared_links_shows_what_each_covers_its_settings_and_its_views(client, visitor, collection):
    link, path = share(collection, expiry=ShareLink.Expiry.WEEK, show_parameters=True, allow_downloads=False)
    visitor.get(path)

    row = re.search(rf'<li class="share-row" id="link-{link.pk}">.*?</li>', client.get("/shared/").content.decode(),
                    re.S)[0]

    assert "Spring campaign 春季" in row and "Collection" in row
    assert "Prompt shown" in row and "Downloads off" in row
    assert re.search(r"in (6|7)\xa0days", row)
    assert '<dd class="share-views">1</dd>' in row


def test_ended_links_are_listed_apart(client, secret_image):
    link, _ = share(secret_image)
    link.revoke()

    page = client.get("/shared/", {"ended": "1"}).content.decode()

    assert f'id="link-{link.pk}"' in page and "This link no longer opens." in page


def test_staff_see_every_designers_links_with_their_maker(client, alice, bob):
    theirs, _ = share(store_image(bob, "bob's harbour"), owner=bob)
    alice.is_staff = True
    alice.save()

    page = client.get("/shared/").content.decode()

    assert f'id="link-{theirs.pk}"' in page and "by bob" in page


# Revoking

def test_revoke_ends_the_page_every_image_route_and_every_download_at_once(client, visitor, collection):
    # given a live link whose page and images open
    link, path = share(collection)
    everything = routes(link)
    assert visitor.get(path).status_code == 200
    assert all(visitor.get(route).status_code in (200, 302) for route in everything)

    # when alice revokes it
    response = client.post(f"/shared/{link.pk}/revoke/", HTTP_HX_REQUEST="true")

    # then the row says so, and everything under the token answers the dead-link page
    assert response.status_code == 200 and "This link no longer opens." in response.content.decode()
    for route in everything:
        assert_gone(visitor.get(route))


def test_revoke_without_javascript_goes_back_to_shared_links(client, secret_image):
    link, _ = share(secret_image)

    response = client.post(f"/shared/{link.pk}/revoke/")

    assert response.status_code == 302 and response["Location"] == "/shared/"
    link.refresh_from_db()
    assert link.revoked_at is not None


def test_a_designer_cannot_revoke_someone_elses_link(bob, secret_image):
    # given alice's link and bob signed in
    link, path = share(secret_image)
    client = Client()
    client.force_login(bob)

    # when he tries to revoke it
    response = client.post(f"/shared/{link.pk}/revoke/")

    # then it is not his to see, and the link still opens
    assert response.status_code == 404
    link.refresh_from_db()
    assert link.revoked_at is None and Client().get(path).status_code == 200


def test_staff_can_revoke_anyones_link(bob, secret_image):
    link, _ = share(secret_image)
    bob.is_staff = True
    bob.save()
    client = Client()
    client.force_login(bob)

    assert client.post(f"/shared/{link.pk}/revoke/").status_code == 302
    link.refresh_from_db()
    assert link.revoked_at is not None


def test_an_expired_link_is_gone_everywhere(visitor, generation):
    link, _ = share(generation)
    everything = routes(link)
    ShareLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    for route in everything:
        assert_gone(visitor.get(route))


def test_unknown_expired_and_revoked_links_are_byte_identical(visitor, alice, secret_image):
    expired, _ = share(secret_image)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    revoked, _ = share(secret_image)
    revoked.revoke()
    unknown = ShareLink.token_for("never issued")
    signed_in = Client()
    signed_in.force_login(alice)

    answers = [client.get(f"/s/{token}/") for token in (unknown, expired.token, revoked.token)
               for client in (visitor, signed_in)]
    answers += [visitor.get(f"/s/{token}/images/{secret_image.pk}/original/")
                for token in (unknown, expired.token, revoked.token)]

    assert {answer.status_code for answer in answers} == {404}
    assert len({answer.content for answer in answers}) == 1


# What the public page shows

def test_hidden_parameters_appear_nowhere_in_the_page_its_headers_or_the_downloads(visitor, generation):
    # given a link that hides the prompt and parameters
    link, path = share(generation, show_parameters=False)
    image = generation.images.first()

    # when a visitor opens the page, downloads an image and downloads all
    page = visitor.get(path)
    single = visitor.get(f"{path}images/{image.pk}/download/")
    everything = visitor.get(f"{path}download/")

    # then no prompt, negative prompt, revised prompt, seed or model shows anywhere
    png = body_of(single)
    archive = zipfile.ZipFile(io.BytesIO(body_of(everything)))
    members = [archive.read(name) for name in archive.namelist()]
    texts = [page.content.decode(), str(page.headers), str(single.headers), str(everything.headers),
             " ".join(archive.namelist())]
    texts += [repr(png_chunks(data)[:-1]) for data in (png, *members)]  # every chunk but IEND, pixels included
    for secret in SECRETS:
        for text in texts:
            assert secret not in text
    # and the files are the stored originals less any text chunk the provider may have written
    for data, stored in zip([png, *members], [image, *generation.images.order_by("index")], strict=False):
        assert png_chunks(data) == [(kind, body) for kind, body in png_chunks(storage.read(stored.file))
                                    if kind not in downloads.TEXT_CHUNKS]


def test_shown_parameters_are_on_the_page_and_in_the_downloads(visitor, secret_image):
    link, path = share(secret_image, show_parameters=True)

    page = visitor.get(path).content.decode()
    png = body_of(visitor.get(f"{path}images/{secret_image.pk}/download/"))

    for shown in (SECRET_PROMPT, SECRET_NEGATIVE, SECRET_REVISED, str(SECRET_SEED), SECRET_MODEL):
        assert html.escape(shown) in page
    parameters = PIL.Image.open(io.BytesIO(png)).info["parameters"]
    assert SECRET_PROMPT in parameters and f"Seed: {SECRET_SEED}" in parameters and SECRET_REVISED in parameters


def test_the_page_carries_open_graph_tags_and_its_image_opens_without_cookies(visitor, secret_image):
    # given a link to an image
    link, path = share(secret_image)

    # when a chat app reads the page
    page = visitor.get(path)

    # then it finds a title, a preview image with its size, and a large card
    card = secret_image.rendition("card")
    assert meta(page, "og:title") and meta(page, "og:description")
    assert (meta(page, "og:image:width"), meta(page, "og:image:height")) == (str(card.width), str(card.height))
    assert meta(page, "twitter:card") == "summary_large_image"
    assert meta(page, "robots") == "noindex, nofollow"
    og_image = meta(page, "og:image")
    assert og_image == f"http://testserver/s/{link.token}/images/{secret_image.pk}/card/"
    # and the image URL answers the card's WebP bytes to a client with no cookies
    fetched = follow_to_storage(Client().get(urlsplit(og_image).path))
    assert fetched.status_code == 200
    assert fetched.content == storage.read(card.file)
    assert PIL.Image.open(io.BytesIO(fetched.content)).format == "WEBP"


def test_the_page_shows_the_makers_name_and_nothing_of_the_studio(bob, alice, collection):
    # given alice's collection shared, opened by bob while he is signed in
    alice.first_name, alice.last_name = "Alice", "Chen"
    alice.save()
    _, path = share(collection)
    client = Client()
    client.force_login(bob)

    page = client.get(path)
    text = page.content.decode()

    # then it names the maker and the collection, and holds no studio link, form, user or storage URL
    assert "Alice Chen" in text and "Spring campaign 春季" in text
    for absent in ("bob", "/gallery/", "/collections/", "/shared/", "csrfmiddlewaretoken", "<form", "<nav",
                   "generations/", "X-Amz", "127.0.0.1", "alice@example.com"):
        assert absent not in text, absent
    assert "Set-Cookie" not in str(page.headers)
    # and the images are listed in the collection's order
    shown = [int(pk) for pk in re.findall(r'/images/(\d+)/grid/', text)]
    assert shown == list(collection.ordered_images().values_list("pk", flat=True))


def test_every_answer_under_a_link_is_uncached_and_sends_no_referrer(visitor, secret_image):
    link, path = share(secret_image)

    for route in [*routes(link), "/s/nothing-here/"]:
        response = visitor.get(route)
        assert response["Cache-Control"] == "no-store", route
        assert response["Referrer-Policy"] == "no-referrer", route
        assert "noindex" in response["X-Robots-Tag"], route


def test_image_routes_refuse_images_the_link_does_not_cover(visitor, alice, generation, secret_image):
    # given a link to a generation, and another image of alice's
    link, path = share(generation)
    covered = generation.images.first()

    # then that other image, an unknown variant and an unknown id all get the dead-link page
    for route in (f"{path}images/{secret_image.pk}/original/", f"{path}images/{secret_image.pk}/download/",
                  f"{path}images/{covered.pk}/thumbnail/", f"{path}images/{covered.pk}/../",
                  f"{path}images/99999999999999999999999/grid/"):
        assert_gone(visitor.get(route))
    assert visitor.get(f"{path}images/{covered.pk}/grid/").status_code == 302


def test_a_link_without_downloads_offers_none_and_refuses_them(visitor, generation):
    link, path = share(generation, allow_downloads=False)
    image = generation.images.first()

    page = visitor.get(path).content.decode()

    assert "Download" not in page
    assert_gone(visitor.get(f"{path}images/{image.pk}/download/"))
    assert_gone(visitor.get(f"{path}download/"))
    assert visitor.get(f"{path}images/{image.pk}/original/").status_code == 200  # full size still shows


def test_download_all_streams_the_collection_in_its_order(visitor, collection):
    link, path = share(collection, show_parameters=True)

    response = visitor.get(f"{path}download/")

    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == "attachment; filename*=utf-8''spring-campaign-%E6%98%A5%E5%AD%A3.zip"
    archive = zipfile.ZipFile(io.BytesIO(body_of(response)))
    expected = [storage.read(image.file) for image in collection.ordered_images()]
    got = [archive.read(name) for name in archive.namelist()]
    assert [PIL.Image.open(io.BytesIO(data)).tobytes() for data in got] == [
        PIL.Image.open(io.BytesIO(data)).tobytes() for data in expected]
    assert archive.namelist()[0].startswith("001-collected-picture-2-")


# Views and signed URLs

def test_views_count_page_views_and_not_image_requests(visitor, generation):
    link, path = share(generation)

    for _ in range(3):
        visitor.get(path)
    for route in routes(link)[1:]:
        visitor.get(route)
    visitor.head(path)

    link.refresh_from_db()
    assert link.views == 3
    assert link.last_viewed_at is not None


@pytest.mark.parametrize("variant", ["grid", "card", "original"])
def test_image_routes_redirect_to_signed_urls_that_live_at_most_a_minute(visitor, secret_image, variant):
    _, path = share(secret_image, show_parameters=True)

    response = visitor.get(f"{path}images/{secret_image.pk}/{variant}/")

    query = parse_qs(urlsplit(response["Location"]).query)
    assert 0 < int(query["X-Amz-Expires"][0]) <= 60
    assert response["Cache-Control"] == "no-store"
    assert follow_to_storage(response).status_code == 200


def test_a_hidden_links_full_size_image_is_streamed_without_text_chunks(visitor, secret_image):
    _, path = share(secret_image, show_parameters=False)

    response = visitor.get(f"{path}images/{secret_image.pk}/original/")

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert not [kind for kind, _ in png_chunks(body_of(response)) if kind in downloads.TEXT_CHUNKS]


def test_a_designer_who_leaves_takes_their_links_with_them(visitor, alice, secret_image):
    _, path = share(secret_image)
    alice.is_active = False
    alice.save()

    assert_gone(visitor.get(path))
    assert_gone(visitor.get(f"{path}images/{secret_image.pk}/grid/"))


@pytest.mark.parametrize("path", ["/s/a%2Fb/", "/s/a/b/c/d/e/", "/s/", "/s/x/images/1/grid/extra/"])
def test_any_other_path_under_s_answers_like_a_dead_link(db, visitor, path):
    dead = visitor.get("/s/no-such-token/")
    response = visitor.get(path)
    assert_gone(response)
    assert response.content == dead.content


# Hostile tokens

@pytest.mark.parametrize("token", ["x" * 10_000, "%00", "a%00b", "猫" * 40, "%F0%9F%90%88", "..", "%2e%2e",
                                   "a%2Fb", "%2F", "%5C", "<script>alert(1)</script>", "' OR 1=1 --",
                                   "A" * 32, "=" * 64, "%FF%FE"])
def test_a_hostile_token_gets_the_dead_link_page_never_a_server_error(visitor, secret_image, token):
    for path in (f"/s/{token}/", f"/s/{token}/images/{secret_image.pk}/original/", f"/s/{token}/download/"):
        response = visitor.get(path)
        assert response.status_code == 404, path
        if "/" not in unquote(token):  # a slash makes another path, which the studio's own 404 answers
            assert GONE in response.content.decode()


def test_nothing_but_reading_is_allowed_under_a_link(visitor, secret_image):
    link, path = share(secret_image)

    for route in routes(link):
        assert visitor.post(route).status_code == 405
    link.refresh_from_db()
    assert link.views == 0
