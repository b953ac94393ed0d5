"""Value objects exchanged between the engine and the storage backends.

Every backend, whatever it stores underneath (rows, bytes, Lua-readable
strings), speaks this vocabulary: a *claim* asks for a *storage key*, a
*record* is what the store holds.

They are typed named tuples: immutable like frozen dataclasses (a record
the memory backend hands to several threads cannot be changed under them),
and cheaper to build, which matters because a guarded request builds
several of them on its hot path (a frozen dataclass sets each field
through ``object.__setattr__``).
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class State(str, enum.Enum):
    """The two states a record can be in."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class StoredResponse(NamedTuple):
    """The part of a view's response that is replayed: status, headers, body.

    ``body`` is None when the response was not kept: the view ran, but its
    response could not be stored (the store refused it), so a retry is told
    that it was processed instead of running the view again.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    reason: str = ""
    """The reason phrase when the view set its own; empty for the status's standard one."""

    @property
    def replayable(self) -> bool:
        """Whether a retry gets this response back (the body was kept)."""
        return self.body is not None

    def status_only(self) -> StoredResponse:
        """What is kept when the store refuses the whole response: the status."""
        return StoredResponse(status=self.status, headers=(), body=None)


class Claim(NamedTuple):
    """What a first request asks the store to write atomically.

    ``owner_token`` is random per request: complete and release only succeed
    while the stored record still carries it, so a worker whose lease expired
    and was taken over can never overwrite or delete the new owner's record.
    """

    storage_key: str
    key: str
    scope: str
    fingerprint: str
    method: str
    path: str
    owner_token: str
    lease_seconds: int


class Record(NamedTuple):
    """What the store holds for one storage key.

    ``expires_at`` is the end of the lease while the record is in progress and
    the end of the replay window once it is completed: a record whose
    ``expires_at`` has passed is dead and may be claimed again.
    """

    storage_key: str
    key: str
    scope: str
    fingerprint: str
    method: str
    path: str
    state: State
    owner_token: str
    created_at: float
    expires_at: float
    completed_at: float | None = None
    response: StoredResponse | None = None

    def is_live(self, now: float) -> bool:
        """Whether the record still counts: a live record cannot be claimed."""
        return now < self.expires_at

    def is_claim_of(self, owner_token: str) -> bool:
        """Whether this is ``owner_token``'s own claim, still in progress.

        A claim that meets it was retried (its reply was lost), not refused.
        """
        return self.state is State.IN_PROGRESS and self.owner_token == owner_token

    def renewed(self, now: float, lease_seconds: int) -> Record:
        """This in-progress record, its lease ending ``lease_seconds`` from ``now``."""
        return self._replace(expires_at=now + lease_seconds)

    def completed(self, response: StoredResponse, now: float, ttl: int) -> Record:
        """This record, completed with ``response`` and replayable for ``ttl`` seconds."""
        return self._replace(
            state=State.COMPLETED, expires_at=now + ttl, completed_at=now, response=response
        )

    @classmethod
    def from_claim(cls, claim: Claim, now: float) -> Record:
        """The in-progress record a successful claim writes."""
        return cls(
            storage_key=claim.storage_key,
            key=claim.key,
            scope=claim.scope,
            fingerprint=claim.fingerprint,
            method=claim.method,
            path=claim.path,
            state=State.IN_PROGRESS,
            owner_token=claim.owner_token,
            created_at=now,
            expires_at=now + claim.lease_seconds,
        )


class ClaimOutcome(str, enum.Enum):
    """How a claim ended."""

    CREATED = "created"
    """No live record existed; the claim is now ours."""
    TAKEN_OVER = "taken_over"
    """A dead record (expired lease or replay window) was replaced by ours."""
    EXISTING = "existing"
    """A live record exists; it is returned and nothing was written."""


class ClaimResult(NamedTuple):
    """The answer of :meth:`BaseBackend.claim`: ours, or the existing record."""

    outcome: ClaimOutcome
    record: Record

    @classmethod
    def of_live(cls, record: Record, owner_token: str) -> ClaimResult:
        """The answer to a claim that found ``record`` live: refused, or its own retry."""
        mine = record.is_claim_of(owner_token)
        return cls(ClaimOutcome.CREATED if mine else ClaimOutcome.EXISTING, record)

    @property
    def claimed(self) -> bool:
        """Whether the caller now owns the key and must run the view."""
        return self.outcome is not ClaimOutcome.EXISTING
