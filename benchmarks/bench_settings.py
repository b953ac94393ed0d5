"""A small Django project for the benchmarks: one SQLite file, two URLconfs."""

from __future__ import annotations

SECRET_KEY = "benchmarks"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "benchmarks.bench_urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_idempotency",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_idempotency.middleware.IdempotencyMiddleware",
]
# In memory: a file database would add an fsync per request to every kind and
# flatter the ratios; without it the view costs what its Python and SQL cost.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
IDEMPOTENCY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}
