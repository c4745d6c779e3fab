"""The studio as a WSGI application, for gunicorn (Dockerfile, docker-compose.yml).

Each worker warms jieba and the gallery's queries as it loads this (gallery.warmup), before it
takes its first request.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qwenstudio.settings")

application = get_wsgi_application()

from gallery import warmup  # noqa: E402  (needs the apps loaded above)

warmup.warm()
