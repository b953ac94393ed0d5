"""Native Redis backend: a replay costs one command, a first execution two.

Each record is one Redis string holding the
:mod:`~django_idempotency.backends.serialization` bytes, under
``KEY_PREFIX + storage key``; Redis's own expiry forgets it (in progress: the
lease, completed: the replay window), so there is nothing to purge.

* **claim** is ``SET key record NX PX lease GET`` (Redis >= 7.0): one
  command, no script, that either writes the in-progress record or answers
  the record already there. A replay is that command and nothing else.
* **complete** and **release** are Lua scripts (EVALSHA) that compare the
  owner token inside Redis before they write or delete, so a worker whose
  lease expired and was taken over can never touch the new owner's record.
  A string, rather than a hash, is what lets the claim be a single ``SET``;
  the record's format keeps the state and the owner token at fixed offsets
  in front so the scripts can check them without parsing the rest, and
  completing is a splice (flip the state byte, append the response).

Two ways to connect, chosen in OPTIONS:

* ``{"CACHE": "<alias>"}`` reuses the connection pool of a django-redis cache
  (``django_redis.get_redis_connection``); its timeouts and retries are the
  cache's (``SOCKET_CONNECT_TIMEOUT`` / ``SOCKET_TIMEOUT`` in its OPTIONS).
  Unless ``KEY_PREFIX`` is given, keys start with the cache's ``KEY_PREFIX``.
* ``{"URL": "redis://..."}`` opens a pool of its own, with short socket
  timeouts (``SOCKET_CONNECT_TIMEOUT``, ``SOCKET_TIMEOUT``, in seconds) and one
  immediate retry, so that an outage is answered with a 503 in about a second.
  Retrying is safe: a claim that finds its own owner token is ours, and a
  complete that finds its own completed record reports success.

The async methods use ``redis.asyncio`` with a client built from the same URL
or connection settings. An asyncio connection belongs to the event loop that
opened it, so there is one client per running loop, closed when that loop
shuts down (``asyncio.run`` and ``async_to_sync`` finalize async generators,
which is the hook used) or when :meth:`RedisBackend.close` is called.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.cache import configured_cache_class, is_django_redis
from django_idempotency.backends.serialization import (
    FORMAT_VERSION,
    OWNER_TOKEN_OFFSET,
    STATE_COMPLETED,
    STATE_IN_PROGRESS,
    RecordFormatError,
    dump_completion,
    dumps,
    loads,
)
from django_idempotency.records import Claim, ClaimOutcome, ClaimResult, Record, StoredResponse

DEFAULT_KEY_PREFIX = "idempotency:"
DEFAULT_SOCKET_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 2.0
OPTIONS = frozenset({"CACHE", "URL", "KEY_PREFIX", "SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT"})
URL_ONLY_OPTIONS = ("SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT")
MAX_SCAN_COUNT = 1000
"""The COUNT hint of one SCAN call: bounds the work Redis does per call."""
MAX_SCAN_CALLS = 10
"""SCAN calls one page may make to fill itself before it returns fewer records."""

# Lua positions are 1-based: byte 1 is the version, 2 the state, 3 the token's
# length, the token starts at byte 4.
_RECORD_CHECKS = f"""
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
if string.byte(value, 1) ~= {FORMAT_VERSION} then
  return redis.error_reply('idempotency record format '
    .. tostring(string.byte(value, 1)) .. ' is not {FORMAT_VERSION}')
end
local length = string.byte(value, {OWNER_TOKEN_OFFSET})
if string.sub(value, {OWNER_TOKEN_OFFSET + 1}, {OWNER_TOKEN_OFFSET} + length) ~= ARGV[1] then
  return 0
end
local state = string.byte(value, 2)
"""

COMPLETE_SCRIPT = (
    _RECORD_CHECKS
    + f"""
if state == {STATE_COMPLETED} then return 1 end
redis.call('SET', KEYS[1],
  string.sub(value, 1, 1) .. string.char({STATE_COMPLETED}) .. string.sub(value, 3) .. ARGV[2],
  'PX', ARGV[3])
