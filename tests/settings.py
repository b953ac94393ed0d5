"""Django settings for the test suite.

Databases and caches for the real services are configured only when the
service answers, so a machine without MariaDB still runs everything else
(the tests that need it skip, and fail under CI=true).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from tests.services import (
    MARIADB,
    POSTGRES,
    REDIS,
    REDIS_URL,
    is_up,
    mariadb_database,
    postgres_database,
)

SECRET_KEY = "django-idempotency-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.testapp.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_idempotency",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_idempotency.middleware.IdempotencyMiddleware",
]

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
            ]
        },
    }
]

STATIC_URL = "/static/"

# A file, not SQLite's shared in-memory database: threads and the worker
# processes of the multi-process tests must all see the same tables.
RUN_ID = os.environ.setdefault("IDEMPOTENCY_TEST_RUN_ID", str(os.getpid()))
SQLITE_TEST_PATH = os.environ.setdefault(
    "TEST_SQLITE_PATH", os.path.join(tempfile.gettempdir(), f"idempotency-test-{RUN_ID}.sqlite3")
)

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"idempotency-{RUN_ID}.sqlite3"),
        "OPTIONS": {"timeout": 20},
        "TEST": {"NAME": SQLITE_TEST_PATH},
    }
}
if is_up(POSTGRES):
    DATABASES["postgres"] = postgres_database(
        os.environ.get("TEST_POSTGRES_TEST_NAME", "test_django_idempotency")
    )
if is_up(MARIADB):
    DATABASES["mariadb"] = mariadb_database(
        os.environ.get("TEST_MARIADB_TEST_NAME", "test_django_idempotency")
    )

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "locmem": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "idempotency-tests",
    },
}
if is_up(REDIS):
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"idempotency-test-{RUN_ID}",
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
    }

IDEMPOTENCY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_idempotency": {"level": "DEBUG", "propagate": True}},
}
