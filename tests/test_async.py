"""The middleware on an async stack: same contract, no thread hop to claim."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient

from django_idempotency.middleware import IdempotencyMiddleware
from tests.backends import BackendCase
from tests.http import BODY, PROBLEM_TYPE_PREFIX
from tests.testapp.models import SideEffect

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


async def apost(client: AsyncClient, path: str, body: bytes = BODY, key: str = "a-1") -> Any:
    return await client.post(
        path, body, content_type="application/json", headers={"Idempotency-Key": key}
    )


def test_middleware_is_natively_async_on_an_async_stack() -> None:
    async def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    middleware = IdempotencyMiddleware(get_response)

    assert iscoroutinefunction(middleware)
    assert iscoroutinefunction(middleware.process_view)


def test_middleware_is_sync_on_a_sync_stack() -> None:
    middleware = IdempotencyMiddleware(lambda request: HttpResponse())

    assert not iscoroutinefunction(middleware)
    assert not iscoroutinefunction(middleware.process_view)


@pytest.mark.parametrize("path", ["/async-plain/", "/create/"], ids=["async-view", "sync-view"])
async def test_async_stack_replays_and_refuses_mismatch(
    backend_case: BackendCase, async_client: AsyncClient, path: str
) -> None:
    label = "async-plain" if path == "/async-plain/" else "create"
    body = b"{}" if label == "async-plain" else BODY

    first = await apost(async_client, path, body)
    retry = await apost(async_client, path, body)
    mismatch = await apost(async_client, path, b'{"other": 1}')

    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert mismatch.status_code == 422
    assert mismatch["Content-Type"] == "application/problem+json"
    assert await SideEffect.objects.filter(label=label).acount() == 1


async def test_async_stack_answers_400_for_malformed_key(
    backend_case: BackendCase, async_client: AsyncClient
) -> None:
    response = await apost(async_client, "/async-plain/", b"{}", key="a, b")

    assert response.status_code == 400
    assert response.json()["type"] == PROBLEM_TYPE_PREFIX + "key-invalid"
    assert await SideEffect.objects.acount() == 0
