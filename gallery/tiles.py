"""The gallery grid's tiles, written in Python, as Django's admin writes its change list's rows.

A page of the grid is 30 tiles of about 30 values each (links, labels, the favourite state). Through the template
engine those values were most of a gallery page's time (bench/search.py): each one is looked up, localized and
escaped on its own, 900 lookups a page. Here a tile is one f-string, each value from the database escaped with
html.escape (what Django's escape calls, without its check for lazy strings) or formatted as a number, and
whatever is the same for every tile of a page (each view's URL, the labels, the search's highlighter, the query
string that carries the filters) is worked out once per page. gallery.html prints the tiles; the page around them
stays a template.
"""

from html import escape

from django.http import QueryDict
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

from gallery.models import Image, Rendition
from gallery.search import Query
from gallery.templatetags.appearance import aspect

CAPTION_CHARS, LABEL_CHARS = 220, 100
EAGER_TILES = 6  # the first screen's: a lazy first tile delays the largest paint; the rest load lazily


class UrlPattern:
    """reverse(name, args=[image_id, *rest]) for any image id, from one reverse(): the URL is reversed with a
    marker id, which each call replaces."""

    MARKER = 9_876_543_210_123  # an int no image has: the path converters accept it, and no path holds it

    def __init__(self, name: str, *rest):
        head, marker, tail = reverse(name, args=[self.MARKER, *rest]).partition(str(self.MARKER))
        assert marker, f"{name}'s URL has no place for the image id"
        self.head, self.tail = head, tail

    def __call__(self, image_id: int) -> str:
        return f"{self.head}{image_id}{self.tail}"


def favourite_button(url: str, is_favourite: bool, label: str) -> SafeString:
    """A tile's ♡, labelled label: it posts the page's #favourites form without JavaScript, and with htmx
    replaces itself with the answer, this button in its new state."""
    url, on = escape(url), " is-on" if is_favourite else ""
    return mark_safe(
        f'<button class="fav tile-favourite{on}" type="submit" form="favourites" formaction="{url}" '
        f"""hx-post="{url}" hx-vals='{{"tile": "1"}}' hx-target="this" hx-swap="outerHTML" """
        f'aria-pressed="{"true" if is_favourite else "false"}" aria-label="{escape(label)}">'
        f'{"♥" if is_favourite else "♡"}</button>')


def shorten(text: str, length: int) -> str:
    """text in at most length characters, an ellipsis last if it was longer: the truncatechars filter, less
    its care for combining marks, which prompts don't have."""
    return text if len(text) <= length else f"{text[:length - 1]}…"


class Tiles:
    """The tiles of one page of the grid, for images found by query with filters (link_params, which each
    image's link carries to its Previous and Next)."""

    def __init__(self, query: Query, link_params: QueryDict):
        self.detail, self.favourite = UrlPattern("gallery-detail"), UrlPattern("gallery-favourite")
        self.file = UrlPattern("gallery-image-file", Rendition.Spec.GRID)
        self.detail_query = escape(f"?{link_params.urlencode()}") if link_params else ""
        self.generate = reverse("gallery-generate")
        self.highlight = query.highlighter()
        self.labels = {name: escape(text) for name, text in [
            ("select", _("Select:")), ("reuse", _("Reuse prompt")), ("seed", _("Reuse with seed")),
            ("revised", _("Use revised prompt"))]}
        self.favourite_label = _("Favourite")

    def __call__(self, images: list[Image]) -> list[SafeString]:
        return [self.tile(image, number) for number, image in enumerate(images, 1)]

    def tile(self, image: Image, number: int) -> SafeString:
        """One tile: its checkbox, its link (thumbnail, prompt, designer, size, model) and its actions.
        image comes from browse.page, with what its tile needs from other rows (browse._for_tiles).

        Every value from the image is escaped here or is a number; the URLs are reverse()'s, escaped too."""
        prompt, pk, labels = image.prompt, image.pk, self.labels
        if image.grid_width:
            lazy = ' loading="lazy"' if number > EAGER_TILES else ""
            picture = (f'<img src="{escape(self.file(pk))}" width="{image.grid_width:d}" '
                       f'height="{image.grid_height:d}"{lazy} alt="">')
        else:
            picture = f'<span class="tile-missing" aria-hidden="true">{image.width:d}×{image.height:d}</span>'
        reuse = escape(f"{self.generate}?reuse={pk:d}")
        revised = f'<a href="{reuse}&amp;with=revised">{labels["revised"]}</a>' if image.revised_prompt else ""
        meta = escape(f"{image.owner_name} · {image.width}×{image.height} · {image.model}")
        return mark_safe(
            f'<figure class="tile {aspect(image)}" data-image="{pk:d}">'
            f'<label class="tile-check"><input class="tile-select" type="checkbox" name="images" value="{pk:d}" '
            f'form="selection" aria-label="{labels["select"]} {escape(shorten(prompt, LABEL_CHARS))}">'
            '<span aria-hidden="true"></span></label>'
            f'<a class="tile-link" href="{escape(self.detail(pk))}{self.detail_query}">{picture}'
            f'<figcaption class="tile-caption"><span class="tile-prompt">'
            f'{self.highlight(shorten(prompt, CAPTION_CHARS))}</span><span class="tile-meta">{meta}</span>'
            '</figcaption></a>'
            f'<div class="tile-actions"><a href="{reuse}">{labels["reuse"]}</a>'
            f'<a href="{reuse}&amp;with=seed">{labels["seed"]}</a>{revised}'
            f'{favourite_button(self.favourite(pk), image.is_favourite, self.favourite_label)}</div></figure>'
        )
