"""Native Redis backend: a replay costs one command, a first execution two.

Each record is one Redis string holding the
:mod:`~django_idempotency.backends.serialization` bytes, under
``KEY_PREFIX + storage key``; Redis's own expiry forgets it (in progress: the
lease, completed: the replay window), so there is nothing to purge.

* **claim** is ``SET key record NX PX lease GET`` (Redis >= 7.0): one
  command, no script, that either writes the in-progress record or answers
  the record already there. A replay is that command and nothing else.
* **complete**, **renew** and **release** are Lua scripts (EVALSHA) that
  compare the owner token inside Redis before they write or delete, so a worker whose
  lease expired and was taken over can never touch the new owner's record.
  A string, rather than a hash, is what lets the claim be a single ``SET``;
  the record's format keeps the state and the owner token at fixed offsets
  in front so the scripts can check them without parsing the rest, and
  completing is a splice (flip the state byte, append the response).
* The complete and release scripts also ``PUBLISH`` the record's key on
  ``<KEY_PREFIX>changes``,
  which wakes duplicates waiting for it (``WAIT``) through one subscriber
  per process (:class:`~django_idempotency.backends.changes.ChangeListener`).

How it connects (a django-redis cache's pool or a URL, sync and per-loop
asyncio clients) is :mod:`~django_idempotency.backends.redis_client`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.core import checks

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.changes import ChangeListener, ListenedChanges
from django_idempotency.backends.redis_client import (
    CHANGES_CHANNEL,
    DECODING_FIX,
    RedisClient,
    as_bytes,
    connection_problem,
    driver_errors,
    glob_escape,
    key_prefix,
    scan_keys,
    validate_options,
)
from django_idempotency.backends.serialization import (
    RecordFormatError,
    dump_completion,
    dump_lease_end,
    dumps,
    loads,
)
from django_idempotency.records import Claim, ClaimOutcome, ClaimResult, Record, StoredResponse


class RedisBackend(ListenedChanges, BaseBackend):
    """Idempotency records in Redis (>= 7.0), through its native commands.

    OPTIONS: ``{"CACHE": "<django-redis alias>"}`` or ``{"URL": "redis://..."}``;
    optional ``"KEY_PREFIX"``; with URL, ``"SOCKET_CONNECT_TIMEOUT"`` (default
    1.0) and ``"SOCKET_TIMEOUT"`` (default 2.0) seconds.
    """

    has_native_expiry = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        validate_options(self.options)
        self.key_prefix = key_prefix(self.options)
        self._prefix_bytes = self.key_prefix.encode()
        self._client = RedisClient(self.options)
        self._driver_errors = driver_errors()
        self._store_name = (
            f"Cache {self.options['CACHE']!r}" if self.options.get("CACHE") else "Redis"
        )
        """How errors name the store: the cache alias whose pool is used, or Redis."""
        self._changes_channel = self.key_prefix + CHANGES_CHANNEL
        self._changes = ChangeListener(
            "redis-changes",
            self._client.change_listener(self._changes_channel, self._prefix_bytes),
        )

    # -- the contract -------------------------------------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """One ``SET NX PX GET``: our new record, or the one already there."""
        record = Record.from_claim(claim, self.now())
        with self._errors("claim"):
            existing = self._client.sync().client.set(
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
            connection = self._client.sync()
            return bool(connection.complete(keys=[self._key(storage_key)], args=args))

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """One EVALSHA that moves our in-progress record's lease end and expiry."""
        args = self._renew_args(owner_token, lease_seconds)
        with self._errors("renew"):
            connection = self._client.sync()
            return bool(connection.renew(keys=[self._key(storage_key)], args=args))

    def release(self, storage_key: str, owner_token: str) -> bool:
        """One EVALSHA that deletes the record if ours and still in progress."""
        with self._errors("release"):
            connection = self._client.sync()
            args = [owner_token, self._changes_channel]
            return bool(connection.release(keys=[self._key(storage_key)], args=args))

    def get(self, storage_key: str) -> Record | None:
        """The stored record (Redis forgets dead ones by itself)."""
        with self._errors("get"):
            value = self._client.sync().client.get(self._key(storage_key))
            return self._decode(value, storage_key)

    def delete(self, storage_key: str) -> bool:
        """Delete whatever is stored under the key."""
        with self._errors("delete"):
            return bool(self._client.sync().client.delete(self._key(storage_key)))

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of records: SCAN MATCH prefix*, then one MGET for the page."""
        with self._errors("scan"):
            client = self._client.sync().client
            match = glob_escape(self.key_prefix) + "*"
            keys, next_cursor = scan_keys(client, match, cursor, count)
            values = client.mget(keys) if keys else []
            records = [
                self._decode(value, as_bytes(key)[len(self._prefix_bytes) :].decode())
                for key, value in zip(keys, values, strict=True)
            ]
        return [record for record in records if record is not None], next_cursor

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E011: the connection options name no usable Redis."""
        problem = connection_problem(self.options)
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
        self._changes.close()
        self._client.close()

    # -- async flavours -----------------------------------------------------

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Async :meth:`claim`, on this loop's asyncio client."""
        record = Record.from_claim(claim, self.now())
        with self._errors("claim"):
            connection = await self._client.for_running_loop()
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
            connection = await self._client.for_running_loop()
            if connection is None:
                return await super().acomplete(storage_key, owner_token, response, ttl)
            return bool(await connection.complete(keys=[self._key(storage_key)], args=args))

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Async :meth:`renew`."""
        args = self._renew_args(owner_token, lease_seconds)
        with self._errors("renew"):
            connection = await self._client.for_running_loop()
            if connection is None:
                return await super().arenew(storage_key, owner_token, lease_seconds)
            return bool(await connection.renew(keys=[self._key(storage_key)], args=args))

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Async :meth:`release`."""
        with self._errors("release"):
            connection = await self._client.for_running_loop()
            if connection is None:
                return await super().arelease(storage_key, owner_token)
            args = [owner_token, self._changes_channel]
            return bool(await connection.release(keys=[self._key(storage_key)], args=args))

    async def aget(self, storage_key: str) -> Record | None:
        """Async :meth:`get`."""
        with self._errors("get"):
            connection = await self._client.for_running_loop()
            if connection is None:
                return await super().aget(storage_key)
            return self._decode(await connection.client.get(self._key(storage_key)), storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Async :meth:`delete`."""
        with self._errors("delete"):
            connection = await self._client.for_running_loop()
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
        completion = dump_completion(now, now + ttl, response)
        return [owner_token, completion, ttl * 1000, self._changes_channel]

    def _renew_args(self, owner_token: str, lease_seconds: int) -> list[str | bytes | int]:
        return [owner_token, dump_lease_end(self.now() + lease_seconds), lease_seconds * 1000]

    def _decode(self, value: object, storage_key: str) -> Record | None:
        if value is None:
            return None
        return loads(as_bytes(value), storage_key)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn driver errors and unreadable records into StorageError."""
        try:
            yield
        except self._driver_errors as error:
            raise StorageError(f"{self._store_name} failed during {operation}: {error}") from error
        except RecordFormatError as error:
            raise StorageError(f"{self._store_name} holds an unreadable record: {error}") from error
        except UnicodeError as error:  # a client that decodes replies as text
            raise StorageError(
                f"{self._store_name} replied bytes the client decoded as text during {operation} "
                f"({error}): {DECODING_FIX}"
            ) from error
