"""Collections: the list, a collection's page, and every change to one (its maker's and staff's)."""

from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from gallery import downloads
from gallery.forms import CollectionForm, CollectionSearchForm, ImageSelectionForm, MoveForm, OrderForm
from gallery.models import Collection, Rendition
from gallery.views.common import HtmxHttpRequest, changeable, viewable

LIST_LIMIT = 120
# Ids of the name field on each page that has one, as the pages and their tests know them.
NEW_ID, PICKER_ID, RENAME_ID = "new-collection-%s", "picker-%s", "rename-%s"


@login_required
@require_http_methods(["GET", "POST"])
def index(request: HtmxHttpRequest) -> HttpResponse:
    search = CollectionSearchForm(request.GET)
    if request.method == "GET":
        return _index(request, search, CollectionForm(auto_id=NEW_ID), status=200 if search.is_valid() else 400)
    form = CollectionForm(request.POST, auto_id=NEW_ID)
    if not form.is_valid():
        return _index(request, search, form, status=422)
    collection = Collection.objects.create(owner=request.user, name=form.cleaned_data["name"])
    messages.success(request, _("Collection created. Select images in the gallery and choose Add to collection."))
    return _redirect(request, reverse("gallery-collection", args=[collection.pk]))


def _index(request, search: CollectionSearchForm, new_form: CollectionForm, status: int) -> HttpResponse:
    search.is_valid()
    filters = search.cleaned_data  # the valid fields only
    collections = Collection.objects.for_list()
    if filters.get("q"):
        collections = collections.filter(name__icontains=filters["q"])
    if filters.get("mine"):
        collections = collections.filter(owner=request.user)
    collections = _with_covers(list(collections.order_by("-updated", "-id")[: LIST_LIMIT + 1]))
    context = {"search": search, "form": new_form, "collections": collections[:LIST_LIMIT],
               "more": len(collections) > LIST_LIMIT, "searching": bool(filters.get("q") or filters.get("mine"))}
    return render(request, "gallery/collections.html", context, status=status)


def _with_covers(collections: list[Collection], spec: str = Rendition.Spec.GRID) -> list[Collection]:
    """Each collection with `cover`, its first image's rendition (or None), in one query for all."""
    renditions = Rendition.objects.filter(image_id__in=[c.cover_id for c in collections if c.cover_id], spec=spec)
    by_image = {rendition.image_id: rendition for rendition in renditions}
    for collection in collections:
        collection.cover = by_image.get(collection.cover_id)
    return collections


@login_required
@require_http_methods(["GET", "POST"])
def picker(request: HtmxHttpRequest) -> HttpResponse:
    """The designer's collections to add the selected images to, or a new one: a dialog's contents or a page."""
    if request.method == "GET":
        if request.htmx and "images" not in request.GET:
            # The gallery's dialog: its selection goes with the choice, not with this request.
            return _picker(request, None, CollectionForm(auto_id=PICKER_ID))
        selection = ImageSelectionForm(request.GET)
        return _picker(request, selection, CollectionForm(auto_id=PICKER_ID),
                       status=200 if selection.is_valid() else 400)
    selection, form = ImageSelectionForm(request.POST), CollectionForm(request.POST, auto_id=PICKER_ID)
    if not selection.is_valid():
        return _picker(request, selection, form, status=400)
    if not form.is_valid():
        return _picker(request, selection, form, status=422)
    collection = Collection.objects.create(owner=request.user, name=form.cleaned_data["name"])
    ids = _selected_ids(selection)
    return _added(request, collection, collection.add(ids), len(ids))


def _picker(request, selection: ImageSelectionForm | None, form: CollectionForm, status: int = 200) -> HttpResponse:
    mine = _with_covers(list(Collection.objects.filter(owner=request.user).for_list().order_by("-updated", "-id")),
                        Rendition.Spec.CARD)
    valid = selection is not None and selection.is_valid()
    if not mine:
        form.focus()
    context = {"collections": mine, "form": form, "image_ids": _selected_ids(selection) if valid else [],
               "selection_errors": selection.errors.get("images", []) if selection is not None else []}
    template = "gallery/collection_picker.html#picker" if request.htmx else "gallery/collection_picker.html"
    return render(request, template, context, status=status)


def _selected_ids(selection: ImageSelectionForm) -> list[int]:
    """The valid selection's ids in the order they were sent (the gallery's order); the queryset forgets it."""
    by_value = {str(image.pk): image.pk for image in selection.cleaned_data["images"]}
    return [by_value[value] for value in selection.data.getlist("images") if value in by_value]


def _added(request, collection: Collection, added: int, chosen: int) -> HttpResponse:
    if request.htmx:
        context = {"collection": collection, "added": added, "already": chosen - added}
        response = render(request, "gallery/collection_picker.html#added", context)
        return trigger_client_event(response, "collectionAdded", {"collection": collection.pk})
    if added:
        messages.success(request, ngettext("%(count)d image added to %(name)s.", "%(count)d images added to %(name)s.",
                                           added) % {"count": added, "name": collection.name})
    else:
        messages.info(request, _("Every selected image was already in %(name)s.") % {"name": collection.name})
    return redirect("gallery-collection", collection.pk)


