"""The BaseBackend contract, method by method, on every backend.

A custom backend can run this module against itself: it only uses the
documented methods and the ``idempotency_backend`` fixture. Besides the
suite's cases it runs on RedisBackend over a connection pool of its own.
"""

from __future__ import annotations

import functools
import time

import pytest
from asgiref.sync import async_to_sync

from django_idempotency.backends.base import BaseBackend
from django_idempotency.records import Claim, ClaimOutcome, State, StoredResponse
from tests.backends import CASES, REDIS_URL_CASE, BackendCase
from tests.storage import RESPONSE, in_threads, make_claim, scanned_keys

CONTRACT_CASES = [*CASES, REDIS_URL_CASE]

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize(
        "backend_case", CONTRACT_CASES, indirect=True, ids=[case.id for case in CONTRACT_CASES]
    ),
]


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
    assert record.response is None
    assert record.is_live(time.time())
    assert record.expires_at == pytest.approx(time.time() + 60, abs=5)
    assert record.expires_at == pytest.approx(record.created_at + 60, abs=1e-3)


def test_second_claim_returns_the_live_record_and_writes_nothing(
    idempotency_backend: BaseBackend,
) -> None:
    first = make_claim()
    idempotency_backend.claim(first)
    stored = idempotency_backend.get(first.storage_key)
    second = make_claim(first.storage_key, fingerprint="0" * 64)

    result = idempotency_backend.claim(second)

    assert result.outcome is ClaimOutcome.EXISTING
    assert not result.claimed
    assert result.record.owner_token == first.owner_token
    assert result.record.fingerprint == first.fingerprint
    assert result.record.state is State.IN_PROGRESS
    assert result.record == stored
    assert idempotency_backend.get(first.storage_key) == stored


