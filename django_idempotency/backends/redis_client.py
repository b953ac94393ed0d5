"""Connections to Redis for RedisBackend: pools, per-event-loop clients, Lua scripts, options.

Kept apart from the contract class (:mod:`~django_idempotency.backends.redis`)
as Django keeps ``RedisCacheClient`` apart from ``RedisCache``. Two ways to
connect, chosen in OPTIONS:

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
or connection settings. Pools opened here block when every connection is
busy (``BlockingConnectionPool``, at most ``max_connections``, waiting up to
the socket timeout) rather than fail: one event loop serves many requests at
once, more than a pool's connections. An asyncio connection belongs to the
event loop that opened it, so there is one client per running loop
(:class:`~django_idempotency.backends.loop_clients.LoopClients`), closed when
that loop shuts down or when :meth:`RedisClient.close` is called.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from django_idempotency.backends.base import StorageError
from django_idempotency.backends.changes import Listen
from django_idempotency.backends.django_caches import configured_cache_class, is_django_redis
from django_idempotency.backends.extras import missing_extra
from django_idempotency.backends.loop_clients import LoopClients
from django_idempotency.backends.serialization import (
    FORMAT_VERSION,
    OWNER_TOKEN_OFFSET,
    STATE_COMPLETED,
    STATE_IN_PROGRESS,
    RecordFormatError,
)

try:
    import redis
    import redis.asyncio
    import redis.asyncio.connection
    import redis.connection
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError as error:  # an optional extra: say how to install it
    raise missing_extra("RedisBackend", "redis-py", "redis", error) from error

DEFAULT_KEY_PREFIX = "idempotency:"
DEFAULT_SOCKET_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 2.0
DEFAULT_POOL_TIMEOUT = 5.0
"""Seconds an async request waits for a free connection of a cache's pool that sets no
socket timeout; then it is a storage error (503)."""
OPTIONS = frozenset({"CACHE", "URL", "KEY_PREFIX", "SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT"})
URL_ONLY_OPTIONS = ("SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT")
DECODING_FIX = (
    "RedisBackend stores records as bytes and reads them back as bytes: remove "
    "decode_responses (from the URL, or from the cache's LOCATION and "
    "CONNECTION_POOL_KWARGS), or give RedisBackend a URL of its own."
)
CHANGES_CHANNEL = "changes"
"""Published after the key prefix: ``<KEY_PREFIX>changes`` carries the record keys that
were completed or released."""
LISTEN_POLL = 1.0
"""Seconds a change listener blocks on its subscription before it looks at ``stop``."""
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
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)
"""KEYS: record key. ARGV: owner token, completion bytes, ttl in ms, changes channel.
1 if stored.

A record this owner already completed stays as it is (a retried complete):
a stored response never changes while it can be replayed. The record's key
is published on the changes channel, for duplicates waiting on it (``WAIT``):
free when nobody listens, and no round trip of its own."""

RENEW_SCRIPT = (
    _RECORD_CHECKS
    + f"""
if state ~= {STATE_IN_PROGRESS} then return 0 end
redis.call('SET', KEYS[1], string.sub(value, 1, -9) .. ARGV[2], 'PX', ARGV[3])
return 1
"""
)
"""KEYS: record key. ARGV: owner token, the new lease end (8 bytes), lease in ms. 1 if renewed.

An in-progress record ends with its lease end, which the script replaces."""

RELEASE_SCRIPT = (
    _RECORD_CHECKS
    + f"""
if state ~= {STATE_IN_PROGRESS} then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"""
)
"""KEYS: record key. ARGV: owner token, changes channel. 1 if the in-progress record
was deleted (and its key published, as by the complete script)."""

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


def driver_errors() -> tuple[type[BaseException], ...]:
    """What the drivers raise when Redis fails: each becomes a StorageError."""
    errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
    try:
        from django_redis.exceptions import ConnectionInterrupted
    except ImportError:  # URL mode needs no django-redis
        return errors
    return (*errors, ConnectionInterrupted)


@dataclass(frozen=True)
class Connection:
    """A client with its scripts registered (sync or asyncio flavour)."""

    client: Any
    complete: Any
    renew: Any
    release: Any
    pool: Any | None
    """The pool to disconnect on close; None when it belongs to a django-redis cache."""

    @classmethod
    def of(cls, client: Any, pool: Any | None) -> Connection:
        """``client`` (sync or asyncio) with this backend's scripts registered on it."""
        return cls(
            client=client,
            complete=client.register_script(COMPLETE_SCRIPT),
            renew=client.register_script(RENEW_SCRIPT),
            release=client.register_script(RELEASE_SCRIPT),
            pool=pool,
        )


