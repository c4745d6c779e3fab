"""What a new server process would otherwise do on its first requests, done before it takes any.

jieba loads its dictionary on first use (most of a second); every template is compiled on its first
render, each language's catalog is read on its first use, and a new process's first searches read the
index pages and catalogs they need. qwenstudio/wsgi.py runs `warm` as gunicorn loads the studio in each
worker, so no designer waits for any of it; how long each part took goes to the log.
"""

import gc
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import jieba
from django.conf import settings
from django.db import DatabaseError, connection
from django.template.loader import get_template
from django.urls import reverse
from django.utils import translation

from gallery import browse, search

logger = logging.getLogger(__name__)

# One search per script and the plain gallery: the paths a first request takes.
QUERIES = ("小猫", "kitten", "")


def warm() -> dict[str, float]:
    """Warm jieba, the templates and the gallery's queries; return (and log) the milliseconds each took."""
    timings: dict[str, float] = {}
    with _timed(timings, "jieba"):
        jieba.initialize()
    with _timed(timings, "templates"):
        for name in _template_names():
            get_template(name)
        for code, _ in settings.LANGUAGES:
            with translation.override(code):
                reverse("gallery-index")
    try:
        with _timed(timings, "database"):
            for text in QUERIES:
                browse.page(None, {}, search.parse(text), None)
    except DatabaseError as error:  # the database may come up after the web server: start anyway
        logger.warning("warm-up: database skipped: %s", type(error).__name__)
    finally:
        connection.close()  # each request thread opens its own; this one was only for the warm-up
    # What was loaded so far lives as long as the process: the collector need not walk it again.
    gc.collect()
    gc.freeze()
    logger.info("warm-up: %s", ", ".join(f"{part} {ms:.0f} ms" for part, ms in timings.items()))
    return timings


@contextmanager
def _timed(timings: dict[str, float], part: str):
    started = time.perf_counter()
    yield
    timings[part] = (time.perf_counter() - started) * 1000


def _template_names() -> list[str]:
    """The project's own templates, as get_template names them."""
    return [str(path.relative_to(folder)) for engine in settings.TEMPLATES for folder in map(Path, engine["DIRS"])
            for path in sorted(folder.rglob("*.html"))]
