"""The BaseBackend contract, method by method, on every backend.

A custom backend can run this module against itself: it only uses the
documented methods and the ``idempotency_backend`` fixture.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from django_idempotency.backends.base import BaseBackend
from django_idempotency.records import Claim, ClaimOutcome, State, StoredResponse
from tests.backends import BackendCase

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/payments/1/")),
    body=b'{"id": 1}',
)


def make_claim(
    storage_key: str | None = None, lease: int = 60, fingerprint: str = "f" * 64
) -> Claim:
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


def test_claim_creates_an_in_progress_record(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()

    result = idempotency_backend.claim(claim)

    assert result.outcome is ClaimOutcome.CREATED
    assert result.claimed
    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.state is State.IN_PROGRESS
    assert record.owner_token == claim.owner_token
    assert (record.key, record.scope, record.method, record.path, record.fingerprint) == (
        claim.key,
        claim.scope,
        claim.method,
        claim.path,
        claim.fingerprint,
    )
    assert record.is_live(time.time())
    assert record.expires_at == pytest.approx(time.time() + 60, abs=5)


def test_second_claim_returns_the_live_record_and_writes_nothing(
    idempotency_backend: BaseBackend,
) -> None:
    first = make_claim()
    idempotency_backend.claim(first)
    second = make_claim(first.storage_key, fingerprint="0" * 64)

    result = idempotency_backend.claim(second)

    assert result.outcome is ClaimOutcome.EXISTING
    assert not result.claimed
    assert result.record.owner_token == first.owner_token
    assert result.record.fingerprint == first.fingerprint


def test_complete_stores_the_response_for_replay(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    result = idempotency_backend.claim(make_claim(claim.storage_key))
    assert result.outcome is ClaimOutcome.EXISTING
    assert result.record.state is State.COMPLETED
    assert result.record.response == RESPONSE
    assert result.record.completed_at is not None
    assert result.record.expires_at == pytest.approx(time.time() + 300, abs=5)


def test_binary_body_survives_the_round_trip(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)
    body = bytes(range(256)) * 3
    response = StoredResponse(200, (("Content-Type", "application/octet-stream"),), body)

    idempotency_backend.complete(claim.storage_key, claim.owner_token, response, ttl=60)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response is not None
    assert record.response.body == body


def test_complete_and_release_need_the_owner_token(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert not idempotency_backend.complete(claim.storage_key, "not-the-owner", RESPONSE, ttl=60)
    assert not idempotency_backend.release(claim.storage_key, "not-the-owner")
    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.state is State.IN_PROGRESS


def test_release_deletes_the_claim_so_a_retry_claims_again(
    idempotency_backend: BaseBackend,
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.release(claim.storage_key, claim.owner_token)

    assert idempotency_backend.get(claim.storage_key) is None
    assert idempotency_backend.claim(make_claim(claim.storage_key)).claimed


def test_release_never_deletes_a_completed_record(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)
    idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=60)

    assert not idempotency_backend.release(claim.storage_key, claim.owner_token)
    assert idempotency_backend.get(claim.storage_key) is not None


def test_complete_or_release_of_a_missing_record_is_false(
    idempotency_backend: BaseBackend,
) -> None:
    assert not idempotency_backend.complete("0" * 64, "owner", RESPONSE, ttl=60)
    assert not idempotency_backend.release("0" * 64, "owner")


def test_expired_lease_is_taken_over_and_stale_owner_is_locked_out(
    idempotency_backend: BaseBackend,
) -> None:
    stale = make_claim(lease=1)
    idempotency_backend.claim(stale)
    time.sleep(1.2)
    fresh = make_claim(stale.storage_key)

    result = idempotency_backend.claim(fresh)

    assert result.claimed
    expected = (
        {ClaimOutcome.CREATED}
        if idempotency_backend.has_native_expiry
        else {ClaimOutcome.TAKEN_OVER}
    )
    assert result.outcome in expected
    assert not idempotency_backend.complete(stale.storage_key, stale.owner_token, RESPONSE, 60)
    assert not idempotency_backend.release(stale.storage_key, stale.owner_token)
    assert idempotency_backend.complete(fresh.storage_key, fresh.owner_token, RESPONSE, 60)


def test_delete_removes_any_record(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.delete(claim.storage_key)
    assert not idempotency_backend.delete(claim.storage_key)
    assert idempotency_backend.get(claim.storage_key) is None


def test_scan_lists_every_record_across_pages(
    backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    if not idempotency_backend.supports_listing:
        pytest.skip(f"{backend_case.id} cannot list its records (supports_listing is False)")
    claims = [make_claim() for _ in range(7)]
    for claim in claims:
        idempotency_backend.claim(claim)

    seen: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        page, cursor = idempotency_backend.scan(cursor, 3)
        seen.update(record.storage_key for record in page)
        if cursor is None:
            break

    assert seen == {claim.storage_key for claim in claims}


def test_purge_removes_dead_records_only(idempotency_backend: BaseBackend) -> None:
    dead = make_claim(lease=1)
    live = make_claim(lease=60)
    idempotency_backend.claim(dead)
    idempotency_backend.claim(live)
    time.sleep(1.2)

    purged = sum(idempotency_backend.purge_expired(batch_size=10))

    assert idempotency_backend.get(live.storage_key) is not None
    if idempotency_backend.has_native_expiry:
        assert purged == 0
        assert idempotency_backend.count_expired() == 0
    else:
        assert purged == 1
        assert idempotency_backend.get(dead.storage_key) is None


def test_concurrent_claims_of_one_key_have_one_winner(idempotency_backend: BaseBackend) -> None:
    from django.db import connections

    storage_key = secrets.token_hex(32)
    barrier = threading.Barrier(16)
    outcomes: list[ClaimOutcome | BaseException] = []

    def claim() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(idempotency_backend.claim(make_claim(storage_key)).outcome)
        except BaseException as error:
            outcomes.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert outcomes.count(ClaimOutcome.CREATED) == 1, outcomes
    assert outcomes.count(ClaimOutcome.EXISTING) == 15, outcomes


async def test_async_flavours_follow_the_same_contract(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()

    assert (await idempotency_backend.aclaim(claim)).outcome is ClaimOutcome.CREATED
    assert (await idempotency_backend.aclaim(make_claim(claim.storage_key))).outcome is (
        ClaimOutcome.EXISTING
    )
    assert not await idempotency_backend.acomplete(claim.storage_key, "other", RESPONSE, 60)
    assert await idempotency_backend.acomplete(claim.storage_key, claim.owner_token, RESPONSE, 60)
    record = await idempotency_backend.aget(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE
    assert not await idempotency_backend.arelease(claim.storage_key, claim.owner_token)
    assert await idempotency_backend.adelete(claim.storage_key)

    second = make_claim()
    await idempotency_backend.aclaim(second)
    assert await idempotency_backend.arelease(second.storage_key, second.owner_token)
    assert await idempotency_backend.aget(second.storage_key) is None
