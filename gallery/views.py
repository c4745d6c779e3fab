import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from gallery import browse, search, storage
from gallery.catalog import get_model
from gallery.diff import prompt_diff
from gallery.forms import CUSTOM, GalleryFilterForm, GenerateForm
from gallery.models import Favourite, Generation, Image
from gallery.tasks import enqueue

RECENT_JOBS = 24


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _recent_jobs(user):
    return (Generation.objects.filter(owner=user).prefetch_related("images__renditions")[:RECENT_JOBS])


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HtmxHttpRequest) -> HttpResponse:
    if request.method == "GET":
        form = GenerateForm(initial=_reuse(request.GET))
        return render(request, "gallery/generate.html", {"form": form, "jobs": _recent_jobs(request.user)})
    form = GenerateForm(request.POST)
    if not form.is_valid():
        if request.htmx:
            return render(request, "gallery/generate.html#form", {"form": form})
        return render(request, "gallery/generate.html", {"form": form, "jobs": _recent_jobs(request.user)},
                      status=422)
    with transaction.atomic():
        generation = form.create_generation(request.user)
        transaction.on_commit(lambda: enqueue(generation.pk))
    if not request.htmx:
        messages.success(request, _("Queued. Your images will appear below."))
        return redirect("gallery-generate")
    # The form keeps what was typed, so the designer can vary it and generate again.
    return render(request, "gallery/generate.html#form-and-new-job", {"form": form, "job": generation})


def _reuse(params) -> dict | None:
    """Initial form values from ?reuse=<image id>&with=prompt|seed|revised, or ?again=<generation id>."""
    image_id, again = params.get("reuse", ""), params.get("again", "")
    if image_id.isdigit():
        image = Image.objects.select_related("generation").filter(pk=image_id).first()
        generation = image.generation if image else None
    else:
        image = None
        generation = Generation.objects.filter(pk=again).first() if _is_uuid(again) else None
    if generation is None:
        return None
    initial = {"prompt": generation.prompt, "negative_prompt": generation.negative_prompt,
               "model": generation.model, "prompt_extend": generation.prompt_extend,
               "watermark": generation.watermark, "n": generation.n}
    spec = get_model(generation.model)
    if spec and generation.size in spec.presets:
        initial["size"] = str(generation.size)
    else:
        initial |= {"size": CUSTOM, "width": generation.width, "height": generation.height}
    if image and params.get("with") == "seed":
        initial |= {"seed": image.seed, "n": 1}
    elif image and params.get("with") == "revised" and image.revised_prompt:
        initial |= {"prompt": image.revised_prompt, "prompt_extend": False}
    return initial


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@login_required
@require_GET
def size_field(request: HtmxHttpRequest) -> HttpResponse:
    form = GenerateForm(initial={"model": request.GET.get("model", "")})
    return render(request, "gallery/generate.html#size-field", {"form": form})


@login_required
@require_GET
def job(request: HtmxHttpRequest, generation_id) -> HttpResponse:
    generation = get_object_or_404(Generation.objects.prefetch_related("images__renditions"), pk=generation_id)
    response = render(request, "gallery/generate.html#job", {"job": generation})
    if request.htmx and generation.is_finished:
        return HttpResponseStopPolling(response.content)
    return response


@login_required
@require_POST
def cancel_job(request: HtmxHttpRequest, generation_id) -> HttpResponse:
    generation = get_object_or_404(Generation, pk=generation_id)
    if generation.owner_id != request.user.pk and not request.user.is_staff:
        raise Http404
    generation.cancel()
    if request.htmx:
        return render(request, "gallery/generate.html#job", {"job": generation})
    return redirect("gallery-generate")


@login_required
@require_GET
def image_file(request: HtmxHttpRequest, image_id: int, variant: str) -> HttpResponse:
    image = get_object_or_404(Image.objects.prefetch_related("renditions"), pk=image_id)
    if variant == "original":
        name = f"qwen-{image.generation_id.hex[:8]}-{image.index + 1}.png" if "download" in request.GET else None
        return storage.serve(image.file, download_name=name)
    rendition = image.rendition(variant)
    if rendition is None:
        raise Http404
    return storage.serve(rendition.file)


