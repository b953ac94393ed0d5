"""Round trips to the store per request: a first execution and a replay, per backend.

Requests go through Django's test client and the middleware to a view that
writes nothing, so everything counted is the backend's own traffic:

* SQL: the statements run on the records' database alias, captured with
  ``CaptureQueriesContext`` (SAVEPOINT / RELEASE / ROLLBACK TO are counted
  among them and reported apart);
* Redis: the ``INFO commandstats`` delta around the request (every call
  counted by the server, minus the ``INFO`` that opened the window). Redis
  also counts the commands a Lua script runs (``redis.call``), so the round
  trips are the commands this process sent (counted in redis-py's
  ``send_command``), checked against the delta; the table shows both.

``INFO commandstats`` is server-wide, so other clients of the same Redis add
to a delta: each figure comes from the quietest of ``--samples`` requests,
each on a new key, after a warm-up (connections opened, scripts loaded), and
a note says when no sample was free of other clients' commands.

The services are the test suite's (``tests/services.py``: ``TEST_POSTGRES_*``,
``TEST_MARIADB_*``, ``TEST_REDIS_URL``); a backend whose service does not answer
is skipped with a note. Scratch databases (``idem_round_trips_<pid>``, a
temporary SQLite file) are created with Django's test-database utilities and
dropped at the end, as are the Redis keys under this run's prefix.

Run: ``python benchmarks/round_trips.py [--samples N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.backends import CASES, REDIS_NATIVE, BackendCase
from tests.services import (
    MARIADB,
    POSTGRES,
    REDIS,
    REDIS_URL,
    Service,
    is_up,
    mariadb_database,
    postgres_database,
    unavailable_reason,
)

RUN = f"idem_round_trips_{os.getpid()}"
BODY = b'{"amount": "12.50", "currency": "EUR"}'
SAVEPOINT_PREFIXES = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
TARGETS = {"sql": ("first <= 3", "replay 1"), "redis": ("first 2", "replay 1")}


def nothing(request: HttpRequest) -> HttpResponse:
    """The measured view: answers 201 and touches no store."""
    return HttpResponse(b'{"ok": true}', status=201, content_type="application/json")


urlpatterns = [path("nothing/", nothing)]


# -- settings and scratch stores -----------------------------------------------


def configure(sqlite_path: str) -> None:
    from django.conf import settings

    databases: dict[str, dict[str, Any]] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(os.path.dirname(sqlite_path), "unused.sqlite3"),
            "TEST": {"NAME": sqlite_path},
        }
    }
    if is_up(POSTGRES):
        databases["postgres"] = postgres_database(RUN)
    if is_up(MARIADB):
        databases["mariadb"] = mariadb_database(RUN)
    caches: dict[str, dict[str, Any]] = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": RUN},
    }
    if is_up(REDIS):
        caches["redis"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": RUN,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    settings.configure(
        SECRET_KEY="round-trips",
        DEBUG=False,
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django_idempotency",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django_idempotency.middleware.IdempotencyMiddleware",
        ],
        DATABASES=databases,
        CACHES=caches,
        IDEMPOTENCY={"BACKEND": "django_idempotency.backends.memory.MemoryBackend"},
    )


@contextmanager
def scratch_databases() -> Iterator[None]:
    """Create every configured database afresh (migrated); drop them all on exit."""
    from django.db import connections

    created: list[tuple[str, str]] = []
    try:
        for alias in connections:
            connection = connections[alias]
            old_name = connection.settings_dict["NAME"]
            connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
            created.append((alias, old_name))
        yield
    finally:
        for alias, old_name in reversed(created):
            connections[alias].creation.destroy_test_db(old_name, verbosity=0)


@contextmanager
def redis_stats() -> Iterator[Callable[[], Counter[str]] | None]:
    """A reader of ``INFO commandstats`` (calls per command); removes this run's keys on exit."""
    if not is_up(REDIS):
        yield None
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)

    def calls() -> Counter[str]:
        stats = client.info("commandstats")
        return Counter(
            {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
        )

    try:
        yield calls
    finally:
        for key in client.scan_iter(match=f"{RUN}*", count=500):
            client.delete(key)
        client.close()


# -- measuring -----------------------------------------------------------------


@dataclass
class Traffic:
    """What one request cost the store."""

    sql: list[str] = field(default_factory=list)
    """The statements run on the records' alias."""
    info: Counter[str] = field(default_factory=Counter)
    """Calls per command in the ``INFO commandstats`` delta (without our INFO)."""
    sent: Counter[str] = field(default_factory=Counter)
    """Redis commands this process sent: one round trip each."""

    @property
    def savepoints(self) -> int:
        return sum(statement.upper().startswith(SAVEPOINT_PREFIXES) for statement in self.sql)

    @property
    def beyond_sent(self) -> Counter[str]:
        """Calls Redis counted that this process did not send: run inside Lua, or others'."""
        return self.info - self.sent

    @property
    def runs_scripts(self) -> bool:
        return bool(self.sent["evalsha"] or self.sent["eval"])

    def sql_summary(self) -> str:
        return ", ".join(statement.split(None, 1)[0].upper() for statement in self.sql) or "none"

    def redis_summary(self) -> str:
        summary = _names(self.sent)
        extra = self.beyond_sent
        if extra:
            where = "inside the Lua script" if self.runs_scripts else "other clients"
            summary += f" (+ {_names(extra)} {where})"
        return summary


@dataclass
class Row:
    """The figures of one backend, or why it was skipped."""

    case: BackendCase
    kind: str = "none"  # "sql", "redis" or "none" (an in-process store)
    first: Traffic | None = None
    replay: Traffic | None = None
    note: str = ""

    def round_trips(self, traffic: Traffic | None) -> int | None:
        if traffic is None or self.kind == "none":
            return None
        return len(traffic.sql) if self.kind == "sql" else sum(traffic.sent.values())

    @property
    def has_targets(self) -> bool:
        """SQL backends and RedisBackend have targets; CacheBackend speaks the generic
        cache API (add, get, set), which cannot replay in one command."""
        return self.kind == "sql" or (self.kind == "redis" and self.case.backend == REDIS_NATIVE)

    @property
    def meets_targets(self) -> bool | None:
        first, replay = self.round_trips(self.first), self.round_trips(self.replay)
        if first is None or replay is None or not self.has_targets:
            return None
        if self.kind == "sql":
            return first <= 3 and replay == 1
        return first == 2 and replay == 1


def measure_request(
    client: Any, key: str, alias: str | None, redis_calls: Callable[[], Counter[str]] | None
) -> tuple[Any, Traffic]:
    """Send one request; what it cost on the records' alias and on Redis."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    traffic = Traffic()
    before = redis_calls() if redis_calls else Counter[str]()
    with counting_sent_commands() as sent:
        if alias is None:
            response = post(client, key)
        else:
            with CaptureQueriesContext(connections[alias]) as queries:
                response = post(client, key)
            traffic.sql = [query["sql"] for query in queries.captured_queries]
    traffic.sent = Counter(sent)
    if redis_calls:
        delta = redis_calls()
        delta.subtract(before)
        delta["info"] -= 1  # the INFO that took the first snapshot
        traffic.info = +delta  # drops zero counts
    return response, traffic


@contextmanager
def counting_sent_commands() -> Iterator[list[str]]:
    """The names of the Redis commands this process sends in the block."""
    try:
        from redis.connection import AbstractConnection
    except ImportError:
        yield []
        return
    sent: list[str] = []
    original = AbstractConnection.send_command

    def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        sent.append(name.lower())
        original(self, *args, **kwargs)

    AbstractConnection.send_command = send_command  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_command = original  # type: ignore[method-assign]


def post(client: Any, key: str) -> Any:
    return client.post("/nothing/", BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


def measure(case: BackendCase, samples: int, redis_calls: Callable[[], Counter[str]] | None) -> Row:
    """Warm up, then measure ``samples`` first executions and replays, each on a new key."""
    from django.conf import settings
    from django.test import Client, override_settings

    service: Service | None = case.service
    if service is not None and not is_up(service):
        return Row(case, note="skipped: " + unavailable_reason(service))
    if case.database is not None and case.database not in settings.DATABASES:
        return Row(case, note=f"skipped: database {case.database!r} is not configured")
    kind = "sql" if case.database else "redis" if service is REDIS else "none"
    row = Row(case, kind)
    counter = redis_calls if kind == "redis" else None
    client = Client()
    firsts: list[Traffic] = []
    replays: list[Traffic] = []
    with override_settings(IDEMPOTENCY=case.settings):
        for _ in range(2):  # connections opened, scripts loaded, first-use paths taken
            post(client, "warm-up")
        for sample in range(samples):
            key = f"sample-{sample}"
            first, first_traffic = measure_request(client, key, case.database, counter)
            replay, replay_traffic = measure_request(client, key, case.database, counter)
            check(case, first, replayed=False)
            check(case, replay, replayed=True)
            firsts.append(first_traffic)
            replays.append(replay_traffic)
    # The quietest sample: other clients' commands only ever add to an INFO delta.
    row.first = min(firsts, key=lambda traffic: sum(traffic.info.values()))
    row.replay = min(replays, key=lambda traffic: sum(traffic.info.values()))
    row.note = _consistency_note(row, firsts + replays)
    return row


def _consistency_note(row: Row, samples: list[Traffic]) -> str:
    if row.kind == "sql":
        counts = sorted({len(traffic.sql) for traffic in samples})
        return "" if len(counts) <= 2 else f"SQL counts varied between samples: {counts}"
    if row.kind != "redis" or row.first is None or row.replay is None:
        return ""
    chosen = (row.first, row.replay)
    if any(traffic.sent - traffic.info for traffic in chosen):
        return "Redis did not count every command this process sent (INFO commandstats)"
    if any(traffic.beyond_sent and not traffic.runs_scripts for traffic in chosen):
        return "no sample was free of other clients' commands: INFO figures are upper bounds"
    return ""


def check(case: BackendCase, response: Any, *, replayed: bool) -> None:
    is_replay = response.get("Idempotent-Replayed") == "true"
    if response.status_code != 201 or is_replay != replayed:
        raise SystemExit(
            f"{case.id}: expected a {'replay' if replayed else 'first execution'}, got "
            f"{response.status_code} {response.content[:200]!r}"
        )


# -- report --------------------------------------------------------------------


def report(rows: list[Row], samples: int) -> None:
    print(
        "Round trips to the store per request: Django test client, a view that writes "
        f"nothing,\nthe quietest of {samples} samples per backend after a warm-up.\n"
    )
    header = (
        f"{'backend':<14}{'store':<7}{'first':>6}{'replay':>7}  {'target':<24}{'verdict':<9}"
        f"{'SAVEPOINTs':<12}{'INFO calls':<12}first | replay"
    )
    print(header)
    print("-" * 150)
    notes: list[str] = []
    for row in rows:
        if row.first is None or row.replay is None:
            print(f"{row.case.id:<14}{row.note}")
            continue
        if row.note:
            notes.append(f"{row.case.id}: {row.note}")
        store = {"sql": "SQL", "redis": "Redis", "none": "local"}[row.kind]
        target = " / ".join(TARGETS[row.kind]) if row.has_targets else "-"
        verdict = {True: "meets", False: "MISSES", None: "-"}[row.meets_targets]
        savepoints, info, detail = "-", "-", "in-process store: no round trip"
        if row.kind == "sql":
            savepoints = f"{row.first.savepoints} | {row.replay.savepoints}"
            detail = f"{row.first.sql_summary()} | {row.replay.sql_summary()}"
        elif row.kind == "redis":
            info = f"{sum(row.first.info.values())} | {sum(row.replay.info.values())}"
            detail = f"{row.first.redis_summary()} | {row.replay.redis_summary()}"
        first, replay = row.round_trips(row.first), row.round_trips(row.replay)
        print(
            f"{row.case.id:<14}{store:<7}{_figure(first):>6}{_figure(replay):>7}  {target:<24}"
            f"{verdict:<9}{savepoints:<12}{info:<12}{detail}"
        )
    print(
        "\nfirst/replay: round trips (SQL statements on the records' alias; Redis commands "
        "sent).\nINFO calls: the INFO commandstats delta, which also counts the commands a "
        "Lua script runs inside Redis."
    )
    for note in notes:
        print("note:", note)


def _names(counter: Counter[str]) -> str:
    return ", ".join(
        name.upper() + (f" x{count}" if count > 1 else "") for name, count in counter.items()
    )


def _figure(value: int | None) -> str:
    return "-" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="measured key pairs per backend")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="idem-round-trips-")
    try:
        configure(os.path.join(scratch, "records.sqlite3"))
        import django

        django.setup()
        with scratch_databases(), redis_stats() as redis_calls:
            rows = [measure(case, args.samples, redis_calls) for case in CASES]
    finally:
        with suppress(OSError):
            shutil.rmtree(scratch)
    report(rows, args.samples)


if __name__ == "__main__":
    main()
