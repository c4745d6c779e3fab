"""The pages a share link opens for people with no account, under /s/<token>/.

Every answer re-checks the link, so revoking it ends access at once, and none may be cached or
indexed. A dead link (unknown, expired or revoked alike) gets one fixed page with nothing of the
request in it, so that no visitor can tell the three apart.
"""

import functools

from django.http import HttpResponse, HttpResponseNotFound, StreamingHttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_safe

from gallery import downloads, storage
from gallery.models import Image, Rendition, ShareLink
from gallery.views.common import storage_unavailable

SIGNED_URL_SECONDS = 60
VARIANTS = {"grid", "card", "original", "download"}


def public(view):
    """No cache, no Referer to wherever the visitor goes next, no search engine."""
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        response["Referrer-Policy"] = "no-referrer"
        response["X-Robots-Tag"] = "noindex, nofollow"
        return response
    return wrapped


def gone() -> HttpResponse:
    """The one answer for anything under a dead link: rendered without the request, so byte-identical."""
    return HttpResponseNotFound(render_to_string("public/gone.html"))


@public
@require_safe
def page(request, token: str) -> HttpResponse:
    link = ShareLink.find_live(token)
    if link is None:
        return gone()
    images = list(link.images().select_related("generation").prefetch_related("renditions"))
    if request.method == "GET":
        link.record_view()
    card = images[0].rendition(Rendition.Spec.CARD) if images else None
    context = {
        "link": link, "token": token, "images": images, "first": images[0] if images else None,
        "maker": link.owner.get_full_name() or link.owner.get_username(),
        "card": card, "card_url": card and request.build_absolute_uri(
            reverse("gallery-public-image", args=[token, images[0].pk, Rendition.Spec.CARD])),
    }
    return render(request, "public/page.html", context)


@public
@require_safe
def image_file(request, token: str, image_id: int, variant: str) -> HttpResponse:
    link = ShareLink.find_live(token)
    if link is None or variant not in VARIANTS:
        return gone()
    image = link.images().filter(pk=image_id).select_related("generation").prefetch_related("renditions").first()
    if image is None:
        return gone()
    if variant == "download":
        return _download(link, image) if link.allow_downloads else gone()
    if variant == "original" and not link.show_parameters:
        # Streamed without text chunks, in case the provider wrote the prompt into the file.
        return _streamed(downloads.original, image, False)
    key = image.file if variant == "original" else getattr(image.rendition(variant), "file", None)
    if key is None:
        return gone()
    return storage.serve(key, expires=SIGNED_URL_SECONDS)


def _download(link: ShareLink, image: Image) -> HttpResponse:
    number = list(link.images().values_list("pk", flat=True)).index(image.pk) + 1
    response = _streamed(downloads.original, image, link.show_parameters)
    if response.status_code == 200:
        response["Content-Disposition"] = content_disposition_header(True, _file_name(link, image, number))
    return response


def _streamed(source, image: Image, include_parameters: bool) -> HttpResponse:
    try:
        return StreamingHttpResponse(source(image, include_parameters), content_type="image/png")
    except storage.StorageError:
        return storage_unavailable()


def _file_name(link: ShareLink, image: Image, number: int) -> str:
    # The usual name carries prompt words and the seed, which a link that hides them must not give away.
    if link.show_parameters:
        return downloads.download_name(image, number)
    return f"{_title_slug(link)}-{number:03d}.png"


def _title_slug(link: ShareLink) -> str:
    name = link.collection.name if link.collection_id else ""
    return slugify(name, allow_unicode=True)[:60].strip("-") or "qwen-studio"


@public
def anything_else(request, rest: str) -> HttpResponse:
    """Any other path under /s/ (a token with an encoded slash, say) answers like a dead link."""
    return gone()


@public
@require_GET
def download_all(request, token: str) -> HttpResponse:
    link = ShareLink.find_live(token)
    if link is None or not link.allow_downloads:
        return gone()
    images = link.images().select_related("generation")
    archive = downloads.zip_of(images, include_parameters=link.show_parameters,
                               name=functools.partial(_file_name, link))
    response = StreamingHttpResponse(archive, content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, f"{_title_slug(link)}.zip")
    return response
