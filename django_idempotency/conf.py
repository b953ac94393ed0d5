"""The ``IDEMPOTENCY`` setting: defaults, validation and the backend instance.

Read lazily and cached until ``setting_changed`` fires for ``IDEMPOTENCY``,
so ``override_settings`` works in tests and the hot path pays one attribute
lookup. Every bad value raises ``ImproperlyConfigured`` naming the setting,
what was given and what is allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, cast

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend

DEFAULTS: dict[str, Any] = {
    "BACKEND": "django_idempotency.backends.db.DatabaseBackend",
    "OPTIONS": {},
    "HEADER": "Idempotency-Key",
    "METHODS": ["POST", "PATCH"],
    "REQUIRED": False,
    "TTL": 86400,
    "LOCK_TTL": 60,
    "MAX_KEY_LENGTH": 255,
    "SCOPE": "user",
    "AUTO_KEY": False,
    "ON_STORAGE_ERROR": "fail",
    "RETRYABLE_STATUSES": [401, 403, 408, 429],
}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STORAGE_ERROR_POLICIES = ("fail", "pass")

ScopeFunction = Callable[[HttpRequest], str]


@dataclass(frozen=True)
class IdempotencySettings:
    """The validated ``IDEMPOTENCY`` setting."""

    backend_path: str
    options: Mapping[str, Any]
    header: str
    meta_key: str
    methods: frozenset[str]
    required: bool
    ttl: int
    lock_ttl: int
    max_key_length: int
    scope: Literal["user"] | ScopeFunction | None
    auto_key: bool
    on_storage_error: Literal["fail", "pass"]
    retryable_statuses: frozenset[int]

    @cached_property
    def policy(self) -> Policy:
        """The policy of views guarded by the middleware alone."""
        return resolve_policy(self)


@dataclass(frozen=True)
class Policy:
    """What guards one view: the settings, overridden by ``@idempotent(...)``."""

    methods: frozenset[str]
    required: bool
    ttl: int
    lock_ttl: int
    retryable_statuses: frozenset[int]


_lock = threading.Lock()
_settings: IdempotencySettings | None = None
_backend: BaseBackend | None = None


def get_settings() -> IdempotencySettings:
    """The validated settings, parsed once per change of ``IDEMPOTENCY``."""
    global _settings
    current = _settings
    if current is None:
        current = _settings = parse_settings(getattr(django_settings, "IDEMPOTENCY", None))
    return current


def get_backend() -> BaseBackend:
    """The configured backend, built once per process (and per settings change)."""
    global _backend
    backend = _backend
    if backend is not None:
        return backend
    with _lock:
        if _backend is None:
            config = get_settings()
            backend_class = import_string(config.backend_path)
            _backend = backend_class(config.options)
        return _backend


def reset() -> None:
    """Forget the cached settings and close the backend (on ``setting_changed``)."""
    global _settings, _backend
    with _lock:
        old_backend, _backend, _settings = _backend, None, None
    if old_backend is not None:
        old_backend.close()


def resolve_policy(
    config: IdempotencySettings,
    *,
    methods: frozenset[str] | None = None,
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
) -> Policy:
    """The settings' policy with the decorator's overrides applied."""
    return Policy(
        methods=config.methods if methods is None else methods,
        required=config.required if required is None else required,
        ttl=config.ttl if ttl is None else ttl,
        lock_ttl=config.lock_ttl if lock_ttl is None else lock_ttl,
        retryable_statuses=config.retryable_statuses,
    )


def parse_settings(raw: object) -> IdempotencySettings:
    """Validate the raw ``IDEMPOTENCY`` dict and fill in the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY must be a dict; got {type(raw).__name__}. "
            "Use e.g. IDEMPOTENCY = {'BACKEND': '...'}."
        )
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown key(s) in IDEMPOTENCY: {', '.join(map(repr, unknown))}. "
            f"Allowed keys: {', '.join(DEFAULTS)}."
        )
    values = {**DEFAULTS, **raw}
    header = _string(values, "HEADER")
    options = _options(values["OPTIONS"])
    return IdempotencySettings(
        options=options,
        header=header,
        meta_key=header_meta_key(header),
        methods=validate_methods(values["METHODS"], "IDEMPOTENCY['METHODS']"),
        required=_boolean(values, "REQUIRED"),
        ttl=validate_seconds(values["TTL"], "IDEMPOTENCY['TTL']"),
        lock_ttl=validate_seconds(values["LOCK_TTL"], "IDEMPOTENCY['LOCK_TTL']"),
        max_key_length=_max_key_length(values["MAX_KEY_LENGTH"]),
        scope=_scope(values["SCOPE"]),
        auto_key=_boolean(values, "AUTO_KEY"),
        on_storage_error=_storage_error_policy(values["ON_STORAGE_ERROR"]),
        retryable_statuses=_statuses(values["RETRYABLE_STATUSES"]),
        # Last: importing the backend is the costliest check and may fail for
        # reasons (a missing driver) that should not hide simpler mistakes.
        backend_path=_backend_path(values["BACKEND"]),
    )


