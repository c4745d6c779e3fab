"""What every page's views share: the request type, the ownership gates and a safe `next`."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def viewable(queryset, user, **lookup):
    """The object if it exists and user may see it; otherwise the same 404 either way."""
    found = queryset.filter(**lookup).first()
    if found is None or not found.can_view(user):
        raise Http404
    return found


def changeable(queryset, user, **lookup):
    """The object if user may change it: 404 if they can't even see it, 403 if they only see it."""
    found = viewable(queryset, user, **lookup)
    if not found.can_change(user):
        raise PermissionDenied
    return found


def staff_only(view):
    """The view for staff: anyone else signed in gets 403, a visitor the sign-in page."""

    @login_required
    @wraps(view)
    def checked(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return checked


def storage_unavailable() -> HttpResponse:
    """The answer when a file that should be in storage can't be read: try again, nothing is lost."""
    return HttpResponse(_("The image could not be read from storage just now. Please try again in a moment."),
                        status=503, content_type="text/plain; charset=utf-8")


def safe_next(request, default: str) -> str:
    """The `next` the form sent if it is a path on this site, else default."""
    target = request.POST.get("next", "")
    on_site = url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                              require_https=request.is_secure())
    # Only an absolute path: redirect() would take any other word for a view name.
    return target if on_site and target.startswith("/") else default
