"""What only the memory backend promises: bounded size, only dead records evicted, no I/O."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from django_idempotency.backends.base import StorageError
from django_idempotency.backends.memory import MemoryBackend
from django_idempotency.records import Claim, ClaimOutcome, State, StoredResponse
from tests.http import assert_problem, executions, post

SMALL_STORE = {
    "BACKEND": "django_idempotency.backends.memory.MemoryBackend",
    "OPTIONS": {"MAX_ENTRIES": 2},
}


def make_claim(key: str, lease: int = 60, owner: str = "owner") -> Claim:
    return Claim(
        storage_key=key,
        key=key,
        scope="",
        fingerprint="f",
        method="POST",
        path="/",
        owner_token=owner,
        lease_seconds=lease,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def backend_with_clock(max_entries: int = 3) -> tuple[MemoryBackend, FakeClock]:
    backend = MemoryBackend({"MAX_ENTRIES": max_entries})
    clock = FakeClock()
    backend.now = clock
    return backend, clock


def test_full_store_evicts_expired_records_first() -> None:
    backend, clock = backend_with_clock()
    backend.claim(make_claim("short", lease=1))
    backend.claim(make_claim("old"))
    backend.claim(make_claim("new"))
    clock.now += 2  # "short" is dead now, "old" is the oldest live record

    backend.claim(make_claim("extra"))

    assert backend.get("short") is None
    assert backend.get("old") is not None
    assert backend.get("extra") is not None


def keys(backend: MemoryBackend) -> list[str]:
    return [record.storage_key for record in backend.scan(None, 100)[0]]


def test_full_store_with_one_dead_record_evicts_exactly_that_one() -> None:
    backend, clock = backend_with_clock()
    backend.claim(make_claim("a"))
    backend.claim(make_claim("dying", lease=1))
    backend.claim(make_claim("c"))
    clock.now += 2

    assert backend.claim(make_claim("d")).outcome is ClaimOutcome.CREATED

    assert keys(backend) == ["a", "c", "d"]


def test_full_store_of_in_progress_claims_refuses_a_new_claim_and_keeps_every_claim() -> None:
    backend, _ = backend_with_clock()
    for key in ("a", "b", "c"):
        backend.claim(make_claim(key))

    with pytest.raises(StorageError, match=r"IDEMPOTENCY\['OPTIONS'\]\['MAX_ENTRIES'\]"):
        backend.claim(make_claim("d"))

    assert keys(backend) == ["a", "b", "c"]
    for key in ("a", "b", "c"):
        record = backend.get(key)
        assert record is not None
        assert record.state is State.IN_PROGRESS
        retry = backend.claim(make_claim(key, owner="retry"))
        assert retry.outcome is ClaimOutcome.EXISTING  # the retry waits; the view runs once


def test_full_store_of_completed_records_refuses_rather_than_forget_a_replay() -> None:
    backend, clock = backend_with_clock()
    for key in ("a", "b", "c"):
        backend.claim(make_claim(key, lease=1))
        backend.complete(key, "owner", StoredResponse(201, (), key.encode()), ttl=100)
    clock.now += 2  # every lease has ended, no replay window has

    with pytest.raises(StorageError):
        backend.claim(make_claim("d"))

    for key in ("a", "b", "c"):
        record = backend.get(key)
        assert record is not None
        assert record.response == StoredResponse(201, (), key.encode())
    clock.now += 100  # now they are dead: room again
    assert backend.claim(make_claim("d")).outcome is ClaimOutcome.CREATED
    assert len(keys(backend)) == 3


def test_completed_record_lives_for_its_ttl() -> None:
    backend, clock = backend_with_clock()
    backend.claim(make_claim("k"))
    backend.complete("k", "owner", StoredResponse(200, (), b"ok"), ttl=10)
    clock.now += 9

    assert backend.claim(make_claim("k", owner="retry")).outcome is ClaimOutcome.EXISTING
    clock.now += 2
    assert backend.claim(make_claim("k", owner="later")).outcome is ClaimOutcome.TAKEN_OVER


def test_purge_sweeps_dead_records_in_batches() -> None:
    backend, clock = backend_with_clock(max_entries=100)
    for index in range(25):
        backend.claim(make_claim(f"k{index}", lease=1))
    backend.claim(make_claim("live", lease=60))
    clock.now += 5

    assert backend.count_expired() == 25
    assert list(backend.purge_expired(batch_size=10)) == [10, 10, 5]
    assert backend.count_expired() == 0
    assert backend.get("live") is not None


def test_scan_pages_through_every_record() -> None:
    backend, _ = backend_with_clock(max_entries=100)
    for index in range(7):
        backend.claim(make_claim(f"k{index}"))

    first, cursor = backend.scan(None, 3)
    second, cursor2 = backend.scan(cursor, 3)
    third, cursor3 = backend.scan(cursor2, 3)

    assert [len(first), len(second), len(third)] == [3, 3, 1]
    assert cursor3 is None


def test_record_completed_with_a_ttl_shorter_than_its_lease_is_evicted_once_dead() -> None:
    backend, clock = backend_with_clock()
    backend.claim(make_claim("old"))
    backend.claim(make_claim("short"))
    backend.complete("short", "owner", StoredResponse(201, (), b"done"), ttl=5)
    backend.claim(make_claim("new"))
    clock.now += 6  # "short" died before its lease would have ended

    backend.claim(make_claim("extra"))

    assert backend.get("short") is None
    assert backend.get("old") is not None


def test_record_completed_after_a_short_lease_stays_until_its_ttl_ends() -> None:
    backend, clock = backend_with_clock()
    backend.claim(make_claim("old", lease=1000))
    backend.claim(make_claim("quick", lease=1))
    backend.complete("quick", "owner", StoredResponse(201, (), b"done"), ttl=100)
    backend.claim(make_claim("new", lease=1000))
    clock.now += 2  # the lease of "quick" has ended, its replay window has not

    with pytest.raises(StorageError):  # nothing dead: nothing evicted
        backend.claim(make_claim("extra", lease=1000))

    assert backend.get("old") is not None
    quick = backend.get("quick")
    assert quick is not None
    assert quick.response == StoredResponse(201, (), b"done")
    clock.now += 99
    backend.claim(make_claim("later"))
    assert backend.get("quick") is None  # dead now, so evicted
    assert keys(backend) == ["old", "new", "later"]


@pytest.mark.django_db(transaction=True, databases="__all__")
@override_settings(IDEMPOTENCY=SMALL_STORE)
def test_full_store_answers_503_over_http_and_earlier_keys_still_replay(client: Client) -> None:
    first = post(client, key="key-1")
    second = post(client, key="key-2")
    assert [first.status_code, second.status_code] == [201, 201]

    refused = post(client, key="key-3")

    assert_problem(refused, 503, "storage-unavailable")
    assert refused["Retry-After"]
    assert executions() == 2
    for key, original in (("key-1", first), ("key-2", second)):
        retry = post(client, key=key)
        assert retry.status_code == 201
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == original.content
    assert executions() == 2
