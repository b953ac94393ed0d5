"""Waiting for the request in progress, so that a duplicate gets the replay rather than a 409.

With ``WAIT`` (or ``@idempotent(wait=...)``) above 0, a request that finds
its key claimed by an identical request still running waits up to that many
seconds for it to finish, then claims again: it gets the replay if the first
request completed, runs the view itself if that request was released (its
view failed) or its lease ended, and the usual 409 if time ran out.

Between claims it waits on the store's watch
(:meth:`~django_idempotency.backends.base.BaseBackend.watch`):

* a store that announces changes (Redis, PostgreSQL) wakes it as soon as the
  first request completes or is released; it claims again every
  ``PUSHED_POLL`` seconds anyway, in case an announcement was lost;
* any other store is polled on a capped backoff: ``FIRST_POLL``, doubling up
  to ``MAX_POLL`` seconds.

Either way it claims again just after the first request's lease would end,
so a first request whose worker died is taken over without delay. The wait
is bounded by ``WAIT``; an async wait awaits, never blocking its loop; a
sync wait holds its worker (thread or process) for as long as it waits.
"""

from __future__ import annotations

import time

from django_idempotency.backends.base import BaseBackend
from django_idempotency.records import Claim, ClaimOutcome, ClaimResult, State

FIRST_POLL = 0.05
MAX_POLL = 1.0
PUSHED_POLL = 5.0
LEASE_END_MARGIN = 0.02
"""Seconds after the first request's lease end at which a waiter claims again."""


def is_waiting_for(result: ClaimResult, claim: Claim) -> bool:
    """Whether ``claim`` met the same request still running, which it may wait for.

    A different request under the same key is answered 422 at once, and a
    completed one is replayed at once: only an identical request in progress
    is worth waiting for.
    """
    record = result.record
    return (
        result.outcome is ClaimOutcome.EXISTING
        and record.state is State.IN_PROGRESS
        and record.fingerprint == claim.fingerprint
    )


class _Delays:
    """How long each wait between two claims lasts."""

    def __init__(self, pushed: bool, seconds: float) -> None:
        self.pushed = pushed
        self.deadline = time.monotonic() + seconds
        self.poll = FIRST_POLL

    def next(self, result: ClaimResult, now: float) -> float | None:
        """Seconds to wait before claiming again; None when the time to wait is up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        if self.pushed:
            delay = PUSHED_POLL
        else:
            delay, self.poll = self.poll, min(self.poll * 2, MAX_POLL)
        until_lease_end = result.record.expires_at - now + LEASE_END_MARGIN
        return min(delay, remaining, max(until_lease_end, FIRST_POLL))


def wait(backend: BaseBackend, claim: Claim, result: ClaimResult, seconds: float) -> ClaimResult:
    """Claim again until the first request finished or ``seconds`` passed (sync)."""
    watch = backend.watch(claim.storage_key)
    try:
        if watch.pushed:  # subscribed now: what changed before must be read once more
            result = backend.claim(claim)
        delays = _Delays(watch.pushed, seconds)
        while is_waiting_for(result, claim):
            delay = delays.next(result, backend.now())
            if delay is None:
                break
            watch.wait(delay)
            result = backend.claim(claim)
        return result
    finally:
        watch.close()


async def await_(
    backend: BaseBackend, claim: Claim, result: ClaimResult, seconds: float
) -> ClaimResult:
    """Claim again until the first request finished or ``seconds`` passed (async)."""
    watch = await backend.awatch(claim.storage_key)
    try:
        if watch.pushed:
            result = await backend.aclaim(claim)
        delays = _Delays(watch.pushed, seconds)
        while is_waiting_for(result, claim):
            delay = delays.next(result, backend.now())
            if delay is None:
                break
            await watch.await_change(delay)
            result = await backend.aclaim(claim)
        return result
    finally:
        watch.close()
