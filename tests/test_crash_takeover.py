"""Interrupted workers: a claim whose view never returned blocks retries until its lease ends.

gunicorn stops a sync worker that stays silent for longer than ``--timeout``
(2 s here): it sends SIGABRT, which raises ``SystemExit`` in the worker at
whatever line the view was running, then SIGKILL if the worker is still
alive. The view had written its side-effect row, so its outcome is unknown,
and under both adapters alike its claim must:

* answer 409 to a retry while its lease (``LOCK_TTL``) lasts, running nothing;
* be taken over once the lease ended: the view runs exactly once more and its
  response is stored under a new owner token;
* never be completed or released with the dead owner's token afterwards.

Four views are stopped at once, one per worker: the middleware and the
decorator, each over a sync and an async view. Every request for a view is
the same (same key, path and body), as a client's retries are; each view
sleeps only during its first execution, so the retry that takes the claim
over runs quickly.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import pytest

from django_idempotency.backends import handler
from django_idempotency.keys import storage_key
from django_idempotency.records import Record, State, StoredResponse
from django_idempotency.scopes import ANONYMOUS_SCOPE
from tests.backends import BackendCase
from tests.http import PROBLEM_TYPE_PREFIX, executions
from tests.server import CROSS_PROCESS_CASES, Reply, Server, send_together, serve

GUNICORN_TIMEOUT = 2
LOCK_TTL = 6
"""Longer than the time gunicorn takes to stop the worker (timeout + up to ~2 s of
heartbeat and arbiter granularity, + the SIGKILL that follows an ignored SIGABRT),
so that the retry still meets a live claim."""
STUCK_SECONDS = 20
VIEWS = {
    "middleware-sync": "/stuck/middleware-sync/",
    "decorator-sync": "/decorated-stuck/decorator-sync/",
    "middleware-async": "/async-stuck/middleware-async/",
    "decorator-async": "/decorated-async-stuck/decorator-async/",
}
"""Each view's path; its last segment is the label of its side-effect rows and its key."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.idempotency(LOCK_TTL=LOCK_TTL),
    pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True),
]


@pytest.fixture
def server(backend_case: BackendCase) -> Iterator[Server]:
    """gunicorn with 4 sync workers, stopped after 2 silent seconds."""
    with serve(workers=4, timeout=GUNICORN_TIMEOUT) as running:
        yield running


def send(server: Server, label: str, timeout: float = 30) -> Reply:
    return server.post(f"{VIEWS[label]}?sleep={STUCK_SECONDS}", key=label, timeout=timeout)


def send_to_stopped_worker(server: Server, label: str) -> Reply | Exception:
    """The stuck request: whatever gunicorn answers when it stops the worker."""
    try:
        return send(server, label)
    except (OSError, http.client.HTTPException) as error:  # the connection died with it
        return error


def current_record(label: str) -> Record:
    record = handler.get_backend().get(storage_key(ANONYMOUS_SCOPE, label))
    assert record is not None
    return record


def test_stopped_workers_claims_conflict_until_their_leases_end_then_are_taken_over(
    backend_case: BackendCase, server: Server
) -> None:
    labels = list(VIEWS)
    started = time.monotonic()
    answers = send_together(len(labels), lambda i: send_to_stopped_worker(server, labels[i]))
    outcomes = dict(zip(labels, answers, strict=True))

    assert time.monotonic() - started < STUCK_SECONDS, "a view finished instead of being stopped"
    assert "WORKER TIMEOUT" in server.log(), server.log_tail()
    for label, outcome in outcomes.items():
        if isinstance(outcome, Reply):  # gunicorn answers a plain 500 for a timed-out worker
            assert outcome.status >= 500, (label, outcome)
        assert executions(label) == 1, label
    orphans = {label: current_record(label) for label in labels}
    for label, orphan in orphans.items():
        assert orphan.state is State.IN_PROGRESS, label  # kept: the outcome is unknown
        assert orphan.response is None

    for label in labels:
        conflict = send(server, label)
        assert conflict.status == 409, (label, conflict, server.log_tail())
        assert conflict.json()["type"] == PROBLEM_TYPE_PREFIX + "request-in-progress"
        assert "retry-after" in conflict.headers
        assert executions(label) == 1, label

    last_lease_end = max(orphan.expires_at for orphan in orphans.values())
    time.sleep(max(0.0, last_lease_end - time.time()) + backend_case.lease_slack + 0.5)
    for label, orphan in orphans.items():
        taken_over = send(server, label)
        replay = send(server, label)

        assert taken_over.status == 201, (label, taken_over, server.log_tail())
        assert not taken_over.replayed
        assert replay.status == 201
        assert replay.replayed
        assert replay.body == taken_over.body
        assert executions(label) == 2, label
        record = current_record(label)
        assert record.owner_token != orphan.owner_token
        assert record.state is State.COMPLETED
        assert record.response is not None
        assert (record.response.status, record.response.body) == (201, taken_over.body)

        late = StoredResponse(status=200, headers=(), body=b"late response of the dead worker")
        backend = handler.get_backend()
        assert backend.complete(record.storage_key, orphan.owner_token, late, 60) is False
        assert backend.release(record.storage_key, orphan.owner_token) is False
        assert backend.renew(record.storage_key, orphan.owner_token, 60) is False
        assert current_record(label) == record
