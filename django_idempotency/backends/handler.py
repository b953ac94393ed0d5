"""The configured backend: built once per process, rebuilt when the setting changes.

As ``django.core.cache.caches`` does for caches, this keeps the one instance
of the backend ``IDEMPOTENCY['BACKEND']`` names, built from its
``OPTIONS`` on first use, and closes it when ``setting_changed`` fires for
``IDEMPOTENCY`` (``override_settings`` in tests), so the next request builds
the new one.
"""

from __future__ import annotations

import threading
from typing import Any

from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend
from django_idempotency.conf import get_settings

_lock = threading.Lock()
_backend: BaseBackend | None = None


def get_backend() -> BaseBackend:
    """The configured backend, built once per process (and per settings change)."""
    backend = _backend
    if backend is not None:
        return backend
    return _build()


def _build() -> BaseBackend:
    global _backend
    with _lock:
        if _backend is None:
            settings = get_settings()
            _backend = import_string(settings.backend_path)(settings.options)
        return _backend


def close_backend() -> None:
    """Close the backend and forget it; the next :func:`get_backend` builds it again."""
    global _backend
    with _lock:
        backend, _backend = _backend, None
    if backend is not None:
        backend.close()


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: a new ``IDEMPOTENCY`` gets a new backend."""
    if setting == "IDEMPOTENCY":
        close_backend()
