"""A designer's display preferences: the theme, kept in a cookie so that the server paints the first frame right."""

from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from gallery.views.common import HtmxHttpRequest, safe_next

THEME_COOKIE = "theme"
THEMES = ("system", "light", "dark")
A_YEAR = 365 * 24 * 60 * 60


def chosen_theme(request) -> str:
    """The theme this browser chose: "light", "dark", or "system" to follow the operating system."""
    theme = request.COOKIES.get(THEME_COOKIE, "")
    return theme if theme in THEMES else "system"


@require_POST
def theme(request: HtmxHttpRequest) -> HttpResponse:
    """Set the theme; open to visitors too, since the sign-in page has the switch."""
    chosen = request.POST.get("theme", "")
    if chosen not in THEMES:
        return HttpResponseBadRequest(_("Choose System, Light or Dark."), content_type="text/plain; charset=utf-8")
    # With JavaScript the page has already repainted itself; without, the form goes back where it came from.
    response = HttpResponse(status=204) if request.htmx else HttpResponseRedirect(
        safe_next(request, reverse("gallery-generate")))
    if chosen == "system":
        response.delete_cookie(THEME_COOKIE, samesite="Lax")
    else:
        response.set_cookie(THEME_COOKIE, chosen, max_age=A_YEAR, samesite="Lax", httponly=True,
                            secure=request.is_secure())
    return response
