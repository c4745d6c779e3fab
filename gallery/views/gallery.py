"""The gallery: the grid with search and filters, an image's page, its files, favourite and delete."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from gallery import browse, downloads, search, storage
from gallery.diff import prompt_diff
from gallery.forms import GalleryFilterForm
from gallery.models import Favourite, Image
from gallery.views.common import HtmxHttpRequest, changeable, safe_next, storage_unavailable, viewable


@login_required
@require_GET
def image_file(request: HtmxHttpRequest, image_id: int, variant: str) -> HttpResponse:
    image = viewable(Image.objects.select_related("generation").prefetch_related("renditions"), request.user,
                     pk=image_id)
    if variant == "original" and "download" in request.GET:
        # Streamed through us, to write the parameters into the file on the way; storage keeps the original.
        try:
            body = downloads.original(image, include_parameters=True)
        except storage.StorageError:
            return storage_unavailable()
        response = StreamingHttpResponse(body, content_type="image/png")
        response["Content-Disposition"] = content_disposition_header(
            True, downloads.download_name(image, image.index + 1))
        return response
    if variant == "original":
        return storage.serve(image.file)
    rendition = image.rendition(variant)
    if rendition is None:
        raise Http404
    return storage.serve(rendition.file)


@login_required
@require_GET
def gallery(request: HtmxHttpRequest) -> HttpResponse:
    form, filters, query = _gallery_filters(request)
    cursor = filters.get("cursor")
    page = browse.page(request.user, filters, query, cursor)
    context = {"form": form, "page": page, "query": query, "filters": form.link_params()}
    status = 400 if form.errors else 200
    if request.htmx and cursor:
        return render(request, "gallery/gallery.html#tiles", context, status=status)
    return render(request, "gallery/gallery.html", context, status=status)


def _gallery_filters(request) -> tuple[GalleryFilterForm, dict, search.Query]:
    """The gallery's filters and search from the URL; invalid ones are shown on the form and ignored."""
    form = GalleryFilterForm(request.GET)
    form.is_valid()
    filters = form.cleaned_data  # the valid fields only
    return form, filters, search.parse(filters.get("q", ""))


@login_required
@require_GET
def image_detail(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = viewable(Image.objects.select_related("generation", "owner"), request.user, pk=image_id)
    form, filters, query = _gallery_filters(request)
    previous, following = browse.neighbours(request.user, filters, query, image)
    siblings = image.generation.images.prefetch_related("renditions").order_by("index")
    context = {
        "image": image, "generation": image.generation, "siblings": siblings, "previous": previous, "next": following,
        "filters": form.link_params(), "query": query,
        "is_favourite": Favourite.objects.filter(user=request.user, image=image).exists(),
        "can_delete": image.can_change(request.user),
        "prompt_diff": prompt_diff(image.generation.prompt, image.revised_prompt) if image.revised_prompt else None,
    }
    return render(request, "gallery/detail.html", context)


@login_required
@require_POST
def favourite(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = viewable(Image.objects, request.user, pk=image_id)
    mark, created = Favourite.objects.get_or_create(user=request.user, image=image)
    if not created:
        mark.delete()
    if request.htmx and request.POST.get("tile"):
        return render(request, "gallery/gallery.html#tile-favourite", {"image": image, "is_favourite": created})
    if request.htmx:
        return render(request, "gallery/favourite.html", {"image": image, "is_favourite": created})
    return HttpResponseRedirect(safe_next(request, reverse("gallery-detail", args=[image.pk])))


@login_required
@require_POST
def delete_image(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = changeable(Image.objects, request.user, pk=image_id)
    try:
        image.delete_with_files()
    except storage.StorageError:
        messages.error(request, _("Storage could not be reached, so nothing was deleted. Please try again."))
        return redirect("gallery-detail", image.pk)
    messages.success(request, _("The image and its files were deleted."))
    return redirect("gallery-index")