@pytest.mark.smoke
def test_complete_stores_the_response_for_replay(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    result = idempotency_backend.claim(make_claim(claim.storage_key))
    assert result.outcome is ClaimOutcome.EXISTING
    assert result.record.state is State.COMPLETED
    assert result.record.response == RESPONSE
    assert result.record.completed_at is not None
    assert result.record.completed_at == pytest.approx(time.time(), abs=5)
    assert result.record.expires_at == pytest.approx(time.time() + 300, abs=5)
    assert result.record.expires_at == pytest.approx(result.record.completed_at + 300, abs=1e-3)


def test_every_byte_value_and_unicode_headers_survive_the_round_trip(
    idempotency_backend: BaseBackend,
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)
    body = bytes(range(256)) * 4
    headers = (
        ("Content-Type", "application/octet-stream"),
        ("X-Name", "Zoë ✓"),
        ("X-Odd", 'a, "b"; c=\\d'),
        ("X-Empty", ""),
    )
    response = StoredResponse(200, headers, body)

    idempotency_backend.complete(claim.storage_key, claim.owner_token, response, ttl=60)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response is not None
    assert record.response.body == body
    assert record.response == response


@pytest.mark.parametrize(
    "response",
    [
        StoredResponse(
            202, (("Content-Type", "text/plain"),), b"queued", reason="Queued For Review"
        ),
        StoredResponse(201, (), None),
        StoredResponse(204, (), b""),
    ],
    ids=["custom-reason", "not-replayable", "empty-body"],
)
def test_reason_phrase_and_an_unkept_body_survive_the_round_trip(
    idempotency_backend: BaseBackend, response: StoredResponse
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    idempotency_backend.complete(claim.storage_key, claim.owner_token, response, ttl=60)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == response
    assert record.response.replayable is (response.body is not None)


def test_complete_and_release_need_the_owner_token(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert not idempotency_backend.complete(claim.storage_key, "not-the-owner", RESPONSE, ttl=60)
    assert not idempotency_backend.release(claim.storage_key, "not-the-owner")
    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.state is State.IN_PROGRESS
    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=60)


def test_release_deletes_the_claim_so_a_retry_claims_again(
    idempotency_backend: BaseBackend,
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert not idempotency_backend.release(claim.storage_key, "not-the-owner")
    assert idempotency_backend.release(claim.storage_key, claim.owner_token)

    assert idempotency_backend.get(claim.storage_key) is None
    assert not idempotency_backend.release(claim.storage_key, claim.owner_token)
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
    backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    stale = make_claim(lease=1)
    idempotency_backend.claim(stale)
    time.sleep(1.2 + backend_case.lease_slack)
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
    record = idempotency_backend.get(stale.storage_key)
    assert record is not None
    assert (record.owner_token, record.state) == (fresh.owner_token, State.IN_PROGRESS)
    assert idempotency_backend.complete(fresh.storage_key, fresh.owner_token, RESPONSE, 60)


def test_delete_removes_any_record(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.delete(claim.storage_key)
    assert not idempotency_backend.delete(claim.storage_key)
    assert idempotency_backend.get(claim.storage_key) is None


@pytest.mark.parametrize("page_size", [1, 3, 100])
def test_scan_lists_every_record_in_pages_of_at_most_count(
    backend_case: BackendCase, idempotency_backend: BaseBackend, page_size: int
) -> None:
    if not idempotency_backend.supports_listing:
        pytest.skip(f"{backend_case.id} cannot list its records (supports_listing is False)")
    claims = [make_claim() for _ in range(7)]
    for claim in claims:
        idempotency_backend.claim(claim)

    seen = scanned_keys(idempotency_backend, page_size)

    assert set(seen) == {claim.storage_key for claim in claims}


def test_purge_removes_dead_records_only(
    backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    dead, done, live = make_claim(lease=1), make_claim(), make_claim(lease=60)
    for claim in (dead, done, live):
        idempotency_backend.claim(claim)
    idempotency_backend.complete(done.storage_key, done.owner_token, RESPONSE, ttl=1)
    time.sleep(1.2 + backend_case.lease_slack)

    purged = sum(idempotency_backend.purge_expired(batch_size=10))

    assert idempotency_backend.get(live.storage_key) is not None
    if idempotency_backend.has_native_expiry:
        assert purged == 0  # the store forgot the dead lease and the ended replay window
        assert idempotency_backend.count_expired() == 0
    else:
        assert purged == 2
    assert idempotency_backend.get(dead.storage_key) is None
    assert idempotency_backend.get(done.storage_key) is None


@pytest.mark.smoke
def test_concurrent_claims_of_one_key_have_one_winner(idempotency_backend: BaseBackend) -> None:
    claims = [make_claim()]
    claims += [make_claim(claims[0].storage_key) for _ in range(31)]

    results = in_threads(len(claims), lambda index: idempotency_backend.claim(claims[index]))

    outcomes = [result.outcome for result in results]
    assert outcomes.count(ClaimOutcome.CREATED) == 1, outcomes
    assert outcomes.count(ClaimOutcome.EXISTING) == 31, outcomes


@pytest.mark.parametrize("ending", ["complete", "release"])
def test_a_renewal_racing_the_end_of_the_view_never_undoes_it(
    idempotency_backend: BaseBackend, ending: str
) -> None:
    """The renewal thread may renew a claim at the very moment its view ends.

    Whichever lands first, the end must hold: a renewal writing the
    in-progress claim back over a stored response would, once the lease
    ended, let a retry run the view again (measured on memcached and NATS
    before the fix); over a release, it would answer 409 for a whole lease.
    """
    backend = idempotency_backend

    def end_or_renew(claim: Claim, index: int) -> bool:
        if index:
            return backend.renew(claim.storage_key, claim.owner_token, 60)
        if ending == "complete":
            return backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        return backend.release(claim.storage_key, claim.owner_token)

    undone = []
    for _ in range(100):
        claim = make_claim()
        backend.claim(claim)
        ended, _ = in_threads(2, functools.partial(end_or_renew, claim))
        record = backend.get(claim.storage_key)
        if ending == "complete":
            held = record is not None and record.state is State.COMPLETED
        else:
            held = record is None
        if not (ended and held):
            undone.append(record)
        backend.delete(claim.storage_key)

    assert undone == []


async def test_async_flavours_follow_the_same_contract(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()

    assert (await idempotency_backend.aclaim(claim)).outcome is ClaimOutcome.CREATED
    assert (await idempotency_backend.aclaim(make_claim(claim.storage_key))).outcome is (
        ClaimOutcome.EXISTING
    )
    assert not await idempotency_backend.acomplete(claim.storage_key, "other", RESPONSE, 60)
    assert await idempotency_backend.acomplete(claim.storage_key, claim.owner_token, RESPONSE, 60)
    replay = await idempotency_backend.aclaim(make_claim(claim.storage_key))
    assert replay.outcome is ClaimOutcome.EXISTING
    assert replay.record.response == RESPONSE
    record = await idempotency_backend.aget(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE
    assert not await idempotency_backend.arelease(claim.storage_key, claim.owner_token)
    assert await idempotency_backend.adelete(claim.storage_key)
    assert not await idempotency_backend.adelete(claim.storage_key)

    second = make_claim()
    await idempotency_backend.aclaim(second)
    assert await idempotency_backend.arelease(second.storage_key, second.owner_token)
    assert await idempotency_backend.aget(second.storage_key) is None


def test_a_claim_retried_with_its_own_owner_token_is_still_ours(
    idempotency_backend: BaseBackend,
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.claim(claim).outcome is ClaimOutcome.CREATED
    other = idempotency_backend.claim(make_claim(claim.storage_key))
    assert other.outcome is ClaimOutcome.EXISTING  # another owner's claim is refused
    assert async_to_sync(idempotency_backend.aclaim)(claim).outcome is ClaimOutcome.CREATED


def test_a_completed_response_never_changes(idempotency_backend: BaseBackend) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)
    idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)
    other = StoredResponse(200, (), b"second")

    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, other, ttl=300)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE


# -- renew ----------------------------------------------------------------------------


def test_renew_moves_the_lease_end_of_our_claim(idempotency_backend: BaseBackend) -> None:
    claim = make_claim(lease=1)
    idempotency_backend.claim(claim)

    assert idempotency_backend.renew(claim.storage_key, claim.owner_token, 30)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.state is State.IN_PROGRESS
    assert record.owner_token == claim.owner_token
    assert record.expires_at == pytest.approx(time.time() + 30, abs=5)
    time.sleep(1.2)  # past the first lease: the renewed claim is still live and ours
    assert idempotency_backend.claim(make_claim(claim.storage_key)).outcome is (
        ClaimOutcome.EXISTING
    )
    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)


def test_renew_needs_the_owner_token_and_a_claim_in_progress(
    idempotency_backend: BaseBackend,
) -> None:
    claim = make_claim()
    idempotency_backend.claim(claim)
    before = idempotency_backend.get(claim.storage_key)

    assert not idempotency_backend.renew(claim.storage_key, "not-the-owner", 600)
    assert idempotency_backend.get(claim.storage_key) == before
    assert not idempotency_backend.renew("0" * 64, claim.owner_token, 600)

    idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=60)
    completed = idempotency_backend.get(claim.storage_key)
    assert not idempotency_backend.renew(claim.storage_key, claim.owner_token, 600)
    assert idempotency_backend.get(claim.storage_key) == completed


def test_a_stale_owner_cannot_renew_the_claim_that_took_over(
    backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    stale = make_claim(lease=1)
    idempotency_backend.claim(stale)
    time.sleep(1.2 + backend_case.lease_slack)
    fresh = make_claim(stale.storage_key, lease=1)
    assert idempotency_backend.claim(fresh).claimed

    assert not idempotency_backend.renew(stale.storage_key, stale.owner_token, 600)

    record = idempotency_backend.get(fresh.storage_key)
    assert record is not None
    assert record.owner_token == fresh.owner_token
    assert record.expires_at == pytest.approx(time.time() + 1, abs=1)


async def test_arenew_follows_the_same_contract(idempotency_backend: BaseBackend) -> None:
    claim = make_claim(lease=1)
    await idempotency_backend.aclaim(claim)

    assert not await idempotency_backend.arenew(claim.storage_key, "not-the-owner", 30)
    assert await idempotency_backend.arenew(claim.storage_key, claim.owner_token, 30)

    record = await idempotency_backend.aget(claim.storage_key)
    assert record is not None
    assert record.expires_at == pytest.approx(time.time() + 30, abs=5)
