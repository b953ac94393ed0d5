"""System checks, so a misconfiguration shows at ``manage.py check`` time.

Ids (documented in README.rst):

* ``E001`` the ``IDEMPOTENCY`` setting is invalid (unknown key, wrong type,
  impossible value, unknown BACKEND or SCOPE path).
* ``E002`` the middleware (or a subclass) runs before
  ``AuthenticationMiddleware`` (or a subclass) while ``SCOPE`` is ``"user"``:
  every user would share one scope.
* ``E003`` the backend cannot be built from its ``OPTIONS``.
* ``W001`` the backend keeps records per process (MemoryBackend, LocMemCache)
  outside DEBUG: workers would not see each other's keys.
* ``I001`` ``ATOMIC_REQUESTS`` is on for the database that holds the records
  and the middleware is installed: the middleware stores a response after
  the view's transaction committed, ``@idempotent`` inside it.
* Backends add their own through :meth:`BaseBackend.check` (``E010``-``E039``,
  ``W010``-``W039``).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend
from django_idempotency.conf import IdempotencySettings, parse_settings
from django_idempotency.middleware import IdempotencyMiddleware


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
    """E003, W001, I001 and the backend's own checks (cache aliases, migrations...)."""
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
    messages += _middleware_outside_transactions(backend)
    return messages


def _middleware_outside_transactions(backend: BaseBackend) -> list[checks.CheckMessage]:
    """I001: under ATOMIC_REQUESTS only the decorator completes inside the view's transaction.

    Django opens the transaction around the view alone, after the middleware's
    ``process_view`` and closes it before the middleware sees the response,
    so the middleware can only store a response once the transaction has
    committed: a process that dies in between leaves a claim whose committed
    work a retry runs again once the lease ends.
    """
    alias = backend.model_database
    if alias is None or not settings.DATABASES.get(alias, {}).get("ATOMIC_REQUESTS"):
        return []
    if not any(issubclass(cls, IdempotencyMiddleware) for cls in _middleware_classes()):
        return []
    return [
        checks.Info(
            f"ATOMIC_REQUESTS is on for database {alias!r}, which holds the idempotency "
            "records: IdempotencyMiddleware can only store a view's response after the view's "
            "transaction committed, so a process that dies in between lets a retry run the "
            "committed view again once LOCK_TTL ends.",
            hint="Decorate the views that need the guarantee with @idempotent (or use "
            "IdempotentMixin on DRF views): they store the response inside the view's "
            "transaction, so it commits with the view's writes.",
            id="django_idempotency.I001",
        )
    ]


def _middleware_order(config: IdempotencySettings) -> list[checks.CheckMessage]:
    """E002, comparing classes rather than dotted paths, so subclasses count."""
    if config.scope != "user":
        return []
    classes = _middleware_classes()
    position = next(
        (i for i, cls in enumerate(classes) if issubclass(cls, IdempotencyMiddleware)), None
    )
    if position is None:
        return []
    authentication = _authentication_classes()
    if any(issubclass(cls, authentication) for cls in classes[:position]):
        return []
    guard = classes[position]
    return [
        checks.Error(
            f"{guard.__module__}.{guard.__qualname__} must come after "
            "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE while "
            "IDEMPOTENCY['SCOPE'] is 'user': keys are scoped per user, and the user is "
            "not known before authentication.",
            hint="Move the middleware below AuthenticationMiddleware, or set "
            "IDEMPOTENCY['SCOPE'] to None or a callable.",
            id="django_idempotency.E002",
        )
    ]


def _middleware_classes() -> list[type]:
    """The classes of MIDDLEWARE, in order.

    An entry that cannot be imported is left out: Django fails on it when it
    builds the request handler, and this check should not crash
    ``manage.py check`` over it. A factory function is left out too: it is
    neither middleware class, nor a subclass of one.
    """
    classes: list[type] = []
    for path in settings.MIDDLEWARE:
        try:
            middleware = import_string(path)
        except ImportError:
            continue
        if isinstance(middleware, type):
            classes.append(middleware)
    return classes


def _authentication_classes() -> tuple[type, ...]:
    """The middleware classes after which ``request.user`` is known.

    ``LoginRequiredMiddleware`` reads ``request.user`` itself, so it is only
    ever placed after authentication.

    Imported here, not at module level: ``django.contrib.auth.middleware``
    imports the auth models, which exist only when ``django.contrib.auth`` is
    installed; without it nothing authenticates, and E002 is right.
    """
    if not apps.is_installed("django.contrib.auth"):
        return ()
    from django.contrib.auth.middleware import (
        AuthenticationMiddleware,
        LoginRequiredMiddleware,
    )

    return (AuthenticationMiddleware, LoginRequiredMiddleware)
