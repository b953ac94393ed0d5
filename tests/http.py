"""Small helpers the HTTP-level tests share."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse
from django.test import Client

from tests.testapp.models import SideEffect

BODY = b'{"amount": "12.50", "currency": "EUR"}'
PROBLEM_TYPE_PREFIX = "tag:django-idempotency,2026:"


def post(
    client: Client,
    path: str = "/create/",
    body: bytes = BODY,
    key: str | None = "key-1",
    method: str = "post",
    **extra: Any,
) -> HttpResponse:
    """Send an unsafe request with an optional Idempotency-Key."""
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    send = getattr(client, method)
    return send(path, body, content_type="application/json", **extra)  # type: ignore[no-any-return]


def executions(label: str = "create") -> int:
    """How many times the view with this label ran (its side-effect rows)."""
    return SideEffect.objects.filter(label=label).count()


def assert_problem(response: HttpResponse, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of the given status and type."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    problem: dict[str, Any] = json.loads(response.content)
    assert problem["type"] == PROBLEM_TYPE_PREFIX + slug
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem
