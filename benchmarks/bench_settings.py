"""A small Django project for the benchmarks: one SQLite file, two URLconfs."""

from __future__ import annotations

import os
from typing import Any

from tests.services import NATS_URL, REDIS_URL

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
    "django.contrib.messages",
    "django_idempotency",
    "tests.testapp",
]

# "default": the MIDDLEWARE of a new `django-admin startproject`, which is
# what the ratios are quoted for; "minimal": sessions and authentication only,
# the harshest baseline (less work per request, so our share looks larger).
MIDDLEWARE_STACKS = {
    "default": [
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    "minimal": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
}
MIDDLEWARE = [
    *MIDDLEWARE_STACKS[os.environ.get("BENCH_STACK", "default")],
    "django_idempotency.middleware.IdempotencyMiddleware",
]
# In memory: a file database would add an fsync per request to every kind and
# flatter the ratios; without it the view costs what its Python and SQL cost.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
# "memory": room for every first-time request of a long run (a full
# MemoryBackend refuses new keys rather than evict live ones); "db": the
# default backend, on the same in-memory SQLite database as the view's rows.
BACKENDS: dict[str, dict[str, Any]] = {
    "memory": {
        "BACKEND": "django_idempotency.backends.memory.MemoryBackend",
        "OPTIONS": {"MAX_ENTRIES": 10_000_000},
    },
    "db": {"BACKEND": "django_idempotency.backends.db.DatabaseBackend"},
    # The test services (tests/services.py), under a prefix and a bucket of this run.
    "redis": {
        "BACKEND": "django_idempotency.backends.redis.RedisBackend",
        "OPTIONS": {"URL": REDIS_URL, "KEY_PREFIX": f"idempotency-bench-{os.getpid()}:"},
    },
    "nats": {
        "BACKEND": "django_idempotency.backends.nats.NatsBackend",
        "OPTIONS": {"SERVERS": NATS_URL, "BUCKET": f"idempotency-bench-{os.getpid()}"},
    },
    "nats-read-on-claim": {
        "BACKEND": "django_idempotency.backends.nats.NatsBackend",
        "OPTIONS": {
            "SERVERS": NATS_URL,
            "BUCKET": f"idempotency-bench-{os.getpid()}",
            "READ_ON_CLAIM": True,
        },
    },
}
IDEMPOTENCY = BACKENDS[os.environ.get("BENCH_BACKEND", "memory")]
