"""Helpers the backend tests share: claims to write, a response to store, paging, racing."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from django_idempotency.backends.base import BaseBackend
from django_idempotency.records import Claim, StoredResponse

RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/payments/1/")),
    body=b'{"id": 1}',
)


def make_claim(
    storage_key: str | None = None, lease: int = 60, fingerprint: str = "f" * 64
) -> Claim:
    """A claim with its own owner token, on ``storage_key`` or a fresh one."""
    return Claim(
        storage_key=storage_key or secrets.token_hex(32),
        key="client-key",
        scope="user:1",
        fingerprint=fingerprint,
        method="POST",
        path="/payments/?currency=EUR",
        owner_token=secrets.token_hex(16),
        lease_seconds=lease,
    )


def scanned_keys(backend: BaseBackend, page_size: int, max_pages: int = 100) -> list[str]:
    """The storage keys ``backend.scan`` lists, page by page, in the order listed.

    Asserts that no page holds more than ``page_size`` records; stops after
    ``max_pages`` pages, so a cursor that never ends cannot hang the test.
    """
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(max_pages):
        page, cursor = backend.scan(cursor, page_size)
        assert len(page) <= page_size
        seen += [record.storage_key for record in page]
        if cursor is None:
            break
    return seen


def in_threads(count: int, work: Callable[[int], Any], timeout: float = 60) -> list[Any]:
    """Run ``work(i)`` in ``count`` real threads started together; return their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout)
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads did not finish in time"
    assert not errors, errors
    return results
