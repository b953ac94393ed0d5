"""Django settings for the test suite.

Databases and caches for the real services are configured only when the
service answers, so a machine without MariaDB still runs everything else
(the tests that need it skip, and fail under CI=true).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Any

from tests.services import (
    MARIADB,
    MEMCACHED,
    MEMCACHED_LOCATION,
    POSTGRES,
    REDIS,
    REDIS_URL,
    is_up,
    mariadb_database,
    postgres_database,
)

SECRET_KEY = "django-idempotency-tests-a-key-long-enough-for-hs256"
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

# Django REST framework is an optional extra: its apps and tests only when installed.
HAS_DRF = importlib.util.find_spec("rest_framework") is not None
HAS_SIMPLEJWT = HAS_DRF and importlib.util.find_spec("rest_framework_simplejwt") is not None
if HAS_DRF:
    INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken"]
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.TokenAuthentication",
            "rest_framework.authentication.BasicAuthentication",
            *(
                ["rest_framework_simplejwt.authentication.JWTAuthentication"]
                if HAS_SIMPLEJWT
                else []
            ),
            "rest_framework.authentication.SessionAuthentication",
        ],
        "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    }
    if importlib.util.find_spec("drf_spectacular") is not None:
        # Read when @api_view builds its class, so it is set here, not per test.
        REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = (
            "django_idempotency.spectacular.IdempotentAutoSchema"
        )

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

# The tests set passwords and authenticate with them (DRF's Basic, the admin's
# login) hundreds of times; the default hasher's 1,000,000+ PBKDF2 rounds made
# each such test take a second. Django's docs recommend a fast hasher for tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# What tells this run's stores apart from another's: Redis key prefixes, SQLite
# files. The servers a test starts inherit the environment, so they compute
# the same; each pytest-xdist worker adds its own name (pytest-django gives
# each worker its own PostgreSQL and MariaDB test databases likewise).
RUN_ID = os.environ.setdefault("IDEMPOTENCY_TEST_RUN_ID", str(os.getpid())) + os.environ.get(
    "PYTEST_XDIST_WORKER", ""
)
MEMCACHED_NAMESPACE_VARIABLE = "IDEMPOTENCY_TEST_MEMCACHED_NAMESPACE"
"""Set by a test using memcached: its servers inherit it, so they see its keys."""

# A file, not SQLite's shared in-memory database: threads and the worker
# processes of the multi-process tests must all see the same tables.
SQLITE_TEST_PATH = os.environ.get("TEST_SQLITE_PATH") or os.path.join(
    tempfile.gettempdir(), f"idempotency-test-{RUN_ID}.sqlite3"
)
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("TEST_SQLITE_PATH"):
    SQLITE_TEST_PATH = SQLITE_TEST_PATH.replace(".sqlite3", "") + f"-{RUN_ID}.sqlite3"

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

if is_up(MEMCACHED):
    CACHES["memcached"] = {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": MEMCACHED_LOCATION,
        # Each test gets a namespace of its own (tests/conftest.py): memcached
        # cannot list its keys reliably enough to delete one test's records.
        "KEY_PREFIX": f"idempotency-test-{RUN_ID}"
        + os.environ.get(MEMCACHED_NAMESPACE_VARIABLE, ""),
    }

IDEMPOTENCY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_idempotency": {"level": "DEBUG", "propagate": True}},
}
