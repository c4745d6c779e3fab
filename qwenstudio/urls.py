from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.core.mail import mailers
from django.urls import URLPattern, include, path


def account_urlpatterns(password_reset: bool) -> list[URLPattern]:
    """Sign in, sign out and password change; password reset only when a mail can reach the designer.

    There is no sign-up: an admin makes the accounts.
    """
    return [
        pattern for pattern in auth_urls.urlpatterns
        if password_reset or not pattern.name.startswith("password_reset")
    ]


urlpatterns = [
    path("accounts/", include(account_urlpatterns(password_reset="default" in mailers))),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("", include("gallery.urls")),
]
