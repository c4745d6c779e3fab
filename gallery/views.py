from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from gallery import browse, search, storage
from gallery.catalog import get_model
from gallery.diff import prompt_diff
from gallery.forms import CUSTOM, GalleryFilterForm, GenerateForm, ReuseForm
from gallery.models import Favourite, Generation, Image
from gallery.tasks import enqueue

RECENT_JOBS = 24


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _viewable(queryset, user, **lookup):
    """The object if it exists and user may see it; otherwise the same 404 either way."""
    found = queryset.filter(**lookup).first()
    if found is None or not found.can_view(user):
        raise Http404
    return found


def _changeable(queryset, user, **lookup):
    """The object if user may change it: 404 if they can't even see it, 403 if they only see it."""
    found = _viewable(queryset, user, **lookup)
    if not found.can_change(user):
        raise PermissionDenied
    return found


def _safe_next(request, default: str) -> str:
    """The `next` the form sent if it is a path on this site, else default."""
    target = request.POST.get("next", "")
    on_site = url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                              require_https=request.is_secure())
    # Only an absolute path: redirect() would take any other word for a view name.
    return target if on_site and target.startswith("/") else default


def _recent_jobs(user):
    return (Generation.objects.filter(owner=user).prefetch_related("images__renditions")[:RECENT_JOBS])


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HtmxHttpRequest) -> HttpResponse:
    if request.method == "GET":
        reuse = ReuseForm(request.GET)
        if not reuse.is_valid():
            messages.error(request, _("That reuse link is broken, so the form starts empty."))
            return render(request, "gallery/generate.html",
                          {"form": GenerateForm(), "jobs": _recent_jobs(request.user)}, status=400)
        form = GenerateForm(initial=_reuse(request.user, **reuse.cleaned_data))
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


def _reuse(user, reuse: int | None, again, **options) -> dict | None:
    """Initial form values from an image (reuse, with prompt, seed or revised) or a job (again)."""
    image = _viewable(Image.objects.select_related("generation"), user, pk=reuse) if reuse else None
    generation = image.generation if image else _viewable(Generation.objects, user, pk=again) if again else None
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
    if image and options.get("with") == "seed":
        initial |= {"seed": image.seed, "n": 1}
    elif image and options.get("with") == "revised" and image.revised_prompt:
        initial |= {"prompt": image.revised_prompt, "prompt_extend": False}
    return initial


@login_required
@require_GET
def size_field(request: HtmxHttpRequest) -> HttpResponse:
    form = GenerateForm(initial={"model": request.GET.get("model", "")})
    return render(request, "gallery/generate.html#size-field", {"form": form})


@login_required
@require_GET
def job(request: HtmxHttpRequest, generation_id) -> HttpResponse:
    generation = _viewable(Generation.objects.prefetch_related("images__renditions"), request.user, pk=generation_id)
    response = render(request, "gallery/generate.html#job", {"job": generation})
    if request.htmx and generation.is_finished:
        return HttpResponseStopPolling(response.content)
    return response


@login_required
@require_POST
def cancel_job(request: HtmxHttpRequest, generation_id) -> HttpResponse:
    generation = _changeable(Generation.objects, request.user, pk=generation_id)
    generation.cancel()
    if request.htmx:
        return render(request, "gallery/generate.html#job", {"job": generation})
    return redirect("gallery-generate")


@login_required
@require_GET
def image_file(request: HtmxHttpRequest, image_id: int, variant: str) -> HttpResponse:
    image = _viewable(Image.objects.prefetch_related("renditions"), request.user, pk=image_id)
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
    cursor = filters.get("cursor")
    page = browse.page(request.user, filters, query, cursor)
    favourites = set(Favourite.objects.filter(user=request.user, image__in=page.images)
                     .values_list("image_id", flat=True))
    context = {"form": form, "page": page, "query": query, "favourites": favourites,
               "filters": _without(request.GET, "cursor"), "urls": _tile_urls(), "labels": _tile_labels()}
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
    image = _viewable(Image.objects.select_related("generation", "owner"), request.user, pk=image_id)
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
        "can_delete": image.can_change(request.user),
        "prompt_diff": prompt_diff(image.generation.prompt, image.revised_prompt) if image.revised_prompt else None,
    }
    return render(request, "gallery/detail.html", context)


@login_required
@require_POST
def favourite(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = _viewable(Image.objects, request.user, pk=image_id)
    mark, created = Favourite.objects.get_or_create(user=request.user, image=image)
    if not created:
        mark.delete()
    if request.htmx and request.POST.get("tile"):
        context = {"image": image, "is_favourite": created, "urls": _tile_urls()}
        return render(request, "gallery/gallery.html#tile-favourite", context)
    if request.htmx:
        return render(request, "gallery/favourite.html", {"image": image, "is_favourite": created})
    return HttpResponseRedirect(_safe_next(request, reverse("gallery-detail", args=[image.pk])))


@login_required
@require_POST
def delete_image(request: HtmxHttpRequest, image_id: int) -> HttpResponse:
    image = _changeable(Image.objects, request.user, pk=image_id)
    try:
        image.delete_with_files()
    except storage.StorageError:
        messages.error(request, _("Storage could not be reached, so nothing was deleted. Please try again."))
        return redirect("gallery-detail", image.pk)
    messages.success(request, _("The image and its files were deleted."))
    return redirect("gallery-index")
