"""Database backend: records in a table of one of ``DATABASES`` (the default backend).

OPTIONS: ``{"DATABASE": "default"}``, the alias of the database that holds the
``django_idempotency_idempotencyrecord`` table (``manage.py migrate
django_idempotency --database <alias>``).

The claim
---------
The unique index on ``storage_key`` makes a claim atomic across processes and
machines. The statements differ per vendor; none runs inside ``atomic()``, so
no SAVEPOINT is ever issued:

* PostgreSQL: one statement, a data-modifying CTE that inserts the claim or
  returns the record already there::

      WITH claimed AS (INSERT ... ON CONFLICT (storage_key) DO NOTHING RETURNING ...)
      SELECT TRUE, ... FROM claimed
      UNION ALL SELECT FALSE, ... FROM <table> WHERE storage_key = %s

  A record committed by another request after the statement's snapshot is in
  neither branch; the claim then asks again. A replay burns one value of the
  id sequence, which is harmless for a bigint.
* SQLite: an optimistic ``SELECT`` (a replay reads and never takes the write
  lock), then ``INSERT ... ON CONFLICT (storage_key) DO NOTHING`` and its
  rowcount; 0 rows means another request won, so the record is read again.
* MySQL, MariaDB and other vendors: the same ``SELECT``, then a plain
  ``INSERT`` whose duplicate-key ``IntegrityError`` means another request won.
  Not ``INSERT IGNORE`` (it turns other errors into warnings too), and not
  ``ON DUPLICATE KEY UPDATE`` (Django sets ``CLIENT_FOUND_ROWS``, which makes
  its rowcount ambiguous).

A dead record is taken over with a compare-and-set ``UPDATE ... WHERE
storage_key = %s AND owner_token = <its token> AND expires_at <= <now>``: of
two requests racing for it one updates a row, the other none and reads again.
The ``expires_at`` condition keeps a takeover from overwriting a record its
late owner completed in the meantime. ``complete`` and ``release`` are one
``UPDATE`` / ``DELETE`` each, filtered on the owner token.

Queries per request: a replay costs 1; a first execution (claim + complete)
costs 2 on PostgreSQL and 3 elsewhere; taking over a dead record adds 1.

Transactions
------------
A claim must be visible to other workers at once and must not be rolled back
with the view's transaction. The middleware claims outside the view's
``atomic()`` even with ``ATOMIC_REQUESTS``, but ``@idempotent`` runs inside
it, and users call decorated views inside ``transaction.atomic()``. So, when
the alias's connection is in an atomic block:

* PostgreSQL, MySQL, MariaDB: claim, release and every read run on a private
  autocommit connection to the same database, one per thread, opened on
  first use and closed (or kept) after each use exactly as the alias's
  ``CONN_MAX_AGE`` says; :meth:`DatabaseBackend.close` closes them all.
  ``complete`` is deferred with ``transaction.on_commit``: the response is
  stored only if the view's transaction commits, so a replay never vouches
  for work that was rolled back. A view that raises is released at once by
  the decorator. A transaction that rolls back after the view returned leaves
  the claim in progress until its lease (``LOCK_TTL``) ends; a retry then
  takes it over and runs the view again.
* SQLite: the statements join the caller's transaction instead. SQLite has
  one writer per database file: a second connection of the same thread blocks
  on the lock the view's transaction holds as soon as it has written, or
  merely read in rollback-journal mode, until the busy timeout ends in
  "database is locked". Joining is also correct: the claim commits or rolls
  back together with the view's writes (a rollback then acts as a release),
  and a concurrent duplicate waits for the write lock and then sees the
  committed record.
* Inside a ``django.test.TestCase``: the statements join the test's
  transaction on every vendor, so that records are rolled back with the test
  like any other row.

SQLite locking
--------------
Outside atomic blocks every statement is its own autocommit transaction, and
SQLite then always waits on a locked database through its busy handler (the
``"timeout"`` database OPTION, 5 seconds by default) instead of failing: the
deadlock SQLite refuses to wait in needs a connection that holds a read lock
inside a transaction. No retry loop is added on top. With ``ATOMIC_REQUESTS``
on SQLite, set ``"OPTIONS": {"transaction_mode": "IMMEDIATE"}`` so that two
requests' deferred transactions cannot deadlock (SQLite answers that at once
with "database is locked", which becomes a 503 here).

Errors
------
Every ``django.db.Error`` (refused connection, missing table, lock timeout...)
and an alias missing from the connections become :class:`StorageError`, which
the engine turns into a 503. Times are stored as described in
:mod:`django_idempotency.models`; expiry is always compared with this
process's clock (:meth:`BaseBackend.now`), never with the database's.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, Error, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionDoesNotExist

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.keys import log_label
from django_idempotency.records import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Record,
    State,
    StoredResponse,
)

if TYPE_CHECKING:
    from django.db.models import Field

    from django_idempotency.models import IdempotencyRecord

logger = logging.getLogger("django_idempotency")

CLAIM_ATTEMPTS = 5
"""How often a claim reads and writes again when the record keeps changing under it."""


class DatabaseBackend(BaseBackend):
    """Records in a table; the claim is atomic through its unique index.

    OPTIONS: ``{"DATABASE": "<alias>"}`` (default ``"default"``).
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.alias = _database_alias(self.options)
        self._private = _PrivateConnections(self.alias)

    # -- the atomic core ----------------------------------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """Insert the claim, take over a dead record, or return the live one."""
        now = self.now()
        mine = Record.from_claim(claim, now)
        for _attempt in range(CLAIM_ATTEMPTS):
            with self._connection() as connection:
                result = _Table(connection).claim(mine, now)
            if result is not None:
                return result
        raise StorageError(
            f"Could not claim idempotency key {log_label(claim.storage_key)} in database "
            f"{self.alias!r}: the record changed under {CLAIM_ATTEMPTS} attempts in a row."
        )

    def complete(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        """Store the response, if the record is still ours.

        Inside the caller's transaction (PostgreSQL, MySQL) this only arranges
        for the response to be stored when that transaction commits, and
        returns True.
        """
        if not _needs_private_connection(self._shared_connection()):
            return self._complete_now(storage_key, owner_token, response, ttl)

        def complete_after_commit() -> None:
            self._complete_after_commit(storage_key, owner_token, response, ttl)

        transaction.on_commit(complete_after_commit, using=self.alias, robust=True)
        return True

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the record if it is ours and still in progress."""
        with self._connection() as connection:
            return _Table(connection).release(storage_key, owner_token)

    def get(self, storage_key: str) -> Record | None:
        """The stored record, live or dead."""
        with self._connection() as connection:
            row = _Table(connection).read(storage_key)
        return None if row is None else row.to_record()

    def delete(self, storage_key: str) -> bool:
        """Delete the record whatever its state or owner."""
        with self._connection() as connection:
            return _Table(connection).delete(storage_key)

    # -- housekeeping -------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000) -> Iterator[int]:
        """Delete the records dead now, ``batch_size`` primary keys per statement.

        Each batch selects the primary keys of dead records (oldest expiry
        first, through the ``expires_at`` index) and deletes those still dead,
        so millions of rows go without a long lock, and a record taken over
        between the two statements survives.
        """
        _positive(batch_size, "batch_size")
        now = self.now()
        while True:
            with self._connection() as connection:
                selected, deleted = _Table(connection).purge_batch(now, batch_size)
            if not selected:
                return
            if deleted:
                yield deleted

    def count_expired(self) -> int:
        """How many records are dead now."""
        with self._connection() as connection:
            return _Table(connection).count_expired(self.now())

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """Records by primary key; the cursor is the last primary key of the page."""
        _positive(count, "count")
        after = 0 if cursor is None else int(cursor)
        with self._connection() as connection:
            rows = _Table(connection).page(after, count + 1)
        next_cursor = str(rows[count - 1].pk) if len(rows) > count else None
        return [row.to_record() for row in rows[:count]], next_cursor

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E020: unknown alias; W020: table missing; W021: the table cannot be inspected.

        Only a database listed in ``kwargs["databases"]`` is queried.
        """
        if self.alias not in settings.DATABASES:
            return [
                checks.Error(
                    f"IDEMPOTENCY['OPTIONS']['DATABASE'] = {self.alias!r} is not in DATABASES.",
                    hint=f"Use one of {sorted(settings.DATABASES)}.",
                    id="django_idempotency.E020",
                )
            ]
        if self.alias not in (kwargs.get("databases") or []):
            return []
        try:
            tables = connections[self.alias].introspection.table_names()
        except (Error, ConnectionDoesNotExist) as error:
            return [
                checks.Warning(
                    f"Could not look for the idempotency table in database {self.alias!r}: {error}",
                    hint="Check that the database is reachable.",
                    id="django_idempotency.W021",
                )
            ]
        if _model()._meta.db_table in tables or "django_migrations" not in tables:
            # A database never migrated is about to be (this check also runs at the
            # start of the first ``migrate``), and Django already lists its unapplied
            # migrations; the warning is for a project that migrated without this app.
            return []
        return [
            checks.Warning(
                f"The idempotency table does not exist in database {self.alias!r}: every "
                "guarded request will answer 503.",
                hint=f"Run: manage.py migrate django_idempotency --database {self.alias}",
                id="django_idempotency.W020",
            )
        ]

    def close(self) -> None:
        """Close the private connections of every thread."""
        self._private.close_all()

    # -- helpers ------------------------------------------------------------

    def _shared_connection(self) -> BaseDatabaseWrapper:
        """The calling thread's own connection to the alias (Django's)."""
        try:
            return connections[self.alias]
        except ConnectionDoesNotExist as error:
            raise StorageError(f"Database {self.alias!r} is not configured: {error}") from error

    @contextmanager
    def _connection(self) -> Iterator[BaseDatabaseWrapper]:
        """The connection a statement runs on; database errors become StorageError."""
        shared = self._shared_connection()
        try:
            if not _needs_private_connection(shared):
                yield shared
            else:
                with self._private.connection() as private:
                    yield private
        except (Error, ConnectionDoesNotExist) as error:
            raise StorageError(f"Database {self.alias!r} failed: {error}") from error

    def _complete_now(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> bool:
        now = self.now()
        with self._connection() as connection:
            return _Table(connection).complete(storage_key, owner_token, response, now, now + ttl)

    def _complete_after_commit(
        self, storage_key: str, owner_token: str, response: StoredResponse, ttl: int
    ) -> None:
        """Store the response once the view's transaction committed; never raise there."""
        try:
            stored = self._complete_now(storage_key, owner_token, response, ttl)
        except StorageError as error:
            logger.error(
                "idempotency key %s: storage error on complete after commit; the claim stays "
                "until its lease expires: %s",
                log_label(storage_key),
                error,
            )
            return
        if not stored:
            logger.warning(
                "idempotency key %s: the response was not stored, the claim was no longer ours "
                "when the transaction committed; raise LOCK_TTL above the view's longest run",
                log_label(storage_key),
            )


def _needs_private_connection(connection: BaseDatabaseWrapper) -> bool:
    """Whether statements must stay out of the caller's transaction (see the module doc)."""
    if not connection.in_atomic_block or connection.vendor == "sqlite":
        return False
    return not any(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


class _PrivateConnections:
    """One autocommit connection per thread to the alias's database, apart from Django's.

    After each use the connection is closed or kept as the alias's
    ``CONN_MAX_AGE`` and health checks say, as Django does at the end of a
    request; a connection left by a finished thread is closed with it.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._local = threading.local()
        self._lock = threading.Lock()
        self._wrappers: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()

    @contextmanager
    def connection(self) -> Iterator[BaseDatabaseWrapper]:
        wrapper: BaseDatabaseWrapper | None = getattr(self._local, "wrapper", None)
        if wrapper is None:
            wrapper = connections.create_connection(self.alias)
            self._local.wrapper = wrapper
            with self._lock:
                self._wrappers.add(wrapper)
        try:
            yield wrapper
        finally:
            with suppress(Error):
                wrapper.close_if_unusable_or_obsolete()

    def close_all(self) -> None:
        with self._lock:
            wrappers = list(self._wrappers)
        for wrapper in wrappers:
            wrapper.inc_thread_sharing()  # close() may come from another thread
            try:
                with suppress(Error):
                    wrapper.close()
            finally:
                wrapper.dec_thread_sharing()


class _Table:
    """The backend's SQL statements on one connection, spelled for its vendor."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        from django_idempotency.models import IdempotencyRecord, to_datetime

        self.connection = connection
        self.model = IdempotencyRecord
        self.to_datetime = to_datetime
        self.fields: list[Field[Any, Any]] = list(self.model._meta.concrete_fields)
        self.table = self._name(self.model._meta.db_table)
        self.columns = ", ".join(self._name(_column(field)) for field in self.fields)
        self.expires_at_field = next(f for f in self.fields if f.name == "expires_at")

    # -- claim --------------------------------------------------------------

    def claim(self, mine: Record, now: float) -> ClaimResult | None:
        """One attempt: the result, or None when the record changed under us."""
        if self.connection.vendor == "postgresql":
            created, current = self._insert_or_read(mine)
        else:
            current = self.read(mine.storage_key)
            created = current is None and self._insert(mine)
            if current is None and not created:
                current = self.read(mine.storage_key)
        if created:
            return ClaimResult(ClaimOutcome.CREATED, mine)
        if current is None:
            return None  # released or purged since the insert conflicted
        existing = current.to_record()
        if existing.is_live(now):
            return ClaimResult.of_live(existing, mine.owner_token)
        if self._take_over(existing, mine, now):
            return ClaimResult(ClaimOutcome.TAKEN_OVER, mine)
        return None

    def _insert_or_read(self, mine: Record) -> tuple[bool, IdempotencyRecord | None]:
        """PostgreSQL: insert the claim or read the existing record, in one statement."""
        names, params = self._insert_values(mine)
        sql = (
            f"WITH claimed AS (INSERT INTO {self.table} ({names}) "
            f"VALUES ({', '.join(['%s'] * len(params))}) "
            f"ON CONFLICT ({self._name('storage_key')}) DO NOTHING RETURNING {self.columns}) "
            f"SELECT TRUE, {self.columns} FROM claimed UNION ALL "
            f"SELECT FALSE, {self.columns} FROM {self.table} WHERE {self._name('storage_key')} = %s"
        )
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [*params, mine.storage_key])
            row = cursor.fetchone()
        if row is None:
            return False, None
        return bool(row[0]), self._from_row(row[1:])

    def _insert(self, mine: Record) -> bool:
        """Insert the claim; False when a record with its storage key exists."""
        names, params = self._insert_values(mine)
        sql = f"INSERT INTO {self.table} ({names}) VALUES ({', '.join(['%s'] * len(params))})"
        if self.connection.vendor == "sqlite":
            sql += f" ON CONFLICT ({self._name('storage_key')}) DO NOTHING"
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(sql, params)
                return int(cursor.rowcount) == 1
        except IntegrityError:
            return False  # the unique index refused a second record for the key

    def _take_over(self, dead: Record, mine: Record, now: float) -> bool:
        """Compare-and-set: replace ``dead`` if it is still there, dead and its owner's."""
        values = self._values(self.model.from_record(mine), exclude={"id", "storage_key"})
        assignments, params = self._assignments(values)
        sql = (
            f"UPDATE {self.table} SET {assignments} WHERE {self._name('storage_key')} = %s "
            f"AND {self._name('owner_token')} = %s AND {self._name('expires_at')} <= %s"
        )
        return self._rowcount(sql, [*params, dead.storage_key, dead.owner_token, self._time(now)])

    # -- complete, release, read, delete ------------------------------------

    def complete(
        self,
        storage_key: str,
        owner_token: str,
        response: StoredResponse,
        now: float,
        expires_at: float,
    ) -> bool:
        row = self.model(
            state=State.COMPLETED.value,
            completed_at=self.to_datetime(now),
            expires_at=self.to_datetime(expires_at),
            response_status=response.status,
            response_headers=[list(pair) for pair in response.headers],
            response_body=response.body,
        )
        fields = (
            "state",
            "completed_at",
            "expires_at",
            "response_status",
            "response_headers",
            "response_body",
        )
        assignments, params = self._assignments(self._values(row, only=fields))
        sql = (
            f"UPDATE {self.table} SET {assignments} WHERE {self._name('storage_key')} = %s "
            f"AND {self._name('owner_token')} = %s AND {self._name('state')} = %s"
        )
        if self._rowcount(sql, [*params, storage_key, owner_token, State.IN_PROGRESS.value]):
            return True
        # Not ours to complete, or already completed by us (a retried complete):
        # the stored response never changes while it can be replayed.
        current = self.read(storage_key)
        return (
            current is not None
            and current.owner_token == owner_token
            and current.state == State.COMPLETED.value
        )

    def release(self, storage_key: str, owner_token: str) -> bool:
        sql = (
            f"DELETE FROM {self.table} WHERE {self._name('storage_key')} = %s "
            f"AND {self._name('owner_token')} = %s AND {self._name('state')} = %s"
        )
        return self._rowcount(sql, [storage_key, owner_token, State.IN_PROGRESS.value])

    def read(self, storage_key: str) -> IdempotencyRecord | None:
        rows = self._select(f"WHERE {self._name('storage_key')} = %s", [storage_key])
        return rows[0] if rows else None

    def delete(self, storage_key: str) -> bool:
        sql = f"DELETE FROM {self.table} WHERE {self._name('storage_key')} = %s"
        return self._rowcount(sql, [storage_key])

    # -- housekeeping -------------------------------------------------------

    def purge_batch(self, now: float, batch_size: int) -> tuple[int, int]:
        """Delete up to ``batch_size`` dead records: (how many were selected, deleted)."""
        expires_at, pk = self._name("expires_at"), self._name(_column(self.model._meta.pk))
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {pk} FROM {self.table} WHERE {expires_at} <= %s "
                f"ORDER BY {expires_at} LIMIT {int(batch_size)}",
                [self._time(now)],
            )
            pks = [row[0] for row in cursor.fetchall()]
            if not pks:
                return 0, 0
            cursor.execute(
                f"DELETE FROM {self.table} WHERE {pk} IN ({', '.join(['%s'] * len(pks))}) "
                f"AND {expires_at} <= %s",
                [*pks, self._time(now)],
            )
            return len(pks), int(cursor.rowcount)

    def count_expired(self, now: float) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM {self.table} WHERE {self._name('expires_at')} <= %s",
                [self._time(now)],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def page(self, after: int, limit: int) -> list[IdempotencyRecord]:
        pk = self._name(_column(self.model._meta.pk))
        return self._select(f"WHERE {pk} > %s ORDER BY {pk} LIMIT {int(limit)}", [after])

    # -- SQL plumbing -------------------------------------------------------

    def _name(self, name: str) -> str:
        return self.connection.ops.quote_name(name)

    def _select(self, where: str, params: Sequence[Any]) -> list[IdempotencyRecord]:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.columns} FROM {self.table} {where}", params)
            return [self._from_row(row) for row in cursor.fetchall()]

    def _from_row(self, row: Sequence[Any]) -> IdempotencyRecord:
        """A model instance from raw column values, converted as the ORM would."""
        values = [
            self._convert(field, value) for field, value in zip(self.fields, row, strict=True)
        ]
        instance: IdempotencyRecord = self.model.from_db(
            self.connection.alias, [field.attname for field in self.fields], values
        )
        return instance

    def _convert(self, field: Field[Any, Any], value: Any) -> Any:
        column = field.get_col(self.model._meta.db_table)
        converters = [
            *self.connection.ops.get_db_converters(column),
            *column.get_db_converters(self.connection),
        ]
        for converter in converters:
            value = converter(value, column, self.connection)
        return value

    def _values(
        self,
        row: IdempotencyRecord,
        *,
        only: Sequence[str] | None = None,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> list[tuple[str, Any]]:
        """(quoted column, database value) for the row's fields, adapted for this vendor."""
        return [
            (
                self._name(_column(field)),
                field.get_db_prep_save(getattr(row, field.attname), self.connection),
            )
            for field in self.fields
            if field.name not in exclude and (only is None or field.name in only)
        ]

    def _insert_values(self, mine: Record) -> tuple[str, list[Any]]:
        values = self._values(self.model.from_record(mine), exclude={"id"})
        return ", ".join(name for name, _ in values), [value for _, value in values]

    @staticmethod
    def _assignments(values: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
        return ", ".join(f"{name} = %s" for name, _ in values), [value for _, value in values]

    def _time(self, epoch: float) -> Any:
        """Epoch seconds as a parameter compared with a datetime column."""
        return self.expires_at_field.get_db_prep_value(self.to_datetime(epoch), self.connection)

    def _rowcount(self, sql: str, params: Sequence[Any]) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount) == 1


def _model() -> type[IdempotencyRecord]:
    """The model, imported late: this module loads before the app registry is ready."""
    from django_idempotency.models import IdempotencyRecord

    return IdempotencyRecord


def _column(field: Field[Any, Any]) -> str:
    """A concrete field's column name (stubs allow None, which only non-concrete fields have)."""
    return cast(str, field.column)


def _database_alias(options: Mapping[str, Any]) -> str:
    unknown = sorted(set(options) - {"DATABASE"})
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown IDEMPOTENCY['OPTIONS'] for DatabaseBackend: {unknown}; the only option "
            "is 'DATABASE' (an alias of DATABASES)."
        )
    alias = options.get("DATABASE", DEFAULT_DB_ALIAS)
    if not isinstance(alias, str) or not alias:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['DATABASE'] must be the alias of a database in DATABASES, "
            f"such as 'default'; got {alias!r}."
        )
    # Whether the alias exists is system check E020's to say: DATABASES may be
    # completed after the backend is built, and until then a claim is a 503.
    return alias


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
