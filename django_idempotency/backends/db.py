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
  Completing runs on the view's own connection, inside its transaction: the
  response commits with the view's writes or not at all, so a process that
  dies right after the commit leaves a replay, and a replay never vouches
  for work that was rolled back. The completing ``UPDATE`` is fenced on the
  owner token: a claim taken over meanwhile (a worker frozen past its lease)
  rolls the view's transaction back (:class:`RolledBack`). A transaction
  that cannot see its claim (REPEATABLE READ or SERIALIZABLE, its snapshot
  older than the claim) completes on commit instead. A view that raises is
  released at once by the decorator. A transaction that rolls back after the
  view returned leaves the claim in progress until its lease (``LOCK_TTL``)
  ends; a retry then takes it over and runs the view again.
* Renewals run on a private connection in every case, from the renewal
  thread or an executor thread; on PostgreSQL they skip a row locked by a
  completion still uncommitted, and on MariaDB wait at most a second for it,
  so one transaction left open never holds up the renewals of the process.
* SQLite: the statements join the caller's transaction instead. SQLite has
  one writer per database file: a second connection of the same thread blocks
  on the lock the view's transaction holds as soon as it has written, or
  merely read in rollback-journal mode, until the busy timeout ends in
  "database is locked". Joining is also correct: the claim commits or rolls
  back together with the view's writes (a rollback then acts as a release),
  and a concurrent duplicate waits for the write lock and then sees the
  committed record.
