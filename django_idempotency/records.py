"""Value objects exchanged between the engine and the storage backends.

Every backend, whatever it stores underneath (rows, bytes, Lua-readable
strings), speaks this vocabulary: a *claim* asks for a *storage key*, a
*record* is what the store holds.

They are typed named tuples: immutable like frozen dataclasses (a record
the memory backend hands to several threads cannot be changed under them),
and five times cheaper to build, which matters because a guarded request
builds several of them on its hot path (a frozen dataclass sets each field
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
    """The part of a view's response that is replayed: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


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

    def completed(self, response: StoredResponse, now: float, ttl: int) -> Record:
        """This record, completed with ``response`` and replayable for ``ttl`` seconds."""
        # tuple.__new__ builds the named tuple without the Python frame of its
        # generated __new__: every first request comes here.
        return tuple.__new__(
            Record,
            (
                self.storage_key,
                self.key,
                self.scope,
                self.fingerprint,
                self.method,
                self.path,
                State.COMPLETED,
                self.owner_token,
                self.created_at,
                now + ttl,
                now,
                response,
            ),
        )

    @classmethod
    def from_claim(cls, claim: Claim, now: float) -> Record:
        """The in-progress record a successful claim writes."""
        return tuple.__new__(  # see completed()
            cls,
            (
                claim.storage_key,
                claim.key,
                claim.scope,
                claim.fingerprint,
                claim.method,
                claim.path,
                State.IN_PROGRESS,
                claim.owner_token,
                now,
                now + claim.lease_seconds,
                None,
                None,
            ),
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
