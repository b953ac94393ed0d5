"""Worker processes of a real server: the view runs exactly once per key.

The thread version (``test_concurrency.py``) shares one process, so a lock
in memory could pass it. Here gunicorn's four sync workers are separate
processes that only share the store, for every backend whose records are
shared across processes. Requests are real HTTP on real sockets, released
together by a barrier, against a view that writes a ``SideEffect`` row and
then sleeps, so most of them arrive while the first is still running.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest

from tests.backends import BackendCase
from tests.http import PROBLEM_TYPE_PREFIX, executions
from tests.server import CROSS_PROCESS_CASES, Reply, Server, failures, send_together, serve
from tests.testapp.models import SideEffect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True),
]

ONE_KEY_REQUESTS = 50
KEYS = 20
REQUESTS_PER_KEY = 10


@pytest.fixture
def server(backend_case: BackendCase) -> Iterator[Server]:
    """gunicorn with 4 sync workers, on the current backend case."""
    with serve(workers=4) as running:
        yield running


def assert_in_progress_problem(reply: Reply) -> None:
    """A 409 problem+json telling the client when to retry."""
    assert reply.headers["content-type"] == "application/problem+json"
    assert int(reply.headers["retry-after"]) >= 0
    problem = reply.json()
    assert problem["status"] == 409
    assert problem["type"] == PROBLEM_TYPE_PREFIX + "request-in-progress"


def replies_of(results: list[Reply | BaseException], server: Server) -> list[Reply]:
    """The replies, once it is known that every request got one."""
    errors = failures(results)
    assert not errors, f"{len(errors)} requests failed, e.g. {errors[:3]!r}\n{server.log_tail()}"
    return [result for result in results if isinstance(result, Reply)]


def assert_ran_once(replies: list[Reply], server: Server) -> Reply:
    """One first execution, identical replays, 409s for the rest; return the first."""
    statuses = Counter(reply.status for reply in replies)
    assert set(statuses) <= {201, 409}, f"{statuses}\n{server.log_tail()}"
    created = [reply for reply in replies if reply.status == 201]
    originals = [reply for reply in created if not reply.replayed]
    assert len(originals) == 1, statuses
    assert {reply.body for reply in created} == {originals[0].body}
    for reply in replies:
        if reply.status == 409:
            assert_in_progress_problem(reply)
    return originals[0]


def test_50_concurrent_requests_with_one_key_run_the_view_once(server: Server) -> None:
    results = send_together(
        ONE_KEY_REQUESTS, lambda _: server.post("/create/?sleep=1", key="one-key")
    )

    first = assert_ran_once(replies_of(results, server), server)
    assert executions() == 1
    assert first.json()["id"] == SideEffect.objects.get().pk


def test_20_keys_with_10_concurrent_requests_each_run_once_per_key(server: Server) -> None:
    def send(index: int) -> Reply:
        key = f"key-{index // REQUESTS_PER_KEY:02d}"
        body = json.dumps({"amount": "12.50", "key": key}).encode()
        return server.post("/create/?sleep=0.5", key=key, body=body)

    results = send_together(KEYS * REQUESTS_PER_KEY, send)

    by_key: dict[str, list[Reply]] = defaultdict(list)
    for index, reply in enumerate(replies_of(results, server)):
        by_key[f"key-{index // REQUESTS_PER_KEY:02d}"].append(reply)
    firsts = {key: assert_ran_once(replies, server) for key, replies in by_key.items()}
    assert executions() == KEYS
    rows = {json.loads(row.payload)["key"]: row.pk for row in SideEffect.objects.all()}
    assert rows == {key: first.json()["id"] for key, first in firsts.items()}
