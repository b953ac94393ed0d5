"""Lease renewal: a view that outlives its lease keeps its claim; one scheduler per process.

``LOCK_TTL = 1`` here, so a claim is renewed every third of a second and a
view sleeping 1.6 s outlives its first lease by more than half of it: without
renewal a retry at 1.3 s would find the claim dead (or, in a store with
native expiry, gone) and run the view a second time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, RequestFactory

from django_idempotency import engine, signals
from django_idempotency.backends import handler
from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.memory import MemoryBackend
from django_idempotency.conf import get_settings
from django_idempotency.keys import storage_key
from django_idempotency.records import State
from tests.backends import CASES_BY_ID, BackendCase
from tests.http import BODY, executions, post

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.idempotency(LOCK_TTL=1),
]

VIEW_SECONDS = 1.6
RETRY_AT = 1.3
"""Past the first lease's end (1 s) and before the view returns."""

memory_case = pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["memory"]], indirect=True, ids=["memory"]
)


def _request(key: str = "lease-key") -> HttpRequest:
    request = RequestFactory().post(
        "/create/", BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )
    request.user = AnonymousUser()
    return request


class Spy:
    """Counts a real backend's renewals (and lets them through)."""

    def __init__(self, backend: BaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[bool] = []
        real_renew = backend.renew

        def renew(storage_key: str, owner_token: str, lease_seconds: int) -> bool:
            renewed = real_renew(storage_key, owner_token, lease_seconds)
            self.calls.append(renewed)
            return renewed

        monkeypatch.setattr(backend, "renew", renew)


@pytest.fixture
def lost_leases() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def receive(sender: Any, **kwargs: Any) -> None:
        events.append(kwargs)

    signals.lease_lost.connect(receive, weak=False)
    yield events
    signals.lease_lost.disconnect(receive)


# -- a view longer than its lease -------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/create/", "/decorated-create/"], ids=["middleware", "decorator"]
)
def test_a_sync_view_that_outlives_its_lease_keeps_its_claim(
    backend_case: BackendCase, path: str
) -> None:
    slow = f"{path}?sleep={VIEW_SECONDS}"
    answers: dict[str, HttpResponse] = {}

    def first_request() -> None:
        try:
            answers["first"] = post(Client(), slow)
        finally:
            connections.close_all()

    started = time.monotonic()
    worker = threading.Thread(target=first_request)
    worker.start()
    time.sleep(max(0.0, RETRY_AT - (time.monotonic() - started)))
    during = post(Client(), slow)
    worker.join(10)
    after = post(Client(), slow)

    assert not worker.is_alive()
    assert during.status_code == 409, during.content
    assert answers["first"].status_code == 201
    assert after["Idempotent-Replayed"] == "true"
    assert after.content == answers["first"].content
    assert executions() == 1


@pytest.mark.parametrize(
    "path", ["/async-create/", "/decorated-async-create/"], ids=["middleware", "decorator"]
)
async def test_an_async_view_that_outlives_its_lease_keeps_its_claim(
    backend_case: BackendCase, path: str
) -> None:
    slow = f"{path}?sleep={VIEW_SECONDS}"
    headers = {"Idempotency-Key": "async-lease"}

    async def send() -> Any:
        client = AsyncClient()
        return await client.post(slow, BODY, content_type="application/json", headers=headers)

    first = asyncio.create_task(send())
    await asyncio.sleep(RETRY_AT)
    during = await send()
    first_response = await asyncio.wait_for(first, 10)
    after = await send()

    assert during.status_code == 409, during.content
    assert first_response.status_code == 201
    assert after["Idempotent-Replayed"] == "true"
    assert after.content == first_response.content
    assert await sync_to_async(executions)() == 1


# -- what renewal costs and when it stops -------------------------------------------------


