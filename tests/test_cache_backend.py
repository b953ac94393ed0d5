"""CacheBackend over a real LocMemCache and a real django-redis cache.

Every test that writes records takes ``new_claim``, whose claims are deleted
afterwards: LocMemCache cannot be listed, so the suite's fixture cannot
empty it, and a Redis key left behind would leak into other runs.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.cache import KEY_PREFIX, CacheBackend
from django_idempotency.records import Claim, ClaimOutcome, State, StoredResponse
from tests.backends import CACHE, CASES_BY_ID, BackendCase
from tests.http import assert_problem, executions, post

CACHE_CASES = [CASES_BY_ID["cache-locmem"], CASES_BY_ID["cache-redis"]]
cache_cases = pytest.mark.parametrize(
    "backend_case", CACHE_CASES, indirect=True, ids=[case.id for case in CACHE_CASES]
)
DOWN_CACHE = {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "redis://127.0.0.1:1/0",
    "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
}
RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/payments/1/")),
    body=b'{"id": 1}',
)

NewClaim = Callable[..., Claim]


def make_claim(storage_key: str | None = None, lease: int = 60) -> Claim:
    """A claim with its own owner token, on ``storage_key`` or a fresh one."""
    return Claim(
        storage_key=storage_key or f"test-{secrets.token_hex(16)}",
        key="client-key",
        scope="user:1",
        fingerprint="f" * 64,
        method="POST",
        path="/payments/?currency=EUR",
        owner_token=secrets.token_hex(16),
        lease_seconds=lease,
    )


@pytest.fixture
def new_claim(idempotency_backend: BaseBackend) -> Iterator[NewClaim]:
    """Makes claims like :func:`make_claim` and deletes their records afterwards."""
    storage_keys: list[str] = []

    def make(storage_key: str | None = None, lease: int = 60) -> Claim:
        claim = make_claim(storage_key, lease)
        storage_keys.append(claim.storage_key)
        return claim

    yield make
    for storage_key in set(storage_keys):
        idempotency_backend.delete(storage_key)


def cache_messages(cache_config: dict[str, Any]) -> list[checks.CheckMessage]:
    """The checks of a CacheBackend over a cache configured as ``cache_config``."""
    with override_settings(CACHES={**settings.CACHES, "checked": cache_config}):
        return CacheBackend({"CACHE": "checked"}).check()


# -- claim ------------------------------------------------------------------------


@cache_cases
def test_claim_adds_the_record_and_a_later_claim_gets_it_back(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    first = new_claim()
    second = new_claim(first.storage_key)

    created = idempotency_backend.claim(first)
    existing = idempotency_backend.claim(second)

    assert created.outcome is ClaimOutcome.CREATED
    assert existing.outcome is ClaimOutcome.EXISTING
    assert existing.record == created.record
    assert existing.record.state is State.IN_PROGRESS
    assert existing.record.owner_token == first.owner_token


@cache_cases
def test_a_claim_retried_with_its_own_owner_token_is_still_ours(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.claim(claim).outcome is ClaimOutcome.CREATED


@cache_cases
def test_32_threads_claiming_one_key_have_exactly_one_winner(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claims = [new_claim("test-race-" + secrets.token_hex(8))]
    claims += [new_claim(claims[0].storage_key) for _ in range(31)]
    barrier = threading.Barrier(len(claims))
    outcomes: list[ClaimOutcome | BaseException] = []

    def race(claim: Claim) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(idempotency_backend.claim(claim).outcome)
        except BaseException as error:  # reported by the assertion below
            outcomes.append(error)

    threads = [threading.Thread(target=race, args=(claim,), daemon=True) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert outcomes.count(ClaimOutcome.CREATED) == 1, outcomes
    assert outcomes.count(ClaimOutcome.EXISTING) == 31, outcomes


# -- complete and release -----------------------------------------------------------


@cache_cases
def test_only_the_owner_completes_and_the_record_replays_its_response(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert not idempotency_backend.complete(claim.storage_key, "stranger", RESPONSE, ttl=300)
    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    replay = idempotency_backend.claim(new_claim(claim.storage_key))
    assert replay.outcome is ClaimOutcome.EXISTING
    assert replay.record.state is State.COMPLETED
    assert replay.record.response == RESPONSE
    assert replay.record.completed_at == pytest.approx(time.time(), abs=5)
    assert replay.record.expires_at == pytest.approx(time.time() + 300, abs=5)


@cache_cases
def test_a_completed_response_never_changes(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)
    idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)
    other = StoredResponse(200, (), b"second")

    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, other, ttl=300)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE


@cache_cases
def test_release_needs_the_owner_and_an_in_progress_record(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    released, completed = new_claim(), new_claim()
    idempotency_backend.claim(released)
    idempotency_backend.claim(completed)
    idempotency_backend.complete(completed.storage_key, completed.owner_token, RESPONSE, 60)

    assert not idempotency_backend.release(released.storage_key, "stranger")
    assert idempotency_backend.release(released.storage_key, released.owner_token)
    assert not idempotency_backend.release(completed.storage_key, completed.owner_token)
    assert idempotency_backend.get(released.storage_key) is None
    assert idempotency_backend.get(completed.storage_key) is not None
    assert not idempotency_backend.release(released.storage_key, released.owner_token)


@cache_cases
def test_leases_and_replay_windows_expire_in_the_cache(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    stale = new_claim(lease=1)
    done = new_claim()
    idempotency_backend.claim(stale)
    idempotency_backend.claim(done)
    idempotency_backend.complete(done.storage_key, done.owner_token, RESPONSE, ttl=1)
    time.sleep(1.1)

    fresh = new_claim(stale.storage_key)
    assert idempotency_backend.claim(fresh).outcome is ClaimOutcome.CREATED
    assert not idempotency_backend.complete(stale.storage_key, stale.owner_token, RESPONSE, 60)
    assert not idempotency_backend.release(stale.storage_key, stale.owner_token)
    record = idempotency_backend.get(stale.storage_key)
    assert record is not None
    assert (record.owner_token, record.state) == (fresh.owner_token, State.IN_PROGRESS)
    assert idempotency_backend.get(done.storage_key) is None


@cache_cases
def test_every_byte_value_and_unicode_headers_survive_the_round_trip(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)
    response = StoredResponse(
        200,
        (("Content-Type", "application/octet-stream"), ("X-Name", "Zoë ✓"), ("X-Empty", "")),
        bytes(range(256)) * 4,
    )

    idempotency_backend.complete(claim.storage_key, claim.owner_token, response, ttl=60)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == response


# -- get, delete, scan ---------------------------------------------------------------


@cache_cases
def test_delete_removes_any_record_whatever_its_owner(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.delete(claim.storage_key)
    assert not idempotency_backend.delete(claim.storage_key)
    assert idempotency_backend.get(claim.storage_key) is None


@pytest.mark.parametrize("backend_case", [CASES_BY_ID["cache-redis"]], indirect=True)
def test_django_redis_records_are_listed_page_by_page(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claims = [new_claim() for _ in range(7)]
    for claim in claims:
        idempotency_backend.claim(claim)
    caches["redis"].set("not-a-record", b"other entries of the cache are not listed")

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(50):
        page, cursor = idempotency_backend.scan(cursor, 3)
        assert len(page) <= 3
        seen += [record.storage_key for record in page]
        if cursor is None:
            break
    caches["redis"].delete("not-a-record")

    assert set(seen) == {claim.storage_key for claim in claims}


@pytest.mark.parametrize("backend_case", [CASES_BY_ID["cache-locmem"]], indirect=True)
def test_locmem_records_are_per_process_and_cannot_be_listed(
    idempotency_backend: BaseBackend,
) -> None:
    assert not idempotency_backend.is_shared_across_processes
    assert not idempotency_backend.supports_listing
    with pytest.raises(NotImplementedError, match="cannot list"):
        idempotency_backend.scan()


@pytest.mark.parametrize("backend_case", [CASES_BY_ID["cache-redis"]], indirect=True)
def test_django_redis_records_are_shared_and_listable(idempotency_backend: BaseBackend) -> None:
    assert idempotency_backend.is_shared_across_processes
    assert idempotency_backend.supports_listing


@cache_cases
def test_the_cache_expires_records_so_there_is_nothing_to_purge(
    idempotency_backend: BaseBackend,
) -> None:
    assert idempotency_backend.has_native_expiry
    assert list(idempotency_backend.purge_expired()) == []
    assert idempotency_backend.count_expired() == 0


@cache_cases
def test_an_unreadable_value_is_a_storage_error(
    backend_case: BackendCase, idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    caches[backend_case.options["CACHE"]].set(KEY_PREFIX + claim.storage_key, b"\x07garbage")

    with pytest.raises(StorageError, match="unreadable record"):
        idempotency_backend.claim(claim)
    with pytest.raises(StorageError, match="unreadable record"):
        idempotency_backend.get(claim.storage_key)


# -- async -------------------------------------------------------------------------


@cache_cases
async def test_async_flavours_follow_the_contract(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim, released = new_claim(), new_claim()

    assert (await idempotency_backend.aclaim(claim)).outcome is ClaimOutcome.CREATED
    assert (await idempotency_backend.aclaim(new_claim(claim.storage_key))).outcome is (
        ClaimOutcome.EXISTING
    )
    assert not await idempotency_backend.acomplete(claim.storage_key, "stranger", RESPONSE, 60)
    assert await idempotency_backend.acomplete(claim.storage_key, claim.owner_token, RESPONSE, 60)
    record = await idempotency_backend.aget(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE
    assert await idempotency_backend.adelete(claim.storage_key)
    await idempotency_backend.aclaim(released)
    assert await idempotency_backend.arelease(released.storage_key, released.owner_token)
    assert await idempotency_backend.aget(released.storage_key) is None


# -- configuration and checks ----------------------------------------------------------


def test_unknown_option_names_the_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"IDEMPOTENCY\['OPTIONS'\]\['ALIAS'\]"):
        CacheBackend({"ALIAS": "default"})


def test_cache_option_must_be_an_alias_string() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"IDEMPOTENCY\['OPTIONS'\]\['CACHE'\]"):
        CacheBackend({"CACHE": 3})


def test_default_alias_is_default() -> None:
    assert CacheBackend().alias == "default"


def test_unknown_alias_is_e010_and_fails_loudly_at_runtime() -> None:
    backend = CacheBackend({"CACHE": "nowhere"})

    messages = backend.check()

    assert [message.id for message in messages] == ["django_idempotency.E010"]
    assert "'nowhere'" in messages[0].msg
    with pytest.raises(ImproperlyConfigured, match="'nowhere'"):
        backend.get("0" * 64)


@pytest.mark.parametrize(
    ("cache_backend", "reason"),
    [
        ("django.core.cache.backends.locmem.LocMemCache", "per process"),
        ("django.core.cache.backends.filebased.FileBasedCache", "checks for the file, then"),
        ("django.core.cache.backends.dummy.DummyCache", "stores nothing"),
        ("django.core.cache.backends.db.DatabaseCache", "expired row"),
    ],
)
def test_cache_without_atomic_add_is_w010_saying_why(cache_backend: str, reason: str) -> None:
    messages = cache_messages({"BACKEND": cache_backend, "LOCATION": "idempotency_checks"})

    assert [message.id for message in messages] == ["django_idempotency.W010"]
    assert isinstance(messages[0], checks.Warning)
    assert reason in messages[0].msg


def test_memcached_passes_the_checks() -> None:
    cache_config = {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": "127.0.0.1:11211",
    }

    assert cache_messages(cache_config) == []


def test_django_redis_cache_gets_an_i010_hint_towards_redis_backend() -> None:
    messages = cache_messages({"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://"})

    assert [message.id for message in messages] == ["django_idempotency.I010"]
    assert isinstance(messages[0], checks.Info)
    assert "RedisBackend" in (messages[0].hint or "")


# -- outage ------------------------------------------------------------------------


def test_unreachable_cache_is_a_storage_error() -> None:
    with override_settings(CACHES={**settings.CACHES, "down": DOWN_CACHE}):
        backend = CacheBackend({"CACHE": "down"})
        claim = make_claim()

        for operation in (
            lambda: backend.claim(claim),
            lambda: backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60),
            lambda: backend.release(claim.storage_key, claim.owner_token),
            lambda: backend.get(claim.storage_key),
            lambda: backend.delete(claim.storage_key),
            lambda: backend.scan(),
        ):
            with pytest.raises(StorageError):
                operation()


@pytest.mark.django_db
def test_cache_outage_answers_503_and_the_view_does_not_run(client: Client) -> None:
    with override_settings(
        CACHES={**settings.CACHES, "down": DOWN_CACHE},
        IDEMPOTENCY={"BACKEND": CACHE, "OPTIONS": {"CACHE": "down"}},
    ):
        response = post(client, key="outage-1")

    assert_problem(response, 503, "storage-unavailable")
    assert response["Retry-After"]
    assert executions() == 0


@pytest.mark.django_db
def test_cache_outage_with_pass_runs_the_view_once_and_warns(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(
            CACHES={**settings.CACHES, "down": DOWN_CACHE},
            IDEMPOTENCY={
                "BACKEND": CACHE,
                "OPTIONS": {"CACHE": "down"},
                "ON_STORAGE_ERROR": "pass",
            },
        ),
        caplog.at_level(logging.WARNING, logger="django_idempotency"),
    ):
        response = post(client, key="outage-2")

    assert response.status_code == 201
    assert executions() == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("storage error on claim" in r.getMessage() for r in warnings), caplog.text
