"""The generate page: the form, the job cards and their status."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from gallery import quotas
from gallery.catalog import get_model
from gallery.forms import CUSTOM, GenerateForm, ReuseForm
from gallery.models import Generation, Image
from gallery.views.common import HtmxHttpRequest, changeable, viewable

RECENT_JOBS = 24


def _recent_jobs(user):
    return (Generation.objects.filter(owner=user).prefetch_related("images__renditions")[:RECENT_JOBS])


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HtmxHttpRequest) -> HttpResponse:
    if request.method == "GET":
        reuse = ReuseForm(request.GET)
        if not reuse.is_valid():
            messages.error(request, _("That reuse link is broken, so the form starts empty."))
            return _page(request, GenerateForm(), status=400)
        return _page(request, GenerateForm(initial=_reuse(request.user, **reuse.cleaned_data)))
    form = GenerateForm(request.POST)
    generation = form.queue(request.user) if form.is_valid() else None
    if generation is None:
        if request.htmx:
            return render(request, "gallery/generate.html#form", {"form": form, "quota": quotas.standing(request.user)})
        return _page(request, form, status=422)
    generation.refresh_from_db()
    if not request.htmx:
        if generation.waits_for_the_queue:
            messages.warning(request, _("Saved, but the job queue can't be reached just now: your job starts "
                                        "when it is back."))
        else:
            messages.success(request, _("Queued. Your images will appear below."))
        return redirect("gallery-generate")
    # The form keeps what was typed, so the designer can vary it and generate again.
    context = {"form": form, "job": generation, "quota": quotas.standing(request.user)}
    return render(request, "gallery/generate.html#form-and-new-job", context)


def _page(request, form: GenerateForm, status: int = 200) -> HttpResponse:
    context = {"form": form, "jobs": _recent_jobs(request.user), "quota": quotas.standing(request.user)}
    return render(request, "gallery/generate.html", context, status=status)


def _reuse(user, reuse: int | None, again, **options) -> dict | None:
    """Initial form values from an image (reuse, with prompt, seed or revised) or a job (again)."""
    image = viewable(Image.objects.select_related("generation"), user, pk=reuse) if reuse else None
    generation = image.generation if image else viewable(Generation.objects, user, pk=again) if again else None
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
    generation = viewable(Generation.objects.prefetch_related("images__renditions"), request.user, pk=generation_id)
    response = render(request, "gallery/generate.html#job", {"job": generation})
    if request.htmx and generation.is_finished:
        return HttpResponseStopPolling(response.content)
    return response


@login_required
@require_POST
def cancel_job(request: HtmxHttpRequest, generation_id) -> HttpResponse:
    generation = changeable(Generation.objects, request.user, pk=generation_id)
    generation.cancel()
    if request.htmx:
        return render(request, "gallery/generate.html#job", {"job": generation})
    return redirect("gallery-generate")


