"""Wait mode: a duplicate waits for the request in progress and gets its replay, on every backend.

A view runs 2 s; ten identical requests arrive while it runs. With ``WAIT =
5`` every one of them gets the replay, and the view runs once; without it
they get 409. Redis and PostgreSQL wake the waiters when the first request
completes (pub/sub, ``LISTEN``/``NOTIFY``); the other stores are polled on a
capped backoff, which the claim counts below tell apart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpResponse
from django.test import AsyncClient, Client

from django_idempotency.backends.base import BaseBackend
from tests.backends import BackendCase
from tests.http import BODY, assert_problem, executions, post
from tests.server import (
    CROSS_PROCESS_CASES,
    Reply,
    failures,
    in_background,
    send_together,
    serve,
    wait_for,
)
from tests.storage import in_threads

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

VIEW_SECONDS = 2
DUPLICATES = 10
PUSHING = {"db-postgres", "redis", "cache-redis", "nats", "nats-read-on-claim"}
"""The cases whose store announces completions; the others are polled."""


class ClaimCounter:
    """Counts the backend's claims (every one a store operation), from any thread."""

    def __init__(self, backend: BaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._lock = threading.Lock()
        real_claim, real_aclaim = backend.claim, backend.aclaim

        def claim(*args: Any) -> Any:
            with self._lock:
                self.count += 1
            return real_claim(*args)

        async def aclaim(*args: Any) -> Any:
            with self._lock:
                self.count += 1
            return await real_aclaim(*args)

        monkeypatch.setattr(backend, "claim", claim)
        monkeypatch.setattr(backend, "aclaim", aclaim)


def started(label: str = "create") -> None:
    """Wait until the slow view wrote its row: it is running."""
    deadline = time.monotonic() + 5
    while not executions(label):
        assert time.monotonic() < deadline, "the first request did not start"
        time.sleep(0.02)


def first_request_in_a_thread(path: str) -> tuple[threading.Thread, dict[str, HttpResponse]]:
    answers: dict[str, HttpResponse] = {}

    def run() -> None:
        try:
            answers["first"] = post(Client(raise_request_exception=False), path)
            answers["finished_at"] = time.monotonic()  # type: ignore[assignment]
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


@pytest.mark.idempotency(WAIT=5)
@pytest.mark.parametrize(
    "path", ["/create/", "/decorated-create/"], ids=["middleware", "decorator"]
)
def test_duplicates_that_wait_get_the_replay_and_the_view_runs_once(
    backend_case: BackendCase, path: str
) -> None:
    slow = f"{path}?sleep={VIEW_SECONDS}"
    thread, answers = first_request_in_a_thread(slow)
    started()

    duplicates = in_threads(DUPLICATES, lambda _: post(Client(), slow))
    thread.join(10)

    first = answers["first"]
    assert first.status_code == 201
    for duplicate in duplicates:
        assert duplicate.status_code == 201, duplicate.content
        assert duplicate["Idempotent-Replayed"] == "true"
        assert duplicate.content == first.content
    assert executions() == 1


@pytest.mark.idempotency(WAIT=5)
@pytest.mark.parametrize(
    "path", ["/async-create/", "/decorated-async-create/"], ids=["middleware", "decorator"]
)
async def test_async_duplicates_wait_without_blocking_the_loop(
    backend_case: BackendCase, path: str
) -> None:
    slow = f"{path}?sleep={VIEW_SECONDS}"
    headers = {"Idempotency-Key": "async-wait"}

    async def send() -> Any:
        return await AsyncClient().post(
            slow, BODY, content_type="application/json", headers=headers
        )

    first = asyncio.create_task(send())
    await asyncio.sleep(0.3)
    started_at = time.monotonic()
    duplicates = await asyncio.gather(*(send() for _ in range(DUPLICATES)))
    waited = time.monotonic() - started_at
    first_response = await first

    assert waited < VIEW_SECONDS + 1  # all ten waited at once, on one loop
    for duplicate in duplicates:
        assert duplicate.status_code == 201, duplicate.content
        assert duplicate["Idempotent-Replayed"] == "true"
        assert duplicate.content == first_response.content
    assert await sync_to_async(executions)() == 1


def duplicate_of_a_slow_request() -> tuple[HttpResponse, float]:
    """A duplicate sent while the slow view runs: its answer, and how long it took."""
    slow = f"/create/?sleep={VIEW_SECONDS}"
    thread, _ = first_request_in_a_thread(slow)
    started()
    asked = time.monotonic()
    duplicate = post(Client(), slow)
    answered = time.monotonic() - asked
    thread.join(10)
    return duplicate, answered


def test_without_wait_a_duplicate_gets_409_at_once(backend_case: BackendCase) -> None:
    duplicate, answered = duplicate_of_a_slow_request()

    assert_problem(duplicate, 409, "request-in-progress")
    assert answered < 1
    assert executions() == 1


@pytest.mark.idempotency(WAIT=0.5)
def test_a_duplicate_that_waited_its_time_gets_409(backend_case: BackendCase) -> None:
    duplicate, answered = duplicate_of_a_slow_request()

    assert_problem(duplicate, 409, "request-in-progress")
    assert 0.45 < answered < 1.5
    assert executions() == 1


@pytest.mark.idempotency(WAIT=5)
def test_a_duplicate_waiting_on_a_request_that_fails_runs_the_view_itself(
    backend_case: BackendCase,
) -> None:
    path = f"/frozen/fails-first/?awake={VIEW_SECONDS}&then=raise"
    thread, answers = first_request_in_a_thread(path)
    started("fails-first")

    # The test client re-raises any view's exception signalled meanwhile, the first's too.
    duplicate = post(Client(raise_request_exception=False), path)
    thread.join(10)

    assert answers["first"].status_code == 500
    assert duplicate.status_code == 201  # the claim was released: the waiter ran the view
    assert "Idempotent-Replayed" not in duplicate
    assert executions("fails-first") == 2


@pytest.mark.idempotency(WAIT=5)
def test_a_store_that_announces_completions_wakes_the_waiter_at_once(
    backend_case: BackendCase, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushed: a handful of claims, the replay right away; polled: a claim per backoff step."""
    slow = f"/create/?sleep={VIEW_SECONDS}"
    thread, answers = first_request_in_a_thread(slow)
    started()
    claims = ClaimCounter(idempotency_backend, monkeypatch)

    duplicate = post(Client(), slow)
    replayed_at = time.monotonic()
    thread.join(10)

    assert duplicate["Idempotent-Replayed"] == "true"
    late = replayed_at - answers["finished_at"]  # type: ignore[operator]
    if backend_case.id in PUSHING:
        assert claims.count <= 3, claims.count  # the claim, once subscribed, once woken
        assert late < 0.5, late
    else:
        assert 4 <= claims.count <= 10, claims.count  # 0.05 s doubling to 1 s over 2 s
        assert late < 1.5, late


# -- real servers -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.idempotency(WAIT=5)
@pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True)
@pytest.mark.parametrize(
    ("server_kind", "path"),
    [
        ("gunicorn", f"/create/?sleep={VIEW_SECONDS}"),
        ("uvicorn", f"/decorated-async-create/?sleep={VIEW_SECONDS}"),
    ],
    ids=["gunicorn-threads-sync-view", "uvicorn-async-view"],
)
def test_duplicates_across_worker_processes_wait_and_get_the_replay(
    backend_case: BackendCase, server_kind: str, path: str
) -> None:
    """Two processes: the waiters are spread over both, the first request runs in one."""
    threads = 8 if server_kind == "gunicorn" else 1
    with serve(workers=2, server=server_kind, threads=threads) as server:
        first = in_background(lambda: server.post(path, key="shared"))
        wait_for(lambda: executions() == 1, 10, "the first request's row")
        duplicates = send_together(DUPLICATES, lambda _: server.post(path, key="shared"))
        answer = first(VIEW_SECONDS + 10)
        log = server.log_tail()

    assert answer.status == 201, (answer, log)
    assert not failures(duplicates), failures(duplicates)[:3]
    for duplicate in duplicates:
        assert isinstance(duplicate, Reply)
        assert duplicate.status == 201, (duplicate, log)
        assert duplicate.replayed
        assert duplicate.body == answer.body
    assert executions() == 1
