"""The database backend's SQL: each statement spelled once per vendor, run on a connection.

Hand-written rather than ORM queries because the claim must be one
statement on PostgreSQL (``INSERT ... ON CONFLICT ... RETURNING`` inside a
CTE) and no statement may open a SAVEPOINT; see the module docstring of
:mod:`~django_idempotency.backends.db` for why each one is shaped as it is.
The text of every statement depends only on the vendor (how it quotes
names), so it is built the first time a vendor is met and reused.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.db import IntegrityError
from django.db.backends.base.base import BaseDatabaseWrapper

from django_idempotency.backends.db_changes import CHANNEL
from django_idempotency.records import ClaimOutcome, ClaimResult, Record, State, StoredResponse
from django_idempotency.rows import completion_values, row_values, to_datetime

if TYPE_CHECKING:
    from django.db.models import Field

    from django_idempotency.models import IdempotencyRecord

COMPLETION_FIELDS = (
    "state",
    "completed_at",
    "expires_at",
    "response_status",
    "response_reason",
    "response_headers",
    "response_body",
)
"""The fields that completing a record writes."""


@dataclass(frozen=True)
class RecordSQL:
    """Every statement of the backend, spelled for one vendor."""

    table_name: str
    """The table's name, unquoted."""
    fields: tuple[Field[Any, Any], ...]
    insert_fields: tuple[Field[Any, Any], ...]
    take_over_fields: tuple[Field[Any, Any], ...]
    completion_fields: tuple[Field[Any, Any], ...]
    expires_at_field: Field[Any, Any]
    insert_or_read: str
    """PostgreSQL only: insert the claim, or read the record already there."""
    insert: str
    take_over: str
    complete: str
    renew: str
    release: str
    select: str
    read: str
    delete: str
    purge_select: str
    purge_delete: str
    count_expired: str
    page: str

    @classmethod
    def build(cls, connection: BaseDatabaseWrapper) -> RecordSQL:
        """The statements as ``connection``'s vendor spells them."""
        model = _model()
        name = connection.ops.quote_name
        fields = tuple(model._meta.concrete_fields)
        table = name(model._meta.db_table)
        columns = ", ".join(name(_column(field)) for field in fields)
        insert_fields = tuple(f for f in fields if f.name != "id")
        take_over_fields = tuple(f for f in insert_fields if f.name != "storage_key")
        completion_fields = tuple(f for f in fields if f.name in COMPLETION_FIELDS)
        storage_key, owner_token = name("storage_key"), name("owner_token")
        state, expires_at = name("state"), name("expires_at")
        pk = name(_column(model._meta.pk))
        insert_columns = ", ".join(name(_column(field)) for field in insert_fields)
        placeholders = ", ".join(["%s"] * len(insert_fields))
        insert = f"INSERT INTO {table} ({insert_columns}) VALUES ({placeholders})"
        if connection.vendor == "sqlite":
            insert += f" ON CONFLICT ({storage_key}) DO NOTHING"
        return cls(
            table_name=model._meta.db_table,
            fields=fields,
            insert_fields=insert_fields,
            take_over_fields=take_over_fields,
            completion_fields=completion_fields,
            expires_at_field=next(f for f in fields if f.name == "expires_at"),
            insert_or_read=(
                f"WITH claimed AS (INSERT INTO {table} ({insert_columns}) VALUES ({placeholders}) "
                f"ON CONFLICT ({storage_key}) DO NOTHING RETURNING {columns}) "
                f"SELECT TRUE, {columns} FROM claimed UNION ALL "
                f"SELECT FALSE, {columns} FROM {table} WHERE {storage_key} = %s"
            ),
            insert=insert,
            take_over=(
                f"UPDATE {table} SET {_assignments(name, take_over_fields)} "
                f"WHERE {storage_key} = %s AND {owner_token} = %s AND {expires_at} <= %s"
            ),
            complete=_notifying(
                connection,
                f"UPDATE {table} SET {_assignments(name, completion_fields)} "
                f"WHERE {storage_key} = %s AND {owner_token} = %s AND {state} = %s",
                storage_key,
            ),
            renew=_renew_statement(
                connection, table, pk, expires_at, storage_key, owner_token, state
            ),
            release=_notifying(
                connection,
                f"DELETE FROM {table} WHERE {storage_key} = %s AND {owner_token} = %s "
                f"AND {state} = %s",
                storage_key,
            ),
            select=f"SELECT {columns} FROM {table}",
            read=f"SELECT {columns} FROM {table} WHERE {storage_key} = %s",
            delete=f"DELETE FROM {table} WHERE {storage_key} = %s",
            purge_select=(
                f"SELECT {pk} FROM {table} WHERE {expires_at} <= %s ORDER BY {expires_at} LIMIT "
            ),
            purge_delete=f"DELETE FROM {table} WHERE {expires_at} <= %s AND {pk} IN ",
            count_expired=f"SELECT COUNT(*) FROM {table} WHERE {expires_at} <= %s",
            page=f"SELECT {columns} FROM {table} WHERE {pk} > %s ORDER BY {pk} LIMIT ",
        )


