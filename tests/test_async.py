"""The middleware on an async stack: same contract, no thread hop to claim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings

from django_idempotency.backends.base import BaseBackend
from django_idempotency.keys import storage_key
from django_idempotency.middleware import IdempotencyMiddleware
from django_idempotency.records import State
from tests.backends import BackendCase
from tests.http import BODY, PROBLEM_TYPE_PREFIX, executions, post
from tests.testapp.models import SideEffect

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


async def apost(
    client: AsyncClient, path: str, body: bytes = BODY, key: str = "a-1", **headers: str
) -> Any:
    return await client.post(
        path, body, content_type="application/json", headers={"Idempotency-Key": key, **headers}
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


@pytest.mark.smoke
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


# -- scope: the user the request carries when the view runs -------------------------------

REMOTE_USER_STACK = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.RemoteUserMiddleware",
    "django_idempotency.middleware.IdempotencyMiddleware",
]
REMOTE_USER_BACKENDS = ["django.contrib.auth.backends.RemoteUserBackend"]


@pytest.mark.parametrize(
    ("path", "label"),
    [("/async-plain/", "async-plain"), ("/async/", "async")],
    ids=["middleware", "decorator"],
)
@pytest.mark.smoke
async def test_two_users_authenticated_by_a_later_middleware_never_share_a_key(
    backend_case: BackendCase, path: str, label: str
) -> None:
    """Async RemoteUserMiddleware sets ``request.user`` after ``request.auser()`` was cached."""
    with override_settings(
        MIDDLEWARE=REMOTE_USER_STACK, AUTHENTICATION_BACKENDS=REMOTE_USER_BACKENDS
    ):
        alice = await apost(AsyncClient(), path, b"{}", **{"Remote-User": "alice"})
        bob = await apost(AsyncClient(), path, b"{}", **{"Remote-User": "bob"})
        alice_retry = await apost(AsyncClient(), path, b"{}", **{"Remote-User": "alice"})

    assert alice.status_code == bob.status_code == 201
    assert not bob.has_header("Idempotent-Replayed")
    assert bob.content != alice.content
    assert alice_retry["Idempotent-Replayed"] == "true"
    assert alice_retry.content == alice.content
    assert await SideEffect.objects.filter(label=label).acount() == 2


def test_two_users_authenticated_by_a_later_middleware_never_share_a_key_on_wsgi(
    backend_case: BackendCase,
) -> None:
    with override_settings(
        MIDDLEWARE=REMOTE_USER_STACK, AUTHENTICATION_BACKENDS=REMOTE_USER_BACKENDS
    ):
        alice = post(Client(REMOTE_USER="alice"), key="a-1")
        bob = post(Client(REMOTE_USER="bob"), key="a-1")

    assert alice.status_code == bob.status_code == 201
    assert not bob.has_header("Idempotent-Replayed")
    assert executions() == 2


# -- an ASGI client that disconnects ----------------------------------------------------


async def _disconnecting_request(path: str, key: str) -> None:
    """POST ``path`` straight to Django's ASGI handler; disconnect once the view started."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"sleep=10",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"idempotency-key", key.encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    body_sent = asyncio.Event()
    hang_up = asyncio.Event()

    async def receive() -> Mapping[str, Any]:
        if not body_sent.is_set():
            body_sent.set()
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        raise AssertionError(f"the view should never answer: {message['type']}")

    handler = asyncio.create_task(ASGIHandler()(scope, receive, send))
    deadline = time.monotonic() + 5
    while not await SideEffect.objects.filter(label="async-slow").aexists():
        if handler.done():
            handler.result()  # raises what went wrong
        assert time.monotonic() < deadline, "the view did not start"
        await asyncio.sleep(0.02)
    hang_up.set()
    await asyncio.wait_for(handler, 5)


@pytest.mark.idempotency(LOCK_TTL=2)
@pytest.mark.parametrize(
    ("path", "middleware"),
    [
        ("/async-slow/", True),
        ("/decorated-async-slow/", True),
        ("/decorated-async-slow/", False),
    ],
    ids=["middleware", "decorator-under-middleware", "decorator-only"],
)
async def test_a_disconnected_clients_claim_is_kept_until_its_lease_ends(
    backend_case: BackendCase, idempotency_backend: BaseBackend, path: str, middleware: bool
) -> None:
    # No CSRF middleware: a raw ASGI request has no test client to waive the check.
    stack = [name for name in settings.MIDDLEWARE if "csrf" not in name]
    if not middleware:
        stack.remove("django_idempotency.middleware.IdempotencyMiddleware")
    with override_settings(MIDDLEWARE=stack):
        await _disconnecting_request(path, "gone-1")
        record = await idempotency_backend.aget(storage_key("anonymous", "gone-1"))
        retry = f"{path}?sleep=10"  # the same request; only the first execution sleeps
        during = await apost(AsyncClient(), retry, b"{}", key="gone-1")
        lease_left = max(0.0, record.expires_at - time.time()) if record else 0.0
        await asyncio.sleep(lease_left + backend_case.lease_slack + 0.1)
        after = await apost(AsyncClient(), retry, b"{}", key="gone-1")
        replay = await apost(AsyncClient(), retry, b"{}", key="gone-1")

    assert record is not None
    assert record.state is State.IN_PROGRESS  # not released: the outcome is unknown
    assert during.status_code == 409
    assert after.status_code == 201
    assert not after.has_header("Idempotent-Replayed")
    assert replay["Idempotent-Replayed"] == "true"
    assert await SideEffect.objects.filter(label="async-slow").acount() == 2