@login_required
@require_GET
def detail(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = viewable(Collection.objects.select_related("owner"), request.user, pk=collection_id)
    return _page(request, collection)


def _page(request, collection: Collection, *, part: str = "items", status: int = 200, error: str = "",
          rename_form: CollectionForm | None = None, focus: dict | None = None) -> HttpResponse:
    """The collection's page, or for htmx only the part that changed: its images (items) or its head (rename)."""
    images = list(collection.ordered_images().select_related("generation", "owner")
                  .prefetch_related("renditions").defer("search"))
    context = {"collection": collection, "images": images, "can_change": collection.can_change(request.user),
               "rename_form": rename_form or CollectionForm(initial={"name": collection.name}, auto_id=RENAME_ID),
               "error": error, "focus": focus or {}}
    template = f"gallery/collection.html#{part}" if request.htmx else "gallery/collection.html"
    return render(request, template, context, status=status)


def _redirect(request, url: str) -> HttpResponse:
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_POST
def rename(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects.select_related("owner"), request.user, pk=collection_id)
    form = CollectionForm(request.POST, auto_id=RENAME_ID)
    if not form.is_valid():
        return _page(request, collection, part="head", status=422, rename_form=form)
    collection.name = form.cleaned_data["name"]
    collection.save(update_fields=["name", "updated"])
    if request.htmx:
        return _page(request, collection, part="head")
    messages.success(request, _("Renamed."))
    return redirect("gallery-collection", collection.pk)


@login_required
@require_POST
def delete(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects, request.user, pk=collection_id)
    collection.delete()
    messages.success(request, _("The collection %(name)s was deleted. Its images are still in the gallery.")
                     % {"name": collection.name})
    return _redirect(request, reverse("gallery-collections"))


@login_required
@require_POST
def add(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects, request.user, pk=collection_id)
    selection = ImageSelectionForm(request.POST)
    if not selection.is_valid():
        return _picker(request, selection, CollectionForm(auto_id=PICKER_ID), status=400)
    ids = _selected_ids(selection)
    return _added(request, collection, collection.add(ids), len(ids))


@login_required
@require_POST
def remove(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects.select_related("owner"), request.user, pk=collection_id)
    selection = ImageSelectionForm(request.POST)
    if not selection.is_valid():
        return _page(request, collection, status=400, error=" ".join(selection.errors.get("images", [])))
    removed = collection.remove(_selected_ids(selection))
    if request.htmx:
        return _page(request, collection)
    messages.success(request, ngettext("%(count)d image removed from the collection.",
                                       "%(count)d images removed from the collection.", removed) % {"count": removed})
    return redirect("gallery-collection", collection.pk)


@login_required
@require_POST
def move(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects.select_related("owner"), request.user, pk=collection_id)
    form = MoveForm(request.POST)
    if not form.is_valid():
        return _page(request, collection, status=400,
                     error=_("Choose Move earlier or Move later on an image of this collection."))
    image_id, direction = form.cleaned_data["image"], form.cleaned_data["direction"]
    if not collection.items.filter(image_id=image_id).exists():
        return _page(request, collection, status=400, error=_("That image is no longer in this collection."))
    collection.move(image_id, -1 if direction == "earlier" else 1)
    if request.htmx:
        return _page(request, collection, focus={"image": image_id, "direction": direction})
    return redirect(reverse("gallery-collection", args=[collection.pk]) + f"#image-{image_id}")


@login_required
@require_POST
def order(request: HtmxHttpRequest, collection_id: int) -> HttpResponse:
    collection = changeable(Collection.objects.select_related("owner"), request.user, pk=collection_id)
    form = OrderForm(request.POST)
    if not form.is_valid():
        return _page(request, collection, status=400, error=" ".join(form.errors.get("order", [])))
    if set(form.cleaned_data["order"]) - set(collection.items.values_list("image_id", flat=True)):
        return _page(request, collection, status=400,
                     error=_("The collection changed since this page was loaded; here it is as it is now."))
    collection.reorder(form.cleaned_data["order"])
    if request.htmx:
        return _page(request, collection)
    return redirect("gallery-collection", collection.pk)


@login_required
@require_GET
def download(request: HtmxHttpRequest, collection_id: int) -> StreamingHttpResponse:
    collection = viewable(Collection.objects, request.user, pk=collection_id)
    images = collection.ordered_images().select_related("generation").defer("search")
    response = StreamingHttpResponse(downloads.zip_of(images, include_parameters=True),
                                     content_type="application/zip")
    fallback = slugify(collection.name) or "collection"
    response["Content-Disposition"] = _attachment(f"{collection.name}.zip", f"{fallback}.zip")
    return response


def _attachment(filename: str, ascii_fallback: str) -> str:
    """An attachment header that old clients read as the ASCII name and the rest as the real one (RFC 5987)."""
    return f"attachment; filename=\"{ascii_fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
