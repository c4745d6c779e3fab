"""/healthz: JSON for compose's health checks and for people; 503 naming what is down."""

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from gallery import health


@never_cache
@require_safe
def healthz(request) -> JsonResponse:
    report = health.report()
    return JsonResponse(report, status=503 if report["down"] else 200)
