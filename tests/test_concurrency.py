"""Many threads, one key: the view runs exactly once.

Real threads send real requests through the whole Django stack at the same
moment (a barrier releases them together) against a view that sleeps, so
most of them arrive while the first is in progress. Bounded: every thread
must finish within the join timeout.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from django.db import connections
from django.http import HttpResponse
from django.test import Client

from tests.backends import BackendCase
from tests.http import executions, post

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

THREADS = 32
JOIN_TIMEOUT = 60


def run_together(count: int, send: Callable[[int], HttpResponse]) -> list[HttpResponse]:
    """Run ``send(i)`` in ``count`` threads released at once; return every response."""
    barrier = threading.Barrier(count)
    responses: list[HttpResponse | BaseException] = [RuntimeError("did not finish")] * count

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            responses[index] = send(index)
        except BaseException as error:  # reported by the assertion below
            responses[index] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a request thread hung"
    failures = [r for r in responses if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    return responses  # type: ignore[return-value]


def test_32_threads_one_key_run_the_view_exactly_once(backend_case: BackendCase) -> None:
    responses = run_together(THREADS, lambda _: post(Client(), "/create/?sleep=0.5"))

    statuses = sorted(response.status_code for response in responses)
    created = [r for r in responses if r.status_code == 201]
    assert executions() == 1
    assert set(statuses) <= {201, 409}, statuses
    assert len({r.content for r in created}) == 1
    assert sum("Idempotent-Replayed" not in r for r in created) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert json.loads(conflict.content)["status"] == 409


def test_32_threads_distinct_keys_each_run_once(backend_case: BackendCase) -> None:
    responses = run_together(THREADS, lambda i: post(Client(), "/create/", key=f"key-{i}"))

    assert [r.status_code for r in responses] == [201] * THREADS
    assert executions() == THREADS
