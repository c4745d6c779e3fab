"""Qwen Studio settings: one flat file, every value read from the environment.

Each variable is described in `.env.example`. A malformed value stops start-up
with ImproperlyConfigured naming the variable.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    """The variable's value; set but empty counts as unset, as in a copied .env.example."""
    return os.environ.get(name, "").strip() or default


def envbool(name: str, default: bool) -> bool:
    value = envstr(name).lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name: str, default: int, minimum: int = 0) -> int:
    value = envstr(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def envurl(name: str, default: str) -> str:
    value = envstr(name, default)
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        # The value is not echoed: a mistyped URL may still hold a password.
        raise ImproperlyConfigured(f"{name} must be a URL such as {default!r}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


# Fail closed: debug only when asked for by name, and no built-in key outside it.
DEBUG = envbool("DJANGO_DEBUG", False)
SECRET_KEY = envstr("DJANGO_SECRET_KEY", "dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set (a long random string) unless DJANGO_DEBUG=true; "
        "make run and make test set DJANGO_DEBUG=true for you"
    )
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django.contrib.humanize",  # intcomma: counts grouped as the reader's language writes them
    "django_htmx",
    "axes",
    "gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

if not DEBUG:
    # Serves collected static files under gunicorn; the dev server does it itself.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "qwenstudio.urls"
WSGI_APPLICATION = "qwenstudio.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = envurl("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/qwenstudio")
try:
    # Each request thread and worker keeps its connection for ten minutes, checked (SELECT 1) at the start of
    # every request or task that uses it, so a database restart costs a reconnect rather than an error, and
    # a page doesn't pay a new connection (about 5 ms) every minute.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
except ValueError:
    raise ImproperlyConfigured("DATABASE_URL is not a database URL such as postgres://user@host:5432/name") from None
# The studio's queries are many and small: starting parallel workers for one costs more than it saves
# (a collection's search window took 11 ms with them, 4 without, bench/RESULTS.md). Added to whatever
# server options DATABASE_URL gives (?options=...), not in their place.
_server_options = DATABASES["default"].setdefault("OPTIONS", {})
_server_options["options"] = f"{_server_options.get('options', '')} -c max_parallel_workers_per_gather=0".strip()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Axes first: it refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery-generate"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["qwenstudio.formats"]
TIME_ZONE = envstr("DJANGO_TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"

# Storage: S3 (or any S3 API) when a bucket is named, a local folder otherwise.
AWS_STORAGE_BUCKET_NAME = envstr("AWS_STORAGE_BUCKET_NAME")
AWS_S3_ENDPOINT_URL = envstr("AWS_S3_ENDPOINT_URL") or None
AWS_S3_REGION_NAME = envstr("AWS_S3_REGION_NAME", "us-east-1")
AWS_ACCESS_KEY_ID = envstr("AWS_ACCESS_KEY_ID") or None
AWS_SECRET_ACCESS_KEY = envstr("AWS_SECRET_ACCESS_KEY") or None
AWS_DEFAULT_ACL = None
AWS_QUERYSTRING_AUTH = True
AWS_QUERYSTRING_EXPIRE = envint("AWS_QUERYSTRING_EXPIRE", 600, minimum=60)
AWS_S3_FILE_OVERWRITE = True
AWS_S3_SIGNATURE_VERSION = "s3v4"
# MinIO (and a proxy in front of it) serves every bucket under one host name, so a custom endpoint is
# reached by path; Aliyun OSS refuses paths and needs "virtual".
AWS_S3_ADDRESSING_STYLE = envstr("AWS_S3_ADDRESSING_STYLE", "path" if AWS_S3_ENDPOINT_URL else "auto")
if AWS_S3_ADDRESSING_STYLE not in {"path", "virtual", "auto"}:
    raise ImproperlyConfigured(
        f"AWS_S3_ADDRESSING_STYLE must be path, virtual or auto, not {AWS_S3_ADDRESSING_STYLE!r}")
# Where browsers reach storage when web and workers use an internal address (http://minio:9000): signed
# URLs are made for this origin, since SigV4 signs the Host header and a rewritten URL would be refused.
AWS_S3_PUBLIC_URL = envstr("AWS_S3_PUBLIC_URL").removesuffix("/")


def _is_origin(url: str) -> bool:
    """scheme://host[:port] and nothing more: a path would be part of what S3 signs."""
    try:
        parts = urlsplit(url)
        return (parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.username is None
                and parts.port != 0 and not (parts.path or parts.query or parts.fragment))
    except ValueError:  # a port that is not a number
        return False


if AWS_S3_PUBLIC_URL and not _is_origin(AWS_S3_PUBLIC_URL):
    # The value is not echoed: a pasted URL may hold credentials.
    raise ImproperlyConfigured("AWS_S3_PUBLIC_URL must be an origin such as https://files.studio.example "
                               "(scheme, host and port: no path)")

MEDIA_ROOT = BASE_DIR / "var" / "media"

if AWS_STORAGE_BUCKET_NAME:
    MEDIA_BACKEND = {"BACKEND": "storages.backends.s3.S3Storage"}
else:
    MEDIA_BACKEND = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "allow_overwrite": True},
    }
# Each process's own memory: "fragments" holds template fragments that depend only on what their cache tag's key
# names (the gallery's filter row), the same in every process, so none needs a shared cache.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "fragments": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fragments",
                  "TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 1000}},
}

