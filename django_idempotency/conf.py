"""The ``IDEMPOTENCY`` setting: defaults and validation, parsed once per change.

Read lazily and cached until ``setting_changed`` fires for ``IDEMPOTENCY``,
so ``override_settings`` works in tests and the hot path pays one attribute
lookup. Every bad value raises ``ImproperlyConfigured`` naming the setting,
what was given and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
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
    "DRF_EXCEPTION_HANDLER": False,
    "MAX_RESPONSE_BYTES": 1024 * 1024,
    "WAIT": 0,
}

RENAMED_KEYS = {
    "HEADER_NAME": "HEADER",
    "BACKEND_OPTIONS": "OPTIONS",
    "TTL_SECONDS": "TTL",
    "LOCK_TTL_SECONDS": "LOCK_TTL",
    "REQUIRE_KEY": "REQUIRED",
}
"""drf-idempotency's names for our keys (both libraries read ``IDEMPOTENCY``), for a clear error."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STORAGE_ERROR_POLICIES = ("fail", "pass")

MAX_SECONDS = 365 * 24 * 60 * 60
"""The longest ``TTL`` or ``LOCK_TTL``: a year, far inside what every store can date."""

MAX_WAIT = 300
"""The longest ``WAIT``: a waiting request holds a worker (or a task), so minutes at most."""

HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
"""A header name every server passes through unchanged as ``HTTP_<NAME>``."""

UNPREFIXED_HEADERS = frozenset({"content-type", "content-length"})
"""Headers WSGI and ASGI put in META without the ``HTTP_`` prefix."""

OWN_BACKENDS = (
    "django_idempotency.backends.db.DatabaseBackend",
    "django_idempotency.backends.cache.CacheBackend",
    "django_idempotency.backends.redis.RedisBackend",
    "django_idempotency.backends.memory.MemoryBackend",
    "django_idempotency.backends.nats.NatsBackend",
)


@dataclass(frozen=True)
class Extra:
    """An optional package one of the app's backends imports, and how to install it."""

    module: str
    package: str
    install: str


BACKEND_EXTRAS = {
    "django_idempotency.backends.redis.RedisBackend": Extra(
        module="redis", package="redis-py", install='pip install "django-idempotency[redis]"'
    ),
    "django_idempotency.backends.nats.NatsBackend": Extra(
        module="nats", package="nats-py", install='pip install "django-idempotency[nats]"'
    ),
}

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
    scope: Literal["user", "token"] | ScopeFunction | None
    auto_key: bool
    on_storage_error: Literal["fail", "pass"]
    retryable_statuses: frozenset[int]
    drf_exception_handler: bool
    max_response_bytes: int | None
    """The largest body kept for replay; None keeps every body."""
    wait: float
    """Seconds a duplicate waits for the request in progress; 0 answers 409 at once."""

    @cached_property
    def policy(self) -> Policy:
        """The policy of views guarded by the middleware alone."""
        return resolve_policy(self)


@dataclass(frozen=True)
class Policy:
    """What guards one view: the settings, overridden by ``@idempotent(...)``.

    It carries the settings it was resolved from, so a request reads them once.
    """

    settings: IdempotencySettings
    methods: frozenset[str]
    required: bool
    ttl: int
    lock_ttl: int
    retryable_statuses: frozenset[int]
    wait: float
    """Seconds a duplicate waits for the first request to finish (0: 409 at once)."""


_settings: IdempotencySettings | None = None


def get_settings() -> IdempotencySettings:
    """The validated settings, parsed once per change of ``IDEMPOTENCY``."""
    global _settings
    current = _settings
    if current is None:
        current = _settings = parse_settings(getattr(django_settings, "IDEMPOTENCY", None))
    return current


def reset() -> None:
    """Forget the cached settings (on ``setting_changed``)."""
    global _settings
    _settings = None


def resolve_policy(
    config: IdempotencySettings,
    *,
    methods: frozenset[str] | None = None,
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
    wait: float | None = None,
) -> Policy:
    """The settings' policy with the decorator's overrides applied."""
    return Policy(
        settings=config,
        methods=config.methods if methods is None else methods,
        required=config.required if required is None else required,
        ttl=config.ttl if ttl is None else ttl,
        lock_ttl=config.lock_ttl if lock_ttl is None else lock_ttl,
        retryable_statuses=config.retryable_statuses,
        wait=config.wait if wait is None else wait,
    )


def view_overrides(
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
    methods: Collection[str] | None = None,
    wait: float | None = None,
) -> dict[str, Any]:
    """A view's own policy (``@idempotent(...)``, the DRF mixin), validated when declared."""
    if required is not None and not isinstance(required, bool):
        raise ImproperlyConfigured(f"@idempotent(required=...) must be a bool; got {required!r}.")
    return {
        "required": required,
        "ttl": None if ttl is None else validate_seconds(ttl, "@idempotent(ttl=...)"),
        "lock_ttl": None
        if lock_ttl is None
        else validate_seconds(lock_ttl, "@idempotent(lock_ttl=...)"),
        "methods": None
        if methods is None
        else validate_methods(list(methods), "@idempotent(methods=...)"),
        "wait": None if wait is None else validate_wait(wait, "@idempotent(wait=...)"),
    }


