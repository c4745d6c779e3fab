"""No input makes a 500: every GET parameter and form field of every view, driven with hostile values.

Hypothesis draws the values (dates at both ends of the calendar, non-ASCII digits, NUL and control
characters, 10 kB strings, numbers past every column's range, URLs with schemes, repeated keys
for "wrong types") and each view must answer below 500. In CI the examples are derandomized, so a
run is repeatable; locally each run explores new ones.
"""

import os
import string
import uuid

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gallery.forms import GalleryFilterForm, GenerateForm, ShareForm
from gallery.models import Collection, Generation, ShareLink
from tests.test_gallery import make_image

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("dev", database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९０１２３４５６７８９²³¹⁰₁₂𝟘𝟙𝟚"
FIXED = [
    "", " ", "\x00", "a\x00b", "\u202egnp.exe", "\ufeff", "javascript:alert(1)", "https://evil.example/",
    "//evil.example/", "/\\evil.example", "\\\\evil.example", "http:evil.example", "data:text/html,x",
    "9999-12-31", "0001-01-01", "10000-01-01", "2026-02-30", "-1", "0", "2147483648", "9" * 40, "-9" * 20,
    "1e309", "NaN", "inf", "-0", "0x10", "²", "٣", "１２３", "on", "off", "true", "None", "null", "[]", "{}",
    "%00", "%ZZ", "../../etc/passwd", "<script>alert(1)</script>", "' OR 1=1 --", "*", "!&|():",
    str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000", "x" * 10_000, "猫" * 10_000,
    "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHwxfA", "OTk5OS0xMi0zMVQyMzo1OTo1OSswMDowMHw5OTk5OTk5OTk5OTk5OTk5OTk5OXw",
    "MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHwxfG5hbg",
]
text = st.one_of(
    st.sampled_from(FIXED),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl"]), max_size=20),
    st.text(NON_ASCII_DIGITS + "-:.", min_size=1, max_size=12),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats().map(str),
    st.dates().map(lambda day: day.isoformat()),
    st.text(string.printable, max_size=60),
)
# A key sent once, several times (a list where one value is expected), or empty.
value = st.one_of(text, st.lists(text, min_size=2, max_size=3))


def params(names: list[str]):
    """Dicts over the view's own names plus a stranger one, each hostile."""
    keys = st.sampled_from([*names, "cursor", "next", "x" * 300, "\x00", "id[]"])
    return st.dictionaries(keys, value, max_size=len(names) + 2)


PATH_IDS = st.one_of(st.integers(min_value=0, max_value=10**40).map(str), st.sampled_from(["0", "1", "007"]))
HEADERS = st.sampled_from([{}, {"HTTP_HX_REQUEST": "true"}, {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "x"},
                           {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}, {"HTTP_ACCEPT_LANGUAGE": "\x00;q=NaN"}])
GALLERY = [name for name in GalleryFilterForm.base_fields]
GENERATE = [name for name in GenerateForm.base_fields]
HYPOTHESIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def world(alice, bob):
    """Alice signed in; her image and job, and bob's, so ids in paths hit real rows as well as none."""
    mine, theirs = make_image(alice, "alice's 小猫"), make_image(bob, "bob's lighthouse")
    job = Generation.objects.create(owner=bob, prompt="bob's queued", model="wan2.2-t2i-flash", width=1024,
                                    height=1024, seed=1)
    own, others = Collection.objects.create(owner=alice, name="mine"), Collection.objects.create(owner=bob, name="bob")
    own.add([mine.pk, theirs.pk])
    others.add([theirs.pk])
    link = ShareLink.create(alice, own, expiry=ShareLink.Expiry.DAY, show_parameters=False, allow_downloads=True)
    bobs_link = ShareLink.create(bob, theirs, expiry=ShareLink.Expiry.DAY, show_parameters=True,
                                 allow_downloads=False)
    # Staff, so that the staff pages' own input is reached, not only their refusal.
    alice.is_staff = True
    alice.save()
    client = Client()
    client.force_login(alice)
    return {"client": client, "mine": mine, "theirs": theirs, "job": job, "own": own, "others": others,
            "link": link, "bobs_link": bobs_link, "token": link.token}


def assert_no_5xx(response, what):
    assert response.status_code < 500, f"{what} answered {response.status_code}"


@HYPOTHESIS
@given(data=st.data())
@pytest.mark.parametrize(("method", "path", "names"), [
    ("get", "/", ["reuse", "with", "again"]),
    ("post", "/", GENERATE),
    ("get", "/generate/sizes/", ["model"]),
    ("get", "/gallery/", GALLERY),
    ("get", "/gallery/{mine}/", GALLERY),
    ("get", "/gallery/{theirs}/", GALLERY),
    ("post", "/gallery/{theirs}/favourite/", ["next", "tile"]),
    ("post", "/gallery/{theirs}/delete/", ["next"]),
    ("get", "/jobs/{job}/", []),
    ("post", "/jobs/{job}/cancel/", []),
    ("get", "/images/{mine}/grid/", ["download"]),
    ("post", "/i18n/setlang/", ["language", "next"]),
    ("get", "/accounts/login/", ["next"]),
    ("post", "/accounts/login/", ["username", "password", "next"]),
    ("get", "/collections/", ["q"]),
    ("post", "/collections/", ["name"]),
    ("get", "/collections/picker/", ["images"]),
    ("post", "/collections/picker/", ["images", "name", "collection"]),
    ("get", "/collections/{own}/", []),
    ("post", "/collections/{own}/rename/", ["name"]),
    ("post", "/collections/{others}/rename/", ["name"]),
    ("post", "/collections/{own}/add/", ["images"]),
    ("post", "/collections/{own}/remove/", ["images"]),
    ("post", "/collections/{own}/move/", ["image", "direction"]),
    ("post", "/collections/{own}/order/", ["order"]),
    ("post", "/collections/{others}/order/", ["order"]),
    ("get", "/collections/{own}/download/", []),
    ("post", "/collections/{others}/delete/", []),
    ("post", "/share/image/{mine}/", [*ShareForm.base_fields]),
    ("post", "/share/collection/{own}/", [*ShareForm.base_fields]),
    ("post", "/share/generation/{job}/", [*ShareForm.base_fields]),
    ("get", "/shared/", []),
    ("post", "/shared/{bobs_link}/revoke/", []),
    ("get", "/s/{token}/", []),
    ("get", "/s/{token}/images/{mine}/grid/", []),
    ("get", "/s/{token}/download/", []),
    ("get", "/team/", []),
    ("post", "/team/{bob_id}/quota/", ["daily_images"]),
    ("get", "/usage/", ["month"]),
])
def test_no_parameter_value_makes_a_server_error(world, data, method, path, names):
    url = path.format(mine=world["mine"].pk, theirs=world["theirs"].pk, job=world["job"].pk, own=world["own"].pk,
                      others=world["others"].pk, bobs_link=world["bobs_link"].pk, token=world["token"],
                      bob_id=world["theirs"].owner_id)
    sent = data.draw(params(names), label="params")
    headers = data.draw(HEADERS, label="headers")
    response = getattr(world["client"], method)(url, sent, **headers)
    assert_no_5xx(response, f"{method.upper()} {url} {sent!r}")


@HYPOTHESIS
@given(image_id=PATH_IDS, job_id=st.one_of(st.uuids().map(str), st.just(str(uuid.UUID(int=0)))),
       variant=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/?#%"), min_size=1, max_size=20))
def test_no_id_or_name_in_a_path_makes_a_server_error(world, image_id, job_id, variant):
    client, token = world["client"], world["token"]
    for url, method in [(f"/gallery/{image_id}/", "get"), (f"/gallery/{image_id}/favourite/", "post"),
                        (f"/gallery/{image_id}/delete/", "post"), (f"/images/{image_id}/grid/", "get"),
                        (f"/images/{world['mine'].pk}/{variant}/", "get"), (f"/jobs/{job_id}/", "get"),
                        (f"/jobs/{job_id}/cancel/", "post"), (f"/collections/{image_id}/", "get"),
                        (f"/collections/{image_id}/delete/", "post"), (f"/share/{variant}/{image_id}/", "post"),
                        (f"/share/image/{variant}/", "post"), (f"/shared/{image_id}/revoke/", "post"),
                        (f"/s/{variant}/", "get"), (f"/s/{token}/images/{image_id}/{variant}/", "get"),
                        (f"/s/{variant}/download/", "get")]:
        assert_no_5xx(getattr(client, method)(url), f"{method.upper()} {url}")


@HYPOTHESIS
@given(sent=params(GENERATE))
def test_a_hostile_generate_form_never_stores_control_characters(world, sent):
    world["client"].post("/", sent, HTTP_HX_REQUEST="true")
    for prompt, negative in Generation.objects.values_list("prompt", "negative_prompt"):
        for stored in (prompt, negative):
            assert not any(ord(c) < 32 and c not in "\t\n\r" or 0x202A <= ord(c) <= 0x202E or
                           0x2066 <= ord(c) <= 0x2069 for c in stored), repr(stored)
