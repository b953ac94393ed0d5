"""In-process backend: a bounded dict behind a lock.

For development, tests and single-process servers. Records live in the
process that wrote them, so two gunicorn workers do NOT share keys (a system
check warns outside DEBUG). Operations never block on I/O, so the async
flavours call the sync ones directly instead of hopping to a thread.

The bound never costs a guarantee: a full store makes room only by evicting
a dead record, and refuses a new claim (a 503) rather than forget a live
one, which would let a retry run the view a second time.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.records import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Record,
    State,
    StoredResponse,
)

DEFAULT_MAX_ENTRIES = 10_000


class MemoryBackend(BaseBackend):
    """Thread-safe, TTL-aware, bounded in-memory store.

    OPTIONS: ``{"MAX_ENTRIES": 10000}``. When full, a new claim evicts a dead
    record; when every record is live, it raises :class:`StorageError` (the
    engine answers 503 with ``Retry-After``) and evicts nothing. A live
    record is never evicted: an in-progress claim or a completed record
    that is forgotten lets a retry run the view again. A heap of expiry times
    finds dead records in O(log n), so a full store costs no more per request
    than an empty one.

    The heap holds, for every record, an entry no later than the record's
    expiry: exact when the record is claimed, and left as it is when
    completing only moves the expiry later (the usual case, one heap push
    saved per request). Eviction pops due entries and re-indexes a record
    found still live at its real expiry, so every dead record is reached.
    """

    is_shared_across_processes = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.max_entries = _max_entries(self.options)
        self._records: dict[str, Record] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def claim(self, claim: Claim) -> ClaimResult:
        """Create the claim, replace a dead record, or return the live one."""
        now = self.now()
        storage_key = claim.storage_key
        records = self._records
        with self._lock:
            existing = records.get(storage_key)
            if existing is None:
                if len(records) >= self.max_entries:
                    self._evict(now)
            elif now < existing.expires_at:
                return ClaimResult.of_live(existing, claim.owner_token)
            else:
                del records[storage_key]  # dead: its successor is the newest entry
            record = records[storage_key] = Record.from_claim(claim, now)
            expiries = self._expiries
            heapq.heappush(expiries, (record.expires_at, storage_key))
            if len(expiries) > 2 * len(records) + 64:
                self._reindex_expiries()
        outcome = ClaimOutcome.CREATED if existing is None else ClaimOutcome.TAKEN_OVER
        return ClaimResult(outcome, record)

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Mark the caller's record completed, if it is still the caller's.

        The record keeps its place in the listing order (the order of claims).
        """
        now = self.now()
        with self._lock:
            current = self._records.get(storage_key)
            if current is None or current.owner_token != owner_token:
                return False
            if current.state is State.IN_PROGRESS:
                record = self._records[storage_key] = current.completed(response, now, ttl)
                if record.expires_at < current.expires_at:  # a TTL shorter than the lease left
                    heapq.heappush(self._expiries, (record.expires_at, storage_key))
        return True

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Move the caller's lease end to now + ``lease_seconds``, if the claim is still theirs.

        The expiry heap keeps the record's older, earlier entry: an entry no
        later than the real expiry is all eviction needs.
        """
        now = self.now()
        with self._lock:
            current = self._records.get(storage_key)
            if current is None or not current.is_claim_of(owner_token):
                return False
            self._records[storage_key] = current.renewed(now, lease_seconds)
        return True

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the caller's in-progress record, if it is still the caller's."""
        with self._lock:
            current = self._records.get(storage_key)
            if (
                current is None
                or current.owner_token != owner_token
                or current.state is not State.IN_PROGRESS
            ):
                return False
            del self._records[storage_key]
        return True

    def get(self, storage_key: str) -> Record | None:
        """The stored record, live or dead."""
        with self._lock:
            return self._records.get(storage_key)

    def delete(self, storage_key: str) -> bool:
        """Delete whatever is stored under the key."""
        with self._lock:
            return self._records.pop(storage_key, None) is not None

    def purge_expired(self, *, batch_size: int = 1000) -> Iterator[int]:
        """Sweep dead records, ``batch_size`` per lock hold."""
        while True:
            with self._lock:
                dead = self._dead_keys(self.now(), limit=batch_size)
                for storage_key in dead:
                    del self._records[storage_key]
            if not dead:
                return
            yield len(dead)

    def count_expired(self) -> int:
        """How many records are dead now."""
        with self._lock:
            return len(self._dead_keys(self.now(), limit=None))

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """Records in insertion order; the cursor is an offset."""
        start = int(cursor or 0)
        with self._lock:
            page = list(self._records.values())[start : start + count]
            more = start + count < len(self._records)
        return page, (str(start + count) if more else None)

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Same as :meth:`claim`: no I/O, so no thread hop."""
        return self.claim(claim)

    async def acomplete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Same as :meth:`complete`."""
        return self.complete(storage_key, owner_token, response, ttl)

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Same as :meth:`release`."""
        return self.release(storage_key, owner_token)

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Same as :meth:`renew`."""
        return self.renew(storage_key, owner_token, lease_seconds)

    async def aget(self, storage_key: str) -> Record | None:
        """Same as :meth:`get`."""
        return self.get(storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Same as :meth:`delete`."""
        return self.delete(storage_key)

    def _reindex_expiries(self) -> None:
        """Drop the heap's stale entries (records gone or re-indexed)."""
        self._expiries = [(record.expires_at, key) for key, record in self._records.items()]
        heapq.heapify(self._expiries)

    def _evict(self, now: float) -> None:
        """Make room for one record by evicting a dead one; refuse if none is dead."""
        expiries, records = self._expiries, self._records
        while expiries and expiries[0][0] <= now:
            _, storage_key = heapq.heappop(expiries)
            record = records.get(storage_key)
            if record is None:
                continue  # deleted, released or evicted since
            if record.expires_at <= now:
                del records[storage_key]
                return
            heapq.heappush(expiries, (record.expires_at, storage_key))  # completed: live longer
        raise StorageError(
            f"MemoryBackend is full: all {len(records)} records are live. Raise "
            "IDEMPOTENCY['OPTIONS']['MAX_ENTRIES'], or lower IDEMPOTENCY['TTL'] so that "
            "records die sooner."
        )

    def _dead_keys(self, now: float, limit: int | None) -> list[str]:
        dead: list[str] = []
        for storage_key, record in self._records.items():
            if not record.is_live(now):
                dead.append(storage_key)
                if limit is not None and len(dead) >= limit:
                    break
        return dead


def _max_entries(options: Mapping[str, Any]) -> int:
    value = options.get("MAX_ENTRIES", DEFAULT_MAX_ENTRIES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['MAX_ENTRIES'] must be a positive integer "
            f"for MemoryBackend; got {value!r}."
        )
    unknown = set(options) - {"MAX_ENTRIES"}
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown IDEMPOTENCY['OPTIONS'] for MemoryBackend: {sorted(unknown)}; "
            "the only option is 'MAX_ENTRIES'."
        )
    return value
