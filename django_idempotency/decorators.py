"""``@idempotent`` and ``@idempotent_exempt``.

``@idempotent`` guards one view with the settings' policy, optionally
overridden (``required``, ``ttl``, ``lock_ttl``, ``methods``, ``wait``). It works on
function views, ``async def`` views and class-based views (decorate the
class, or its ``dispatch`` or handler methods with ``method_decorator``), with
or without the middleware installed: the middleware leaves decorated views to
the decorator, and a decorator that finds its request already guarded (by a
layer that could not see it) runs the view inside that claim.

A view that raises an ``Exception`` releases its claim, so a retry runs it
again. A view interrupted by its process stopping (``SystemExit``,
``KeyboardInterrupt``) or cancelled (``asyncio.CancelledError``, an ASGI
client that disconnected) may or may not have done its work: its claim is
kept until its lease ends, exactly as when the middleware guards it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import wraps
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator

from django_idempotency import engine, marks, problems
from django_idempotency.claims import BodyReader
from django_idempotency.conf import PolicyCache, get_settings, view_overrides
from django_idempotency.fingerprint import request_body
from django_idempotency.frameworks import drf_view_class

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
    wait: float | None = None,
) -> Callable[[View], View]: ...


def idempotent(
    view: Any = None,
    *,
    required: bool | None = None,
    ttl: int | None = None,
    lock_ttl: int | None = None,
    methods: Collection[str] | None = None,
    wait: float | None = None,
) -> Any:
    """Guard a view so that it runs at most once per idempotency key.

    Use bare (``@idempotent``) or with overrides of the ``IDEMPOTENCY``
    settings (``@idempotent(required=True, ttl=3600, wait=5)``). Arguments
    are validated when the module is imported, not at the first request.
    """
    overrides = view_overrides(required, ttl, lock_ttl, methods, wait)

    def decorate(target: Any) -> Any:
        if drf_view_class(target) is not None:
            return _guard_drf_view(target, overrides)
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

    marks.mark_handled(wrapper)
    return wrapper  # type: ignore[no-any-return]


def _guard_drf_view(target: Any, overrides: dict[str, Any]) -> Any:
    """A DRF view claims after DRF authenticated the request: the DRF integration's mixin."""
    from django_idempotency import drf

    if isinstance(target, type):
        return drf.with_idempotency(target, overrides)
    view_class = drf.with_idempotency(target.cls, overrides)
    return view_class.as_view(**getattr(target, "initkwargs", {}))


def _request_in(args: tuple[Any, ...]) -> Any:
    """The request among a view's arguments: first, or after ``self`` for a method."""
    return args[0] if hasattr(args[0], "META") else args[1]


def _django_request(request: Any) -> tuple[HttpRequest, BodyReader]:
    """The Django request to claim for, and how to read its body.

    A DRF ``Request`` (a handler method, a function under ``@api_view``)
    wraps the Django request, which DRF has given its authenticated user.
    """
    if isinstance(request, HttpRequest):
        return request, request_body
    from django_idempotency import drf  # only DRF hands a view such a request

    return drf.unwrap(request), drf.parsed_body(request)


def _refused(request: Any, decision: HttpResponseBase) -> HttpResponseBase:
    """A replay or a refusal; under DRF, a refusal may go through DRF's exception handler."""
    if isinstance(request, HttpRequest) or not isinstance(decision, problems.ProblemResponse):
        return decision
    if not get_settings().drf_exception_handler:
        return decision
    from django_idempotency import drf

    raise drf.Refused(decision)


def _guard(view: Callable[..., Any], overrides: dict[str, Any]) -> Callable[..., Any]:
    policy = PolicyCache(overrides)

    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if marks.guard_of(request) is not None:  # an outer layer claimed it
                return await view(request, *args, **kwargs)
            decision = await engine.abegin(request, policy())
            if decision is None:
                return await view(request, *args, **kwargs)
            if not isinstance(decision, engine.Guard):
                return decision
            marks.keep_guard(request, decision)
            try:
                response = await view(request, *args, **kwargs)
            except Exception:
                await engine.aabort(decision)
                raise
            except BaseException as error:  # CancelledError: the client disconnected
                engine.interrupt(decision, error)
                raise
            finally:
                marks.drop_guard(request)
            return await engine.afinish(decision, response)

        wrapper: Any = async_wrapper
    else:

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> HttpResponseBase:
            request = _request_in(args)
            http_request, body = _django_request(request)
            if marks.guard_of(http_request) is not None:  # an outer layer claimed it
                return view(*args, **kwargs)  # type: ignore[no-any-return]
            decision = engine.begin(http_request, policy(), body)
            if decision is None:
                return view(*args, **kwargs)  # type: ignore[no-any-return]
            if not isinstance(decision, engine.Guard):
                return _refused(request, decision)
            marks.keep_guard(http_request, decision)
            try:
                response = view(*args, **kwargs)
            except Exception:
                engine.abort(decision)
                raise
            except BaseException as error:  # SystemExit, KeyboardInterrupt: the process stops
                engine.interrupt(decision, error)
                raise
            finally:
                marks.drop_guard(http_request)
            return engine.finish(decision, response)  # type: ignore[no-any-return]

    marks.mark_handled(wrapper, policy)
    return wrapper  # type: ignore[no-any-return]
