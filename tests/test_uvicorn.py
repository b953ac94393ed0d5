"""ASGI worker processes of a real server: uvicorn, sync and async views, every shared backend.

The same proofs as :mod:`tests.test_multiprocess` and
:mod:`tests.test_crash_takeover`, under ``uvicorn --workers``: the
middleware's and the decorator's async paths claim on each worker's event
loop, and a sync view runs in a thread of it. uvicorn has no worker timeout,
so the crash test kills the worker that runs the view (its pid is in the
view's row) with SIGKILL; uvicorn starts another one in its place.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from django_idempotency.backends import handler
from django_idempotency.keys import storage_key
from django_idempotency.records import Record, State
from django_idempotency.scopes import ANONYMOUS_SCOPE
from tests.backends import BackendCase
from tests.http import PROBLEM_TYPE_PREFIX, executions
from tests.server import CROSS_PROCESS_CASES, Reply, Server, send_together, serve
from tests.test_multiprocess import ONE_KEY_REQUESTS, assert_ran_once, replies_of
from tests.testapp.models import SideEffect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True),
]

LOCK_TTL = 4
KEY = "uvicorn-crash"


@pytest.fixture
def server(backend_case: BackendCase) -> Iterator[Server]:
    """uvicorn with 4 workers on the current backend case."""
    with serve(workers=4, server="uvicorn") as running:
        yield running


@pytest.mark.parametrize(
    "path",
    ["/create/?sleep=1", "/async-create/?sleep=1", "/decorated-async-create/?sleep=1"],
    ids=["sync-view", "async-view-middleware", "async-view-decorator"],
)
def test_50_concurrent_requests_with_one_key_run_the_view_once(server: Server, path: str) -> None:
    results = send_together(ONE_KEY_REQUESTS, lambda _: server.post(path, key="one-key"))

    first = assert_ran_once(replies_of(results, server), server)
    assert executions() == 1
    assert first.json()["id"] == SideEffect.objects.get().pk


def _current_record() -> Record:
    record = handler.get_backend().get(storage_key(ANONYMOUS_SCOPE, KEY))
    assert record is not None
    return record


def _kill_the_worker_running_the_view(server: Server, path: str) -> None:
    """Send the stuck request in a thread, SIGKILL its worker once the view has written."""
    results: list[Reply | BaseException] = []

    def stuck() -> None:
        try:
            results.append(server.post(path, key=KEY, timeout=20))
        except Exception as error:  # the connection dies with the worker
            results.append(error)

    thread = threading.Thread(target=stuck, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not SideEffect.objects.exists():
        assert time.monotonic() < deadline, "the view never ran\n" + server.log_tail()
        time.sleep(0.05)
    os.kill(int(SideEffect.objects.get().payload), signal.SIGKILL)
    thread.join(20)
    assert not thread.is_alive()
    assert not any(isinstance(result, Reply) and result.status == 201 for result in results)


@pytest.mark.idempotency(LOCK_TTL=LOCK_TTL)
@pytest.mark.parametrize(
    "path",
    ["/async-killable/?sleep=30", "/decorated-async-killable/?sleep=30"],
    ids=["middleware", "decorator"],
)
def test_a_killed_workers_claim_conflicts_until_its_lease_ends_then_is_taken_over(
    backend_case: BackendCase, server: Server, path: str
) -> None:
    _kill_the_worker_running_the_view(server, path)
    orphan = _current_record()
    assert orphan.state is State.IN_PROGRESS
    assert executions() == 1

    conflict = server.post(path, key=KEY)

    assert conflict.status == 409, (conflict, server.log_tail())
    assert conflict.json()["type"] == PROBLEM_TYPE_PREFIX + "request-in-progress"
    assert executions() == 1

    time.sleep(max(0.0, orphan.expires_at - time.time()) + backend_case.lease_slack + 0.5)
    taken_over = server.post(path, key=KEY)
    replay = server.post(path, key=KEY)

    assert taken_over.status == 201, (taken_over, server.log_tail())
    assert not taken_over.replayed
    assert replay.replayed
    assert replay.body == taken_over.body
    assert executions() == 2
    record = _current_record()
    assert record.owner_token != orphan.owner_token
    assert record.state is State.COMPLETED