return 1
"""
)
"""KEYS: record key. ARGV: owner token, completion bytes, ttl in ms. 1 if stored.

A record this owner already completed stays as it is (a retried complete):
a stored response never changes while it can be replayed."""

RELEASE_SCRIPT = (
    _RECORD_CHECKS
    + f"""
if state ~= {STATE_IN_PROGRESS} then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
)
"""KEYS: record key. ARGV: owner token. 1 if the in-progress record was deleted."""

_ASYNC_CONNECTION_CLASSES: dict[type[Any], type[Any]] = {
    redis.connection.Connection: redis.asyncio.connection.Connection,
    redis.connection.SSLConnection: redis.asyncio.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection: (
        redis.asyncio.connection.UnixDomainSocketConnection
    ),
}
_PORTABLE_CONNECTION_KWARGS = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "protocol",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_password",
    }
)
"""Sync connection settings that mean the same to an asyncio connection."""


def _driver_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
    try:
        from django_redis.exceptions import ConnectionInterrupted
    except ImportError:  # URL mode needs no django-redis
        return errors
    return (*errors, ConnectionInterrupted)


@dataclass(frozen=True)
class _Connection:
    """A client with its scripts registered (sync or asyncio flavour)."""

    client: Any
    complete: Any
    release: Any
    pool: Any | None
    """The pool to disconnect on close; None when it belongs to a django-redis cache."""