@login_required
@require_GET
def gallery(request: HtmxHttpRequest) -> HttpResponse:
    form, filters, query = _gallery_filters(request)
    cursor = browse.Cursor.decode(request.GET.get("cursor", ""))
    page = browse.page(request.user, filters, query, cursor)
    favourites = set(Favourite.objects.filter(user=request.user, image__in=page.images)
                     .values_list("image_id", flat=True))
    context = {"form": form, "page": page, "query": query, "favourites": favourites,
               "filters": _without(request.GET, "cursor"), "urls": _tile_urls(), "labels": _tile_labels()}
    if request.htmx and cursor:
        return render(request, "gallery/gallery.html#tiles", context)
    return render(request, "gallery/gallery.html", context)


def _gallery_filters(request) -> tuple[GalleryFilterForm, dict, search.Query]:
    """The gallery's filters and search from the URL; invalid ones are shown on the form and ignored."""
    form = GalleryFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    return form, filters, search.parse(filters.get("q", ""))


def _tile_urls() -> dict[str, str]:
    """Prefixes the tiles append ids to: reversing ~10 URLs for each of 30 tiles cost milliseconds."""
    return {"detail": reverse("gallery-index"), "generate": reverse("gallery-generate"),
            "images": reverse("gallery-image-file", args=[0, "grid"]).removesuffix("0/grid/")}


def _tile_labels() -> dict[str, str]:
    return {"reuse": _("Reuse prompt"), "reuse_seed": _("Reuse with seed"), "use_revised": _("Use revised prompt")}


def _without(params, *names: str) -> str:
    kept = params.copy()
    for name in names:
        kept.pop(name, None)
    return kept.urlencode()


@login_required
@require_GET
def image_detail(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = get_object_or_404(Image.objects.select_related("generation", "owner"), pk=image_id)
    _, filters, query = _gallery_filters(request)
    around = browse.filtered(request.user, filters)
    if not query.is_empty:
        around = around.filter(search=query.tsquery())
    newer = around.after(image.created, image.pk).order_by("created", "id").only("id").first()
    older = around.before(image.created, image.pk).newest_first().only("id").first()
    siblings = image.generation.images.prefetch_related("renditions").order_by("index")
    context = {
        "image": image, "generation": image.generation, "siblings": siblings, "newer": newer, "older": older,
        "filters": _without(request.GET, "cursor"), "query": query,
        "is_favourite": Favourite.objects.filter(user=request.user, image=image).exists(),
        "can_delete": image.owner_id == request.user.pk or request.user.is_staff,
        "prompt_diff": prompt_diff(image.generation.prompt, image.revised_prompt) if image.revised_prompt else None,
    }
    return render(request, "gallery/detail.html", context)


@login_required
@require_POST
def favourite(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=image_id)
    mark, created = Favourite.objects.get_or_create(user=request.user, image=image)
    if not created:
        mark.delete()
    if request.htmx and request.POST.get("tile"):
        context = {"image": image, "is_favourite": created, "urls": _tile_urls()}
        return render(request, "gallery/gallery.html#tile-favourite", context)
    if request.htmx:
        return render(request, "gallery/favourite.html", {"image": image, "is_favourite": created})
    return redirect(request.POST.get("next") or reverse("gallery-detail", args=[image.pk]))


@login_required
@require_POST
def delete_image(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=image_id)
    if image.owner_id != request.user.pk and not request.user.is_staff:
        return HttpResponseForbidden(_("Only the person who made this image, or staff, can delete it."))
    try:
        image.delete_with_files()
    except storage.StorageError:
        messages.error(request, _("Storage could not be reached, so nothing was deleted. Please try again."))
        return redirect("gallery-detail", image.pk)
    messages.success(request, _("The image and its files were deleted."))
    return redirect("gallery-index")
