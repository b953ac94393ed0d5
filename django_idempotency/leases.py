"""Keeping a running view's claim alive: lease renewal, one scheduler per process.

A claim lives for its lease (``LOCK_TTL``, or ``@idempotent(lock_ttl=...)``);
a view that ran longer would lose it to a retry, which would run the view a
second time. So while a guarded view runs, its lease is renewed every third
of its length, each renewal a compare-and-set on the owner token
(:meth:`~django_idempotency.backends.base.BaseBackend.renew`). Only a
worker that stopped or froze for longer than two thirds of its lease loses
its claim.

* On a sync stack, one daemon thread per process keeps every running view's
  next renewal in a heap and sleeps until the earliest one is due; it is
  started on first use, and again in a forked child.
* On an async stack, each view's renewal is a timer on the running event
  loop (``loop.call_later``) that starts a task: no thread at all.

A view that ends before its first renewal is due costs no store operation:
registering it is a heap push or a timer. Renewal stops when the view
returns, raises or is interrupted (the adapters call :meth:`Lease.stop`). A
renewal that finds the claim gone (a frozen worker whose lease lapsed and
was taken over) logs a warning, sends ``lease_lost`` and stops renewing; a
store that fails is logged, signalled as a storage error, and tried again at
the next interval, which still leaves a third of the lease.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from contextlib import suppress

from django.http import HttpRequest

from django_idempotency import signals
from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.events import emit
from django_idempotency.records import Claim

logger = logging.getLogger("django_idempotency")

RENEWALS_PER_LEASE = 3
"""A lease is renewed every ``1 / RENEWALS_PER_LEASE`` of its length."""
COMPACT_AT = 1024
"""Heap size from which the renewal thread drops the entries of views that ended."""


class Lease:
    """A running view's lease, renewed until :meth:`stop` is called."""

    __slots__ = ("active", "backend", "claim", "interval", "request")

    def __init__(self, claim: Claim, backend: BaseBackend, request: HttpRequest) -> None:
        self.claim = claim
        self.backend = backend
        self.request = request
        self.interval = claim.lease_seconds / RENEWALS_PER_LEASE
        self.active = True

    def stop(self) -> None:
        """Renew no more: the view returned, raised or was interrupted."""
        self.active = False

    def _renewed(self, renewed: bool) -> None:
        """Report a renewal's outcome; stop renewing a lease that is lost."""
        if renewed or not self.active:
            return
        self.active = False
        lost(self.claim, self.backend, self.request, "renew")

    def _failed(self, error: StorageError) -> None:
        emit(
            signals.storage_error,
            logging.ERROR,
            f"storage error on renew; trying again in {self.interval:g} s: {error}",
            self.request,
            self.backend,
            self.claim,
            operation="renew",
            error=error,
        )


class _ThreadLease(Lease):
    """A lease renewed by the process's renewal thread."""

    __slots__ = ()

    def renew(self) -> None:
        claim = self.claim
        try:
            renewed = self.backend.renew(claim.storage_key, claim.owner_token, claim.lease_seconds)
        except StorageError as error:
            self._failed(error)
        except Exception:  # a broken backend must not end renewals for every view
            logger.exception("idempotency: renewing a lease failed unexpectedly")
        else:
            self._renewed(renewed)


