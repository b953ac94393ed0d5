"""Purging a million dead records from PostgreSQL through ``DatabaseBackend.purge_expired``.

What ``manage.py purge_idempotency`` costs on a big table, and whether any
single statement holds its locks long enough to hurt live traffic:

1. creates its own scratch database (``idem_purge_bench`` unless ``--database``
   names another; dropped at the end unless ``--keep``) and migrates the app;
2. loads ``--rows`` dead records (replay windows that ended over the last
   day, in an order unrelated to the primary key, as real traffic leaves
   them) plus ``--live`` live ones, with one ``INSERT ... SELECT
   generate_series`` statement, then ``ANALYZE`` (as autovacuum would);
3. runs ``DatabaseBackend.purge_expired(batch_size=...)`` and times every
   statement through ``connection.execute_wrapper``.

Targets: under 60 s in total, no statement over 1 s. Run:
``python benchmarks/purge.py [--rows 1000000] [--batch-size 1000]``.
Connection settings come from ``TEST_POSTGRES_HOST``/``PORT``/``USER``/
``PASSWORD`` (default: postgres on 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DATABASE = "idem_purge_bench"
TOTAL_TARGET_SECONDS = 60.0
STATEMENT_TARGET_SECONDS = 1.0


@dataclass
class Timings:
    """Duration of every statement, grouped by its first SQL keyword."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)
    slowest: tuple[float, str] = (0.0, "")

    def wrapper(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            kind = sql.lstrip().split(None, 1)[0].upper()
            self.by_kind.setdefault(kind, []).append(elapsed)
            if elapsed > self.slowest[0]:
                self.slowest = (elapsed, re.sub(r"\s+", " ", sql)[:90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="dead records to purge")
    parser.add_argument("--live", type=int, default=10_000, help="live records that must stay")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="scratch database name")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.database):
        parser.error("--database must be a plain lower-case identifier")

    server = {
        "HOST": os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("TEST_POSTGRES_PORT", "5432"),
        "USER": os.environ.get("TEST_POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("TEST_POSTGRES_PASSWORD", ""),
    }
    with scratch_database(server, args.database, keep=args.keep):
        configure(server, args.database)
        run(args)


@contextmanager
def scratch_database(server: dict[str, str], name: str, *, keep: bool) -> Iterator[None]:
    """Create the benchmark's own database (replacing a leftover of an earlier run)."""
    import psycopg

    def admin(sql: str) -> None:
        with psycopg.connect(
            host=server["HOST"],
            port=server["PORT"],
            user=server["USER"],
            password=server["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(sql)

    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()
        if not keep:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def configure(server: dict[str, str], name: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="benchmarks",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django_idempotency"],
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": name, **server}},
        IDEMPOTENCY={
            "BACKEND": "django_idempotency.backends.db.DatabaseBackend",
            "OPTIONS": {"DATABASE": "default"},
        },
    )
    django.setup()


def run(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    from django_idempotency.backends.db import DatabaseBackend
    from django_idempotency.backends.handler import get_backend
    from django_idempotency.models import IdempotencyRecord

    call_command("migrate", "django_idempotency", verbosity=0)
    table = IdempotencyRecord._meta.db_table
    started = time.perf_counter()
    load(connection, table, args.rows, args.live)
    print(
        f"loaded {args.rows:,} dead + {args.live:,} live records "
        f"in {time.perf_counter() - started:.1f}s ({table_size(connection, table)})"
    )

    backend = get_backend()
    assert isinstance(backend, DatabaseBackend)
    timings = Timings()
    deleted = batches = 0
    started = time.perf_counter()
    with connection.execute_wrapper(timings.wrapper):
        for count in backend.purge_expired(batch_size=args.batch_size):
            deleted += count
            batches += 1
    total = time.perf_counter() - started

    remaining = IdempotencyRecord.objects.count()
    print(f"purged {deleted:,} records in {batches:,} batches of {args.batch_size:,}")
    print(f"total: {total:.1f}s ({deleted / total:,.0f} records/s)")
    for kind, durations in sorted(timings.by_kind.items()):
        ordered = sorted(durations)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"  {kind:<7} {len(durations):>6,} statements, median "
            f"{statistics.median(durations) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms, "
            f"max {ordered[-1] * 1000:7.1f} ms"
        )
    slowest, sql = timings.slowest
    print(f"longest statement: {slowest * 1000:.1f} ms: {sql}")
    print(f"left: {remaining:,} records (expected {args.live:,} live)")
    ok = (
        deleted == args.rows
        and remaining == args.live
        and total < TOTAL_TARGET_SECONDS
        and slowest < STATEMENT_TARGET_SECONDS
    )
    print(
        f"target (< {TOTAL_TARGET_SECONDS:.0f} s total, no statement over "
        f"{STATEMENT_TARGET_SECONDS:.0f} s, every dead record gone, every live one kept): "
        + ("MET" if ok else "MISSED")
    )
    if not ok:
        sys.exit(1)


def load(connection: Any, table: str, dead: int, live: int) -> None:
    """``dead`` records whose replay window ended over the last day, and ``live`` ones.

    Expiry times are spread over the day by a multiplicative hash of the row
    number, so the order of expiry has nothing to do with the primary key
    (as with real traffic, where TTLs differ per view).
    """
    columns = (
        "storage_key, key, scope, method, path, fingerprint, state, owner_token, "
        "created_at, expires_at, completed_at, response_status, response_headers, response_body"
    )
    select = """
        SELECT md5(i::text) || md5((-i)::text), 'key-' || i, 'user:' || (i % 5000), 'POST',
               '/payments/?order=' || i, md5('f' || i) || md5('g' || i), 'completed',
               md5('o' || i),
               {expires} - interval '1 day', {expires}, {expires} - interval '1 day',
               201,
               '[["Content-Type", "application/json"], ["Location", "/payments/1/"]]'::jsonb,
               convert_to('{{"id": ' || i || ', "status": "paid", "amount": "12.50", '
                          || '"currency": "EUR", "reference": "' || md5('r' || i) || '"}}',
                          'UTF8')
        FROM generate_series({first}, {last}) AS i
    """
    dead_expiry = "now() - interval '1 second' - ((i::bigint * 7919) % 86400) * interval '1 second'"
    live_expiry = "now() + interval '1 day'"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) "
            + select.format(expires=dead_expiry, first=1, last=dead)
        )
        if live:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) "
                + select.format(expires=live_expiry, first=dead + 1, last=dead + live)
            )
        cursor.execute(f"ANALYZE {table}")


def table_size(connection: Any, table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", [table])
        return f"{cursor.fetchone()[0]} with indexes"


if __name__ == "__main__":
    main()
