"""Making share links and managing them on /shared/ (their makers' and staff's)."""

import re
import uuid
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gallery.forms import ShareForm
from gallery.models import Collection, CollectionItem, Generation, Image, ShareLink
from gallery.views.common import HtmxHttpRequest, changeable

ROW_ID = re.compile(r"[0-9]{1,18}")
SHOWN_LINKS = 200
JUST_NOW = timedelta(minutes=1)


@login_required
@require_http_methods(["GET", "POST"])
def create(request: HtmxHttpRequest, kind: str, target_id: str) -> HttpResponse:
    target = _target(kind, target_id, request.user)
    # Ids of its own, since a page of job cards may hold several of these forms.
    auto_id = f"share-{kind}-{target_id}-%s"
    form = ShareForm(request.POST, auto_id=auto_id) if request.method == "POST" else ShareForm(auto_id=auto_id)
    if form.is_valid():
        link = ShareLink.create(request.user, target, **form.cleaned_data)
        if request.htmx:
            context = {"link": link, "url": public_url(request, link)}
            return render(request, "gallery/share_button.html#created", context)
        messages.success(request, _("The link is ready: copy it below and send it."))
        return redirect(f"{reverse('gallery-shared')}#link-{link.pk}")
    share = {"form": form, "kind": kind, "target_id": target_id}
    # htmx only swaps 2xx answers, so a form with errors comes back as 200 into the dialog.
    if request.htmx:
        return render(request, "gallery/share_button.html#form", share)
    return shared_page(request, share=share, status=400 if form.errors else 200)


def _target(kind: str, target_id: str, user) -> Image | Generation | Collection:
    """What the link will cover, if user may share it (its maker or staff: sending work outside the studio is
    theirs to decide): 404 for a bad kind, a bad id or what they can't see, 403 for what they only see."""
    if kind == "generation":
        try:
            pk = uuid.UUID(target_id)
        except ValueError:
            raise Http404 from None
        return changeable(Generation.objects, user, pk=pk)
    models = {"image": Image.objects.select_related("generation"), "collection": Collection.objects}
    if kind not in models or not ROW_ID.fullmatch(target_id):
        raise Http404
    return changeable(models[kind], user, pk=int(target_id))


def public_url(request, link: ShareLink) -> str:
    return request.build_absolute_uri(reverse("gallery-public", args=[link.token]))


@login_required
@require_GET
def index(request: HtmxHttpRequest) -> HttpResponse:
    return shared_page(request)


def shared_page(request: HtmxHttpRequest, share: dict | None = None, status: int = 200) -> HttpResponse:
    """/shared/: the live links the designer made (staff: everyone's), or the ended ones with ?ended=1."""
    ended = request.GET.get("ended") == "1"
    links = (ShareLink.objects.managed_by(request.user)
             .select_related("owner", "image__generation", "generation", "collection"))
    links = links.exclude(pk__in=ShareLink.objects.live().values("pk")) if ended else links.live()
    links = list(links[:SHOWN_LINKS])
    _annotate(request, links)
    context = {"links": links, "ended": ended, "share": share, "more": len(links) == SHOWN_LINKS,
               "limit": SHOWN_LINKS}
    return render(request, "gallery/shared.html", context, status=status)


def _annotate(request, links: list[ShareLink]) -> None:
    """Give each row its URL, its cover image and its time left, with two queries for all the covers."""
    first_of_generation = {image.generation_id: image for image in (
        Image.objects.filter(generation_id__in=[link.generation_id for link in links if link.generation_id])
        .select_related("generation").order_by("generation_id", "index").distinct("generation_id"))}
    first_of_collection = {item.collection_id: item.image for item in (
        CollectionItem.objects.filter(collection_id__in=[link.collection_id for link in links if link.collection_id])
        .select_related("image__generation").order_by("collection_id", "position", "id").distinct("collection_id"))}
    for link in links:
        link.url = public_url(request, link) if link.is_live else ""
        link.cover = link.image or first_of_generation.get(link.generation_id) or first_of_collection.get(
            link.collection_id)
        link.expires_in = timeuntil(link.expires_at, depth=1) if link.expires_at and link.is_live else ""
        link.viewed_just_now = bool(link.last_viewed_at) and timezone.now() - link.last_viewed_at < JUST_NOW


@login_required
@require_POST
def revoke(request: HtmxHttpRequest, link_id: int) -> HttpResponse:
    link = changeable(ShareLink.objects.select_related("owner", "image__generation", "generation", "collection"),
                      request.user, pk=link_id)
    link.revoke()
    if request.htmx:
        _annotate(request, [link])
        return render(request, "gallery/shared.html#row", {"link": link, "just_revoked": True})
    messages.success(request, _("The link is revoked: it no longer opens, and its images no longer load."))
    return redirect("gallery-shared")
