r"""Settings of the example project: SQLite and the database backend by default.

Environment variables switch the same project to other services, so the demo
can run against what a deployment would use:

* ``DJANGO_DEBUG``: ``true`` (default, it is a demo) or ``false``.
* ``DJANGO_SECRET_KEY``: required when DEBUG is off.
* ``DATABASE_URL``: ``sqlite:///db.sqlite3`` (default, relative to this
  project; ``sqlite:////abs/path`` for an absolute path),
  ``postgres://user:password@host:5432/name`` or
  ``mysql://user:password@host:3306/name`` (MariaDB and MySQL). Percent-encode
  special characters in the user and password.
* ``REDIS_URL``: e.g. ``redis://127.0.0.1:6379/0`` makes Django's Redis cache
  the default cache (for the cache backend below).
* ``IDEMPOTENCY_BACKEND``: the dotted path of the idempotency backend, e.g.
  ``django_idempotency.backends.memory.MemoryBackend`` or
  ``django_idempotency.backends.cache.CacheBackend``.
* ``IDEMPOTENCY_OPTIONS``: that backend's ``OPTIONS`` as a JSON object.

Examples, from the repository root::

    DATABASE_URL=postgres://postgres@127.0.0.1/payments make demo
    REDIS_URL=redis://127.0.0.1:6379/0 \
        IDEMPOTENCY_BACKEND=django_idempotency.backends.cache.CacheBackend make demo
    IDEMPOTENCY_BACKEND=django_idempotency.backends.redis.RedisBackend \
        IDEMPOTENCY_OPTIONS='{"URL": "redis://127.0.0.1:6379/0"}' make demo
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

DATABASE_ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}


def database_from_url(url: str) -> dict[str, Any]:
    """One ``DATABASES`` entry from a ``DATABASE_URL`` (no dependency for ten lines)."""
    parts = urlsplit(url)
    engine = DATABASE_ENGINES.get(parts.scheme)
    if engine is None:
        raise ImproperlyConfigured(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; "
            f"use one of {', '.join(DATABASE_ENGINES)}."
        )
    name = unquote(parts.path[1:])  # "sqlite:////abs/path" keeps its leading slash
    if engine == DATABASE_ENGINES["sqlite"]:
        return {"ENGINE": engine, "NAME": BASE_DIR / (name or "db.sqlite3")}
    database: dict[str, Any] = {
        "ENGINE": engine,
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }
    if engine == DATABASE_ENGINES["mysql"]:
        database["OPTIONS"] = {"charset": "utf8mb4"}
    return database


DEBUG = os.environ.get("DJANGO_DEBUG", "true").lower() in {"1", "true", "yes", "on"}

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off.")
    SECRET_KEY = "django-insecure-example-project-only"  # demo only: refused above without DEBUG

ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_idempotency",
    "payments",
]

# The payments API authenticates with tokens (``Authorization: Token <key>``;
# ``manage.py ensure_demo_user`` prints the demo users' tokens) or, in the
# browsable API, with a session.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication, so each user's keys live in a scope of their own.
    # It leaves the payments ViewSet to its IdempotentMixin, which claims after
    # DRF authenticated the token; other views it guards itself.
    "django_idempotency.middleware.IdempotencyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("REDIS_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
        }
    }

IDEMPOTENCY = {
    "BACKEND": os.environ.get(
        "IDEMPOTENCY_BACKEND", "django_idempotency.backends.db.DatabaseBackend"
    ),
    "OPTIONS": json.loads(os.environ.get("IDEMPOTENCY_OPTIONS", "{}")),
    "TTL": 86400,  # a retry within a day gets the stored response replayed
    "LOCK_TTL": 60,  # a claim whose worker died is taken over after a minute
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

# Show the app's decisions (claimed, replayed, 409, 422) in the runserver console.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_idempotency": {"handlers": ["console"], "level": "INFO"}},
}
