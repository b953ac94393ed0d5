"""CacheBackend over a real LocMemCache and a real django-redis cache: what only it does.

The contract (``test_backend_contract.py``) and what CacheBackend shares with
RedisBackend (``test_cache_and_redis_backends.py``) run over these caches too;
this module holds how CacheBackend lists, decodes and checks its cache.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.cache import KEY_PREFIX, CacheBackend
from django_idempotency.records import Claim, State
from tests.backends import CASES_BY_ID, BackendCase
from tests.conftest import NewClaim, require_service
from tests.latency import slow_replies
from tests.services import REDIS
from tests.storage import RESPONSE, make_claim, scanned_keys

CACHE_CASES = [CASES_BY_ID[id] for id in ("cache-locmem", "cache-memcached", "cache-redis")]
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


def test_unknown_alias_is_e010_and_a_storage_error_at_runtime() -> None:
    backend = CacheBackend({"CACHE": "nowhere"})

    messages = backend.check()

    assert [message.id for message in messages] == ["django_idempotency.E010"]
    assert "'nowhere'" in messages[0].msg
    with pytest.raises(StorageError, match="'nowhere'"):
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


@pytest.mark.parametrize(
    "cache_backend",
    [
        "django.core.cache.backends.memcached.PyMemcacheCache",
        "django.core.cache.backends.memcached.PyLibMCCache",
    ],
)
def test_cache_without_compare_and_set_is_w011_saying_what_can_happen(cache_backend: str) -> None:
    messages = cache_messages({"BACKEND": cache_backend, "LOCATION": "127.0.0.1:11211"})

    assert [message.id for message in messages] == ["django_idempotency.W011"]
    assert isinstance(messages[0], checks.Warning)
    assert "no compare-and-set" in messages[0].msg
    assert "the view can then run twice" in messages[0].msg


def test_sharded_django_redis_cannot_check_the_owner_and_is_w011() -> None:
    messages = cache_messages(
        {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"],
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
        }
    )

    assert [message.id for message in messages] == ["django_idempotency.W011"]


def test_django_redis_cache_checks_the_owner_in_redis_and_passes_the_checks() -> None:
    assert (
        cache_messages({"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://"}) == []
    )


# -- owner checks under latency --------------------------------------------------------


@pytest.mark.parametrize("operation", ["release", "complete"])
def test_a_stale_owner_on_a_slow_connection_never_undoes_the_claim_that_took_over(
    operation: str,
) -> None:
    """A worker whose lease ends while its release or complete is on the wire.

    Its connection to Redis answers 0.6 s late. Reading the record, then
    writing or deleting it after the answer came back, would act on the claim
    of the worker that took over meanwhile (deleting it lets a third request
    run the view; overwriting it replays the stale worker's response to the
    newcomer's client). Checked inside Redis, the stale operation lands on its
    own record or on nothing.
    """
    require_service(REDIS)
    redis_config = settings.CACHES["redis"]
    with slow_replies(REDIS.host, REDIS.port, delay=0.6) as port:
        slow_config = {**redis_config, "LOCATION": f"redis://127.0.0.1:{port}/0"}
        with override_settings(CACHES={**settings.CACHES, "redis-slow": slow_config}):
            fast, slow = CacheBackend({"CACHE": "redis"}), CacheBackend({"CACHE": "redis-slow"})
            stale = make_claim(lease=1)
            try:
                # Connect (and load the scripts) before the race, not during it.
                slow.release(stale.storage_key, "warm-up")
                assert fast.claim(stale).claimed
                lease_ends = time.time() + 1
                time.sleep(0.6)
                finisher = threading.Thread(
                    target=_finish, args=(slow, stale, operation), daemon=True
                )
                finisher.start()
                time.sleep(max(0.0, lease_ends - time.time()) + 0.1)
                newcomer = make_claim(stale.storage_key, lease=30)
                result = fast.claim(newcomer)
                finisher.join(10)
                assert not finisher.is_alive()
                record = fast.get(stale.storage_key)
            finally:
                fast.delete(stale.storage_key)
                fast.close()
                slow.close()

    if result.claimed:
        assert record is not None
        assert record.owner_token == newcomer.owner_token
        assert record.state is State.IN_PROGRESS
    else:  # the stale complete landed first, on its own record: the newcomer replays it
        assert operation == "complete"
        assert result.record.owner_token == stale.owner_token


def _finish(backend: BaseBackend, claim: Claim, operation: str) -> None:
    if operation == "release":
        backend.release(claim.storage_key, claim.owner_token)
    else:
        backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)


# -- the cache objects it uses ----------------------------------------------------------


@pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["cache-memcached"]], indirect=True, ids=["cache-memcached"]
)
async def test_async_renewals_never_share_the_requests_cache_object(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    """An async view's renewal runs in another thread, which asgiref hands the
    request's context; the request keeps using (and finally closes) its own
    ``caches[alias]`` meanwhile. A memcached client shared by both fails with
    "Bad file descriptor"; each renewal must keep to a cache object of its own."""
    claim = new_claim()
    assert (await idempotency_backend.aclaim(claim)).outcome.name == "CREATED"
    request_cache = caches["memcached"]  # what this context's threads are handed
    stop = threading.Event()

    def use_and_close_like_a_request() -> None:
        while not stop.is_set():
            request_cache.get("another-key")
            request_cache.close()  # as request_finished does

    request_thread = threading.Thread(target=use_and_close_like_a_request)
    request_thread.start()
    try:
        renewed = [
            await idempotency_backend.arenew(claim.storage_key, claim.owner_token, 30)
            for _ in range(300)
        ]
    finally:
        stop.set()
        request_thread.join(5)

    assert renewed == [True] * 300


@pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["cache-memcached"]], indirect=True, ids=["cache-memcached"]
)
async def test_closing_the_backend_closes_the_async_renewals_cache_objects(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    """The renewal threads' memcached connections end with the backend, not with the process."""
    claim = new_claim()
    assert (await idempotency_backend.aclaim(claim)).outcome.name == "CREATED"
    assert await idempotency_backend.arenew(claim.storage_key, claim.owner_token, 30)
    store = idempotency_backend._store  # type: ignore[attr-defined]
    [renewal_cache] = store._renewal_cache_objects

    assert _open_sockets(renewal_cache) == 1
    idempotency_backend.close()

    assert _open_sockets(renewal_cache) == 0
    assert await idempotency_backend.arenew(claim.storage_key, claim.owner_token, 30)
    assert store._renewal_cache_objects != [renewal_cache]  # a new one, closed next time


def _open_sockets(cache: Any) -> int:
    """The connected sockets of a PyMemcacheCache's pymemcache clients."""
    return sum(client.sock is not None for client in cache._cache.clients.values())
