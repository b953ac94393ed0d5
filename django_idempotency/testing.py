"""Helpers for your own tests: assert that a view is guarded.

.. code-block:: python

   from django_idempotency.testing import assert_idempotent

   def test_payments_are_idempotent(client):
       assert_idempotent(
           client, "/payments/", {"amount": "12.50"},
           side_effects=Payment.objects.count,
       )

The request is sent twice with one fresh key: the view must run once (when
``side_effects`` is given, what it counts grows by exactly one), and the
second answer must be the first replayed byte for byte, marked
``Idempotent-Replayed: true``. Works with Django's test ``Client`` and with
Django REST framework's ``APIClient`` (pass ``HTTP_AUTHORIZATION=...`` or
authenticate the client first); ``aassert_idempotent`` takes an
``AsyncClient``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django_idempotency.conf import get_settings
from django_idempotency.responses import REPLAYED_HEADER

SideEffects = Callable[[], int]


def assert_idempotent(
    client: Any,
    path: str,
    data: Any = None,
    *,
    method: str = "post",
    content_type: str = "application/json",
    key: str | None = None,
    side_effects: SideEffects | None = None,
    **extra: Any,
) -> tuple[Any, Any]:
    """Send one request twice with one key; assert one execution and a replay. Returns both."""
    send = getattr(client, method.lower())
    arguments = _arguments(data, content_type, key, extra)
    before = None if side_effects is None else side_effects()
    first = send(path, **arguments)
    retry = send(path, **arguments)
    _check(first, retry, before, None if side_effects is None else side_effects())
    return first, retry


async def aassert_idempotent(
    client: Any,
    path: str,
    data: Any = None,
    *,
    method: str = "post",
    content_type: str = "application/json",
    key: str | None = None,
    side_effects: Callable[[], Awaitable[int]] | None = None,
    **extra: Any,
) -> tuple[Any, Any]:
    """:func:`assert_idempotent` for an ``AsyncClient`` (``side_effects`` is awaited)."""
    send = getattr(client, method.lower())
    arguments = _arguments(data, content_type, key, extra)
    before = None if side_effects is None else await side_effects()
    first = await send(path, **arguments)
    retry = await send(path, **arguments)
    _check(first, retry, before, None if side_effects is None else await side_effects())
    return first, retry


def _arguments(
    data: Any, content_type: str, key: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of both requests: the same body, the same fresh key."""
    encode = content_type == "application/json" and not isinstance(data, (bytes, str))
    headers = {**extra.pop("headers", {}), get_settings().header: key or f"test-{uuid.uuid4()}"}
    return {
        "data": json.dumps(data) if encode and data is not None else data,
        "content_type": content_type,
        "headers": headers,
        **extra,
    }


def _check(first: Any, retry: Any, before: int | None, after: int | None) -> None:
    if first.has_header(REPLAYED_HEADER):
        raise AssertionError(
            f"the first request was answered with a replay ({first.status_code}): the key was "
            "used before"
        )
    if retry.get(REPLAYED_HEADER) != "true":
        raise AssertionError(
            f"the retry was not replayed: it answered {retry.status_code} without "
            f"{REPLAYED_HEADER}: true, so the view is not guarded for this request (is the "
            "method guarded, the middleware installed or the view decorated?)"
        )
    if (retry.status_code, retry.content) != (first.status_code, first.content):
        raise AssertionError(
            f"the replay differs from the first response: {first.status_code} "
            f"{first.content[:200]!r} then {retry.status_code} {retry.content[:200]!r}"
        )
    if before is not None and after is not None and after - before != 1:
        raise AssertionError(
            f"the view's side effects grew by {after - before}, not 1 (from {before} to {after})"
        )
