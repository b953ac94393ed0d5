"""At most once under real faults, with real gunicorn workers on every shared backend.

* **A view longer than its lease** keeps its claim: the lease is renewed while
  the view runs, so retries from other workers get 409, then the replay.
* **A frozen worker** (SIGSTOP) loses its claim once its lease lapses; a retry
  takes the key over and runs the view; when the frozen worker resumes
  (SIGCONT) its renewal, its completion and its release are all refused
  (logged and signalled), and the record keeps the new owner's response. Where
  the view's writes and the records share a transaction, the frozen worker's
  writes are rolled back too: its view ends up having run zero times.
* **A process that dies right after its transaction committed** (an
  ``on_commit`` hook calls ``os._exit``) leaves a completed record: the retry
  is a replay, never a second execution.

The servers record the app's ``lease_lost`` and ``interrupted`` signals as
``SideEffect`` rows (:mod:`tests.serverapp`), which is how a test sees what
happened inside a worker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from django_idempotency.backends import handler
from django_idempotency.keys import storage_key
from django_idempotency.records import Record, State
from django_idempotency.scopes import ANONYMOUS_SCOPE
from tests.backends import DB, BackendCase
from tests.http import PROBLEM_TYPE_PREFIX, executions
from tests.server import CROSS_PROCESS_CASES, Reply, Server, in_background, serve, wait_for
from tests.testapp.models import SideEffect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

DATABASE_CASES = [param for param in CROSS_PROCESS_CASES if param.values[0].backend == DB]  # type: ignore[union-attr]
SERVER_DATABASE_CASES = [
    param
    for param in DATABASE_CASES
    if param.values[0].service is not None  # type: ignore[union-attr]
]
"""PostgreSQL and MariaDB: SQLite's one writer blocks every other claim while a
transaction that wrote is open, so a frozen transaction there freezes all."""


def record_of(key: str) -> Record | None:
    return handler.get_backend().get(storage_key(ANONYMOUS_SCOPE, key))


def signals_recorded(name: str) -> list[str]:
    """What the servers' workers signalled: ``lease_lost`` operations, ``interrupted`` errors."""
    prefix = f"signal:{name}:"
    labels = SideEffect.objects.filter(label__startswith=prefix).values_list("label", flat=True)
    return sorted(label.removeprefix(prefix) for label in labels)


# -- 1. a view longer than its lease -------------------------------------------------------

RENEWAL_LOCK_TTL = 2
LONG_VIEW_SECONDS = 7
LONG_VIEWS = {
    "renew-sync": f"/stuck/renew-sync/?sleep={LONG_VIEW_SECONDS}",
    "renew-async": f"/decorated-async-stuck/renew-async/?sleep={LONG_VIEW_SECONDS}",
}
"""A sync view under the middleware (renewed by the worker's renewal thread) and an
async view under the decorator (renewed by a timer on the loop that runs it)."""


@pytest.mark.idempotency(LOCK_TTL=RENEWAL_LOCK_TTL)
@pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True)
def test_a_view_that_runs_past_its_lease_is_renewed_and_runs_once(
    backend_case: BackendCase,
) -> None:
    with serve(workers=4) as server:
        firsts = {key: _post_in_background(server, path, key) for key, path in LONG_VIEWS.items()}
        wait_for(lambda: all(executions(key) for key in LONG_VIEWS), 5, "both views")
        retries: dict[str, list[Reply]] = {key: [] for key in LONG_VIEWS}
        started = time.monotonic()
        while time.monotonic() - started < LONG_VIEW_SECONDS - 1.5:
            for key, path in LONG_VIEWS.items():
                retries[key].append(server.post(path, key=key))
            time.sleep(0.5)
        answers = {key: result(LONG_VIEW_SECONDS + 10) for key, result in firsts.items()}
        afters = {key: server.post(path, key=key) for key, path in LONG_VIEWS.items()}

    for key in LONG_VIEWS:
        assert len(retries[key]) >= 8, key  # a retry every half second for 5 s and more
        assert {reply.status for reply in retries[key]} == {409}, (key, server.log_tail())
        assert answers[key].status == 201, (key, answers[key])
        assert not answers[key].replayed
        assert afters[key].replayed, key
        assert afters[key].body == answers[key].body
        assert executions(key) == 1, key
    assert signals_recorded("lease_lost") == []


def _post_in_background(server: Server, path: str, key: str) -> Callable[[float], Reply]:
    return in_background(lambda: server.post(path, key=key))


# -- 2. a frozen worker --------------------------------------------------------------------

FROZEN_LOCK_TTL = 2
AWAKE_SECONDS = 3
"""How long each frozen view runs, not counting the time it is stopped: long enough
that it resumes well before it returns, so its overdue renewal runs first."""


