"""``IdempotencyMiddleware``: guards every view for the configured METHODS.

It claims in ``process_view`` (so URL resolution, CSRF and authentication
middleware placed before it have already had their say, and a request they
reject uses up no key) and completes or releases after the inner layers have
produced the response. Views decorated with ``@idempotent`` carry their own
policy and ``@idempotent_exempt`` views are left alone (see
:mod:`~django_idempotency.marks`), so a view under both the middleware and
the decorator is processed exactly once.

It serves sync and async stacks natively: on an async stack ``process_view``
is a coroutine function, so Django awaits it without a thread hop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from django_idempotency import engine, marks
from django_idempotency.conf import Policy, get_settings
from django_idempotency.frameworks import drf_view_class

ViewFunction = Callable[..., Any]


class IdempotencyMiddleware:
    """Place after ``AuthenticationMiddleware`` (and after ``CsrfViewMiddleware``)."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # Django awaits a coroutine process_view on an async stack: no thread hop.
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        try:
            response = self.get_response(request)
        except Exception:  # only with DEBUG_PROPAGATE_EXCEPTIONS: Django answers the others
            guard = marks.drop_guard(request)
            if guard is not None:
                engine.abort(guard)
            raise
        except BaseException as error:  # SystemExit (gunicorn's timeout), KeyboardInterrupt
            _interrupted(request, error)
            raise
        guard = marks.drop_guard(request)
        if guard is None:
            return response
        return engine.finish(guard, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        except Exception:  # only with DEBUG_PROPAGATE_EXCEPTIONS: Django answers the others
            guard = marks.drop_guard(request)
            if guard is not None:
                await engine.aabort(guard)
            raise
        except BaseException as error:  # CancelledError: the ASGI client disconnected
            _interrupted(request, error)
            raise
        guard = marks.drop_guard(request)
        if guard is None:
            return response  # type: ignore[no-any-return]
        return await engine.afinish(guard, response)  # type: ignore[no-any-return]

    def process_view(
        self,
        request: HttpRequest,
        view_func: ViewFunction,
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        """Claim the key before the view runs; answer at once if it is not ours."""
        if marks.handled_elsewhere(view_func, request.method):
            return None
        policy = get_settings().policy
        if drf_view_class(view_func) is not None and not _drf_authenticated(
            request, view_func, policy
        ):
            return None
        return self._keep_guard(request, engine.begin(request, policy))

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: ViewFunction,
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if marks.handled_elsewhere(view_func, request.method):
            return None
        policy = get_settings().policy
        # DRF views are sync: their authenticators may query the database.
        if drf_view_class(view_func) is not None and not await sync_to_async(_drf_authenticated)(
            request, view_func, policy
        ):
            return None
        return self._keep_guard(request, await engine.abegin(request, policy))

    @staticmethod
    def _keep_guard(request: HttpRequest, decision: engine.Decision) -> HttpResponseBase | None:
        if isinstance(decision, engine.Guard):
            marks.keep_guard(request, decision)
            return None
        return decision


def _interrupted(request: HttpRequest, error: BaseException) -> None:
    """The view never returned: keep its claim to its lease (see ``engine.interrupt``)."""
    guard = marks.drop_guard(request)
    if guard is not None:
        engine.interrupt(guard, error)


def _drf_authenticated(request: HttpRequest, view_func: ViewFunction, policy: Policy) -> bool:
    """Whether to guard a DRF view here: it does not claim by itself, and DRF let the user in.

    DRF authenticates inside the view, so the middleware authenticates as the
    view will (which gives the Django request the DRF user) before it scopes
    the key; a view using the DRF integration claims after DRF instead.
    """
    from django_idempotency import drf

    if drf.is_integrated(view_func, request.method) or request.method not in policy.methods:
        return False
    return drf.authenticate(request, view_func)