def header_meta_key(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY`` (how WSGI/ASGI expose it)."""
    return "HTTP_" + header.upper().replace("-", "_")


def validate_seconds(value: object, name: str) -> int:
    """A positive whole number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImproperlyConfigured(
            f"{name} must be a positive integer number of seconds; got {value!r}."
        )
    return value


def validate_methods(value: object, name: str) -> frozenset[str]:
    """A non-empty list of unsafe HTTP methods, upper-cased."""
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ImproperlyConfigured(
            f"{name} must be a list of HTTP methods such as ['POST', 'PATCH']; got {value!r}."
        )
    methods = frozenset(str(method).upper() for method in value)
    bad = sorted(methods - UNSAFE_METHODS)
    if not methods or bad:
        raise ImproperlyConfigured(
            f"{name} must list some of {sorted(UNSAFE_METHODS)}; got {value!r}. "
            "Safe methods (GET, HEAD, OPTIONS, TRACE) are never guarded."
        )
    return methods


def _string(values: Mapping[str, Any], name: str) -> str:
    value = values[name]
    if not isinstance(value, str) or not value.strip():
        raise ImproperlyConfigured(
            f"IDEMPOTENCY[{name!r}] must be a non-empty string; got {value!r}."
        )
    return value


def _boolean(values: Mapping[str, Any], name: str) -> bool:
    value = values[name]
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"IDEMPOTENCY[{name!r}] must be True or False; got {value!r}.")
    return value


def _backend_path(value: object) -> str:
    if not isinstance(value, str):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['BACKEND'] must be a dotted path string; got {value!r}."
        )
    try:
        backend_class = import_string(value)
    except ImportError as error:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['BACKEND'] = {value!r} cannot be imported ({error}). Use one of "
            "'django_idempotency.backends.db.DatabaseBackend', "
            "'django_idempotency.backends.cache.CacheBackend', "
            "'django_idempotency.backends.redis.RedisBackend', "
            "'django_idempotency.backends.memory.MemoryBackend' "
            "or the path of a BaseBackend subclass."
        ) from error
    if not (isinstance(backend_class, type) and issubclass(backend_class, BaseBackend)):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['BACKEND'] = {value!r} is not a subclass of "
            "django_idempotency.backends.base.BaseBackend."
        )
    return value


def _options(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"IDEMPOTENCY['OPTIONS'] must be a dict; got {value!r}.")
    return dict(value)


def _max_key_length(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['MAX_KEY_LENGTH'] must be an integer from 1 to 255; got {value!r}."
        )
    return value


def _scope(value: object) -> Literal["user"] | ScopeFunction | None:
    if value is None:
        return None
    if value == "user":
        return "user"
    if callable(value):
        return cast(ScopeFunction, value)
    if isinstance(value, str):
        try:
            function = import_string(value)
        except ImportError as error:
            raise ImproperlyConfigured(
                f"IDEMPOTENCY['SCOPE'] = {value!r} cannot be imported ({error}). Use 'user', "
                "None, or the dotted path of a callable(request) -> str."
            ) from error
        if callable(function):
            return cast(ScopeFunction, function)
    raise ImproperlyConfigured(
        f"IDEMPOTENCY['SCOPE'] must be 'user', None, or the dotted path of a "
        f"callable(request) -> str; got {value!r}."
    )


def _storage_error_policy(value: object) -> Literal["fail", "pass"]:
    if value not in STORAGE_ERROR_POLICIES:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['ON_STORAGE_ERROR'] must be 'fail' (503, view not run) or "
            f"'pass' (run the view unguarded); got {value!r}."
        )
    return cast(Literal["fail", "pass"], value)


def _statuses(value: object) -> frozenset[int]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['RETRYABLE_STATUSES'] must be a list of 4xx status codes; got {value!r}."
        )
    statuses = frozenset(value)
    bad = [
        s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 400 <= s < 500
    ]
    if bad:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['RETRYABLE_STATUSES'] must hold 4xx status codes (5xx are always "
            f"retryable); got {value!r}."
        )
    return statuses


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: ``override_settings(IDEMPOTENCY=...)`` takes effect."""
    if setting == "IDEMPOTENCY":
        reset()