class RedisBackend(BaseBackend):
    """Idempotency records in Redis (>= 7.0), through its native commands.

    OPTIONS: ``{"CACHE": "<django-redis alias>"}`` or ``{"URL": "redis://..."}``;
    optional ``"KEY_PREFIX"``; with URL, ``"SOCKET_CONNECT_TIMEOUT"`` (default
    1.0) and ``"SOCKET_TIMEOUT"`` (default 2.0) seconds.
    """

    has_native_expiry = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        _validate_options(self.options)
        self.key_prefix = _key_prefix(self.options)
        self._prefix_bytes = self.key_prefix.encode()
        self._sync: _Connection | None = None
        self._sync_lock = threading.Lock()
        self._loops = _LoopClients(self._connect_async)
        self._driver_errors = _driver_errors()

    # -- the contract -------------------------------------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """One ``SET NX PX GET``: our new record, or the one already there."""
        record = Record.from_claim(claim, self.now())
        with self._errors("claim"):
            existing = self._connection().client.set(
                self._key(claim.storage_key),
                dumps(record),
                nx=True,
                px=claim.lease_seconds * 1000,
                get=True,
            )
            return self._claim_result(claim, record, existing)

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """One EVALSHA that completes the record if it still carries ``owner_token``."""
        args = self._complete_args(owner_token, response, ttl)
        with self._errors("complete"):
            connection = self._connection()
            return bool(connection.complete(keys=[self._key(storage_key)], args=args))

    def release(self, storage_key: str, owner_token: str) -> bool:
        """One EVALSHA that deletes the record if ours and still in progress."""
        with self._errors("release"):
            connection = self._connection()
            return bool(connection.release(keys=[self._key(storage_key)], args=[owner_token]))

    def get(self, storage_key: str) -> Record | None:
        """The stored record (Redis forgets dead ones by itself)."""
        with self._errors("get"):
            value = self._connection().client.get(self._key(storage_key))
            return self._decode(value, storage_key)

    def delete(self, storage_key: str) -> bool:
        """Delete whatever is stored under the key."""
        with self._errors("delete"):
            return bool(self._connection().client.delete(self._key(storage_key)))

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of records: SCAN MATCH prefix*, then one MGET for the page."""
        with self._errors("scan"):
            client = self._connection().client
            match = _glob_escape(self.key_prefix) + "*"
            keys, next_cursor = scan_keys(client, match, cursor, count)
            values = client.mget(keys) if keys else []
            records = [
                self._decode(value, _as_bytes(key)[len(self._prefix_bytes) :].decode())
                for key, value in zip(keys, values, strict=True)
            ]
        return [record for record in records if record is not None], next_cursor

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E011: the connection options name no usable Redis."""
        problem = _connection_problem(self.options)
        if problem is None:
            return []
        return [
            checks.Error(
                problem,
                hint="Set IDEMPOTENCY['OPTIONS'] to {'CACHE': '<a django-redis alias>'} or "
                "{'URL': 'redis://host:6379/0'}.",
                id="django_idempotency.E011",
            )
        ]

    def close(self) -> None:
        """Disconnect the pools this backend opened (not a django-redis cache's)."""
        with self._sync_lock:
            connection, self._sync = self._sync, None
        if connection is not None and connection.pool is not None:
            connection.pool.disconnect()
        self._loops.close()

    # -- async flavours -----------------------------------------------------

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Async :meth:`claim`, on this loop's asyncio client."""
        record = Record.from_claim(claim, self.now())
        with self._errors("claim"):
            connection = await self._loops.get()
            if connection is None:
                return await super().aclaim(claim)
            existing = await connection.client.set(
                self._key(claim.storage_key),
                dumps(record),
                nx=True,
                px=claim.lease_seconds * 1000,
                get=True,
            )
            return self._claim_result(claim, record, existing)

    async def acomplete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Async :meth:`complete`."""
        args = self._complete_args(owner_token, response, ttl)
        with self._errors("complete"):
            connection = await self._loops.get()
            if connection is None:
                return await super().acomplete(storage_key, owner_token, response, ttl)
            return bool(await connection.complete(keys=[self._key(storage_key)], args=args))

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Async :meth:`release`."""
        with self._errors("release"):
            connection = await self._loops.get()
            if connection is None:
                return await super().arelease(storage_key, owner_token)
            return bool(await connection.release(keys=[self._key(storage_key)], args=[owner_token]))

    async def aget(self, storage_key: str) -> Record | None:
        """Async :meth:`get`."""
        with self._errors("get"):
            connection = await self._loops.get()
            if connection is None:
                return await super().aget(storage_key)
            return self._decode(await connection.client.get(self._key(storage_key)), storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Async :meth:`delete`."""
        with self._errors("delete"):
            connection = await self._loops.get()
            if connection is None:
                return await super().adelete(storage_key)
            return bool(await connection.client.delete(self._key(storage_key)))

    # -- helpers ------------------------------------------------------------

    def _key(self, storage_key: str) -> str:
        return self.key_prefix + storage_key

    def _claim_result(self, claim: Claim, record: Record, existing: object) -> ClaimResult:
        current = self._decode(existing, claim.storage_key)
        if current is None:
            return ClaimResult(ClaimOutcome.CREATED, record)
        # A retried SET whose first attempt was applied finds its own claim.
        return ClaimResult.of_live(current, claim.owner_token)

    def _complete_args(
        self, owner_token: str, response: StoredResponse, ttl: int
    ) -> list[str | bytes | int]:
        now = self.now()
        return [owner_token, dump_completion(now, now + ttl, response), ttl * 1000]

    def _decode(self, value: object, storage_key: str) -> Record | None:
        if value is None:
            return None
        return loads(_as_bytes(value), storage_key)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn driver errors and unreadable records into StorageError."""
        try:
            yield
        except self._driver_errors as error:
            raise StorageError(f"Redis failed during {operation}: {error}") from error
        except RecordFormatError as error:
            raise StorageError(f"Redis holds an unreadable idempotency record: {error}") from error

    def _connection(self) -> _Connection:
        connection = self._sync
        if connection is not None:
            return connection
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._connect_sync()
            return self._sync

    def _connect_sync(self) -> _Connection:
        """The sync client: the django-redis cache's, or a pool of our own."""
        _raise_connection_problem(self.options)
        pool: Any = None
        if "URL" in self.options:
            connect_timeout, timeout = self._timeouts()
            pool = redis.ConnectionPool.from_url(
                self.options["URL"],
                retry=Retry(NoBackoff(), 1),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
            )
            client = redis.Redis(connection_pool=pool)
        else:
            from django_redis import get_redis_connection

            client = get_redis_connection(self.options["CACHE"])
        return _Connection(
            client=client,
            complete=client.register_script(COMPLETE_SCRIPT),
            release=client.register_script(RELEASE_SCRIPT),
            pool=pool,
        )

    def _connect_async(self) -> _Connection | None:
        """An asyncio client equivalent to the sync one (None: use a thread)."""
        pool: Any
        if "URL" in self.options:
            _raise_connection_problem(self.options)
            connect_timeout, timeout = self._timeouts()
            pool = redis.asyncio.ConnectionPool.from_url(
                self.options["URL"],
                retry=AsyncRetry(NoBackoff(), 1),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
            )
        else:
            sync_pool = self._connection().client.connection_pool
            async_class = _ASYNC_CONNECTION_CLASSES.get(sync_pool.connection_class)
            if async_class is None:
                # e.g. Sentinel: no asyncio twin to build; the base class's
                # thread hop runs the sync method instead.
                return None
            kwargs = {
                name: value
                for name, value in sync_pool.connection_kwargs.items()
                if name in _PORTABLE_CONNECTION_KWARGS
            }
            pool = redis.asyncio.ConnectionPool(
                connection_class=async_class, max_connections=sync_pool.max_connections, **kwargs
            )
        client = redis.asyncio.Redis(connection_pool=pool)
        return _Connection(
            client=client,
            complete=client.register_script(COMPLETE_SCRIPT),
            release=client.register_script(RELEASE_SCRIPT),
            pool=pool,
        )

    def _timeouts(self) -> tuple[float, float]:
        """The URL connection's (connect, read/write) socket timeouts in seconds."""
        return (
            float(self.options.get("SOCKET_CONNECT_TIMEOUT", DEFAULT_SOCKET_CONNECT_TIMEOUT)),
            float(self.options.get("SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT)),
        )


class _LoopClients:
    """One asyncio client per running event loop, closed with its loop.

    A ``redis.asyncio`` connection is bound to the loop that opened it, and a
    WSGI server running an async view (``async_to_sync``) starts a new loop
    per request, so one shared client would fail on the second loop. Each
    client is paired with a suspended async generator: a loop finalizes its
    async generators when it shuts down, and this one disconnects the pool.
    """

    def __init__(self, connect: Callable[[], _Connection | None]) -> None:
        self._connect = connect
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._lock = threading.Lock()

    async def get(self) -> _Connection | None:
        """This loop's client, created on first use; None when there is no asyncio twin."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
        if entry is not None:
            return entry.connection
        connection = self._connect()
        if connection is None:
            return None
        closer = self._close_with_loop(loop, connection)
        with self._lock:
            self._clients[loop] = _LoopClient(connection, closer)
        await closer.__anext__()  # the first step registers it with the loop
        return connection

    def close(self) -> None:
        """Disconnect every loop's pool, each on its own loop."""
        with self._lock:
            entries = list(self._clients.items())
            self._clients.clear()
        for loop, entry in entries:
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(_finalize(entry.closer), loop)

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, connection: _Connection
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                entry = self._clients.get(loop)
                if entry is not None and entry.connection is connection:
                    del self._clients[loop]
            if connection.pool is not None:
                await connection.pool.disconnect()


@dataclass(frozen=True)
class _LoopClient:
    connection: _Connection
    closer: AsyncGenerator[None, None]


async def _finalize(closer: AsyncGenerator[None, None]) -> None:
    """A coroutine for ``run_coroutine_threadsafe``, which takes no bare awaitable."""
    await closer.aclose()


class ScanClient(Protocol):
    """What :func:`scan_keys` needs of a redis-py client."""

    def scan(self, cursor: int, *, match: str, count: int) -> Any:
        """Redis SCAN: ``(next cursor, keys)``."""


def scan_keys(
    client: ScanClient, match: str, cursor: str | None, count: int
) -> tuple[list[bytes], str | None]:
    """At most ``count`` keys matching ``match`` and the cursor of the next page.

    The cursor is Redis's own, plus ``":<n>"`` when a SCAN call returned more
    keys than the page had room for: the next page repeats that call and
    skips the ``n`` keys already returned. SCAN's guarantees hold: every key
    present for the whole scan is returned, some possibly twice.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}.")
    position, skip = _parse_cursor(cursor)
    found: list[bytes] = []
    for _ in range(MAX_SCAN_CALLS):
        next_position, batch = client.scan(position, match=match, count=min(count, MAX_SCAN_COUNT))
        fresh = [_as_bytes(key) for key in batch][skip:]
        room = count - len(found)
        if len(fresh) > room:
            return [*found, *fresh[:room]], f"{position}:{skip + room}"
        found += fresh
        skip = 0
        position = int(next_position)
        if position == 0:
            return found, None
        if len(found) == count:
            break
    return found, str(position)


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if cursor is None:
        return 0, 0
    position, _, skip = cursor.partition(":")
    try:
        return int(position), int(skip or 0)
    except ValueError:
        raise ValueError(f"Not a RedisBackend scan cursor: {cursor!r}.") from None


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # a pool configured with decode_responses=True
        return value.encode()
    raise RecordFormatError(f"Redis answered a {type(value).__name__}, not a record.")


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _validate_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        names = ", ".join(f"IDEMPOTENCY['OPTIONS'][{name!r}]" for name in unknown)
        raise ImproperlyConfigured(
            f"Unknown option(s) for RedisBackend: {names}; allowed: {', '.join(sorted(OPTIONS))}."
        )
    for name in ("CACHE", "URL", "KEY_PREFIX"):
        value = options.get(name, "")
        if not isinstance(value, str):
            raise ImproperlyConfigured(
                f"IDEMPOTENCY['OPTIONS'][{name!r}] must be a string; got {value!r}."
            )
    if options.get("KEY_PREFIX") == "":
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['KEY_PREFIX'] must not be empty: it tells the records "
            "apart from the database's other keys (scan lists what starts with it)."
        )
    for name in URL_ONLY_OPTIONS:
        if name not in options:
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ImproperlyConfigured(
                f"IDEMPOTENCY['OPTIONS'][{name!r}] must be a positive number of seconds; "
                f"got {value!r}."
            )
        if "URL" not in options:
            raise ImproperlyConfigured(
                f"IDEMPOTENCY['OPTIONS'][{name!r}] applies to a URL connection only; with "
                "'CACHE', set it in that cache's OPTIONS in settings.CACHES."
            )


def _key_prefix(options: Mapping[str, Any]) -> str:
    """KEY_PREFIX, or the reused cache's own KEY_PREFIX followed by ours."""
    if "KEY_PREFIX" in options:
        return str(options["KEY_PREFIX"])
    cache_config = settings.CACHES.get(options.get("CACHE", ""), {})
    cache_prefix = cache_config.get("KEY_PREFIX", "") if isinstance(cache_config, Mapping) else ""
    return f"{cache_prefix}:{DEFAULT_KEY_PREFIX}" if cache_prefix else DEFAULT_KEY_PREFIX


def _connection_problem(options: Mapping[str, Any]) -> str | None:
    """Why the options name no usable Redis, or None."""
    has_cache, has_url = bool(options.get("CACHE")), bool(options.get("URL"))
    if has_cache == has_url:
        given = "both" if has_cache else "neither"
        return (
            "RedisBackend needs exactly one of IDEMPOTENCY['OPTIONS']['CACHE'] (a django-redis "
            f"cache alias) and IDEMPOTENCY['OPTIONS']['URL']; {given} given."
        )
    if has_url:
        return None
    alias = options["CACHE"]
    if alias not in settings.CACHES:
        return (
            f"IDEMPOTENCY['OPTIONS']['CACHE'] = {alias!r} is not a cache alias; "
            f"settings.CACHES has {sorted(settings.CACHES)}."
        )
    cache_class = configured_cache_class(alias)
    if cache_class is None or not is_django_redis(cache_class):
        backend = settings.CACHES[alias].get("BACKEND")
        return (
            f"IDEMPOTENCY['OPTIONS']['CACHE'] = {alias!r} is a {backend!r} cache; RedisBackend "
            "can reuse only a django-redis cache (django_redis.cache.RedisCache)."
        )
    return None


def _raise_connection_problem(options: Mapping[str, Any]) -> None:
    problem = _connection_problem(options)
    if problem is not None:
        raise ImproperlyConfigured(problem)
