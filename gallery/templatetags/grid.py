"""The gallery grid's tiles, written by a template tag, as Django's admin writes its change list's rows.

A page of the grid is 30 tiles of about 30 values each (links, labels, the favourite state). Written by the
template engine, those values were most of a gallery page's time (bench/search.py): each one is looked up,
localized and escaped on its own, 900 lookups a page. {% grid_tiles %} writes a tile as one f-string instead:
every value from the database goes through html.escape (what Django's escape calls, without its check for lazy
strings) or is formatted as a number, every URL comes from reverse() with its arguments, and what is the same
for every tile (the labels, the search's highlighter, the query string carrying the filters) is made once.
"""

import unicodedata
from html import escape

from django import template
from django.http import QueryDict
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext, pgettext

from gallery.models import Image, Rendition
from gallery.search import Query
from gallery.templatetags.appearance import aspect

register = template.Library()

CAPTION_CHARS, LABEL_CHARS = 220, 100
EAGER_TILES = 6  # the first screen's: a lazy first tile delays the largest paint; the rest load lazily


@register.simple_tag
def favourite_button(image: Image, is_favourite: bool, label: str = "") -> SafeString:
    """A tile's ♡: it posts the page's #favourites form without JavaScript, and with htmx replaces itself
    with the answer, this button in its new state. `label` is its escaped name, when a page of tiles has it."""
    url, on = escape(reverse("gallery-favourite", args=[image.pk])), " is-on" if is_favourite else ""
    return mark_safe(
        f'<button class="fav tile-favourite{on}" type="submit" form="favourites" formaction="{url}" '
        f"""hx-post="{url}" hx-vals='{{"tile": "1"}}' hx-target="this" hx-swap="outerHTML" """
        f'aria-pressed="{"true" if is_favourite else "false"}" aria-label="{label or escape(gettext("Favourite"))}">'
        f'{"♥" if is_favourite else "♡"}</button>')


@register.simple_tag
def grid_tiles(images: list[Image], query: Query, filters: QueryDict) -> SafeString:
    """The tiles of images (ImageQuerySet.for_tiles) found by query, each linking to its image's page with
    filters, the search and filters its Previous and Next follow."""
    return Tiles(query, filters).render(images)


class Tiles:
    """What one page's tiles share, and each tile."""

    def __init__(self, query: Query, filters: QueryDict):
        self.detail_query = escape(f"?{filters.urlencode()}") if filters else ""
        self.generate = reverse("gallery-generate")
        self.highlight = query.highlighter()
        self.labels = {name: escape(text) for name, text in [
            ("select", gettext("Select:")), ("reuse", gettext("Reuse prompt")),
            ("seed", gettext("Reuse with seed")), ("revised", gettext("Use revised prompt")),
            ("favourite", gettext("Favourite"))]}
        # What Truncator appends to a cut text, translated once a page instead of twice a cut.
        # Translators: Django's own string, which Truncator asks for; as Django's catalog has it, so that
        # prompts are cut as they were.
        self.ellipsis = pgettext("String to return when truncating text", "%(truncated_text)s…")

    def shortened(self, text: str, limit: int) -> str:
        """text, NFC-normalized, cut to limit characters as Truncator.chars (the truncatechars filter) cuts
        it. A text no longer than limit, most prompts, comes back whole from Truncator; that is done here
        without it."""
        return text if len(text) <= limit else Truncator(text).chars(limit, truncate=self.ellipsis)

    def render(self, images: list[Image]) -> SafeString:
        return mark_safe("\n".join(self.tile(image, number) for number, image in enumerate(images, 1)))

    def tile(self, image: Image, number: int) -> str:
        """One tile: its checkbox, its link (thumbnail, prompt, designer, size, model) and its actions."""
        pk, labels = image.pk, self.labels
        prompt = unicodedata.normalize("NFC", image.prompt)  # as Truncator returns it, cut or not
        if image.grid_width:
            src = escape(reverse("gallery-image-file", args=[pk, Rendition.Spec.GRID]))
            lazy = ' loading="lazy"' if number > EAGER_TILES else ""
            picture = f'<img src="{src}" width="{image.grid_width:d}" height="{image.grid_height:d}"{lazy} alt="">'
        else:
            picture = f'<span class="tile-missing" aria-hidden="true">{image.width:d}×{image.height:d}</span>'
        reuse = escape(f"{self.generate}?reuse={pk:d}")
        revised = f'<a href="{reuse}&amp;with=revised">{labels["revised"]}</a>' if image.revised_prompt else ""
        meta = escape(f"{image.owner_name} · {image.width}×{image.height} · {image.model}")
        return (
            f'<figure class="tile {aspect(image)}" data-image="{pk:d}">'
            f'<label class="tile-check"><input class="tile-select" type="checkbox" name="images" value="{pk:d}" '
            f'form="selection" aria-label="{labels["select"]} {escape(self.shortened(prompt, LABEL_CHARS))}">'
            '<span aria-hidden="true"></span></label>'
            f'<a class="tile-link" href="{escape(reverse("gallery-detail", args=[pk]))}{self.detail_query}">'
            f'{picture}<figcaption class="tile-caption"><span class="tile-prompt">'
            f'{self.highlight(self.shortened(prompt, CAPTION_CHARS))}</span><span class="tile-meta">{meta}</span>'
            '</figcaption></a>'
            f'<div class="tile-actions"><a href="{reuse}">{labels["reuse"]}</a>'
            f'<a href="{reuse}&amp;with=seed">{labels["seed"]}</a>{revised}'
            f'{favourite_button(image, image.is_favourite, labels["favourite"])}</div></figure>'
        )
