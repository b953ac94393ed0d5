"""Backend over any Django cache whose ``add`` is atomic (memcached, Redis).

The claim is ``cache.add``: the one operation Django's cache API documents as
"only if absent", atomic on memcached and Redis. Records expire natively: an
in-progress record lives for its lease, a completed one for its replay
window, so an expired lease simply frees the key and the next claim is a
plain ``CREATED``.

What a generic cache cannot do is compare-and-set: :meth:`CacheBackend.complete`
and :meth:`CacheBackend.release` read the record, compare the owner token in
Python, then write or delete. If the lease expires in the instant between the
read and the write and another request claims the key in that instant, the
late write lands on the newcomer's claim. Leases are tens of seconds and the
window is one cache round trip, but it exists: use
:class:`~django_idempotency.backends.redis.RedisBackend`, which does both
checks inside Redis, when that matters.

Records are stored as :mod:`~django_idempotency.backends.serialization`
bytes under ``"idempotency:" + storage key`` (the cache adds its own
``KEY_PREFIX`` and version). The async methods keep the base class's single
thread hop per operation: Django's cache API is blocking underneath.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from django.conf import settings
from django.core import checks
from django.core.cache import BaseCache, InvalidCacheBackendError, caches
from django.core.cache.backends.db import DatabaseCache
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend, StorageError
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
    Over LocMemCache the records are per process; with django-redis they can
    be listed (SCAN); other caches cannot enumerate their keys.
    """

    has_native_expiry = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.alias = _alias(self.options)
        cache_class = configured_cache_class(self.alias)
        self.is_shared_across_processes = not (
            cache_class is not None and issubclass(cache_class, LocMemCache)
        )
        self.supports_listing = cache_class is not None and _is_listable(self.alias, cache_class)

    # -- the contract -------------------------------------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """``cache.add`` the in-progress record, or return the record already there.

        The cache's own expiry decides when a record is dead: whatever ``get``
        still returns counts as live (a memcached entry may outlive its
        ``expires_at`` by a second), so there is never a take-over to race.
        """
        cache = self._cache()
        cache_key = KEY_PREFIX + claim.storage_key
        record = Record.from_claim(claim, self.now())
        value = dumps(record)
        for _ in range(CLAIM_ATTEMPTS):
            if self._call(cache.add, cache_key, value, timeout=claim.lease_seconds):
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
        """Replace the caller's record by its completed form, living ``ttl`` seconds.

        Read, compare, write: not atomic (see the module docstring). A record
        already completed by this owner is left as it is: a stored response
        never changes while it can be replayed.
        """
        cache = self._cache()
        current = self._load(cache, storage_key)
        if current is None or current.owner_token != owner_token:
            return False
        if current.state is State.COMPLETED:
            return True
        completed = current.completed(response, self.now(), ttl)
        self._call(cache.set, KEY_PREFIX + storage_key, dumps(completed), timeout=ttl)
        return True

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the caller's in-progress record (read, compare, delete)."""
        cache = self._cache()
        current = self._load(cache, storage_key)
        if (
            current is None
            or current.owner_token != owner_token
            or current.state is not State.IN_PROGRESS
        ):
            return False
        return bool(self._call(cache.delete, KEY_PREFIX + storage_key))

    def get(self, storage_key: str) -> Record | None:
        """The stored record; the cache forgets dead ones by itself."""
        return self._load(self._cache(), storage_key)

    def delete(self, storage_key: str) -> bool:
        """Delete whatever is stored under the key."""
        cache = self._cache()
        return bool(self._call(cache.delete, KEY_PREFIX + storage_key))

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of records, over django-redis only: SCAN, then one MGET."""
        if not self.supports_listing:
            raise NotImplementedError(
                f"Cache {self.alias!r} cannot list its keys; only django-redis caches can."
            )
        # django-redis is installed, so redis-py is too.
        from django_idempotency.backends.redis import scan_keys

        cache: Any = self._cache()
        client = cache.client
        pattern = client.make_pattern(KEY_PREFIX + "*")
        raw_keys, next_cursor = self._call(
            scan_keys, client.get_client(write=False), pattern, cursor, count
        )
        cache_keys = [client.reverse_key(raw.decode()) for raw in raw_keys]
        values = self._call(cache.get_many, cache_keys)
        records = [
            self._decode(values[cache_key], cache_key.removeprefix(KEY_PREFIX))
            for cache_key in cache_keys
            if cache_key in values
        ]
        return records, next_cursor

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E010 unknown alias, W010 non-atomic ``add``, I010 RedisBackend would do better."""
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
        return _atomicity_warnings(self.alias, cache_class) + _redis_hints(self.alias, cache_class)

    # -- helpers ------------------------------------------------------------

    def _cache(self) -> BaseCache:
        """The cache of the current thread (Django keeps one per thread)."""
        try:
            return caches[self.alias]
        except InvalidCacheBackendError as error:
            raise ImproperlyConfigured(
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


def configured_cache_class(alias: str) -> type[BaseCache] | None:
    """The BACKEND class of ``settings.CACHES[alias]``, without building the cache."""
    config = settings.CACHES.get(alias)
    if not isinstance(config, Mapping):
        return None
    try:
        cache_class = import_string(config.get("BACKEND", ""))
    except ImportError:
        return None
    if isinstance(cache_class, type) and issubclass(cache_class, BaseCache):
        return cache_class
    return None


def is_django_redis(cache_class: type[BaseCache]) -> bool:
    """Whether the cache is django-redis's (whose raw client RedisBackend can reuse)."""
    try:
        from django_redis.cache import RedisCache
    except ImportError:
        return False
    return issubclass(cache_class, RedisCache)


def _is_listable(alias: str, cache_class: type[BaseCache]) -> bool:
    """django-redis over one server: a SCAN there sees every key (not so when sharded)."""
    if not is_django_redis(cache_class):
        return False
    from django_redis.client import ShardClient

    client_path = settings.CACHES[alias].get("OPTIONS", {}).get("CLIENT_CLASS", "")
    if not client_path:
        return True
    try:
        client_class = import_string(client_path)
    except ImportError:
        return False
    return not (isinstance(client_class, type) and issubclass(client_class, ShardClient))


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


def _redis_hints(alias: str, cache_class: type[BaseCache]) -> list[checks.CheckMessage]:
    if not is_django_redis(cache_class):
        return []
    return [
        checks.Info(
            f"IDEMPOTENCY['OPTIONS']['CACHE'] = {alias!r} is a django-redis cache: "
            "RedisBackend can use its connection pool, replay in one round trip and check "
            "the owner token inside Redis when completing or releasing a claim.",
            hint="Set IDEMPOTENCY['BACKEND'] = 'django_idempotency.backends.redis.RedisBackend' "
            f"with IDEMPOTENCY['OPTIONS'] = {{'CACHE': {alias!r}}}.",
            id="django_idempotency.I010",
        )
    ]