class RedisClient:
    """The sync connection and the per-loop asyncio connections of one backend."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self._sync: Connection | None = None
        self._sync_lock = threading.Lock()
        self._loops: LoopClients[Connection] = LoopClients(self._aconnect, _disconnect)

    def close(self) -> None:
        """Disconnect the pools this client opened (not a django-redis cache's)."""
        with self._sync_lock:
            connection, self._sync = self._sync, None
        if connection is not None and connection.pool is not None:
            connection.pool.disconnect()
        self._loops.close()

    async def for_running_loop(self) -> Connection | None:
        """This event loop's asyncio connection; None where there is no asyncio twin."""
        return await self._loops.get()

    def sync(self) -> Connection:
        """The sync connection, opened on first use."""
        connection = self._sync
        if connection is not None:
            return connection
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._connect_sync()
            return self._sync

    def _connect_sync(self) -> Connection:
        """The sync client: the django-redis cache's, or a pool of our own."""
        raise_connection_problem(self.options)
        pool: Any = None
        if "URL" in self.options:
            connect_timeout, timeout = self._timeouts()
            pool = redis.BlockingConnectionPool.from_url(
                self.options["URL"],
                retry=Retry(NoBackoff(), 1),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                timeout=timeout,
            )
            client = redis.Redis(connection_pool=pool)
        else:
            from django_redis import get_redis_connection

            client = get_redis_connection(self.options["CACHE"])
        return Connection.of(client, pool)

    async def _aconnect(self) -> Connection | None:
        return self._connect_async()

    def _connect_async(self) -> Connection | None:
        """An asyncio client equivalent to the sync one (None: use a thread)."""
        pool: Any
        if "URL" in self.options:
            raise_connection_problem(self.options)
            connect_timeout, timeout = self._timeouts()
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.options["URL"],
                retry=AsyncRetry(NoBackoff(), 1),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                timeout=timeout,
            )
        else:
            sync_pool = self.sync().client.connection_pool
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
            pool = redis.asyncio.BlockingConnectionPool(
                connection_class=async_class,
                max_connections=sync_pool.max_connections,
                timeout=kwargs.get("socket_timeout") or DEFAULT_POOL_TIMEOUT,
                **kwargs,
            )
        return Connection.of(redis.asyncio.Redis(connection_pool=pool), pool)

    def change_listener(self, channel: str, key_prefix: bytes) -> Listen:
        """The loop of a :class:`~django_idempotency.backends.changes.ChangeListener`:
        SUBSCRIBE to ``channel`` on a connection of its own from the pool, and
        deliver each published record key without ``key_prefix``."""

        def listen(
            ready: Callable[[], None], deliver: Callable[[str], None], stop: threading.Event
        ) -> None:
            pubsub = self.sync().client.pubsub()
            try:
                pubsub.subscribe(channel)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        ready()  # confirmed by Redis: nothing published from now on is missed
                    elif message["type"] == "message":
                        key = as_bytes(message["data"])
                        if key.startswith(key_prefix):
                            deliver(key[len(key_prefix) :].decode())
            finally:
                pubsub.close()

        return listen

    def _timeouts(self) -> tuple[float, float]:
        """The URL connection's (connect, read/write) socket timeouts in seconds."""
        return (
            float(self.options.get("SOCKET_CONNECT_TIMEOUT", DEFAULT_SOCKET_CONNECT_TIMEOUT)),
            float(self.options.get("SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT)),
        )


async def _disconnect(connection: Connection) -> None:
    """Close a loop's connection: its pool, unless the pool is a django-redis cache's."""
    if connection.pool is not None:
        await connection.pool.disconnect()


class ScanClient(Protocol):
    """What :func:`scan_keys` needs of a redis-py client."""

    def scan(self, cursor: int, *, match: str, count: int) -> Any:
        """Redis SCAN: ``(next cursor, keys)``."""


def scan_keys(
    client: ScanClient, match: str, cursor: str | None, count: int
) -> tuple[list[bytes], str | None]:
    """At most ``count`` keys matching ``match`` and the cursor of the next page.

    The cursor is Redis's own, plus ``":<id>,<id>..."`` when a SCAN call
    returned more keys than the page had room for: the next page repeats that
    call and skips the keys already returned, named by a short digest of
    each. By identity, not by position: between two pages other clients can
    make Redis rehash its table, and a repeated call may then return the same
    buckets' keys in another order (skipping the first ``n`` of them lost a
    key). SCAN's guarantees hold: every key present for the whole scan is
    returned, some possibly twice.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}.")
    position, returned = _parse_cursor(cursor)
    found: list[bytes] = []
    for _ in range(MAX_SCAN_CALLS):
        next_position, batch = client.scan(position, match=match, count=min(count, MAX_SCAN_COUNT))
        fresh = [key for key in map(as_bytes, batch) if _key_id(key) not in returned]
        room = count - len(found)
        if len(fresh) > room:
            taken = fresh[:room]
            skipped = sorted(returned | {_key_id(key) for key in taken})
            return [*found, *taken], f"{position}:{','.join(skipped)}"
        found += fresh
        returned = frozenset()
        position = int(next_position)
        if position == 0:
            return found, None
        if len(found) == count:
            break
    return found, str(position)


def _key_id(key: bytes) -> str:
    """A short name of a key for a scan cursor: 48 bits of its BLAKE2b digest."""
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def _parse_cursor(cursor: str | None) -> tuple[int, frozenset[str]]:
    if cursor is None:
        return 0, frozenset()
    position, _, returned = cursor.partition(":")
    try:
        return int(position), frozenset(filter(None, returned.split(",")))
    except ValueError:
        raise ValueError(f"Not a RedisBackend scan cursor: {cursor!r}.") from None


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # a pool configured with decode_responses=True
        return value.encode()
    raise RecordFormatError(f"Redis answered a {type(value).__name__}, not a record.")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def validate_options(options: Mapping[str, Any]) -> None:
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
    problem = _decoding_problem(options)
    if problem is not None:
        raise ImproperlyConfigured(problem)
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


def _decoding_problem(options: Mapping[str, Any]) -> str | None:
    """Why the configured connection would decode replies as text, or None.

    A record is binary (a replay would raise UnicodeDecodeError), so a
    connection with ``decode_responses=True`` is refused when the backend is
    built, not found out at the first replay.
    """
    if options.get("URL"):
        urls, where = [options["URL"]], "IDEMPOTENCY['OPTIONS']['URL']"
        pool_kwargs: Mapping[str, Any] = {}
    else:
        alias = options.get("CACHE", "")
        config = settings.CACHES.get(alias)
        if not isinstance(config, Mapping):
            return None
        location = config.get("LOCATION", "")
        urls = location.split(",") if isinstance(location, str) else list(location)
        cache_options = config.get("OPTIONS") or {}
        pool_kwargs = cache_options.get("CONNECTION_POOL_KWARGS") or {}
        where = f"settings.CACHES[{alias!r}]"
    decodes = bool(pool_kwargs.get("decode_responses")) or any(
        _url_decodes(url) for url in urls if isinstance(url, str)
    )
    if not decodes:
        return None
    return (
        f"{where} asks redis-py to decode replies as text (decode_responses=True). {DECODING_FIX}"
    )


def _url_decodes(url: str) -> bool:
    """Whether a redis:// URL's query asks for ``decode_responses``."""
    try:
        kwargs = redis.ConnectionPool.from_url(url.strip()).connection_kwargs
    except ValueError:
        return False  # not a URL redis-py reads; connecting will say so
    return bool(kwargs.get("decode_responses"))


def key_prefix(options: Mapping[str, Any]) -> str:
    """KEY_PREFIX, or the reused cache's own KEY_PREFIX followed by ours."""
    if "KEY_PREFIX" in options:
        return str(options["KEY_PREFIX"])
    cache_config = settings.CACHES.get(options.get("CACHE", ""), {})
    cache_prefix = cache_config.get("KEY_PREFIX", "") if isinstance(cache_config, Mapping) else ""
    return f"{cache_prefix}:{DEFAULT_KEY_PREFIX}" if cache_prefix else DEFAULT_KEY_PREFIX


def connection_problem(options: Mapping[str, Any]) -> str | None:
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


def raise_connection_problem(options: Mapping[str, Any]) -> None:
    """Refuse to connect with options that name no usable Redis.

    A cache alias missing from ``settings.CACHES`` is a storage error (503),
    as it is for every backend whose store is named by an alias: system
    check E011 reports it, and a request cannot be served without it.
    Options that can never work are ImproperlyConfigured.
    """
    problem = connection_problem(options)
    if problem is None:
        return
    if options.get("CACHE") and options["CACHE"] not in settings.CACHES:
        raise StorageError(problem)
    raise ImproperlyConfigured(problem)
