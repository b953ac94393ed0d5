"""``@idempotent`` and ``@idempotent_exempt``.

``@idempotent`` guards one view with the settings' policy, optionally
overridden (``required``, ``ttl``, ``lock_ttl``, ``methods``). It works on
function views, ``async def`` views and class-based views (decorate the
class, or its ``dispatch`` with ``method_decorator``), with or without the
middleware installed: the middleware leaves decorated views to the decorator.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import wraps
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator

from django_idempotency import engine
from django_idempotency.conf import (
    IdempotencySettings,
    Policy,
    get_settings,
    resolve_policy,
    validate_methods,
    validate_seconds,
)
from django_idempotency.middleware import HANDLED_ATTRIBUTE

View = TypeVar("View", bound=Callable[..., Any])


@overload
def idempotent(view: View) -> View: ...


@overload
def idempotent(
    view: None = None,
    *,
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
    methods: Collection[str] | None = None,
) -> Callable[[View], View]: ...


def idempotent(
    view: Any = None,
    *,
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
    methods: Collection[str] | None = None,
) -> Any:
    """Guard a view so that it runs at most once per idempotency key.

    Use bare (``@idempotent``) or with overrides of the ``IDEMPOTENCY``
    settings (``@idempotent(required=True, ttl=3600)``). Arguments are
    validated when the module is imported, not at the first request.
    """
    overrides = _validated_overrides(required, ttl, lock_ttl, methods)

    def decorate(target: Any) -> Any:
        if isinstance(target, type):
            return method_decorator(decorate, name="dispatch")(target)
        return _guard(target, overrides)

    return decorate if view is None else decorate(view)


def idempotent_exempt(view: View) -> View:
    """Make ``IdempotencyMiddleware`` leave this view alone."""
    if isinstance(view, type):
        return method_decorator(idempotent_exempt, name="dispatch")(view)

    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await view(*args, **kwargs)

        wrapper: Any = async_wrapper
    else:

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

    setattr(wrapper, HANDLED_ATTRIBUTE, True)
    return wrapper  # type: ignore[no-any-return]


def _validated_overrides(
    required: bool | None,
    ttl: int | None,
    lock_ttl: int | None,
    methods: Collection[str] | None,
) -> dict[str, Any]:
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
    }


class _PolicyCache:
    """The view's policy, recomputed only when the settings change."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self.config: IdempotencySettings | None = None
        self.policy: Policy | None = None

    def __call__(self) -> Policy:
        config = get_settings()
        if config is not self.config or self.policy is None:
            self.policy = resolve_policy(config, **self.overrides)
            self.config = config
        return self.policy


def _guard(view: Callable[..., Any], overrides: dict[str, Any]) -> Callable[..., Any]:
    policy = _PolicyCache(overrides)

    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            decision = await engine.abegin(request, policy())
            if decision is None:
                return await view(request, *args, **kwargs)
            if not isinstance(decision, engine.Guard):
                return decision
            try:
                response = await view(request, *args, **kwargs)
            except BaseException:
                await engine.aabort(decision)
                raise
            return await engine.afinish(decision, response)

        wrapper: Any = async_wrapper
    else:

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            decision = engine.begin(request, policy())
            if decision is None:
                return view(request, *args, **kwargs)  # type: ignore[no-any-return]
            if not isinstance(decision, engine.Guard):
                return decision
            try:
                response = view(request, *args, **kwargs)
            except BaseException:
                engine.abort(decision)
                raise
            return engine.finish(decision, response)

    setattr(wrapper, HANDLED_ATTRIBUTE, True)
    return wrapper  # type: ignore[no-any-return]
