"""Backend over a Django cache: django-redis, memcached, or any cache with an atomic ``add``.

Records expire natively: an in-progress record lives for its lease, a
completed one for its replay window, so an expired lease simply frees the
key and the next claim is a plain ``CREATED``. Keys are ``"idempotency:" +
storage key`` as the cache names them (its own ``KEY_PREFIX`` and version in
front). Two ways to speak to the cache, chosen from its configuration:

* **django-redis over one server**: the records are written with Redis's own
  commands on the cache's connection pool, exactly as
  :class:`~django_idempotency.backends.redis.RedisBackend` writes them: the
  claim is one ``SET NX PX GET``, complete and release are Lua scripts that
  check the owner token inside Redis, the async methods use ``redis.asyncio``.
  A stale owner can never overwrite or delete the claim of the worker that
  took over, and a replay costs one round trip.
* **any other cache** (memcached, a sharded django-redis, a cache of your
  own): the claim is ``cache.add``, the one operation Django's cache API
  documents as "only if absent", atomic on memcached. But the API has no
  compare-and-set, so complete, renew and release read the record, compare
  the owner token in Python, then write or delete. If a lease expires in the
  instant between the read and the write and another request claims the
  key in that instant, the late write lands on the newcomer's claim (a
  release deletes it, so a third request runs the view again). System check
  ``W011`` says so; use RedisBackend or DatabaseBackend where that matters.

Generic records are :mod:`~django_idempotency.backends.serialization` bytes
stored with ``cache.set``; their async methods keep the base class's single
thread hop per operation, Django's cache API being blocking underneath.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import checks
from django.core.cache import BaseCache, InvalidCacheBackendError, caches
from django.core.cache.backends.db import DatabaseCache
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.core.exceptions import ImproperlyConfigured

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.changes import Watch
from django_idempotency.backends.django_caches import configured_cache_class, is_single_redis
from django_idempotency.backends.serialization import RecordFormatError, dumps, loads
from django_idempotency.records import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Record,
    State,
    StoredResponse,
)

KEY_PREFIX = "idempotency:"
OWNER_LOCK_STRIPES = 64
"""Locks that keep an owner's renewal and its completion apart (see ``_owner_lock``)."""
"""Namespaces the records among the cache's other entries (and lets them be listed)."""
CLAIM_ATTEMPTS = 3
"""``add`` failed but the record was gone when read: it expired or was released
in between, so the claim is tried again, a bounded number of times."""
OPTIONS = frozenset({"CACHE"})

NON_ATOMIC_CACHES: tuple[tuple[type[BaseCache], str], ...] = (
    (
        LocMemCache,
        "LocMemCache keeps entries per process: its add() is atomic within one process "
        "only, so two workers can both claim a key and run the view twice.",
    ),
    (
        FileBasedCache,
        "FileBasedCache.add() checks for the file, then writes it: two processes can both "
        "see no file and both claim the key.",
    ),
    (
        DummyCache,
        "DummyCache stores nothing: every claim succeeds and every retry runs the view again.",
    ),
    (
        DatabaseCache,
        "DatabaseCache.add() replaces an expired row with a plain UPDATE after reading it: "
        "two processes can both replace the same expired record.",
    ),
)
"""Caches whose ``add`` is not atomic across processes, and why (system check W010)."""

_T = TypeVar("_T")


