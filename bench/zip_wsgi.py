"""gunicorn's entry for bench/zip.py: production settings, files from the bench's own folder."""

import os

from django.conf import settings

# Set before Django starts, so the storages are built with them; collectstatic is not run for a bench.
settings.STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": os.environ["QWEN_BENCH_MEDIA"], "allow_overwrite": True}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
