"""Qwen Studio settings: one flat file, every value read from the environment.

Each variable is described in `.env.example`. A malformed value stops start-up
with ImproperlyConfigured naming the variable.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

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


DEBUG = envbool("DJANGO_DEBUG", True)
SECRET_KEY = envstr("DJANGO_SECRET_KEY", "dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false")
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
    "django_htmx",
    "gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
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
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError:
    raise ImproperlyConfigured("DATABASE_URL is not a database URL such as postgres://user@host:5432/name") from None

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery-generate"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
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
MEDIA_ROOT = BASE_DIR / "var" / "media"

if AWS_STORAGE_BUCKET_NAME:
    MEDIA_BACKEND = {"BACKEND": "storages.backends.s3.S3Storage"}
else:
    MEDIA_BACKEND = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "allow_overwrite": True},
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
QWEN_CATALOG_FILE = envstr("QWEN_CATALOG_FILE")

CELERY_BROKER_URL = envurl("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Every retry countdown stays well below this, so Redis never redelivers a waiting task.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-generations": {"task": "gallery.tasks.sweep", "schedule": 30.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
# The sweeper re-sends a queued job whose message has gone missing after this many seconds.
QWEN_REQUEUE_AFTER = envint("QWEN_REQUEUE_AFTER", 120, minimum=5)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"botocore": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