_spelled: dict[str, RecordSQL] = {}
_spelled_lock = threading.Lock()


def sql_for(connection: BaseDatabaseWrapper) -> RecordSQL:
    """The statements for ``connection``'s vendor, built once per vendor and process."""
    sql = _spelled.get(connection.vendor)
    if sql is None:
        with _spelled_lock:
            sql = _spelled.setdefault(connection.vendor, RecordSQL.build(connection))
    return sql


class RecordTable:
    """The backend's statements run on one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.sql = sql_for(connection)

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
        if self.take_over(existing, mine, now):
            return ClaimResult(ClaimOutcome.TAKEN_OVER, mine)
        return None

    def _insert_or_read(self, mine: Record) -> tuple[bool, IdempotencyRecord | None]:
        """PostgreSQL: insert the claim or read the existing record, in one statement."""
        params = self._values(row_values(mine), self.sql.insert_fields)
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql.insert_or_read, [*params, mine.storage_key])
            row = cursor.fetchone()
        if row is None:
            return False, None
        return bool(row[0]), self._from_row(row[1:])

    def _insert(self, mine: Record) -> bool:
        """Insert the claim; False when a record with its storage key exists."""
        params = self._values(row_values(mine), self.sql.insert_fields)
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(self.sql.insert, params)
                return int(cursor.rowcount) == 1
        except IntegrityError:
            return False  # the unique index refused a second record for the key

    def take_over(self, dead: Record, mine: Record, now: float) -> bool:
        """Compare-and-set: replace ``dead`` if it is still there, dead and its owner's."""
        params = self._values(row_values(mine), self.sql.take_over_fields)
        return self._rowcount(
            self.sql.take_over, [*params, dead.storage_key, dead.owner_token, self._time(now)]
        )

    # -- complete, release, read, delete ------------------------------------

    def complete(
        self,
        storage_key: str,
        owner_token: str,
        response: StoredResponse,
        now: float,
        expires_at: float,
    ) -> bool:
        values = {
            "state": State.COMPLETED.value,
            "completed_at": to_datetime(now),
            "expires_at": to_datetime(expires_at),
            **completion_values(response),
        }
        params = self._values(values, self.sql.completion_fields)
        if self._rowcount(
            self.sql.complete, [*params, storage_key, owner_token, State.IN_PROGRESS.value]
        ):
            return True
        # Not ours to complete, or already completed by us (a retried complete):
        # the stored response never changes while it can be replayed.
        current = self.read(storage_key)
        return (
            current is not None
            and current.owner_token == owner_token
            and current.state == State.COMPLETED.value
        )

    def renew(self, storage_key: str, owner_token: str, expires_at: float) -> bool:
        sql = self.sql.renew
        if getattr(self.connection, "mysql_is_mariadb", False):
            sql = MARIADB_SHORT_LOCK_WAIT + sql
        return self._rowcount(
            sql, [self._time(expires_at), storage_key, owner_token, State.IN_PROGRESS.value]
        )

    def release(self, storage_key: str, owner_token: str) -> bool:
        return self._rowcount(self.sql.release, [storage_key, owner_token, State.IN_PROGRESS.value])

    def read(self, storage_key: str) -> IdempotencyRecord | None:
        rows = self._rows(self.sql.read, [storage_key])
        return rows[0] if rows else None

    def delete(self, storage_key: str) -> bool:
        return self._rowcount(self.sql.delete, [storage_key])

    # -- housekeeping -------------------------------------------------------

    def purge_batch(self, now: float, batch_size: int) -> tuple[int, int]:
        """Delete up to ``batch_size`` dead records: (how many were selected, deleted)."""
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql.purge_select + str(int(batch_size)), [self._time(now)])
            pks = [row[0] for row in cursor.fetchall()]
            if not pks:
                return 0, 0
            cursor.execute(
                self.sql.purge_delete + f"({', '.join(['%s'] * len(pks))})",
                [self._time(now), *pks],
            )
            return len(pks), int(cursor.rowcount)

    def count_expired(self, now: float) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql.count_expired, [self._time(now)])
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def page(self, after: int, limit: int) -> list[IdempotencyRecord]:
        return self._rows(self.sql.page + str(int(limit)), [after])

    # -- plumbing -----------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any]) -> list[IdempotencyRecord]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [self._from_row(row) for row in cursor.fetchall()]

    def _from_row(self, row: Sequence[Any]) -> IdempotencyRecord:
        """A model instance from raw column values, converted as the ORM would."""
        fields = self.sql.fields
        values = [self._convert(field, value) for field, value in zip(fields, row, strict=True)]
        instance: IdempotencyRecord = _model().from_db(
            self.connection.alias, [field.attname for field in fields], values
        )
        return instance

    def _convert(self, field: Field[Any, Any], value: Any) -> Any:
        column = field.get_col(_model()._meta.db_table)
        converters = [
            *self.connection.ops.get_db_converters(column),
            *column.get_db_converters(self.connection),
        ]
        for converter in converters:
            value = converter(value, column, self.connection)
        return value

    def _values(self, values: dict[str, Any], fields: Sequence[Field[Any, Any]]) -> list[Any]:
        """``values`` (by field name) for ``fields``, adapted for this vendor as the ORM does."""
        return [field.get_db_prep_save(values[field.name], self.connection) for field in fields]

    def _time(self, epoch: float) -> Any:
        """Epoch seconds as a parameter compared with a datetime column."""
        return self.sql.expires_at_field.get_db_prep_value(to_datetime(epoch), self.connection)

    def _rowcount(self, sql: str, params: Sequence[Any]) -> bool:
        """Whether the statement changed exactly one row."""
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.description is not None:  # a notifying statement returns the rows
                return len(cursor.fetchall()) == 1
            return int(cursor.rowcount) == 1


