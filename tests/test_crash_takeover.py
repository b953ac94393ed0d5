"""A worker killed mid-request: its claim blocks retries until its lease ends.

gunicorn kills a sync worker that stays silent for longer than ``--timeout``
(2 s here), so a view sleeping 10 s dies mid-request, after its side-effect
row was committed (the view inserts before sleeping) and before any response
was stored. The claim it leaves behind must:

* answer 409 to a retry while its lease (``LOCK_TTL``) lasts, running nothing;
* be taken over once the lease ended: the view runs once more and its
  response is stored under a new owner token;
* never be completed or released with the dead owner's token afterwards.

Every request is the same (same key, path, query and body), as a client's
retries are: the view sleeps only during its first execution, so the retry
that takes the claim over runs quickly.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import pytest

from django_idempotency import conf
from django_idempotency.engine import ANONYMOUS_SCOPE
from django_idempotency.keys import storage_key
from django_idempotency.records import Record, State, StoredResponse
from tests.backends import BackendCase
from tests.http import PROBLEM_TYPE_PREFIX, executions
from tests.server import CROSS_PROCESS_CASES, Reply, Server, serve

GUNICORN_TIMEOUT = 2
LOCK_TTL = 6
"""Longer than the time gunicorn takes to kill the worker (timeout + up to ~2 s of
heartbeat and arbiter granularity), so that the retry still meets a live claim."""
STUCK_VIEW = "/slow-first-time/?sleep=10"
KEY = "crash-key"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.idempotency(LOCK_TTL=LOCK_TTL),
    pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True),
]


@pytest.fixture
def server(backend_case: BackendCase) -> Iterator[Server]:
    """gunicorn with 2 sync workers that are killed after 2 silent seconds."""
    with serve(workers=2, timeout=GUNICORN_TIMEOUT) as running:
        yield running


def send_to_killed_worker(server: Server) -> Reply | Exception:
    """The stuck request: whatever gunicorn answers when it kills the worker."""
    try:
        return server.post(STUCK_VIEW, key=KEY, timeout=15)
    except (OSError, http.client.HTTPException) as error:  # the connection died with it
        return error


def current_record() -> Record:
    record = conf.get_backend().get(storage_key(ANONYMOUS_SCOPE, KEY))
    assert record is not None
    return record


def test_killed_workers_claim_conflicts_until_its_lease_ends_then_is_taken_over(
    server: Server,
) -> None:
    started = time.monotonic()
    outcome = send_to_killed_worker(server)

    assert time.monotonic() - started < 10, "the worker finished its view instead of dying"
    assert "WORKER TIMEOUT" in server.log(), server.log_tail()
    if isinstance(outcome, Reply):  # gunicorn answers a plain 500 for a timed-out worker
        assert outcome.status >= 500, outcome
    assert executions() == 1
    orphan = current_record()
    assert orphan.state is State.IN_PROGRESS
    assert orphan.response is None

    conflict = server.post(STUCK_VIEW, key=KEY)

    assert conflict.status == 409, (conflict, server.log_tail())
    assert conflict.json()["type"] == PROBLEM_TYPE_PREFIX + "request-in-progress"
    assert "retry-after" in conflict.headers
    assert executions() == 1

    time.sleep(max(0.0, orphan.expires_at - time.time()) + 0.5)
    taken_over = server.post(STUCK_VIEW, key=KEY)

    assert taken_over.status == 201, (taken_over, server.log_tail())
    assert not taken_over.replayed
    assert executions() == 2

    replay = server.post(STUCK_VIEW, key=KEY)

    assert replay.status == 201
    assert replay.replayed
    assert replay.body == taken_over.body
    assert executions() == 2
    record = current_record()
    assert record.owner_token != orphan.owner_token
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert (record.response.status, record.response.body) == (201, taken_over.body)

    late = StoredResponse(status=200, headers=(), body=b"late response of the killed worker")
    backend = conf.get_backend()
    assert backend.complete(record.storage_key, orphan.owner_token, late, 60) is False
    assert backend.release(record.storage_key, orphan.owner_token) is False
    assert current_record() == record
