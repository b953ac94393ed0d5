"""System checks, so a misconfiguration shows at ``manage.py check`` time.

Ids (documented in README.rst):

* ``E001`` the ``IDEMPOTENCY`` setting is invalid (unknown key, wrong type,
  impossible value, unknown BACKEND or SCOPE path).
* ``E002`` the middleware runs before ``AuthenticationMiddleware`` while
  ``SCOPE`` is ``"user"``: every user would share one scope.
* ``E003`` the backend cannot be built from its ``OPTIONS``.
* ``W001`` the backend keeps records per process (MemoryBackend, LocMemCache)
  outside DEBUG: workers would not see each other's keys.
* Backends add their own through :meth:`BaseBackend.check` (``E010``-``E029``,
  ``W010``-``W029``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend
from django_idempotency.conf import IdempotencySettings, parse_settings

MIDDLEWARE_PATH = "django_idempotency.middleware.IdempotencyMiddleware"
AUTHENTICATION_MIDDLEWARE_PATHS = (
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
)


def register_checks() -> None:
    """Register the app's checks (called from ``AppConfig.ready``)."""
    checks.register(check_settings, "django_idempotency")
    checks.register(check_backend, "django_idempotency")


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """E001, E002: the setting itself and how it fits MIDDLEWARE."""
    try:
        config = parse_settings(getattr(settings, "IDEMPOTENCY", None))
    except ImproperlyConfigured as error:
        return [
            checks.Error(
                str(error),
                hint="Fix the IDEMPOTENCY setting; README.rst lists every key and its values.",
                id="django_idempotency.E001",
            )
        ]
    return _middleware_order(config)


def check_backend(**kwargs: Any) -> list[checks.CheckMessage]:
    """E003, W001 and the backend's own checks (cache aliases, migrations...)."""
    try:
        config = parse_settings(getattr(settings, "IDEMPOTENCY", None))
    except ImproperlyConfigured:
        return []  # reported by check_settings as E001
    try:
        backend: BaseBackend = import_string(config.backend_path)(config.options)
    except ImproperlyConfigured as error:
        return [
            checks.Error(
                str(error),
                hint="Fix IDEMPOTENCY['OPTIONS'] for this backend; README.rst lists its options.",
                id="django_idempotency.E003",
            )
        ]
    try:
        messages = backend.check(**kwargs)
    finally:
        backend.close()
    if not backend.is_shared_across_processes and not settings.DEBUG:
        messages.append(
            checks.Warning(
                f"{type(backend).__name__} keeps idempotency records per process here: with "
                "several workers or machines a retried request can run again.",
                hint="Use DatabaseBackend, RedisBackend, or CacheBackend over a shared cache "
                "(Redis, memcached) in production.",
                id="django_idempotency.W001",
            )
        )
    return messages


def _middleware_order(config: IdempotencySettings) -> list[checks.CheckMessage]:
    middleware = list(settings.MIDDLEWARE)
    if config.scope != "user" or MIDDLEWARE_PATH not in middleware:
        return []
    position = middleware.index(MIDDLEWARE_PATH)
    authentication = [
        middleware.index(p) for p in AUTHENTICATION_MIDDLEWARE_PATHS if p in middleware
    ]
    if authentication and min(authentication) < position:
        return []
    return [
        checks.Error(
            f"{MIDDLEWARE_PATH} must come after "
            "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE while "
            "IDEMPOTENCY['SCOPE'] is 'user': keys are scoped per user, and the user is "
            "not known before authentication.",
            hint="Move the middleware below AuthenticationMiddleware, or set "
            "IDEMPOTENCY['SCOPE'] to None or a callable.",
            id="django_idempotency.E002",
        )
    ]