MARIADB_SHORT_LOCK_WAIT = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR "
"""Prefix of MariaDB's renewal: wait at most a second for a row lock (see ``_renew_statement``)."""


def _renew_statement(
    connection: BaseDatabaseWrapper,
    table: str,
    pk: str,
    expires_at: str,
    storage_key: str,
    owner_token: str,
    state: str,
) -> str:
    """The owner-fenced UPDATE that moves a lease's end, without waiting on a row lock.

    The row is locked only while a view's transaction holds its completion,
    written inside that transaction; the lease has stopped being renewed by
    then, but a renewal already on its way would wait until that transaction
    ends, holding up every other renewal of the process. PostgreSQL skips a
    locked row (the renewal then reports the claim as not renewed, which a
    stopped lease ignores); MariaDB waits at most a second
    (:data:`MARIADB_SHORT_LOCK_WAIT`); SQLite has no row locks.
    """
    where = f"{storage_key} = %s AND {owner_token} = %s AND {state} = %s"
    if connection.vendor == "postgresql":
        return (
            f"UPDATE {table} SET {expires_at} = %s WHERE {pk} = "
            f"(SELECT {pk} FROM {table} WHERE {where} FOR UPDATE SKIP LOCKED)"
        )
    return f"UPDATE {table} SET {expires_at} = %s WHERE {where}"


def _notifying(connection: BaseDatabaseWrapper, statement: str, storage_key: str) -> str:
    """On PostgreSQL, ``statement`` announcing each row it changed to waiting duplicates.

    One statement still: the changed rows' keys go to ``pg_notify`` (see
    :mod:`~django_idempotency.backends.db_changes`), delivered when the
    transaction commits. Other vendors cannot announce: their waiters poll.
    """
    if connection.vendor != "postgresql":
        return statement
    return (
        f"WITH changed AS ({statement} RETURNING {storage_key}) "
        f"SELECT pg_notify('{CHANNEL}', {storage_key}) FROM changed"
    )


def _model() -> type[IdempotencyRecord]:
    """The model, imported late: backends load before the app registry is ready."""
    from django_idempotency.models import IdempotencyRecord

    return IdempotencyRecord


def _column(field: Field[Any, Any]) -> str:
    """A concrete field's column name (stubs allow None, which only non-concrete fields have)."""
    return cast(str, field.column)


def _assignments(name: Any, fields: Sequence[Field[Any, Any]]) -> str:
    return ", ".join(f"{name(_column(field))} = %s" for field in fields)
