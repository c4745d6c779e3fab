"""Templates only render: URLs come from {% url %} (queries from {% link_query %} or {% querystring %}), rules such
as "can be canceled" come from the model, and every aria-describedby a form field carries names something shown."""

import re
from pathlib import Path

import pytest
from django.template import Context, Template

from gallery.models import Generation, Rendition
from tests.test_gallery import make_image

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
VIEWS = ROOT / "gallery" / "views"

URL_ATTRIBUTE = re.compile(
    r"""\s(?P<name>href|src|action|formaction|hx-(?:get|post|put|patch|delete)|data-[\w-]*url)="""
    r'''"(?P<value>(?:\{\{.*?\}\}|\{%.*?%\}|[^"{])*)"''')
PART = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|[^{]+")
URL_AS = re.compile(r"\{%\s*url\s+[^%]*\bas\s+(\w+)\s*%\}")
QUERY_AS = re.compile(r"\{%\s*link_query\s+[^%]*\bas\s+(\w+)\s*%\}")
# URLs a template may take whole from its context, each with the reason it is not a {% url %}.
ALLOWED = {
    # Axes answers a refused sign-in at whatever URL it was posted to; "Back to sign in" reloads that very page,
    # ?next= and all, which no {% url %} in the template could know.
    ("registration/locked_out.html", "{{ request.get_full_path }}"),
    # The server-error page renders with no context and must not need the URLconf that may be what broke.
    ("500.html", "/"),
}


def template_files() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.html"))


def variable(part: str) -> str | None:
    """The name in a bare {{ name }}, else None."""
    match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", part)
    return match and match.group(1)


def url_problem(value: str, url_names: set[str], query_names: set[str], allowed: bool) -> str | None:
    """Why an attribute's URL is put together by hand, or None when tags made it.

    A URL is a {% url %} or {% static %} (or a variable one made), then at most a query from {% link_query %}
    or {% querystring %} and a #fragment; or a query alone, for this same page.
    """
    parts = [part for part in PART.findall(value) if not re.fullmatch(r"\{%\s*(if|elif|else|endif)\b.*%\}", part)]
    if not parts or allowed:
        return None
    first, *rest = parts
    is_query = re.compile(r"\{%\s*(querystring|link_query)\b.*%\}").fullmatch
    if not first.startswith(("{{", "{%")):
        if first.startswith("/") or "?" in first:
            return f"a path or query written out: {first!r}"
        return None  # a fragment (#main) or an address outside the studio
    if not (re.fullmatch(r"\{%\s*(url|static)\s.*%\}", first) or variable(first) in url_names or is_query(first)):
        return f"a URL taken whole from the context: {first!r}"
    for part in rest:
        if part.startswith("#"):
            return None  # a fragment may name anything after it
        if not (is_query(part) or variable(part) in query_names):
            return f"{part!r} joined onto a URL"
    return None


def test_template_urls_come_from_url_tags():
    problems = []
    for path in template_files():
        name = str(path.relative_to(TEMPLATES))
        text = path.read_text(encoding="utf-8")
        url_names, query_names = set(URL_AS.findall(text)), set(QUERY_AS.findall(text))
        for number, line in enumerate(text.splitlines(), 1):
            for match in URL_ATTRIBUTE.finditer(line):
                value = match["value"]
                if problem := url_problem(value, url_names, query_names, (name, value) in ALLOWED):
                    problems.append(f"{name}:{number}: {match['name']}: {problem}")
    assert problems == []


@pytest.mark.parametrize(("value", "fine"), [
    ("{% url 'gallery-detail' image.pk %}", True),
    ("{% url 'gallery-detail' image.pk %}{% link_query filters %}", True),
    ("{% querystring cursor=page.next_cursor %}", True),
    ("{{ move_url }}", True),
    ("#main", True),
    ("{% url 'gallery-shared' %}#link-{{ link.pk }}", True),
    ("{{ urls.detail }}{{ image.pk }}/", False),
    ("{% url 'gallery-generate' %}?reuse={{ image.pk }}", False),
    ("{% url 'gallery-index' %}{% if filters %}?{{ filters }}{% endif %}", False),
    ("?cursor={{ page.next_cursor }}", False),
    ("/gallery/", False),
    ("{{ base }}images/{{ image.pk }}/grid/", False),
])
def test_the_url_check_tells_tags_from_joins(value, fine):
    assert (url_problem(value, {"move_url"}, set(), allowed=False) is None) is fine


def test_templates_leave_status_rules_to_the_model():
    found = [f"{path.relative_to(TEMPLATES)}:{number}: {line.strip()}"
             for path in template_files()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\.status\s*(==|!=|\bin\b|\bnot in\b)", line)]
    assert found == []


def test_views_neither_cut_nor_join_reversed_urls():
    # A fragment (#link-3) may follow a reversed URL: it names a place in the page, not a route.
    pattern = re.compile(r"""removesuffix|removeprefix|\{reverse\([^}]*\)\}[/?]"""
                         r"""|reverse\([^)]*\)\s*(\+\s*f?["'][/?]|\.(replace|split|rsplit)\()""")
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sorted(VIEWS.glob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == []


# link_query


@pytest.mark.parametrize(("source", "expected"), [
    ("{% link_query reuse=5 with='seed' %}", "?reuse=5&amp;with=seed"),
    ("{% link_query %}", ""),
    ("{% link_query params %}", "?q=%E5%B0%8F%E7%8C%AB+neon&amp;model=a&amp;model=b"),
    ("{% link_query params q=None %}", "?model=a&amp;model=b"),
    ("{% link_query params q='cat' %}", "?q=cat&amp;model=a&amp;model=b"),
    ("{% link_query missing %}", ""),
])
def test_link_query_writes_exactly_its_parameters(source, expected, rf):
    from django.http import QueryDict

    params = QueryDict("q=小猫+neon&model=a&model=b")
    request = rf.get("/gallery/", {"sort": "newest"})  # the page's own query never leaks in
    html = Template("{% load studio %}" + source).render(Context({"params": params, "request": request}))
    assert html == expected


# pages


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


def with_grid(image):
    Rendition.objects.create(image=image, spec="grid", file=f"{image.file}.webp", width=512, height=512, bytes=9)
    return image


def test_gallery_tiles_link_to_the_image_with_the_search_and_reuse_with_their_own_query(client, alice):
    image = with_grid(make_image(alice, "a kitten in neon", revised="a kitten in neon light"))
    html = client.get("/gallery/", {"q": "kitten", "sort": "newest", "model": "", "cursor": ""}).content.decode()

    assert f'href="/gallery/{image.pk}/?q=kitten&amp;sort=newest"' in html
    assert f'src="/images/{image.pk}/grid/"' in html
    assert f'href="/?reuse={image.pk}"' in html
    assert f'href="/?reuse={image.pk}&amp;with=seed"' in html
    assert f'href="/?reuse={image.pk}&amp;with=revised"' in html


def test_every_link_of_a_gallery_tile_opens(client, alice):
    image = with_grid(make_image(alice, "a kitten in neon", revised="a kitten in neon light"))
    html = client.get("/gallery/", {"q": "kitten"}).content.decode()
    tile = re.search(r'<figure class="tile[^"]*" data-image="%d".*?</figure>' % image.pk, html, re.S).group(0)
    links = {url.replace("&amp;", "&") for url in re.findall(r'(?:href|src)="([^"#]+)"', tile)}

    assert len(links) >= 5
    for url in links:
        response = client.get(url)
        assert response.status_code in {200, 302}, url


def test_the_next_page_link_keeps_the_search_and_moves_the_cursor(client, alice, monkeypatch):
    from gallery import browse

    monkeypatch.setattr(browse, "PAGE_SIZE", 2)
    for i in range(3):
        make_image(alice, f"kitten {i}", minutes_ago=i)
    html = client.get("/gallery/", {"q": "kitten", "sort": "newest"}).content.decode()
    more = re.search(r'<a class="more" href="([^"]+)"', html).group(1).replace("&amp;", "&")

    assert more.startswith("/gallery/?q=kitten&sort=newest&cursor=")
    assert len(re.findall(r'data-image="', client.get(more, HTTP_HX_REQUEST="true").content.decode())) == 1


@pytest.mark.parametrize("status", [choice for choice, _ in Generation.Status.choices])
def test_a_job_card_offers_what_the_model_allows(client, alice, status):
    job = Generation.objects.create(owner=alice, prompt="a kitten", model="wan2.2-t2i-flash", width=1024,
                                    height=1024, seed=1, status=status)
    html = client.get(f"/jobs/{job.pk}/").content.decode()

    assert (f'href="/?again={job.pk}"' in html) is job.can_try_again
    assert (f'action="/jobs/{job.pk}/cancel/"' in html) is job.can_cancel(alice)
    assert job.can_try_again is (status in {"failed", "partial", "canceled"})
    assert job.can_cancel(alice) is (status == "queued")


@pytest.mark.parametrize(("url", "data"), [
    ("/", {"prompt": "", "model": "wan2.6-t2i", "size": "custom", "width": "0", "n": "9", "seed": "x"}),
    ("/gallery/", {"since": "1800-01-01", "until": "nope", "q": "x" * 201}),
    ("/collections/", {"name": ""}),
    ("/collections/picker/", {"name": "", "images": "1"}),
    ("/usage/", {"month": "2024-13"}),
])
def test_every_field_description_names_something_on_the_page(client, alice, url, data):
    alice.is_staff = True
    alice.save()
    make_image(alice, "a kitten")
    post = url in {"/", "/collections/", "/collections/picker/"}
    html = (client.post(url, data) if post else client.get(url, data)).content.decode()
    described = {name for names in re.findall(r'aria-describedby="([^"]+)"', html) for name in names.split()}

    assert any(name.endswith("_error") for name in described)
    assert {name for name in described if f'id="{name}"' not in html} == set()


@pytest.mark.parametrize(("label", "field"), [
    ("Prompt", "id_prompt"), ("Negative prompt", "id_negative_prompt"), ("Model", "id_model"),
    ("Size", "id_size"), ("Number of images", "id_n"), ("Seed", "id_seed"), ("Prompt extend", "id_prompt_extend"),
    ("Watermark", "id_watermark"), ("Width", "id_width"), ("Height", "id_height"),
])
def test_the_generate_form_labels_every_field(client, label, field):
    html = client.get("/").content.decode()
    assert re.search(rf'<label (class="toggle" )?for="{field}">(<input[^>]*> <span>)?{label}(</span>)?</label>', html)
    assert html.count(f'id="{field}"') == 1


def test_the_prompt_fields_have_counters_and_the_model_swaps_the_size_field(client):
    html = client.get("/").content.decode()
    assert 'data-counter-for="id_prompt"' in html and 'data-counter-for="id_negative_prompt"' in html
    assert re.search(r'<select name="model" hx-get="/generate/sizes/" hx-trigger="change" '
                     r'hx-target="#size-field" hx-swap="outerHTML"', html)
    assert 'id="size-field"' in html