@memory_case
def test_a_view_shorter_than_a_third_of_its_lease_is_never_renewed(
    backend_case: BackendCase, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(idempotency_backend, monkeypatch)

    post(Client(), "/create/?sleep=0.2")
    time.sleep(0.6)  # past the renewal the view would have had

    assert spy.calls == []


@memory_case
def test_renewal_stops_when_the_view_returns_raises_or_is_interrupted(
    backend_case: BackendCase, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(idempotency_backend, monkeypatch)
    policy = get_settings().policy
    guards = [engine.begin(_request(f"stop-{n}"), policy) for n in range(3)]
    assert all(isinstance(guard, engine.Guard) for guard in guards)
    time.sleep(0.5)  # each renewed once
    renewed_while_running = len(spy.calls)

    returned, raised, interrupted = guards
    engine.finish(returned, JsonResponse({}, status=201))  # type: ignore[arg-type]
    engine.abort(raised)  # type: ignore[arg-type]
    engine.interrupt(interrupted, SystemExit(1))  # type: ignore[arg-type]
    time.sleep(0.8)

    assert renewed_while_running == 3
    assert spy.calls == [True] * 3
    record = idempotency_backend.get(interrupted.claim.storage_key)  # type: ignore[union-attr]
    assert record is not None
    assert record.state is State.IN_PROGRESS  # kept until its lease ends, not renewed


@memory_case
async def test_an_async_renewal_stops_with_the_view(
    backend_case: BackendCase, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_arenew = idempotency_backend.arenew

    async def arenew(storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        calls.append(storage_key)
        return await real_arenew(storage_key, owner_token, lease_seconds)

    monkeypatch.setattr(idempotency_backend, "arenew", arenew)
    guard = await engine.abegin(_request("async-stop"), get_settings().policy)
    assert isinstance(guard, engine.Guard)

    await asyncio.sleep(0.5)
    renewed = len(calls)
    await engine.afinish(guard, JsonResponse({}, status=201))
    await asyncio.sleep(0.8)

    assert renewed == 1
    assert len(calls) == 1


@memory_case
def test_one_renewal_thread_serves_every_view_of_the_process(backend_case: BackendCase) -> None:
    policy = get_settings().policy
    guards = [engine.begin(_request(f"many-{n}"), policy) for n in range(50)]

    threads = [t for t in threading.enumerate() if t.name == "django-idempotency-renewals"]

    assert len(threads) == 1
    assert threads[0].daemon
    for guard in guards:
        engine.abort(guard)  # type: ignore[arg-type]


# -- a lease that is lost ------------------------------------------------------------------


@memory_case
def test_a_renewal_that_finds_the_claim_gone_warns_signals_and_stops(
    backend_case: BackendCase,
    idempotency_backend: BaseBackend,
    lost_leases: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="django_idempotency")
    guard = engine.begin(_request("gone"), get_settings().policy)
    assert isinstance(guard, engine.Guard)
    idempotency_backend.delete(guard.claim.storage_key)  # as an operator, or a takeover
    time.sleep(0.5)

    engine.finish(guard, JsonResponse({}, status=201))

    assert [event["operation"] for event in lost_leases] == ["renew", "complete"]
    assert lost_leases[0]["storage_key"] == storage_key("anonymous", "gone")
    warnings = [r.getMessage() for r in caplog.records if r.name == "django_idempotency"]
    assert len(warnings) == 2
    assert "renew refused: the claim is no longer this worker's" in warnings[0]
    assert "gone" not in warnings[0]  # never the raw key
    assert idempotency_backend.get(guard.claim.storage_key) is None


class _RenewalFailsOnce(MemoryBackend):
    """A store that fails one renewal (the connection dropped), then works."""

    failures = 1

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        if self.failures:
            self.failures -= 1
            raise StorageError("connection reset (test backend)")
        return super().renew(storage_key, owner_token, lease_seconds)


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_a_renewal_the_store_fails_is_signalled_and_tried_again(settings: Any) -> None:
    settings.IDEMPOTENCY = {"BACKEND": f"{__name__}._RenewalFailsOnce", "LOCK_TTL": 1}
    errors: list[dict[str, Any]] = []

    def receive(sender: Any, **kwargs: Any) -> None:
        errors.append(kwargs)

    signals.storage_error.connect(receive, weak=False)
    try:
        started = time.time()
        guard = engine.begin(_request("flaky"), get_settings().policy)
        assert isinstance(guard, engine.Guard)
        time.sleep(0.85)  # the renewal at 1/3 s fails, the one at 2/3 s succeeds
        record = handler.get_backend().get(guard.claim.storage_key)
        engine.abort(guard)
    finally:
        signals.storage_error.disconnect(receive)

    assert [error["operation"] for error in errors] == ["renew"]
    assert record is not None
    assert record.expires_at > started + 1.5  # renewed at about 2/3 s for another second


@memory_case
def test_a_forked_child_renews_from_a_thread_of_its_own(backend_case: BackendCase) -> None:
    """gunicorn --preload forks workers from a process that may have renewed already."""
    policy = get_settings().policy
    parents = engine.begin(_request("parent"), policy)  # starts the parent's thread
    assert isinstance(parents, engine.Guard)

    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its own claim gets renewed
        code = 1
        try:
            guard = engine.begin(_request("child"), policy)
            assert isinstance(guard, engine.Guard)
            deadline = time.time() + 0.6
            time.sleep(0.6)
            record = handler.get_backend().get(guard.claim.storage_key)
            code = 0 if record is not None and record.expires_at > deadline + 0.5 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    engine.abort(parents)

    assert os.waitstatus_to_exitcode(status) == 0