class _LoopLease(Lease):
    """A lease renewed by a timer on the event loop the view runs on."""

    __slots__ = ("_loop", "_loop_thread", "_timer", "_view_task")

    def __init__(
        self,
        claim: Claim,
        backend: BaseBackend,
        request: HttpRequest,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(claim, backend, request)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        # A view task that ended without stopping its lease (a bug in an
        # adapter) must not keep its claim alive forever.
        self._view_task = asyncio.current_task(loop)
        self._timer = loop.call_later(self.interval, self._due)

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        if threading.get_ident() == self._loop_thread:
            self._timer.cancel()
            return
        # Stopped from another thread: a sync middleware whose worker is
        # stopping while an async view runs on a loop in a thread of its own.
        with suppress(RuntimeError):  # that loop is closed already
            self._loop.call_soon_threadsafe(self._timer.cancel)

    def _due(self) -> None:
        if not self.active:
            return
        if self._view_task is not None and self._view_task.done():
            self.active = False
            return
        _running_renewals.add(self._loop.create_task(self._renew()))

    async def _renew(self) -> None:
        claim = self.claim
        try:
            renewed = await self.backend.arenew(
                claim.storage_key, claim.owner_token, claim.lease_seconds
            )
        except StorageError as error:
            self._failed(error)
        except Exception:
            logger.exception("idempotency: renewing a lease failed unexpectedly")
        else:
            self._renewed(renewed)
        finally:
            _running_renewals.discard(asyncio.current_task(self._loop))
        if self.active:
            self._timer = self._loop.call_later(self.interval, self._due)


_running_renewals: set[asyncio.Task[None]] = set()
"""Renewal tasks in flight: the loop keeps only weak references to its tasks."""


class _NoLease(Lease):
    """A claim that needs no renewal (it joined the view's transaction)."""

    __slots__ = ()

    def __init__(self) -> None:
        self.active = False


NO_LEASE: Lease = _NoLease()


class _RenewalThread:
    """The process's sync renewal scheduler: a heap of due times and one daemon thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, _ThreadLease]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._compact_at = COMPACT_AT

    def add(self, lease: _ThreadLease) -> None:
        entry = (time.monotonic() + lease.interval, next(self._order), lease)
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="django-idempotency-renewals", daemon=True
                )
                self._thread.start()
            if len(self._due) >= self._compact_at:
                self._compact()
            heapq.heappush(self._due, entry)
            if self._due[0] is entry:
                self._condition.notify()

    def _compact(self) -> None:
        """Drop the entries of stopped leases (most views end long before their renewal)."""
        self._due = [entry for entry in self._due if entry[2].active]
        heapq.heapify(self._due)
        self._compact_at = max(COMPACT_AT, 2 * len(self._due))

    def _run(self) -> None:
        while True:
            lease = self._next_due()
            lease.renew()
            if lease.active:
                with self._condition:
                    entry = (time.monotonic() + lease.interval, next(self._order), lease)
                    heapq.heappush(self._due, entry)

    def _next_due(self) -> _ThreadLease:
        """Wait for the earliest renewal of a lease still active, and take it."""
        with self._condition:
            while True:
                while self._due and not self._due[0][2].active:
                    heapq.heappop(self._due)  # stopped: the view ended
                if not self._due:
                    self._condition.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._condition.wait(wait)


_renewals = _RenewalThread()


def _new_process() -> None:
    """A forked child has no renewal thread: it starts its own on first use."""
    global _renewals
    _renewals = _RenewalThread()


os.register_at_fork(after_in_child=_new_process)


def keep(claim: Claim, backend: BaseBackend, request: HttpRequest) -> Lease:
    """Renew ``claim``'s lease from the renewal thread until the lease is stopped."""
    if not backend.needs_renewal():
        return NO_LEASE
    lease = _ThreadLease(claim, backend, request)
    _renewals.add(lease)
    return lease


def akeep(claim: Claim, backend: BaseBackend, request: HttpRequest) -> Lease:
    """Renew ``claim``'s lease from a timer on the running loop until it is stopped."""
    return _LoopLease(claim, backend, request, asyncio.get_running_loop())


def lost(claim: Claim, backend: BaseBackend, request: HttpRequest, operation: str) -> None:
    """Report that a claim was no longer ours when ``operation`` (renew, complete, release) ran."""
    emit(
        signals.lease_lost,
        logging.WARNING,
        f"{operation} refused: the claim is no longer this worker's (its lease lapsed, "
        "as for a process that froze, and another request took it over, or it was deleted)",
        request,
        backend,
        claim,
        operation=operation,
    )
