"""CacheBackend over a real LocMemCache and a real django-redis cache: what only it does.

The contract (``test_backend_contract.py``) and what CacheBackend shares with
RedisBackend (``test_cache_and_redis_backends.py``) run over these caches too;
this module holds how CacheBackend lists, decodes and checks its cache.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.cache import KEY_PREFIX, CacheBackend
from tests.backends import CASES_BY_ID, BackendCase
from tests.conftest import NewClaim
from tests.storage import scanned_keys

CACHE_CASES = [CASES_BY_ID["cache-locmem"], CASES_BY_ID["cache-redis"]]
cache_cases = pytest.mark.parametrize(
    "backend_case", CACHE_CASES, indirect=True, ids=[case.id for case in CACHE_CASES]
)
django_redis_case = pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["cache-redis"]], indirect=True, ids=["cache-redis"]
)
locmem_case = pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["cache-locmem"]], indirect=True, ids=["cache-locmem"]
)


def cache_messages(cache_config: dict[str, Any]) -> list[checks.CheckMessage]:
    """The checks of a CacheBackend over a cache configured as ``cache_config``."""
    with override_settings(CACHES={**settings.CACHES, "checked": cache_config}):
        return CacheBackend({"CACHE": "checked"}).check()


# -- listing and stored values --------------------------------------------------------


@django_redis_case
def test_django_redis_records_are_listed_page_by_page(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claims = [new_claim() for _ in range(7)]
    for claim in claims:
        idempotency_backend.claim(claim)
    caches["redis"].set("not-a-record", b"other entries of the cache are not listed")
    try:
        seen = scanned_keys(idempotency_backend, 3, max_pages=50)
    finally:
        caches["redis"].delete("not-a-record")

    assert set(seen) == {claim.storage_key for claim in claims}


@locmem_case
def test_locmem_records_are_per_process_and_cannot_be_listed(
    idempotency_backend: BaseBackend,
) -> None:
    assert not idempotency_backend.is_shared_across_processes
    assert not idempotency_backend.supports_listing
    with pytest.raises(NotImplementedError, match="cannot list"):
        idempotency_backend.scan()


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