STORAGES = {
    "default": MEDIA_BACKEND,
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# The image API. Without a key the studio talks to apisim on :8001.
QWEN_API_BASE_URL = envurl("QWEN_API_BASE_URL", "http://127.0.0.1:8001")
QWEN_API_KEY = envstr("QWEN_API_KEY", "apisim-local-key")
QWEN_MAX_CONCURRENT = envint("QWEN_MAX_CONCURRENT", 2, minimum=1)
QWEN_CONNECT_TIMEOUT = envint("QWEN_CONNECT_TIMEOUT", 10, minimum=1)
QWEN_READ_TIMEOUT = envint("QWEN_READ_TIMEOUT", 300, minimum=1)
QWEN_MAX_UNCONFIRMED_CALLS = envint("QWEN_MAX_UNCONFIRMED_CALLS", 2, minimum=1)
QWEN_DOWNLOAD_HOSTS = envlist(
    "QWEN_DOWNLOAD_HOSTS", f"*.aliyuncs.com,{urlsplit(QWEN_API_BASE_URL).netloc}"
)
QWEN_DOWNLOAD_MAX_BYTES = envint("QWEN_DOWNLOAD_MAX_BYTES", 40 * 1024 * 1024, minimum=1024)
# The whole download of one result, however slowly the server sends it, must end within this.
QWEN_DOWNLOAD_SECONDS = envint("QWEN_DOWNLOAD_SECONDS", 60, minimum=1)
QWEN_CATALOG_FILE = envstr("QWEN_CATALOG_FILE")
# Images each designer may have billed a day (the studio's time zone), unless staff set their own.
QWEN_DAILY_IMAGE_QUOTA = envint("QWEN_DAILY_IMAGE_QUOTA", 200)

CELERY_BROKER_URL = envurl("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Provider slots and the per-minute log live here; Redis's own clock times them (gallery/limits.py).
QWEN_LIMITS_REDIS_URL = envurl("QWEN_LIMITS_REDIS_URL", CELERY_BROKER_URL)
# A worker killed mid-call frees its provider slot within this many seconds; live calls renew theirs.
QWEN_SLOT_LEASE = envint("QWEN_SLOT_LEASE", 30, minimum=3)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Every retry countdown stays well below this, so Redis never redelivers a waiting task.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "socket_connect_timeout": 2}
CELERY_BROKER_CONNECTION_TIMEOUT = 2  # the generate page says "queue down" in seconds, not after a stall
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
# How often beat runs the sweeper (gallery.tasks.sweep).
QWEN_SWEEP_SECONDS = envint("QWEN_SWEEP_SECONDS", 30, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-generations": {"task": "gallery.tasks.sweep", "schedule": float(QWEN_SWEEP_SECONDS)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
# The sweeper re-sends a job after this many quiet seconds: running with its lease over, or queued
# for a model no message has taken a turn for.
QWEN_REQUEUE_AFTER = envint("QWEN_REQUEUE_AFTER", 120, minimum=5)

# Sign-in lockout (django-axes). Two separate rules: that many failed sign-ins to one account,
# from anywhere, lock the account; that many from one address, to any accounts, lock the address.
# The database handler keeps the counts, so every gunicorn worker sees the same ones.
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_FAILURE_LIMIT = envint("QWEN_LOGIN_FAILURE_LIMIT", 10, minimum=1)
# Axes reads a float as hours. A refused attempt during the lockout starts the wait again.
AXES_COOLOFF_TIME = envint("QWEN_LOGIN_COOLOFF_MINUTES", 15, minimum=1) / 60
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "gallery.signin.SigninHandler"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"


def _axes_username(request, credentials: dict | None) -> str | None:
    """The username as axes reads it, cut to the 255 characters it stores (django-axes#1381)."""
    username = (credentials or request.POST).get("username")
    return username[:255] if username else username


AXES_USERNAME_CALLABLE = _axes_username

# The address is REMOTE_ADDR, unless DJANGO_TRUSTED_PROXY_COUNT proxies in front each append the
# address they saw to X-Forwarded-For: then it is the entry that many from the right, which the
# client cannot forge. Behind a proxy, leaving it 0 puts every designer on the proxy's one address.
TRUSTED_PROXY_COUNT = envint("DJANGO_TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]
    # ipware counts only the proxies named in the header, and the nearest one is in REMOTE_ADDR instead.
    AXES_IPWARE_PROXY_COUNT = TRUSTED_PROXY_COUNT - 1
    # Entries a client wrote itself come first in the header; skip them rather than distrust it all.
    IPWARE_STRICT = False
else:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

# Mail is only for password reset: without a mail server its pages are not routed (qwenstudio/urls.py).
# Django 6.1's MAILERS, not the EMAIL_* settings it deprecates.
if envstr("DJANGO_EMAIL_HOST"):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": envstr("DJANGO_EMAIL_HOST"),
                "port": envint("DJANGO_EMAIL_PORT", 587, minimum=1),
                "username": envstr("DJANGO_EMAIL_HOST_USER"),
                "password": envstr("DJANGO_EMAIL_HOST_PASSWORD"),
                "use_tls": envbool("DJANGO_EMAIL_USE_TLS", True),
                # A mail server that stops answering must not hold a gunicorn worker.
                "timeout": 10,
            },
        },
    }
    DEFAULT_FROM_EMAIL = envstr("DJANGO_DEFAULT_FROM_EMAIL", envstr("DJANGO_EMAIL_HOST_USER", "webmaster@localhost"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"botocore": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# Content-Security-Policy: scripts and styles only from our own static files, never inline.
# Images also come from storage's signed URLs, so its origin is allowed for img-src.
def _storage_origins() -> list[str]:
    if not AWS_STORAGE_BUCKET_NAME:
        return []
    if AWS_S3_PUBLIC_URL or AWS_S3_ENDPOINT_URL:
        parts = urlsplit(AWS_S3_PUBLIC_URL or AWS_S3_ENDPOINT_URL)
        return [f"{parts.scheme}://{parts.netloc}", f"{parts.scheme}://*.{parts.netloc}"]
    return ["https://*.amazonaws.com"]


SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, *_storage_origins()],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
X_FRAME_OPTIONS = "DENY"

if not DEBUG:
    # Production sits behind a TLS proxy that sets X-Forwarded-Proto (README, "Deploy").
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = envbool("DJANGO_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # compose checks it over plain http inside the network
    SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = envbool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