def freeze_then_take_over(
    server: Server, path: str, key: str, lease_slack: float
) -> tuple[Reply, Reply, Record]:
    """Freeze the worker running ``path``, take its key over, resume it.

    The worker is found by its pid in the row labelled ``<key>-worker``, which
    the view writes once it knows it is the key's first execution. Returns the
    frozen request's own answer, the answer of the retry that took the key over,
    and the record once the frozen worker finished. ``lease_slack``: how long
    past its lease the store may keep the claim (``BackendCase.lease_slack``).
    """
    label = f"{key}-worker"
    first = in_background(lambda: server.post(path, key=key, timeout=60))
    wait_for(lambda: SideEffect.objects.filter(label=label).exists(), 10, "the view's first row")
    pid = int(SideEffect.objects.filter(label=label).earliest("pk").payload)
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = record_of(key)
        assert frozen is not None
        lease_left = max(0.0, frozen.expires_at - time.time())
        time.sleep(lease_left + lease_slack + 0.3)  # the lease lapsed
        taken_over = server.post(path, key=key)
    finally:
        os.kill(pid, signal.SIGCONT)
    stale = first(AWAKE_SECONDS + 20)
    record = record_of(key)
    assert record is not None
    return stale, taken_over, record


@pytest.mark.idempotency(LOCK_TTL=FROZEN_LOCK_TTL)
@pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True)
@pytest.mark.parametrize("then", ["return", "raise"])
def test_a_frozen_workers_renew_complete_and_release_are_refused_after_a_takeover(
    backend_case: BackendCase, then: str
) -> None:
    key = f"frozen-{then}"
    path = f"/frozen/{key}/?awake={AWAKE_SECONDS}&then={then}"
    with serve(workers=2, timeout=60) as server:
        stale, taken_over, record = freeze_then_take_over(
            server, path, key, backend_case.lease_slack
        )
        replay = server.post(path, key=key)
        log = server.log()

    assert taken_over.status == 201, (taken_over, log[-3000:])
    assert not taken_over.replayed
    assert executions(key) == 2  # the frozen view's row and the takeover's: no third
    assert stale.status == (201 if then == "return" else 500)
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body == taken_over.body  # the new owner's, byte for byte
    assert replay.replayed
    assert replay.body == taken_over.body
    refused = "complete" if then == "return" else "release"
    assert signals_recorded("lease_lost") == sorted(["renew", refused])
    assert log.count("renew refused: the claim is no longer this worker's") == 1, log[-3000:]
    assert log.count(f"{refused} refused: the claim is no longer this worker's") == 1


@pytest.mark.idempotency(LOCK_TTL=FROZEN_LOCK_TTL)
@pytest.mark.parametrize("backend_case", SERVER_DATABASE_CASES, indirect=True)
def test_a_frozen_workers_transaction_is_rolled_back_when_its_claim_was_taken_over(
    backend_case: BackendCase,
) -> None:
    """The writes and the record share a transaction: the late view's work never commits."""
    key = "frozen-in-transaction"
    path = f"/frozen-in-transaction/{key}/?awake={AWAKE_SECONDS}"
    alias = backend_case.database or "default"
    rows = SideEffect.objects.using(alias).filter(label=key)
    with serve(workers=2, timeout=60) as server:
        stale, taken_over, record = freeze_then_take_over(
            server, path, key, backend_case.lease_slack
        )
        replay = server.post(path, key=key)
        log = server.log()

    assert taken_over.status == 201, (taken_over, log[-3000:])
    assert stale.status == 409, (stale, log[-3000:])
    assert stale.json()["type"] == PROBLEM_TYPE_PREFIX + "claim-lost"
    assert rows.count() == 1  # the frozen view's write was rolled back: one execution in all
    assert replay.replayed
    assert replay.body == taken_over.body
    assert record.response is not None
    assert record.response.body == taken_over.body
    assert signals_recorded("lease_lost") == ["complete", "renew"]


# -- 3. a crash right after the commit --------------------------------------------------


@pytest.mark.parametrize("backend_case", DATABASE_CASES, indirect=True)
@pytest.mark.parametrize(
    ("path", "atomic_requests"),
    [
        ("/dies-after-commit/", False),
        ("/dies-after-commit-of-atomic-requests/", True),
    ],
    ids=["inside-atomic", "atomic-requests"],
)
def test_a_process_that_dies_right_after_its_commit_leaves_a_replay(
    backend_case: BackendCase, path: str, atomic_requests: bool
) -> None:
    key = "dies-after-commit"
    alias = backend_case.database or "default"
    rows = SideEffect.objects.using(alias).filter(label=key)
    with serve(workers=2, atomic_requests=atomic_requests) as server:
        died: Reply | OSError
        try:
            died = server.post(f"{path}{key}/", key=key)
        except OSError as error:  # the connection died with the process
            died = error
        retry = server.post(f"{path}{key}/", key=key)
        log = server.log()

    assert isinstance(died, OSError) or died.status >= 500, died
    assert retry.status == 201, (retry, log[-3000:])
    assert retry.replayed  # not 409 (a claim left in progress), not a second execution
    assert rows.count() == 1
    record = record_of(key)
    assert record is not None
    assert record.state is State.COMPLETED
