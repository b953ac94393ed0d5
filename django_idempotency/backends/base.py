"""The storage contract every backend implements.

Write a custom backend (MongoDB, DynamoDB, ...) by subclassing
:class:`BaseBackend` and implementing the abstract methods. The engine relies
on exactly what is documented here and never asks which backend it talks to.

The contract is shaped for the hardest stores, not the easiest:

* :meth:`BaseBackend.claim` is ONE atomic operation that either writes the
  caller's in-progress record or returns the live record already there, so a
  replay costs one round trip (one ``SET NX GET`` / Lua call on Redis, one
  ``INSERT ... ON CONFLICT`` plus a read on SQL).
* Every claim carries a random *owner token*. :meth:`complete`,
  :meth:`release` and :meth:`renew` succeed only while the stored record still
  carries it, so a worker whose lease expired and was taken over can never
  overwrite, delete or prolong the new owner's record.
* A claim lives for its *lease*; :meth:`renew` extends it while a view runs
  longer than a third of it, so only a worker that stopped (or froze) loses
  its claim to a retry.
* Taking over a dead record (expired lease, or a completed record past its
  replay window that nobody purged yet) is a compare-and-set on the old
  owner token, done inside :meth:`claim`.
* A store with native expiry (Redis, memcached) sets ``has_native_expiry`` and
  lets the store forget dead records; :meth:`purge_expired` is then a no-op.

Every method exists in a sync and an async flavour. The async defaults run
the sync method in Django's thread pool (right for blocking drivers such as
the ORM); a backend with a native async client overrides them, and an async
method never calls blocking I/O itself.

Errors raised by the store's driver (connection refused, timeouts, locked
databases) must be wrapped in :class:`StorageError`; the engine turns it into
a 503 (or lets the request through unguarded, per ``ON_STORAGE_ERROR``).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage

from django_idempotency.backends.changes import SleepingWatch, Watch
from django_idempotency.records import Claim, ClaimResult, Record, StoredResponse


class StorageError(Exception):
    """The store could not be reached or refused the operation.

    Backends raise it (``raise StorageError(...) from driver_error``) so that
    no driver exception reaches the engine or the user.
    """


class RolledBack(Exception):
    """:meth:`BaseBackend.complete` could not write inside the view's transaction,
    and marked that transaction for rollback: the view's work will not commit.

    ``lost`` is True when the claim was no longer ours (its lease lapsed and a
    retry took the key over, which ran the view itself), False when the store
    failed. Either way the request's work is undone, so the engine answers
    with a problem instead of the view's response.
    """

    def __init__(self, message: str, *, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


class BaseBackend(abc.ABC):
    """Abstract idempotency store. One instance per process, built from OPTIONS."""

    # Capabilities: what the engine, the admin and purge_idempotency ask of a
    # store instead of asking which class it is. Each is a class default that
    # an instance may override from its configuration.

    has_native_expiry: bool = False
    """True when the store forgets dead records by itself (TTL)."""

    supports_listing: bool = True
    """False when the store cannot enumerate its records (the admin says so)."""

    model_database: str | None = None
    """The database alias when the records are rows of the app's model
    (:class:`~django_idempotency.models.IdempotencyRecord`), so the admin can
    browse them as a changelist; None for every other store."""

    is_shared_across_processes: bool = True
    """False for per-process stores; a system check warns outside DEBUG.

    An instance may set it from its configuration (a cache backend over
    LocMemCache is per process, over Redis it is not).
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Mapping[str, Any] = dict(options or {})

    # -- time ---------------------------------------------------------------

    now = staticmethod(time.time)
    """Seconds since the epoch; one clock for every record field.

    Records cross processes and machines, so wall-clock time is the only
    clock they share. Keep the machines' clocks in sync (NTP). A plain
    ``time.time`` rather than a method: it is read twice on every first
    request, and tests replace it on an instance to move time.
    """

    # -- the atomic core ----------------------------------------------------

    @abc.abstractmethod
    def claim(self, claim: Claim) -> ClaimResult:
        """Claim ``claim.storage_key`` in one atomic operation.

        * No record, or a dead one (``not record.is_live(now)``): write
          ``Record.from_claim(claim, now)`` and return ``CREATED`` (or
          ``TAKEN_OVER`` when a dead record was replaced; replacing must be a
          compare-and-set on the dead record's owner token, so two requests
          racing to take over cannot both win). Stores with native expiry may
          return ``CREATED`` for both.
        * A live record: write nothing and return it with ``EXISTING``; but a
          live in-progress record carrying ``claim.owner_token`` is this very
          claim, retried (a reply lost on the network): return it as
          ``CREATED``.

        Two concurrent calls for one storage key, from any threads, processes
        or machines, must never both return a claimed outcome.
        """

    @abc.abstractmethod
    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Store the response and mark the record completed for ``ttl`` seconds.

        Only while the record still carries ``owner_token`` (compare-and-set).
        Return True when stored, False when the claim is no longer ours (taken
        over, released or expired); never overwrite another owner's record.
        A record this owner already completed is a retried complete: return
        True and keep the stored response, which never changes while it can be
        replayed. ``response.body`` is None for a response that could not be
        kept (see :attr:`StoredResponse.replayable`): store it like any other.

        A store that shares a transaction with the view (DatabaseBackend in an
        atomic block on the records' database) writes inside that transaction,
        so the response commits with the view's writes or not at all. When it
        cannot there (the claim is no longer ours, or the write failed), it
        marks the transaction for rollback and raises :class:`RolledBack`:
        the view's work never commits. The engine calls ``complete`` through
        :meth:`defer_until_commit`.
        """

    @abc.abstractmethod
    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the in-progress record so that a retry runs the view again.

        Only while the record carries ``owner_token`` and is still in progress;
        return True when deleted, False otherwise. Used after a failed view
        (exception, 5xx) and by the admin to unstick a claim.
        """

    @abc.abstractmethod
    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Extend the in-progress record's lease to ``now + lease_seconds``.

        Only while the record carries ``owner_token`` and is in progress
        (compare-and-set, like :meth:`complete`): return True when extended,
        False when the claim is no longer ours (taken over, released,
        completed, or forgotten by a store with native expiry). A record that
        still carries our token after its lease ended is still ours: nobody
        took it over, so it is extended. Store the new lease end where
        :meth:`get` reads ``expires_at`` (and, with native expiry, as the
        store's own expiry).

        The engine calls it while a view runs longer than a third of its lease,
        from a scheduler of its own (a thread on sync stacks, a task on the
        running loop on async ones), never from the request's thread.
        """

    def needs_renewal(self) -> bool:
        """Whether the claim the calling thread just made needs renewing while its view runs.

        True by default. False where the claim is invisible to other requests
        until the view's transaction commits (DatabaseBackend on SQLite joins
        that transaction): nobody can take it over meanwhile, and a renewal
        from another connection would only wait on the transaction's locks.
        """
        return True

    @abc.abstractmethod
    def get(self, storage_key: str) -> Record | None:
        """The record stored for ``storage_key``, live or dead, or None."""

    @abc.abstractmethod
    def delete(self, storage_key: str) -> bool:
        """Delete the record whatever its state or owner (operators only)."""

    def watch(self, storage_key: str) -> Watch:
        """Something to wait on until the record of ``storage_key`` may have changed.

        A duplicate that may wait (``WAIT``) for the request in progress claims
        again each time its watch wakes. The default never hears of changes
        (:class:`~django_idempotency.backends.changes.SleepingWatch`): the
        engine then polls on a capped backoff. A store that announces the
        completions and releases it stores (pub/sub, ``LISTEN``/``NOTIFY``)
        returns a watch woken by them, subscribed before it is returned, so no
        change after this call is missed; see
        :class:`~django_idempotency.backends.changes.ChangeListener`.
        """
        return SleepingWatch()

    async def awatch(self, storage_key: str) -> Watch:
        """Async :meth:`watch`; never blocks the event loop."""
        return SleepingWatch()

    def defer_until_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (the engine's completion) so the response is never stored
        for work that did not happen.

        A completed record vouches that the view's work was done. A store
        outside the view's transaction runs ``callback`` at once, which is this
        default; so does a store whose :meth:`complete` writes inside the
        view's transaction. A store that can do neither runs it when the
        view's transaction commits, and never if it rolls back. ``callback``
        raises only :class:`RolledBack`.
        """
        callback()

    # -- housekeeping -------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> Iterator[int]:
        """Delete dead records in batches, yielding how many each batch removed.

        Stores with ``has_native_expiry`` forget dead records themselves and
        yield nothing. Others must override this.
        """
        if not self.has_native_expiry:
            raise NotImplementedError(f"{type(self).__name__} must implement purge_expired().")
        return iter(())

    def count_expired(self) -> int:
        """How many dead records :meth:`purge_expired` would delete now."""
        if not self.has_native_expiry:
            raise NotImplementedError(f"{type(self).__name__} must implement count_expired().")
        return 0

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of at most ``count`` records and the cursor of the next page.

        ``cursor`` is None for the first page; the returned cursor is None on
        the last one. The order is the store's own. Backends that cannot list
        set ``supports_listing = False`` and leave this unimplemented.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list its records.")

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        """System-check messages about this backend's configuration.

        ``kwargs`` are the system-check framework's (``databases`` lists the
        aliases a check may query; it is None when the run must not touch a
        database). Use ids ``django_idempotency.E010``-``E039`` and
        ``W010``-``W039``; README.rst documents each.
        """
        return []

    def close(self) -> None:
        """Release connections and pools; called when the settings change.

        Optional: a backend without connections has nothing to close.
        """
        return None

    # -- async flavours -----------------------------------------------------

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Async :meth:`claim`."""
        return await sync_to_async(self.claim)(claim)

    async def acomplete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Async :meth:`complete`."""
        return await sync_to_async(self.complete)(storage_key, owner_token, response, ttl)

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Async :meth:`release`."""
        return await sync_to_async(self.release)(storage_key, owner_token)

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Async :meth:`renew`.

        The default runs :meth:`renew` in a thread of its own
        (``thread_sensitive=False``): the request's own sync thread, where the
        other defaults run, may be busy running the very view being renewed.
        """
        return await sync_to_async(self.renew, thread_sensitive=False)(
            storage_key, owner_token, lease_seconds
        )

    async def aget(self, storage_key: str) -> Record | None:
        """Async :meth:`get`."""
        return await sync_to_async(self.get)(storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Async :meth:`delete`."""
        return await sync_to_async(self.delete)(storage_key)
