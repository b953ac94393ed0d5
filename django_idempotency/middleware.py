"""``IdempotencyMiddleware``: guards every view for the configured METHODS.

It claims in ``process_view`` (so URL resolution, CSRF and authentication
middleware placed before it have already had their say, and a request they
reject uses up no key) and completes or releases after the inner layers have
produced the response. Views decorated with ``@idempotent`` carry their own
policy and ``@idempotent_exempt`` views are left alone, so a view under both
the middleware and the decorator is processed exactly once.

It serves sync and async stacks natively: on an async stack ``process_view``
is a coroutine function, so Django awaits it without a thread hop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from django_idempotency import engine
from django_idempotency.conf import get_settings

GUARD_ATTRIBUTE = "_idempotency_guard"
HANDLED_ATTRIBUTE = "idempotency_handled"
"""Set on a view by ``@idempotent`` (which guards it itself) and by
``@idempotent_exempt``: either way the middleware leaves the view alone."""

ViewFunction = Callable[..., Any]


def handled_elsewhere(view_func: ViewFunction) -> bool:
    """Whether the view is exempt or guarded by its own decorator."""
    return getattr(view_func, HANDLED_ATTRIBUTE, False)


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
        response = self.get_response(request)
        guard = request.__dict__.pop(GUARD_ATTRIBUTE, None)
        if guard is None:
            return response
        return engine.finish(guard, response)  # type: ignore[arg-type]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)  # type: ignore[misc]
        guard = request.__dict__.pop(GUARD_ATTRIBUTE, None)
        if guard is None:
            return response  # type: ignore[no-any-return]
        return await engine.afinish(guard, response)

    def process_view(
        self,
        request: HttpRequest,
        view_func: ViewFunction,
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        """Claim the key before the view runs; answer at once if it is not ours."""
        if handled_elsewhere(view_func):
            return None
        return self._keep_guard(request, engine.begin(request, get_settings().policy))

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: ViewFunction,
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if handled_elsewhere(view_func):
            return None
        return self._keep_guard(request, await engine.abegin(request, get_settings().policy))

    @staticmethod
    def _keep_guard(request: HttpRequest, decision: engine.Decision) -> HttpResponseBase | None:
        if isinstance(decision, engine.Guard):
            request.__dict__[GUARD_ATTRIBUTE] = decision
            return None
        return decision
