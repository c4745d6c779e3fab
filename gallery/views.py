from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from gallery import storage
from gallery.forms import GenerateForm, size_choices
from gallery.models import Generation, Image
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
        form = GenerateForm(initial=request.GET.dict() if request.GET else None)
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
