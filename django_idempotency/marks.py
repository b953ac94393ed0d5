"""How the middleware and the decorator tell each other what they guard.

Two marks, so that a request is claimed by exactly one layer:

* on a **view**: ``@idempotent`` (which guards the view itself) and
  ``@idempotent_exempt`` set :data:`HANDLED_ATTRIBUTE`, and the middleware
  leaves such a view alone. It looks for the mark on what the URLconf
  resolved and, for a class-based view, on the handler of the request's
  method (``@method_decorator(idempotent)`` on ``post()``).
* on a **request**: the layer that claimed it keeps its guard there, so an
  inner layer that the outer one could not see (``@idempotent`` under
  Django REST framework's ``@api_view``, a guarded view calling another)
  finds the request already guarded and runs the view inside that claim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

HANDLED_ATTRIBUTE = "idempotency_handled"
"""Set on a view by ``@idempotent`` and ``@idempotent_exempt``."""
POLICY_ATTRIBUTE = "idempotency_policy"
"""Set on a view by ``@idempotent``: its policy (a ``conf.PolicyCache``), for schema tools."""
GUARD_ATTRIBUTE = "_idempotency_guard"
"""Where the guarding layer keeps its guard on the request."""


def mark_handled(view: Callable[..., Any], policy: object = None) -> None:
    """Tell the middleware that this view is guarded (``policy``) or exempted by a decorator."""
    setattr(view, HANDLED_ATTRIBUTE, True)
    if policy is not None:
        setattr(view, POLICY_ATTRIBUTE, policy)


def handled_elsewhere(view_func: Callable[..., Any], method: str | None) -> bool:
    """Whether a decorator guards (or exempts) the view the request is routed to.

    ``view_class`` is what Django's ``View.as_view()`` puts on the view it
    returns; its handler for ``method`` is the method ``dispatch()`` calls.
    """
    if getattr(view_func, HANDLED_ATTRIBUTE, False):
        return True
    view_class = getattr(view_func, "view_class", None)
    if view_class is None or not method:
        return False
    handler = getattr(view_class, method.lower(), None)
    return bool(getattr(handler, HANDLED_ATTRIBUTE, False))


def guard_of(request: HttpRequest) -> Any | None:
    """The guard of the layer that claimed this request, if one did.

    Read through ``getattr`` so that a wrapper of the request (a Django REST
    framework ``Request``) finds what was kept on the request it wraps.
    """
    return getattr(request, GUARD_ATTRIBUTE, None)


def keep_guard(request: HttpRequest, guard: object) -> None:
    """Mark the request as claimed by ``guard``."""
    request.__dict__[GUARD_ATTRIBUTE] = guard


def drop_guard(request: HttpRequest) -> Any | None:
    """Unmark the request; the guard it carried, if any."""
    return request.__dict__.pop(GUARD_ATTRIBUTE, None)
