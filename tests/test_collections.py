"""Collections: making, filling, ordering and downloading them; the whole team sees them, only the maker
(and staff) changes them, and no input makes a server error."""

import hashlib
import io
import re
import struct
import zipfile

import PIL.Image
import PIL.ImageDraw
import PIL.PngImagePlugin
import pytest
from django.db import connection
from django.test import Client

from gallery import browse, storage
from gallery.models import Collection, Image, Rendition
from tests.test_csp import inline_code
from tests.test_gallery import make_image, shown

HTMX = {"HTTP_HX_REQUEST": "true"}
HOSTILE_IDS = ["abc", "-1", "0", "9" * 40, "1e309", "1.5", "", " ", "<script>alert(1)</script>", "\x00", "١",
               "999999999"]


def artwork(size: tuple[int, int], start: tuple, end: tuple) -> PIL.Image.Image:
    """A diagonal gradient with a sun in it, so that screenshots show something like an image."""
    width, height = size
    picture = PIL.Image.new("RGB", size)
    draw = PIL.ImageDraw.Draw(picture)
    for y in range(height):
        mix = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * mix) for a, b in zip(start, end, strict=True)))
    radius = min(size) // 5
    centre = (width * 2 // 3, height // 3)
    draw.ellipse([centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill=(255, 214, 140))
    return picture


def stored_image(owner, prompt: str, *, seed: int = 5, minutes_ago: float = 0, size=(64, 48),
                 colors=((230, 90, 80), (40, 50, 150))) -> Image:
    """An image row whose original PNG (with a tEXt chunk of its own) and thumbnails are really in storage."""
    image = make_image(owner, prompt, seed=seed, minutes_ago=minutes_ago, width=size[0], height=size[1])
    picture = artwork(size, *colors)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Software", "apisim")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", pnginfo=info)
    original = buffer.getvalue()
    storage.put(image.file, original)
    Image.objects.filter(pk=image.pk).update(bytes=len(original), sha256=hashlib.sha256(original).hexdigest())
    for spec, edge in ((Rendition.Spec.GRID, 512), (Rendition.Spec.CARD, 256)):
        thumb = picture.copy()
        thumb.thumbnail((edge, edge))
        buffer = io.BytesIO()
        thumb.save(buffer, "WEBP")
        key = storage.rendition_key(image.generation_id, image.index, spec)
        storage.put(key, buffer.getvalue())
        Rendition.objects.create(image=image, spec=spec, file=key, width=thumb.width, height=thumb.height,
                                 bytes=len(buffer.getvalue()))
    image.refresh_from_db()
    return image


def order_of(collection: Collection) -> list[int]:
    return list(collection.ordered_images().values_list("pk", flat=True))


def snapshot(collection: Collection) -> tuple:
    collection.refresh_from_db()
    return collection.name, order_of(collection)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) for each chunk of a PNG."""
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append((kind, data[at:at + 12 + length]))
        at += 12 + length
    return chunks


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


@pytest.fixture
def images(alice, bob):
    """Five images, newest first, made by both designers."""
    return [make_image(alice if i % 2 else bob, f"picture number {i}", minutes_ago=i) for i in range(5)]


@pytest.fixture
def spring(alice, images):
    collection = Collection.objects.create(owner=alice, name="Spring campaign")
    collection.add([image.pk for image in images[:3]])
    return collection


def test_a_collection_made_on_the_list_opens_its_page(client, alice):
    # when
    response = client.post("/collections/", {"name": "  Spring campaign  "})

    # then
    collection = Collection.objects.get()
    assert (collection.owner, collection.name) == (alice, "Spring campaign")
    assert response.status_code == 302 and response["Location"] == f"/collections/{collection.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "<h1>Spring campaign</h1>" in page and "This collection is empty." in page


def test_the_picker_makes_a_collection_of_the_selection_in_the_order_sent(client, alice, images):
    # when
    response = client.post("/collections/picker/", {"name": "Spring campaign",
                                                    "images": [images[3].pk, images[0].pk, images[3].pk]})

    # then
    collection = Collection.objects.get(name="Spring campaign")
    assert collection.owner == alice
    assert order_of(collection) == [images[3].pk, images[0].pk]
    assert response["Location"] == f"/collections/{collection.pk}/"
    assert "2 images added to Spring campaign." in client.get(response["Location"]).content.decode()


def test_the_picker_answers_htmx_with_a_confirmation_and_an_event(client, spring, images):
    # when
    response = client.post(f"/collections/{spring.pk}/add/", {"images": [images[0].pk, images[3].pk, images[4].pk]},
                           **HTMX)

    # then
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert "2 images added to Spring campaign" in html and "1 was already in it." in html
    assert f'href="/collections/{spring.pk}/"' in html
    assert "collectionAdded" in response["HX-Trigger"]


def test_the_picker_lists_only_my_collections_most_recently_changed_first_with_counts(client, alice, bob, spring,
                                                                                      images):
    # given
    older = Collection.objects.create(owner=alice, name="Autumn lookbook")
    Collection.objects.create(owner=bob, name="Bob's moodboard")
    spring.add([images[4].pk])  # now the most recently changed

    # when
    html = client.get("/collections/picker/", {"images": [images[1].pk]}, **HTMX).content.decode()

    # then
    assert "Bob&#x27;s moodboard" not in html
    assert html.index("Spring campaign") < html.index("Autumn lookbook")
    assert "4 images" in html and "0 images" in html
    assert f'action="/collections/{older.pk}/add/"' in html
    assert f'name="images" value="{images[1].pk}"' in html
    assert 'for="picker-name">Name</label>' in html and "New collection" in html


def test_the_picker_is_a_page_of_plain_forms_without_javascript(client, spring, images):
    response = client.get("/collections/picker/", {"images": [images[3].pk, images[4].pk]})
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    assert "Add 2 images to a collection" in html
    assert html.count(f'<input type="hidden" name="images" value="{images[3].pk}">') == 2  # new, and Spring


def test_the_gallery_dialog_loads_the_picker_without_ids_but_the_page_needs_them(client, spring):
    assert client.get("/collections/picker/", **HTMX).status_code == 200
    response = client.get("/collections/picker/")
    assert response.status_code == 400
    assert "Select at least one image." in response.content.decode()


def test_rename_changes_the_name(client, spring):
    response = client.post(f"/collections/{spring.pk}/rename/", {"name": "Spring campaign 2026"})
    assert response.status_code == 302
    assert snapshot(spring)[0] == "Spring campaign 2026"


def test_rename_by_htmx_answers_the_new_head(client, spring):
    response = client.post(f"/collections/{spring.pk}/rename/", {"name": "Lookbook"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert '<header class="collection-head" id="collection-head"' in html and "<h1>Lookbook</h1>" in html


def test_delete_keeps_the_images_in_the_gallery(client, spring, images):
    # when
    response = client.post(f"/collections/{spring.pk}/delete/", follow=True)

    # then
    assert not Collection.objects.filter(pk=spring.pk).exists()
    assert Image.objects.count() == len(images)
    assert "Its images are still in the gallery." in response.content.decode()
    assert response.redirect_chain[-1][0] == "/collections/"


def test_add_appends_in_the_order_given_and_ignores_duplicates(client, spring, images):
    # when
    response = client.post(f"/collections/{spring.pk}/add/",
                           {"images": [images[4].pk, images[1].pk, images[4].pk, images[3].pk]})

    # then
    assert order_of(spring) == [images[0].pk, images[1].pk, images[2].pk, images[4].pk, images[3].pk]
    assert "2 images added to Spring campaign." in client.get(response["Location"]).content.decode()


def test_remove_takes_out_only_the_named_images(client, spring, images):
    response = client.post(f"/collections/{spring.pk}/remove/", {"images": [images[1].pk, images[4].pk]})
    assert response.status_code == 302
    assert order_of(spring) == [images[0].pk, images[2].pk]
    assert Image.objects.filter(pk=images[1].pk).exists()


def test_remove_by_htmx_answers_the_grid_without_the_image(client, spring, images):
    html = client.post(f"/collections/{spring.pk}/remove/", {"images": [images[1].pk]}, **HTMX).content.decode()
    assert '<div id="collection-grid"' in html and "<html" not in html
    assert shown_in_order(html) == [images[0].pk, images[2].pk]


def shown_in_order(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<figure class="tile collection-tile[^"]*" id="image-(\d+)"', html)]


@pytest.mark.parametrize(("index", "direction", "expected"), [
    (0, "earlier", [0, 1, 2]), (0, "later", [1, 0, 2]), (1, "earlier", [1, 0, 2]), (1, "later", [0, 2, 1]),
    (2, "later", [0, 1, 2]), (2, "earlier", [0, 2, 1]),
])
def test_move_earlier_and_later_stop_at_the_ends(client, spring, images, index, direction, expected):
    response = client.post(f"/collections/{spring.pk}/move/", {"image": images[index].pk, "direction": direction})
    assert response.status_code == 302
    assert response["Location"] == f"/collections/{spring.pk}/#image-{images[index].pk}"
    assert order_of(spring) == [images[i].pk for i in expected]


def test_move_by_htmx_keeps_the_focus_on_the_moved_image(client, spring, images):
    html = client.post(f"/collections/{spring.pk}/move/", {"image": images[0].pk, "direction": "later"},
                       **HTMX).content.decode()
    assert shown_in_order(html) == [images[1].pk, images[0].pk, images[2].pk]
    focused = re.search(r'<figure[^>]*id="image-(\d+)"(?:(?!</figure>).)*autofocus', html, re.S)
    assert int(focused.group(1)) == images[0].pk and html.count("autofocus") == 1


def test_order_puts_the_images_in_the_posted_order(client, spring, images):
    order = f"{images[2].pk},{images[0].pk},{images[1].pk}"
    response = client.post(f"/collections/{spring.pk}/order/", {"order": order}, **HTMX)
    assert response.status_code == 200
    assert order_of(spring) == [images[2].pk, images[0].pk, images[1].pk]
    assert shown_in_order(response.content.decode()) == order_of(spring)


def test_the_collection_page_shows_its_images_in_order_with_every_control(client, spring, images):
    spring.reorder([images[2].pk, images[0].pk])
    html = client.get(f"/collections/{spring.pk}/").content.decode()
    assert shown_in_order(html) == [images[2].pk, images[0].pk, images[1].pk]
    for text in ["Rename", "Delete", "Remove", "Move earlier", "Move later", "Download all (ZIP)", "Show in gallery",
                 f'href="/gallery/?collection={spring.pk}"', f'data-order-url="/collections/{spring.pk}/order/"',
                 'data-confirm="Delete the collection “Spring campaign”? Its images stay in the gallery."']:
        assert text in html, text


def test_another_designer_sees_the_collection_without_change_controls(bob_client, spring, images):
    listing = bob_client.get("/collections/")
    page = bob_client.get(f"/collections/{spring.pk}/")
    assert listing.status_code == page.status_code == 200
    assert "Spring campaign" in listing.content.decode()
    html = page.content.decode()
    assert len(shown_in_order(html)) == 3
    for control in ["Rename", "Move earlier", "Move later", "gallery-collection-remove", "data-order-url",
                    f"/collections/{spring.pk}/delete/", f"/collections/{spring.pk}/remove/"]:
        assert control not in html, control
    assert "Download all (ZIP)" in html


def test_another_designer_cannot_rename(bob_client, spring):
    before = snapshot(spring)
    assert bob_client.post(f"/collections/{spring.pk}/rename/", {"name": "Bob's now"}).status_code == 403
    assert bob_client.post(f"/collections/{spring.pk}/rename/", {"name": "Bob's now"}, **HTMX).status_code == 403
    assert snapshot(spring) == before


def test_another_designer_cannot_delete(bob_client, spring):
    before = snapshot(spring)
    assert bob_client.post(f"/collections/{spring.pk}/delete/").status_code == 403
    assert snapshot(spring) == before


def test_another_designer_cannot_add(bob_client, spring, images):
    before = snapshot(spring)
    assert bob_client.post(f"/collections/{spring.pk}/add/", {"images": [images[4].pk]}, **HTMX).status_code == 403
    assert snapshot(spring) == before


def test_another_designer_cannot_remove(bob_client, spring, images):
    before = snapshot(spring)
    assert bob_client.post(f"/collections/{spring.pk}/remove/", {"images": [images[0].pk]}).status_code == 403
    assert snapshot(spring) == before


def test_another_designer_cannot_move(bob_client, spring, images):
    before = snapshot(spring)
    response = bob_client.post(f"/collections/{spring.pk}/move/", {"image": images[0].pk, "direction": "later"})
    assert response.status_code == 403
    assert snapshot(spring) == before


def test_another_designer_cannot_reorder(bob_client, spring, images):
    before = snapshot(spring)
    order = ",".join(str(image.pk) for image in reversed(images[:3]))
    assert bob_client.post(f"/collections/{spring.pk}/order/", {"order": order}).status_code == 403
    assert snapshot(spring) == before


def test_staff_can_change_anyones_collection(bob_client, bob, spring, images):
    bob.is_staff = True
    bob.save()
    assert bob_client.post(f"/collections/{spring.pk}/remove/", {"images": [images[0].pk]}).status_code == 302
    assert order_of(spring) == [images[1].pk, images[2].pk]


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/collections/"), ("post", "/collections/"), ("get", "/collections/picker/?images=1"),
    ("post", "/collections/picker/"), ("get", "/collections/{pk}/"), ("post", "/collections/{pk}/rename/"),
    ("post", "/collections/{pk}/delete/"), ("post", "/collections/{pk}/add/"), ("post", "/collections/{pk}/remove/"),
    ("post", "/collections/{pk}/move/"), ("post", "/collections/{pk}/order/"), ("get", "/collections/{pk}/download/"),
])
def test_signed_out_visitors_are_sent_to_sign_in(spring, method, path):
    response = getattr(Client(), method)(path.format(pk=spring.pk))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert snapshot(spring)[1] and Collection.objects.filter(pk=spring.pk).exists()


def test_wrong_methods_are_refused(client, spring):
    assert client.get(f"/collections/{spring.pk}/delete/").status_code == 405
    assert client.post(f"/collections/{spring.pk}/").status_code == 405
    assert client.post(f"/collections/{spring.pk}/download/").status_code == 405


HOSTILE_NAMES = ["<script>alert(1)</script>", "x" * 10_000, "\u202egnp.exe\x00\x07 bell", "", "   ", "\x00\x1b",
                 "猫" * 121, "\u2066\u2069", '"><img src=x onerror=alert(1)>']


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("how", ["create", "picker", "rename", "rename-htmx"])
def test_hostile_names_are_refused_with_a_message_or_stored_plain_and_shown_escaped(client, spring, images, how,
                                                                                    name):
    # when
    if how == "create":
        response = client.post("/collections/", {"name": name})
    elif how == "picker":
        response = client.post("/collections/picker/", {"name": name, "images": [images[0].pk]}, **HTMX)
    else:
        response = client.post(f"/collections/{spring.pk}/rename/", {"name": name},
                               **(HTMX if how == "rename-htmx" else {}))

    # then
    assert response.status_code in (200, 302, 422), response.status_code
    names = list(Collection.objects.values_list("name", flat=True))
    if response.status_code == 422:
        messages = r"(Give the collection a name\.|A name is at most 120 characters\.)"
        assert re.search(rf'class="error" role="alert">{messages}<', response.content.decode())
        assert names.count("Spring campaign") == 1 and len(names) == 1
        return
    stored = (set(names) - {"Spring campaign"}).pop()
    assert not re.search("[\x00-\x1f\u202a-\u202e\u2066-\u2069]", stored) and 0 < len(stored) <= 120
    collection = Collection.objects.get(name=stored)
    for page in (client.get(f"/collections/{collection.pk}/"), client.get("/collections/")):
        html = page.content.decode()
        assert "<script>alert" not in html and "<img src=x" not in html
        if "<" in stored:
            assert "&lt;" in html


ID_FIELDS = [("post", "/collections/{pk}/add/", "images"), ("post", "/collections/{pk}/remove/", "images"),
             ("post", "/collections/{pk}/move/", "image"), ("post", "/collections/{pk}/order/", "order"),
             ("post", "/collections/picker/", "images"), ("get", "/collections/picker/", "images"),
             ("get", "/gallery/", "collection")]


@pytest.mark.parametrize("headers", [{}, HTMX], ids=["plain", "htmx"])
@pytest.mark.parametrize(("method", "path", "field", "value"), [
    (*where, value) for where in ID_FIELDS for value in HOSTILE_IDS
    if value or where[2] != "collection"  # an empty gallery filter is no filter
])
def test_hostile_ids_are_refused_with_4xx_and_a_message(client, spring, method, path, field, value, headers):
    before = snapshot(spring)
    data = {field: value, "direction": "later", "name": "Hostile"}
    response = getattr(client, method)(path.format(pk=spring.pk), data, **headers)
    assert 400 <= response.status_code < 500, response.status_code
    assert 'role="alert">' in response.content.decode()
    assert snapshot(spring) == before
    assert not Collection.objects.filter(name="Hostile").exists()


@pytest.mark.parametrize("value", ["earlier ", "sideways", "", "EARLIER"])
def test_a_move_in_no_known_direction_is_refused(client, spring, images, value):
    response = client.post(f"/collections/{spring.pk}/move/", {"image": images[0].pk, "direction": value})
    assert response.status_code == 400
    assert snapshot(spring)[1] == [image.pk for image in images[:3]]


def test_moving_an_image_not_in_the_collection_is_refused(client, spring, images):
    response = client.post(f"/collections/{spring.pk}/move/", {"image": images[4].pk, "direction": "later"}, **HTMX)
    assert response.status_code == 400
    assert "That image is no longer in this collection." in response.content.decode()


@pytest.mark.parametrize("collection_id", ["0", "999999999", "9" * 30])
@pytest.mark.parametrize("suffix", ["", "download/"])
def test_unknown_collections_are_404(client, collection_id, suffix):
    assert client.get(f"/collections/{collection_id}/{suffix}").status_code == 404
    assert client.post(f"/collections/{collection_id}/rename/", {"name": "x"}).status_code == 404


def test_the_gallery_filtered_to_a_collection_shows_only_its_images(client, spring, images):
    response = client.get("/gallery/", {"collection": spring.pk})
    html = response.content.decode()
    assert response.status_code == 200
    assert shown(response) == [image.pk for image in images[:3]]
    assert re.search(rf'<input type="hidden" name="collection" value="{spring.pk}"[^>]*>', html)
    assert f'<a href="/collections/{spring.pk}/">Spring campaign</a>' in html
    assert shown(client.get("/gallery/", {"collection": spring.pk, "q": "number 1"})) == [images[1].pk]
    assert shown(client.get("/gallery/")) == [image.pk for image in images]


def test_the_gallery_tiles_can_be_selected_for_a_collection(client, images):
    html = client.get("/gallery/").content.decode()
    assert html.count('class="tile-select" type="checkbox" name="images"') == len(images)
    assert 'aria-label="Select: picture number 0"' in html
    assert 'id="selection" class="selection-bar" method="get" action="/collections/picker/"' in html
    assert '<dialog id="collection-picker"' in html


def test_the_image_page_offers_add_to_collection(client, images):
    html = client.get(f"/gallery/{images[0].pk}/").content.decode()
    assert f'href="/collections/picker/?images={images[0].pk}"' in html and "Add to collection" in html


def test_the_list_shows_covers_counts_makers_and_searches_by_name(client, alice, bob):
    # given
    cover = stored_image(bob, "a red kite over the sea")
    kites = Collection.objects.create(owner=bob, name="Kites for Acme")
    kites.add([cover.pk, make_image(bob, "second kite").pk])
    Collection.objects.create(owner=alice, name="Autumn lookbook")

    # when
    everything = client.get("/collections/").content.decode()
    found = client.get("/collections/", {"q": "acme"}).content.decode()
    mine = client.get("/collections/", {"mine": "on"}).content.decode()

    # then
    grid = cover.grid
    assert (f'<img src="/images/{cover.pk}/grid/" width="{grid.width}" height="{grid.height}" loading="lazy"'
            in everything)
    assert "2 images" in everything and "0 images" in everything and ">bob ·" in everything
    assert "<h1>Collections</h1>" in everything and '<input type="search" name="q"' in everything
    assert "Kites for Acme" in found and "Autumn lookbook" not in found
    assert "Autumn lookbook" in mine and "Kites for Acme" not in mine


def test_a_bad_search_is_400_with_the_reason(client, spring):
    response = client.get("/collections/", {"q": "x" * 500})
    assert response.status_code == 400
    assert 'class="error" role="alert">Search collections: ' in response.content.decode()
    assert "Spring campaign</span>" in response.content.decode()  # the list, unfiltered


def test_control_characters_in_a_search_are_dropped(client, spring):
    response = client.get("/collections/", {"q": "Spr\x00ing\u202e"})
    assert response.status_code == 200 and "Spring campaign</span>" in response.content.decode()


def test_the_list_says_what_to_do_when_empty(client):
    html = client.get("/collections/").content.decode()
    assert "No collections yet." in html and "Add to collection" in html


def test_download_all_is_a_zip_of_the_originals_with_their_parameters(client, alice):
    # given three stored PNGs in a collection
    made = [stored_image(alice, "a red kite over the sea, 电影感", seed=11, size=(40, 30)),
            stored_image(alice, "青花瓷茶杯，柔和光线", seed=12, size=(32, 32),
                         colors=((20, 60, 200), (250, 250, 240))),
            stored_image(alice, "Portrait of an old fisherman at dawn, oil on canvas", seed=13, size=(24, 36))]
    collection = Collection.objects.create(owner=alice, name="Spring campaign")
    collection.add([image.pk for image in made])

    # when
    response = client.get(f"/collections/{collection.pk}/download/")
    body = b"".join(response.streaming_content)

    # then
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    assert archive.namelist() == ["001-a-red-kite-over-the-sea-11.png", "002-青花瓷茶杯柔和光线-12.png",
                                  "003-portrait-of-an-old-fisherman-at-13.png"]
    for name, image in zip(archive.namelist(), made, strict=True):
        member, original = archive.read(name), storage.read(image.file)
        assert hashlib.sha256(original).hexdigest() == image.sha256  # the stored file never changes
        kinds = [kind for kind, _ in png_chunks(member)]
        assert kinds[:2] == [b"IHDR", b"iTXt"]
        assert b"".join(chunk for kind, chunk in png_chunks(member) if kind != b"iTXt") == original[8:]
        assert member[:8] == original[:8]
        with PIL.Image.open(io.BytesIO(member)) as got, PIL.Image.open(io.BytesIO(original)) as want:
            assert got.tobytes() == want.tobytes()
            text = got.text
        assert text["Software"] == "apisim"
        assert text["parameters"].startswith(image.generation.prompt + "\n")
        assert f"Seed: {image.seed}, Size: {image.width}x{image.height}, Model: wan2.2-t2i-flash" in text["parameters"]


def test_the_zip_is_named_after_the_collection_with_an_ascii_fallback(client, alice):
    collection = Collection.objects.create(owner=alice, name='春季 "campaign"')
    response = client.get(f"/collections/{collection.pk}/download/")
    assert response["Content-Disposition"] == (
        "attachment; filename=\"campaign.zip\"; filename*=UTF-8''%E6%98%A5%E5%AD%A3%20%22campaign%22.zip")
    assert zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist() == []


def test_another_designer_may_download_the_zip(bob_client, alice):
    collection = Collection.objects.create(owner=alice, name="Spring")
    collection.add([stored_image(alice, "a kite").pk])
    response = bob_client.get(f"/collections/{collection.pk}/download/")
    assert response.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()) == 1


def test_no_collection_page_holds_inline_code_or_styles(client, spring, images):
    for url in ["/collections/", f"/collections/{spring.pk}/", f"/collections/picker/?images={images[0].pk}",
                f"/gallery/?collection={spring.pk}", f"/gallery/{images[0].pk}/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert inline_code(response.content.decode()) == [], url


def test_the_gallery_filtered_to_a_collection_pages_through_its_items_index(client, alice, bob):
    # given a collection holding 70 of 100 images, many made in the same second, added in no particular order
    made = [make_image(alice if index % 2 else bob, f"frame {index}", minutes_ago=index // 8) for index in range(100)]
    chosen = made[::3] + made[1::3]
    collection = Collection.objects.create(owner=alice, name="Storyboard")
    collection.add([image.pk for image in reversed(chosen)])
    expected = [image.pk for image in sorted(chosen, key=lambda image: (image.created, image.pk), reverse=True)]

    # when the designer scrolls the gallery filtered to it, newest first, and searches within it
    seen, url = [], f"/gallery/?collection={collection.pk}"
    while url:
        html = client.get(url).content.decode()
        seen += shown(client.get(url))
        more = re.search(r'<a class="more" href="([^"]+)"', html)
        url = more and more.group(1).replace("&amp;", "&")

    # then every member shows once, newest first (ties by id), and only members
    assert seen == expected
    framed = shown(client.get("/gallery/", {"collection": collection.pk, "q": "frame", "sort": "newest"}))
    assert framed == expected[:30]

    # and the page's query reads the items' own (collection, image_created, image) index
    with connection.cursor() as cursor:
        images = browse.filtered(alice, {"collection": collection}).newest_first().values("id")[:31]
        sql, params = images.query.sql_with_params()
        # a tiny table would otherwise be read whole and sorted; with both off, a Sort stays only if no index
        # gives the order (PostgreSQL knows image.id and the item's image_id are one through the join)
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "collection_item_newest" in plan and "Sort" not in plan