class PolicyCache:
    """A view's policy, recomputed only when the settings change."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self.settings: IdempotencySettings | None = None
        self.policy: Policy | None = None

    def __call__(self) -> Policy:
        settings = get_settings()
        if settings is not self.settings or self.policy is None:
            self.policy = resolve_policy(settings, **self.overrides)
            self.settings = settings
        return self.policy


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
        renamed = "".join(
            f" {name!r} is {RENAMED_KEYS[name]!r} here." for name in unknown if name in RENAMED_KEYS
        )
        raise ImproperlyConfigured(
            f"Unknown key(s) in IDEMPOTENCY: {', '.join(map(repr, unknown))}.{renamed} "
            f"Allowed keys: {', '.join(DEFAULTS)}."
        )
    values = {**DEFAULTS, **raw}
    header = _header(values)
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
        drf_exception_handler=_boolean(values, "DRF_EXCEPTION_HANDLER"),
        max_response_bytes=_max_response_bytes(values["MAX_RESPONSE_BYTES"]),
        wait=validate_wait(values["WAIT"], "IDEMPOTENCY['WAIT']"),
        # Last: importing the backend is the costliest check and may fail for
        # reasons (a missing driver) that should not hide simpler mistakes.
        backend_path=_backend_path(values["BACKEND"]),
    )


def header_meta_key(header: str) -> str:
    """``Idempotency-Key`` -> ``HTTP_IDEMPOTENCY_KEY`` (how WSGI/ASGI expose it)."""
    return "HTTP_" + header.upper().replace("-", "_")


def validate_seconds(value: object, name: str) -> int:
    """A whole number of seconds from 1 to :data:`MAX_SECONDS`.

    Bounded because stores turn it into a date: a TTL past year 9999 would let
    the view run and then fail to store its response (a 500 after the side
    effect), and a lease that long would never let a retry take over.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SECONDS:
        raise ImproperlyConfigured(
            f"{name} must be a positive integer number of seconds from 1 to {MAX_SECONDS} "
            f"(365 days); got {value!r}."
        )
    return value


def validate_wait(value: object, name: str) -> float:
    """Seconds from 0 (answer 409 at once) to :data:`MAX_WAIT`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT:
        raise ImproperlyConfigured(
            f"{name} must be a number of seconds from 0 (answer 409 at once) to {MAX_WAIT}; "
            f"got {value!r}. A waiting request holds a worker while it waits."
        )
    return float(value)


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


def _header(values: Mapping[str, Any]) -> str:
    """A header name the middleware can find in ``request.META``.

    It is read as ``HTTP_<NAME>`` (hyphens as underscores), which holds only
    for plain names: servers drop or merge names with underscores, and
    Content-Type and Content-Length arrive without the prefix, so such a
    HEADER would never match and, with REQUIRED, refuse every request.
    """
    header = _string(values, "HEADER")
    fix = "use a dedicated header such as 'Idempotency-Key'."
    if header.lower() in UNPREFIXED_HEADERS:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['HEADER'] = {header!r} describes the request's body and reaches "
            f"Django without the HTTP_ prefix, so it can never carry the key: {fix}"
        )
    if header.upper().startswith("HTTP_"):
        field = header[5:].replace("_", "-").title()
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['HEADER'] is the header's field name, not its request.META key: "
            f"use {field!r}, not {header!r}."
        )
    if not HEADER_NAME.fullmatch(header):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['HEADER'] must be a header name of ASCII letters, digits and "
            f"hyphens (servers drop or rename others); got {header!r}: {fix}"
        )
    return header


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
        raise ImproperlyConfigured(_unimportable_backend(value, error)) from error
    if not (isinstance(backend_class, type) and issubclass(backend_class, BaseBackend)):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['BACKEND'] = {value!r} is not a subclass of "
            "django_idempotency.backends.base.BaseBackend."
        )
    return value


def _unimportable_backend(value: str, error: ImportError) -> str:
    """Why BACKEND cannot be imported, and what to do about it.

    One of the app's own backends fails to import when its optional package
    is missing: name the package and the command that installs it, rather
    than list that very backend among the valid choices.
    """
    extra = BACKEND_EXTRAS.get(value)
    if extra is not None and (error.name or "").partition(".")[0] == extra.module:
        return (
            f"IDEMPOTENCY['BACKEND'] = {value!r} needs {extra.package}, which cannot be "
            f"imported ({error.__cause__ or error}). Install it: {extra.install}."
        )
    choices = ", ".join(repr(path) for path in OWN_BACKENDS if path != value)
    return (
        f"IDEMPOTENCY['BACKEND'] = {value!r} cannot be imported ({error}). Use one of "
        f"{choices} or the path of a BaseBackend subclass."
    )


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


def _max_response_bytes(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['MAX_RESPONSE_BYTES'] must be a positive number of bytes, or None to "
            f"keep every response body for replay; got {value!r}."
        )
    return value


def _scope(value: object) -> Literal["user", "token"] | ScopeFunction | None:
    if value is None:
        return None
    if value in ("user", "token"):
        return value
    if callable(value):
        return cast(ScopeFunction, value)
    if isinstance(value, str):
        try:
            function = import_string(value)
        except ImportError as error:
            raise ImproperlyConfigured(
                f"IDEMPOTENCY['SCOPE'] = {value!r} cannot be imported ({error}). Use 'user', "
                "'token', None, or the dotted path of a callable(request) -> str."
            ) from error
        if callable(function):
            return cast(ScopeFunction, function)
    raise ImproperlyConfigured(
        f"IDEMPOTENCY['SCOPE'] must be 'user', 'token', None, or the dotted path of a "
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
