"""What CacheBackend and RedisBackend promise beyond the contract, and their outages.

Both keep each record as one value that the store itself expires, so they
share behaviour the database and memory backends do not: a record comes
back exactly as written, and there is never anything to purge. Tests run once per
case: CacheBackend over LocMemCache and django-redis, RedisBackend over the
django-redis cache's pool and over a pool of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import Client, override_settings
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.records import ClaimOutcome
from tests.backends import CACHE, CASES_BY_ID, REDIS_NATIVE, REDIS_URL_CASE
from tests.conftest import NewClaim
from tests.http import assert_problem, executions, post
from tests.services import REDIS
from tests.storage import RESPONSE, make_claim

CACHE_AND_REDIS_CASES = [
    CASES_BY_ID["cache-locmem"],
    CASES_BY_ID["cache-memcached"],
    CASES_BY_ID["cache-redis"],
    CASES_BY_ID["redis"],
    REDIS_URL_CASE,
]
REDIS_CASES = [case for case in CACHE_AND_REDIS_CASES if case.service == REDIS]
cache_and_redis_cases = pytest.mark.parametrize(
    "backend_case",
    CACHE_AND_REDIS_CASES,
    indirect=True,
    ids=[case.id for case in CACHE_AND_REDIS_CASES],
)
redis_cases = pytest.mark.parametrize(
    "backend_case", REDIS_CASES, indirect=True, ids=[case.id for case in REDIS_CASES]
)

DOWN_CACHE = {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "redis://127.0.0.1:1/0",
    "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
}
DOWN_URL = "redis://127.0.0.1:1/0"


@dataclass(frozen=True)
class DownStore:
    """An ``IDEMPOTENCY`` setting whose store does not answer, and how its errors read."""

    id: str
    idempotency: dict[str, Any]
    failure: str

    def backend(self) -> BaseBackend:
        """A backend of this setting, built as ``conf`` builds it."""
        backend: BaseBackend = import_string(self.idempotency["BACKEND"])(
            self.idempotency["OPTIONS"]
        )
        return backend


DOWN_STORES = [
    DownStore("cache", {"BACKEND": CACHE, "OPTIONS": {"CACHE": "down"}}, "Cache 'down' failed"),
    DownStore("redis", {"BACKEND": REDIS_NATIVE, "OPTIONS": {"URL": DOWN_URL}}, "Redis failed"),
]


@pytest.fixture(params=DOWN_STORES, ids=[store.id for store in DOWN_STORES])
def down_store(request: pytest.FixtureRequest) -> Iterator[DownStore]:
    """Each unreachable store in turn, with the unreachable cache alias ``down`` configured."""
    with override_settings(CACHES={**settings.CACHES, "down": DOWN_CACHE}):
        yield request.param


# -- claim and complete --------------------------------------------------------------


@cache_and_redis_cases
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


# -- what the store can do -------------------------------------------------------------


@cache_and_redis_cases
def test_the_store_expires_records_so_there_is_nothing_to_purge(
    idempotency_backend: BaseBackend,
) -> None:
    assert idempotency_backend.has_native_expiry
    assert list(idempotency_backend.purge_expired()) == []
    assert idempotency_backend.count_expired() == 0


@redis_cases
def test_records_in_redis_are_shared_and_listable(idempotency_backend: BaseBackend) -> None:
    assert idempotency_backend.is_shared_across_processes
    assert idempotency_backend.supports_listing


# -- outage ----------------------------------------------------------------------------


def test_unreachable_store_is_a_storage_error_answered_fast(down_store: DownStore) -> None:
    backend = down_store.backend()
    claim = make_claim()
    started = time.monotonic()

    for operation in (
        lambda: backend.claim(claim),
        lambda: backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60),
        lambda: backend.release(claim.storage_key, claim.owner_token),
        lambda: backend.get(claim.storage_key),
        lambda: backend.delete(claim.storage_key),
        lambda: backend.scan(),
        lambda: async_to_sync(backend.aclaim)(claim),
        lambda: async_to_sync(backend.acomplete)(claim.storage_key, "o", RESPONSE, 60),
        lambda: async_to_sync(backend.arelease)(claim.storage_key, claim.owner_token),
        lambda: async_to_sync(backend.aget)(claim.storage_key),
        lambda: async_to_sync(backend.adelete)(claim.storage_key),
    ):
        with pytest.raises(StorageError, match=down_store.failure):
            operation()
    backend.close()

    assert time.monotonic() - started < 5


@pytest.mark.django_db
def test_store_outage_answers_503_and_the_view_does_not_run(
    client: Client, down_store: DownStore
) -> None:
    with override_settings(IDEMPOTENCY=down_store.idempotency):
        response = post(client, key="outage-1")

    assert_problem(response, 503, "storage-unavailable")
    assert response["Retry-After"]
    assert executions() == 0


@pytest.mark.django_db
def test_store_outage_with_pass_runs_the_view_once_and_warns(
    client: Client, down_store: DownStore, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(IDEMPOTENCY={**down_store.idempotency, "ON_STORAGE_ERROR": "pass"}),
        caplog.at_level(logging.WARNING, logger="django_idempotency"),
    ):
        response = post(client, key="outage-2")

    assert response.status_code == 201
    assert executions() == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("storage error on claim" in r.getMessage() for r in warnings), caplog.text