class CacheBackend(BaseBackend):
    """Idempotency records in a Django cache.

    OPTIONS: ``{"CACHE": "default"}``, the alias in ``settings.CACHES``.
    Over LocMemCache the records are per process; over django-redis they are
    owner-checked inside Redis and can be listed; other caches cannot
    enumerate their keys.
    """

    has_native_expiry = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.alias = _alias(self.options)
        cache_class = configured_cache_class(self.alias)
        self.is_shared_across_processes = not (
            cache_class is not None and issubclass(cache_class, LocMemCache)
        )
        self._store: BaseBackend = (
            _redis_store(self.alias) if is_single_redis(self.alias) else _CacheStore(self.alias)
        )
        self.supports_listing = self._store.supports_listing

    # -- the contract: whichever way the cache is spoken to -----------------

    def claim(self, claim: Claim) -> ClaimResult:
        """Write the in-progress record unless one is there; return the one that is.

        The cache's own expiry decides when a record is dead: whatever it
        still returns counts as live (a memcached entry may outlive its
        ``expires_at`` by a second), so there is never a take-over to race.
        """
        return self._store.claim(claim)

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Replace the caller's record by its completed form, living ``ttl`` seconds."""
        return self._store.complete(storage_key, owner_token, response, ttl)

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Push the caller's lease end (and the entry's expiry) ``lease_seconds`` on."""
        return self._store.renew(storage_key, owner_token, lease_seconds)

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the caller's in-progress record."""
        return self._store.release(storage_key, owner_token)

    def get(self, storage_key: str) -> Record | None:
        """The stored record; the cache forgets dead ones by itself."""
        return self._store.get(storage_key)

    def delete(self, storage_key: str) -> bool:
        """Delete whatever is stored under the key."""
        return self._store.delete(storage_key)

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of records, over django-redis only (SCAN, then one MGET)."""
        return self._store.scan(cursor, count)

    def watch(self, storage_key: str) -> Watch:
        """Over django-redis, woken by Redis pub/sub; otherwise a poll."""
        return self._store.watch(storage_key)

    async def awatch(self, storage_key: str) -> Watch:
        """Async :meth:`watch`."""
        return await self._store.awatch(storage_key)

    def close(self) -> None:
        """Close what this backend opened: the Redis commands' clients (a django-redis
        cache's pool stays), or the cache objects of async renewals."""
        self._store.close()

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Async :meth:`claim`."""
        return await self._store.aclaim(claim)

    async def acomplete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Async :meth:`complete`."""
        return await self._store.acomplete(storage_key, owner_token, response, ttl)

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Async :meth:`renew`."""
        return await self._store.arenew(storage_key, owner_token, lease_seconds)

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Async :meth:`release`."""
        return await self._store.arelease(storage_key, owner_token)

    async def aget(self, storage_key: str) -> Record | None:
        """Async :meth:`get`."""
        return await self._store.aget(storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Async :meth:`delete`."""
        return await self._store.adelete(storage_key)

    # -- checks -------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E010 unknown alias; W010 non-atomic ``add``; W011 no compare-and-set."""
        if self.alias not in settings.CACHES:
            return [
                checks.Error(
                    f"IDEMPOTENCY['OPTIONS']['CACHE'] = {self.alias!r} is not a cache alias; "
                    f"settings.CACHES has {sorted(settings.CACHES)}.",
                    hint="Name one of the aliases in settings.CACHES, or add this one.",
                    id="django_idempotency.E010",
                )
            ]
        cache_class = configured_cache_class(self.alias)
        if cache_class is None:
            return []  # Django reports a cache BACKEND that cannot be imported.
        warnings = _atomicity_warnings(self.alias, cache_class)
        if not warnings and isinstance(self._store, _CacheStore):
            warnings.append(_no_compare_and_set_warning(self.alias, cache_class))
        return warnings


def _redis_store(alias: str) -> BaseBackend:
    """A RedisBackend on the django-redis cache's pool, naming keys as the cache does.

    Imported here rather than at the top: only a django-redis cache needs it,
    and redis-py (which the module imports) is installed with django-redis.
    """
    from django_idempotency.backends.redis import RedisBackend

    key_prefix = str(caches[alias].make_key(KEY_PREFIX))
    return RedisBackend({"CACHE": alias, "KEY_PREFIX": key_prefix})


def _lease_slack(alias: str) -> int:
    """Seconds a claim's cache entry must outlive its lease on this cache.

    memcached keeps time in whole seconds on a clock it advances once a
    second, so an entry stored for ``n`` seconds can vanish up to a second
    early: a claim renewed every third of a 1 s lease was measured gone
    before its first renewal, and a retry ran the view again. A second more
    keeps a claim at least as long as its lease; the engine reads a claim
    still there as live, so the slack can delay a takeover by that second,
    never allow an early one. Other caches expire on time. A completed
    record needs no slack: ending its replay window early runs no view twice.
    """
    cache_class = configured_cache_class(alias)
    return 1 if cache_class is not None and issubclass(cache_class, BaseMemcachedCache) else 0


class _CacheStore(BaseBackend):
    """Records through Django's cache API: ``add`` to claim, read-compare-write after."""

    has_native_expiry = True
    supports_listing = False

    def __init__(self, alias: str) -> None:
        super().__init__()
        self.alias = alias
        self._lease_slack = _lease_slack(alias)
        self._renewal_caches = threading.local()
        self._renewal_cache_objects: list[BaseCache] = []
        """Every renewal thread's cache object, for :meth:`close`."""
        self._renewal_cache_objects_lock = threading.Lock()
        self._owner_locks = tuple(threading.Lock() for _ in range(OWNER_LOCK_STRIPES))

    def claim(self, claim: Claim) -> ClaimResult:
        """``cache.add`` the in-progress record, or return the record already there."""
        cache = self._cache()
        cache_key = KEY_PREFIX + claim.storage_key
        record = Record.from_claim(claim, self.now())
        value = dumps(record)
        for _ in range(CLAIM_ATTEMPTS):
            if self._call(
                cache.add, cache_key, value, timeout=claim.lease_seconds + self._lease_slack
            ):
                return ClaimResult(ClaimOutcome.CREATED, record)
            existing = self._load(cache, claim.storage_key)
            if existing is None:
                continue
            return ClaimResult.of_live(existing, claim.owner_token)
        raise StorageError(
            f"Cache {self.alias!r} refused to add the claim {CLAIM_ATTEMPTS} times while "
            "holding no record for it."
        )

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Read, compare, write: not atomic (see the module docstring).

        A record already completed by this owner is left as it is: a stored
        response never changes while it can be replayed.
        """
        with self._owner_lock(storage_key):
            return self._complete(storage_key, owner_token, response, ttl)

    def _complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        cache = self._cache()
        current = self._load(cache, storage_key)
        if current is None or current.owner_token != owner_token:
            return False
        if current.state is State.COMPLETED:
            return True
        now = self.now()
        value = dumps(current.completed(response, now, ttl))
        unkept = current.completed(response._replace(body=None), now, ttl)
        key = KEY_PREFIX + storage_key
        # set_many, not set: it reports the keys the cache refused where set()
        # would delete the key itself (Django's memcached caches do).
        try:
            refused = self._call(cache.set_many, {key: value}, timeout=ttl)
        except StorageError:
            self._keep_executed(cache, key, unkept, ttl)
            raise
        if refused:
            self._keep_executed(cache, key, unkept, ttl)
            raise StorageError(
                f"Cache {self.alias!r} refused the completed record ({len(value)} bytes); "
                "memcached's largest item is 1 MB unless it runs with -I."
            )
        return True

    def _keep_executed(self, cache: BaseCache, key: str, unkept: Record, ttl: int) -> None:
        """After the cache refused the completed record, leave the key saying the view ran.

        memcached unlinks a key's entry when it refuses a new value for it
        (over its item size, 1 MB by default): the claim is gone, and a retry
        would run the view again. So the record is added again at once,
        completed without its body (only if absent: a request that claimed the
        key in the instant between keeps it, the one window left). The
        engine then records the key as executed without its response, finds
        this owner's completed record, and leaves it.
        """
        with suppress(StorageError):  # the cache may be down altogether
            self._call(cache.add, key, dumps(unkept), timeout=ttl)

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Read, compare, write the record with its new lease end and expiry."""
        return self._renew(self._cache(), storage_key, owner_token, lease_seconds)

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Async :meth:`renew`, on a cache object of the renewing thread's own.

        An async view's renewal runs in a thread beside the request's (see
        :meth:`BaseBackend.arenew`), and asgiref carries the request's context,
        hence ``caches[alias]``, into that thread. Django's cache objects are
        one per thread: a memcached client used by the view and the renewal at
        once, or closed by ``request_finished`` under the renewal, fails with
        "Bad file descriptor". So renewals use a cache object built for their
        thread and never shared.
        """
        return await sync_to_async(self._renew_on_own_cache, thread_sensitive=False)(
            storage_key, owner_token, lease_seconds
        )

    def _renew_on_own_cache(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        cache = getattr(self._renewal_caches, "cache", None)
        if cache is None:
            cache = self._renewal_caches.cache = self._cache(shared=False)
            with self._renewal_cache_objects_lock:
                self._renewal_cache_objects.append(cache)
        return self._renew(cache, storage_key, owner_token, lease_seconds)

    def close(self) -> None:
        """Close the renewal threads' cache objects (the request's are Django's to close).

        A renewal thread that renews again afterwards builds a new one.
        """
        with self._renewal_cache_objects_lock:
            opened, self._renewal_cache_objects = self._renewal_cache_objects, []
            self._renewal_caches = threading.local()
        for cache in opened:
            cache.close()

    def _renew(
        self, cache: BaseCache, storage_key: str, owner_token: str, lease_seconds: int
    ) -> bool:
        with self._owner_lock(storage_key):
            current = self._load(cache, storage_key)
            if current is None or not current.is_claim_of(owner_token):
                return False
            renewed = current.renewed(self.now(), lease_seconds)
            self._call(
                cache.set,
                KEY_PREFIX + storage_key,
                dumps(renewed),
                timeout=lease_seconds + self._lease_slack,
            )
            return True

    def _owner_lock(self, storage_key: str) -> threading.Lock:
        """The lock serialising this process's writes to ``storage_key``'s record.

        The owner renews its lease from the renewal thread while its request
        completes or releases the claim. Each is a read, a compare, then a
        write: a renewal that read the claim just before the completion wrote
        would write the in-progress claim back over the stored response (6 in
        300 forced races on memcached), and once its lease ended a retry would
        run the view again. All three run in the owner's process, so a lock
        there keeps them apart; striped, so requests for other keys never wait.
        """
        return self._owner_locks[hash(storage_key) % OWNER_LOCK_STRIPES]

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Read, compare, delete."""
        cache = self._cache()
        with self._owner_lock(storage_key):
            current = self._load(cache, storage_key)
            if (
                current is None
                or current.owner_token != owner_token
                or current.state is not State.IN_PROGRESS
            ):
                return False
            return bool(self._call(cache.delete, KEY_PREFIX + storage_key))

    def get(self, storage_key: str) -> Record | None:
        return self._load(self._cache(), storage_key)

    def delete(self, storage_key: str) -> bool:
        return bool(self._call(self._cache().delete, KEY_PREFIX + storage_key))

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        raise NotImplementedError(
            f"Cache {self.alias!r} cannot list its keys; only django-redis caches can."
        )

    def _cache(self, *, shared: bool = True) -> BaseCache:
        """The cache of the current thread (Django keeps one per thread), or a new one.

        A missing alias is a storage error (503), as a missing database alias
        is for DatabaseBackend; system check E010 reports it.
        """
        try:
            return caches[self.alias] if shared else caches.create_connection(self.alias)
        except (InvalidCacheBackendError, KeyError) as error:  # KeyError: create_connection's
            raise StorageError(
                f"IDEMPOTENCY['OPTIONS']['CACHE'] = {self.alias!r} cannot be used: {error}"
            ) from error

    def _load(self, cache: BaseCache, storage_key: str) -> Record | None:
        value = self._call(cache.get, KEY_PREFIX + storage_key)
        return None if value is None else self._decode(value, storage_key)

    def _decode(self, value: object, storage_key: str) -> Record:
        if not isinstance(value, bytes):
            raise StorageError(
                f"Cache {self.alias!r} holds a {type(value).__name__}, not a record, under an "
                "idempotency key."
            )
        try:
            return loads(value, storage_key)
        except RecordFormatError as error:
            raise StorageError(
                f"Cache {self.alias!r} holds an unreadable record: {error}"
            ) from error

    def _call(self, operation: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one cache operation, wrapping whatever its driver raises.

        Each cache library raises its own errors (redis-py, pymemcache,
        pylibmc, the database's, OSError for files) and a generic backend
        cannot name them all, so every exception becomes a StorageError.
        """
        try:
            return operation(*args, **kwargs)
        except Exception as error:
            raise StorageError(f"Cache {self.alias!r} failed: {error!r}") from error


def _alias(options: Mapping[str, Any]) -> str:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        names = ", ".join(f"IDEMPOTENCY['OPTIONS'][{name!r}]" for name in unknown)
        raise ImproperlyConfigured(
            f"Unknown option(s) for CacheBackend: {names}; the only option is "
            "IDEMPOTENCY['OPTIONS']['CACHE'] (a settings.CACHES alias)."
        )
    alias = options.get("CACHE", "default")
    if not isinstance(alias, str) or not alias:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['CACHE'] must be a settings.CACHES alias (a non-empty "
            f"string); got {alias!r}."
        )
    return alias


def _atomicity_warnings(alias: str, cache_class: type[BaseCache]) -> list[checks.CheckMessage]:
    return [
        checks.Warning(
            f"IDEMPOTENCY['OPTIONS']['CACHE'] = {alias!r} is a {cache_class.__name__}, whose "
            f"add() is not atomic across processes. {reason}",
            hint="Use DatabaseBackend, RedisBackend, or CacheBackend over memcached or Redis.",
            id="django_idempotency.W010",
        )
        for unsafe, reason in NON_ATOMIC_CACHES
        if issubclass(cache_class, unsafe)
    ]


def _no_compare_and_set_warning(alias: str, cache_class: type[BaseCache]) -> checks.Warning:
    return checks.Warning(
        f"IDEMPOTENCY['OPTIONS']['CACHE'] = {alias!r} is a {cache_class.__name__}: Django's "
        "cache API has no compare-and-set, so completing or releasing a claim reads the "
        "record, then writes or deletes it. A worker whose lease ends between the two can "
        "overwrite or delete the claim of the worker that took over, and the view can then "
        "run twice.",
        hint="Use CacheBackend over django-redis, RedisBackend or DatabaseBackend, which check "
        "the owner in the store; or keep LOCK_TTL far above the slowest view's run time.",
        id="django_idempotency.W011",
    )