* With ``"JOIN_TRANSACTIONS": True`` in OPTIONS, every vendor joins the
  caller's transaction as SQLite does. For test suites whose tests each run
  in a transaction that is rolled back (``django.test.TestCase``,
  pytest-django's ``db`` fixture), so that records go with the test's other
  rows; never for a project with several workers, which would not see each
  other's claims until commit.

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

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, Error, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionDoesNotExist

from django_idempotency.backends.base import BaseBackend, RolledBack, StorageError
from django_idempotency.backends.changes import ChangeListener, Watch
from django_idempotency.backends.db_changes import can_listen, change_listener
from django_idempotency.backends.db_connections import (
    PrivateConnections,
    drop_if_broken,
    needs_private_connection,
)
from django_idempotency.backends.db_statements import RecordTable, sql_for
from django_idempotency.keys import log_label
from django_idempotency.records import Claim, ClaimResult, Record, State, StoredResponse

CLAIM_ATTEMPTS = 5
"""How often a claim reads and writes again when the record keeps changing under it."""


class DatabaseBackend(BaseBackend):
    """Records in a table; the claim is atomic through its unique index.

    OPTIONS: ``{"DATABASE": "<alias>"}`` (default ``"default"``).
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.alias, self.join_transactions = _parse_options(self.options)
        self.model_database = self.alias
        self._private = PrivateConnections(self.alias)
        self._changes = ChangeListener("postgresql-changes", change_listener(self.alias))

    # -- the atomic core ----------------------------------------------------

    def claim(self, claim: Claim) -> ClaimResult:
        """Insert the claim, take over a dead record, or return the live one."""
        now = self.now()
        mine = Record.from_claim(claim, now)
        for _attempt in range(CLAIM_ATTEMPTS):
            with self._connection() as connection:
                result = RecordTable(connection).claim(mine, now)
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

        Inside an atomic block on the records' database, the owner-fenced
        UPDATE runs on the view's own connection, in its transaction: the
        response commits with the view's writes or not at all, so a process
        that dies right after the commit leaves a record to replay, never a
        claim whose view would run again. If the claim is no longer ours
        there, or the UPDATE fails, the transaction is marked for rollback and
        :class:`RolledBack` raised.
        """
        now = self.now()
        shared = self._shared_connection()
        if not shared.in_atomic_block:
            with self._connection() as connection:
                return RecordTable(connection).complete(
                    storage_key, owner_token, response, now, now + ttl
                )
        try:
            with self._errors(shared):
                stored = RecordTable(shared).complete(
                    storage_key, owner_token, response, now, now + ttl
                )
        except StorageError as error:
            transaction.set_rollback(True, using=self.alias)
            raise RolledBack(
                f"Storing the response inside the view's transaction failed, so that "
                f"transaction is rolled back: {error}",
                lost=False,
            ) from error
        if stored:
            return True
        current = self.get(storage_key)  # as committed, outside the view's transaction
        if current is not None and current.owner_token == owner_token:
            if current.state is State.COMPLETED:
                return True  # a retried complete
            raise _ClaimNotVisible  # see defer_until_commit
        transaction.set_rollback(True, using=self.alias)
        raise RolledBack(
            "The claim is no longer this request's (its lease lapsed and a retry took the "
            "key over), so the view's transaction is rolled back.",
            lost=True,
        )

    def defer_until_commit(self, callback: Callable[[], None]) -> None:
        """Run the completion now: inside the view's transaction, :meth:`complete` writes there.

        Only when that transaction cannot see the claim does it wait for the
        commit (and never run on a rollback): a REPEATABLE READ or
        SERIALIZABLE snapshot taken before the claim was committed apart hides
        the claim's row from the view's connection. Such a response is then
        stored just after the commit, with the window that leaves (see
        README.rst, "Crash-consistent completion").
        """
        try:
            callback()
        except _ClaimNotVisible:
            transaction.on_commit(callback, using=self.alias, robust=True)

    def renew(self, storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        """Move the lease end of our in-progress record (one owner-fenced UPDATE).

        Always on a private connection: renewals run in the renewal thread or
        an executor thread, never the request's, and Django closes the
        connections of those threads only at process exit; a private one
        follows ``CONN_MAX_AGE`` after each use.
        """
        with self._errors(self._shared_connection()), self._private.connection() as connection:
            return RecordTable(connection).renew(
                storage_key, owner_token, self.now() + lease_seconds
            )

    def needs_renewal(self) -> bool:
        """False when this thread's claim joined the view's open transaction (SQLite).

        Such a claim is invisible to other requests until the transaction
        commits, with the completion in it; a renewal from the scheduler's own
        connection would only wait for SQLite's write lock.
        """
        shared = self._shared_connection()
        return not shared.in_atomic_block or needs_private_connection(
            shared, self.join_transactions
        )

    def release(self, storage_key: str, owner_token: str) -> bool:
        """Delete the record if it is ours and still in progress."""
        with self._connection() as connection:
            return RecordTable(connection).release(storage_key, owner_token)

    def get(self, storage_key: str) -> Record | None:
        """The stored record, live or dead."""
        with self._connection() as connection:
            row = RecordTable(connection).read(storage_key)
        return None if row is None else row.to_record()

    def delete(self, storage_key: str) -> bool:
        """Delete the record whatever its state or owner."""
        with self._connection() as connection:
            return RecordTable(connection).delete(storage_key)

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
                selected, deleted = RecordTable(connection).purge_batch(now, batch_size)
            if not selected:
                return
            if deleted:
                yield deleted

    def count_expired(self) -> int:
        """How many records are dead now."""
        with self._connection() as connection:
            return RecordTable(connection).count_expired(self.now())

    def scan(self, cursor: str | None = None, count: int = 100) -> tuple[list[Record], str | None]:
        """Records by primary key; the cursor is the last primary key of the page."""
        _positive(count, "count")
        after = 0 if cursor is None else int(cursor)
        with self._connection() as connection:
            rows = RecordTable(connection).page(after, count + 1)
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
        if (
            sql_for(connections[self.alias]).table_name in tables
            or "django_migrations" not in tables
        ):
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

    def watch(self, storage_key: str) -> Watch:
        """On PostgreSQL (psycopg 3), woken by ``NOTIFY``; elsewhere a poll."""
        if not self._can_listen():
            return super().watch(storage_key)
        return self._changes.watch(storage_key)

    async def awatch(self, storage_key: str) -> Watch:
        """Async :meth:`watch`."""
        if not self._can_listen():
            return await super().awatch(storage_key)
        return await self._changes.awatch(storage_key)

    def close(self) -> None:
        """Close the private connections of every thread, and the listener's."""
        self._changes.close()
        self._private.close_all()

    def _can_listen(self) -> bool:
        try:
            return can_listen(self.alias)
        except ConnectionDoesNotExist:
            return False

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
        with self._errors(shared):
            if not needs_private_connection(shared, self.join_transactions):
                yield shared
            else:
                with self._private.connection() as private:
                    yield private

    @contextmanager
    def _errors(self, shared: BaseDatabaseWrapper) -> Iterator[None]:
        """Database errors as StorageError; a connection they broke is dropped."""
        try:
            yield
        except (Error, ConnectionDoesNotExist) as error:
            drop_if_broken(shared)
            raise StorageError(f"Database {self.alias!r} failed: {error}") from error


class _ClaimNotVisible(Exception):
    """The view's transaction cannot see its own claim (a snapshot older than the claim)."""


def _parse_options(options: Mapping[str, Any]) -> tuple[str, bool]:
    """(the DATABASE alias, JOIN_TRANSACTIONS)."""
    unknown = sorted(set(options) - {"DATABASE", "JOIN_TRANSACTIONS"})
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown IDEMPOTENCY['OPTIONS'] for DatabaseBackend: {unknown}; the options are "
            "'DATABASE' (an alias of DATABASES) and 'JOIN_TRANSACTIONS' (True or False)."
        )
    join = options.get("JOIN_TRANSACTIONS", False)
    if not isinstance(join, bool):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['OPTIONS']['JOIN_TRANSACTIONS'] must be True or False; got {join!r}."
        )
    alias = options.get("DATABASE", DEFAULT_DB_ALIAS)
    if not isinstance(alias, str) or not alias:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['DATABASE'] must be the alias of a database in DATABASES, "
            f"such as 'default'; got {alias!r}."
        )
    # Whether the alias exists is system check E020's to say: DATABASES may be
    # completed after the backend is built, and until then a claim is a 503.
    return alias, join


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
