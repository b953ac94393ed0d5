"""A backend whose store is down: every operation raises StorageError.

Used to test the engine's outage handling independently of any driver; the
real outages (closed ports, missing aliases) are tested per backend.
"""

from __future__ import annotations

from django_idempotency.backends.base import StorageError
from django_idempotency.backends.memory import MemoryBackend
from django_idempotency.records import Claim, ClaimResult, StoredResponse


class UnreachableBackend(MemoryBackend):
    """Every claim fails, as if the server refused the connection."""

    def claim(self, claim: Claim) -> ClaimResult:
        raise StorageError("connection refused (test backend)")


class FailsAfterClaimBackend(MemoryBackend):
    """Claims work; completing and releasing fail, as if the store died mid-request."""

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        raise StorageError("connection lost (test backend)")

    def release(self, storage_key: str, owner_token: str) -> bool:
        raise StorageError("connection lost (test backend)")
