"""NATS JetStream backend: records in a key-value bucket, every write fenced by its revision.

OPTIONS (all optional): ``SERVERS`` (a URL or a list, default
``nats://127.0.0.1:4222``), ``BUCKET`` (default ``idempotency``), ``USER`` /
``PASSWORD``, ``TOKEN``, ``CREDENTIALS`` (a ``.creds`` file), ``NKEYS_SEED``,
``TLS_CA`` / ``TLS_CERT`` / ``TLS_KEY``, ``CONNECT_TIMEOUT`` and ``TIMEOUT``
(seconds, default 2), ``READ_ON_CLAIM`` (default False: see **claim**), and
for a bucket this backend creates: ``REPLICAS`` (default 1), ``MAX_AGE``
(seconds, default 0: none) and ``MAX_VALUE_SIZE``.

Each record is one key of the bucket, named by its storage key (64 hex
digits, already within the alphabet NATS allows) and holding the
:mod:`~django_idempotency.backends.serialization` bytes, in which the raw key
and scope are kept. See :mod:`~django_idempotency.backends.nats_client` for
the three stream operations everything is made of.

* **claim** is one put-if-absent (expected last revision 0); its revision is
  the claim's fence. A refused put says nothing of the value, so the key's
  record is read: after the put (a replay is two round trips), or with
  ``READ_ON_CLAIM`` beside it (one round trip, but every first execution
  sends a read it does not need). Live, the record is answered; dead (its
  lease or replay window ended, read from the value), it is taken over by a
  put fenced on the dead record's revision, so of two racing takeovers one
  wins.
* **complete** and **renew** are puts fenced on the claim's revision, which
  this process remembers from the claim (a first execution is two round
  trips); **release** purges the key up to and including that revision.
  A worker whose claim was taken over meanwhile finds another revision and
  is refused, whatever it does.
* **expiry**: liveness is always read from the value, which works on every
  server. From nats-server 2.11 (a bucket that allows per-message TTLs, as
  one created here does) each write also carries its own TTL, the lease or
  the replay window, so the server forgets dead records itself
  (``has_native_expiry``); before that, ``purge_idempotency`` removes them.

Sync methods run on the process's NATS loop thread, async methods on their
own loop's connection: no thread hop. Connection failures, timeouts and
refusals become :class:`~django_idempotency.backends.base.StorageError`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from django.core import checks

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.changes import ChangeListener, ListenedChanges
from django_idempotency.backends.loop_clients import LoopClients, LoopThread
from django_idempotency.backends.nats_client import (
    Bucket,
    Conflict,
    bucket_problems,
    change_listener,
    connect,
    driver_errors,
    open_bucket,
    parse_options,
    released_subject,
)
from django_idempotency.backends.serialization import RecordFormatError, dumps, loads
from django_idempotency.conf import MAX_SECONDS, get_settings
from django_idempotency.records import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Record,
    State,
    StoredResponse,
)

_T = TypeVar("_T")

CLAIM_ATTEMPTS = 5
"""How often a claim reads and writes again when the key keeps changing under it."""
REMEMBERED_CLAIMS = 10_000
"""Claims of this process whose revision is kept for completing, renewing, releasing them."""


class NatsBackend(ListenedChanges, BaseBackend):
    """Idempotency records in a NATS JetStream key-value bucket."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.settings = parse_options(self.options)
        self._thread = LoopThread("nats")
        self._buckets: LoopClients[Bucket] = LoopClients(self._open, _close)
        self._claims: OrderedDict[tuple[str, str], tuple[int, Record]] = OrderedDict()
        self._claims_lock = threading.Lock()
        self._message_ttl: bool | None = None
        self._errors_caught = driver_errors()
        self._changes = ChangeListener("nats-changes", change_listener(self.settings))

    @property
    def has_native_expiry(self) -> bool:
        """Whether the server forgets dead records itself: 2.11+, a bucket allowing message TTLs.

        Asked of the server on first use (the class default is a guess).
        """
        if self._message_ttl is None:
            self._run(self._bucket())
        return bool(self._message_ttl)

    @has_native_expiry.setter
    def has_native_expiry(self, value: bool) -> None:
        self._message_ttl = value

    # -- the contract (sync: on the loop thread) -----------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """One put-if-absent; the record read if it is refused, and taken over if dead."""
        return self._run(self._claim(claim))

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """A put fenced on our claim's revision: the completed record, living ``ttl`` seconds."""
        return self._run(self._complete(storage_key, owner_token, response, ttl))

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """A put fenced on our claim's revision, with the lease moved."""
        return self._run(self._renew(storage_key, owner_token, lease_seconds))

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Purge the key up to our claim's revision: nothing newer can go."""
        return self._run(self._release(storage_key, owner_token))

    def get(self, storage_key: str) -> Record | None:
        """The stored record, live or dead."""
        return self._run(self._get(storage_key))

    def delete(self, storage_key: str) -> bool:
        """Purge whatever the key holds."""
        return self._run(self._delete(storage_key))

    # -- the contract (async: on this loop's connection) -----------------------

    async def aclaim(self, claim: Claim) -> ClaimResult:
        """Async :meth:`claim`, on this loop's connection."""
        return await self._claim(claim)

    async def acomplete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Async :meth:`complete`."""
        return await self._complete(storage_key, owner_token, response, ttl)

    async def arenew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Async :meth:`renew`."""
        return await self._renew(storage_key, owner_token, lease_seconds)

    async def arelease(self, storage_key: str, owner_token: str) -> bool:
        """Async :meth:`release`."""
        return await self._release(storage_key, owner_token)

    async def aget(self, storage_key: str) -> Record | None:
        """Async :meth:`get`."""
        return await self._get(storage_key)

    async def adelete(self, storage_key: str) -> bool:
        """Async :meth:`delete`."""
        return await self._delete(storage_key)

    # -- the operations, as coroutines ---------------------------------------

    async def _claim(self, claim: Claim) -> ClaimResult:
        with self._errors("claim"):
            bucket = await self._bucket()
            mine = Record.from_claim(claim, self.now())
            value = dumps(mine)
            ttl = claim.lease_seconds
            for _attempt in range(CLAIM_ATTEMPTS):
                created, message = await bucket.create_or_read(claim.storage_key, value, ttl=ttl)
                if created is not None:
                    self._remember(claim.storage_key, claim.owner_token, created, mine)
                    return ClaimResult(ClaimOutcome.CREATED, mine)
                if message is None:
                    continue  # released or purged in between: try the put again
                current = loads(message.value, claim.storage_key)
                if current.is_live(self.now()):
                    if current.is_claim_of(claim.owner_token):  # our retried claim
                        self._remember(
                            claim.storage_key, claim.owner_token, message.revision, current
                        )
                    return ClaimResult.of_live(current, claim.owner_token)
                try:
                    revision = await bucket.put(
                        claim.storage_key, value, last=message.revision, ttl=ttl
                    )
                except Conflict:
                    continue  # another request took it over first: read again
                self._remember(claim.storage_key, claim.owner_token, revision, mine)
                return ClaimResult(ClaimOutcome.TAKEN_OVER, mine)
        raise StorageError(self._moving("claim"))

    def _moving(self, operation: str) -> str:
        return (
            f"NATS bucket {self.settings.bucket!r}: the key changed under {CLAIM_ATTEMPTS} "
            f"attempts to {operation} in a row."
        )

    async def _complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        with self._errors("complete"):
            bucket = await self._bucket()
            for _ in range(CLAIM_ATTEMPTS):
                found = await self._our_claim(bucket, storage_key, owner_token)
                if found is None:
                    return await self._completed_by(bucket, storage_key, owner_token)
                revision, record = found
                completed = record.completed(response, self.now(), ttl)
                try:
                    await bucket.put(storage_key, dumps(completed), last=revision, ttl=ttl)
                except Conflict:
                    # Our own renewal may have moved the revision in the same
                    # instant (then the claim read again is still ours), or
                    # the claim was taken over (then it is not).
                    self._forget(storage_key, owner_token)
                    continue
                self._forget(storage_key, owner_token)
                return True
        raise StorageError(self._moving("complete"))

    async def _renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        with self._errors("renew"):
            bucket = await self._bucket()
            found = await self._our_claim(bucket, storage_key, owner_token)
            if found is None:
                return False
            revision, record = found
            renewed = record.renewed(self.now(), lease_seconds)
            try:
                new = await bucket.put(
                    storage_key, dumps(renewed), last=revision, ttl=lease_seconds
                )
            except Conflict:
                self._forget(storage_key, owner_token)
                return False
            self._remember(storage_key, owner_token, new, renewed)
            return True

    async def _release(self, storage_key: str, owner_token: str) -> bool:
        with self._errors("release"):
            bucket = await self._bucket()
            for _ in range(CLAIM_ATTEMPTS):
                found = await self._our_claim(bucket, storage_key, owner_token)
                if found is None:
                    return False
                revision, _ = found
                self._forget(storage_key, owner_token)
                if await bucket.purge(storage_key, before=revision + 1) == 0:
                    continue  # a renewal moved the revision meanwhile: read again
                # For duplicates waiting on it: a purge leaves no message.
                await bucket.connection.publish(
                    released_subject(self.settings), storage_key.encode()
                )
                return True
        raise StorageError(self._moving("release"))

    async def _get(self, storage_key: str) -> Record | None:
        with self._errors("get"):
            message = await (await self._bucket()).get(storage_key)
            return None if message is None else loads(message.value, storage_key)

    async def _delete(self, storage_key: str) -> bool:
        with self._errors("delete"):
            return await (await self._bucket()).purge(storage_key) > 0

    # -- housekeeping -----------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> Iterator[int]:
        """Purge dead records, each up to the revision read dead (a newer claim stays).

        From nats-server 2.11 the server forgets them itself and this is not
        called (``has_native_expiry``).
        """
        keys = self._run(self._keys())
        for start in range(0, len(keys), batch_size):
            purged = self._run(self._purge_dead(keys[start : start + batch_size]))
            if purged:
                yield purged

    def count_expired(self) -> int:
        """How many records are dead now (one get per key)."""
        return self._run(self._count_dead())

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """A page of records, by key; the cursor is the last key of the page."""
        return self._run(self._scan(cursor, count))

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """W030: NATS cannot be reached; E030: the bucket's settings would lose records."""
        try:
            settings = get_settings()
            longest = float(max(settings.ttl, settings.lock_ttl))
        except Exception:  # an invalid IDEMPOTENCY is E001's to report
            longest = float(MAX_SECONDS)
        try:
            problems = self._run(self._bucket_problems(longest))
        except StorageError as error:
            return [
                checks.Warning(
                    f"Could not reach NATS to look at bucket {self.settings.bucket!r}: {error}",
                    hint="Check IDEMPOTENCY['OPTIONS']['SERVERS'] and that the server runs "
                    "with JetStream (nats-server -js).",
                    id="django_idempotency.W030",
                )
            ]
        return [
            checks.Error(
                f"NATS bucket {self.settings.bucket!r} is unsuitable: {problem}.",
                hint="Point IDEMPOTENCY['OPTIONS']['BUCKET'] at a new bucket (NatsBackend "
                "creates it with suitable settings) or edit this one (nats kv edit).",
                id="django_idempotency.E030",
            )
            for problem in problems
        ]

    def close(self) -> None:
        """Close every loop's connection, stop the loop thread and the change listener."""
        self._changes.close()
        self._buckets.close(wait=self.settings.timeout)
        self._thread.close()

    # -- helpers ---------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run on the process's loop thread; a timeout there is a storage error too."""
        with self._errors("the request"):
            return self._thread.run(coroutine, self.settings.timeout * 3)

    async def _bucket(self) -> Bucket:
        bucket = await self._buckets.get()
        assert bucket is not None  # _open never answers None
        if bucket.connection.is_closed:
            self._buckets.forget(bucket)
            bucket = await self._buckets.get()
            assert bucket is not None
        return bucket

    async def _open(self) -> Bucket:
        connection = await connect(self.settings)
        try:
            bucket = await open_bucket(self.settings, connection)
        except BaseException:
            await connection.close()
            raise
        self._message_ttl = bucket.message_ttl
        return bucket

    async def _our_claim(
        self, bucket: Bucket, storage_key: str, owner_token: str
    ) -> tuple[int, Record] | None:
        """The revision and record of our claim in progress, or None when it is not ours.

        Remembered from the claim in this process; read from the store (one
        more operation) when it was forgotten.
        """
        with self._claims_lock:
            remembered = self._claims.get((storage_key, owner_token))
        if remembered is not None:
            return remembered
        message = await bucket.get(storage_key)
        if message is None:
            return None
        record = loads(message.value, storage_key)
        if not record.is_claim_of(owner_token):
            return None
        return message.revision, record

    async def _completed_by(self, bucket: Bucket, storage_key: str, owner_token: str) -> bool:
        """Whether the key holds a record this owner completed (a retried complete)."""
        message = await bucket.get(storage_key)
        if message is None:
            return False
        record = loads(message.value, storage_key)
        return record.owner_token == owner_token and record.state is State.COMPLETED

    def _remember(self, storage_key: str, owner_token: str, revision: int, record: Record) -> None:
        with self._claims_lock:
            self._claims[(storage_key, owner_token)] = (revision, record)
            self._claims.move_to_end((storage_key, owner_token))
            while len(self._claims) > REMEMBERED_CLAIMS:
                self._claims.popitem(last=False)  # an interrupted view's: read when needed

    def _forget(self, storage_key: str, owner_token: str) -> None:
        with self._claims_lock:
            self._claims.pop((storage_key, owner_token), None)

    async def _keys(self) -> list[str]:
        return await (await self._bucket()).keys()

    async def _purge_dead(self, keys: list[str]) -> int:
        bucket = await self._bucket()
        purged = 0
        for key in keys:
            message = await bucket.get(key)
            if message is not None and not loads(message.value, key).is_live(self.now()):
                purged += await bucket.purge(key, before=message.revision + 1)
        return purged

    async def _count_dead(self) -> int:
        bucket = await self._bucket()
        dead = 0
        for key in await bucket.keys():
            message = await bucket.get(key)
            if message is not None and not loads(message.value, key).is_live(self.now()):
                dead += 1
        return dead

    async def _scan(self, cursor: str | None, count: int) -> tuple[list[Record], str | None]:
        if count < 1:
            raise ValueError(f"count must be a positive integer; got {count!r}.")
        bucket = await self._bucket()
        keys = [key for key in await bucket.keys() if cursor is None or key > cursor]
        page = keys[:count]
        records = []
        for key in page:
            message = await bucket.get(key)
            if message is not None:
                records.append(loads(message.value, key))
        return records, (page[-1] if len(keys) > count else None)

    async def _bucket_problems(self, longest: float) -> list[str]:
        bucket = await self._bucket()
        return await bucket_problems(self.settings, bucket.js, longest)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Driver errors, timeouts and unreadable records as StorageError."""
        try:
            yield
        except StorageError:
            raise
        except RecordFormatError as error:
            raise StorageError(
                f"NATS bucket {self.settings.bucket!r} holds an unreadable record: {error}"
            ) from error
        except self._errors_caught as error:
            raise StorageError(
                f"NATS failed during {operation} ({type(error).__name__}: {error})"
            ) from error


async def _close(bucket: Bucket) -> None:
    await bucket.connection.close()
