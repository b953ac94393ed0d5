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
  ``send_command``), checked against the delta; the table shows both;
* NATS and memcached: the bucket operations ``NatsBackend`` runs and the
  commands pymemcache sends for Django's ``PyMemcacheCache``, one round trip
  each (with ``READ_ON_CLAIM``, NATS's ``create_and_read`` sends a put and a
  get together: one round trip, two requests).

Lease renewals are counted too: a view that returns within a third of its
lease costs none (the "renewals" column of the first table), and a second
table runs a view of 1.1 s under ``LOCK_TTL = 1``, renewed at a third, two
thirds and the whole of a second, counting every statement and command the
renewal thread sends (statements on every connection opened meanwhile,
including the backend's private ones).

A third table measures wait mode (``WAIT``): a duplicate that arrives while
the first request runs a 2 s view waits for it, and its claims while waiting
(one store operation each) are counted per waiting second: a store that
announces completions (Redis pub/sub, PostgreSQL ``NOTIFY``) needs a handful,
the others are polled on a capped backoff.

``INFO commandstats`` is server-wide, so other clients of the same Redis add
to a delta: each figure comes from the quietest of ``--samples`` requests,
each on a new key, after a warm-up (connections opened, scripts loaded), and
a note says when no sample was free of other clients' commands.

The services are the test suite's (``tests/services.py``: ``TEST_POSTGRES_*``,
``TEST_MARIADB_*``, ``TEST_REDIS_URL``, ``TEST_NATS_URL``,
``TEST_MEMCACHED_LOCATION``); a backend whose service does not answer is
skipped with a note. Scratch databases (``idem_round_trips_<pid>``, a
temporary SQLite file) are created with Django's test-database utilities and
dropped at the end, as are the Redis keys under this run's prefix.

Run: ``python benchmarks/round_trips.py [--samples N]``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django.http import HttpRequest, HttpResponse
from django.urls import path

from django_idempotency import idempotent
from tests.backends import CASES, NATS_BUCKETS, BackendCase
from tests.services import (
    MARIADB,
    MEMCACHED,
    MEMCACHED_LOCATION,
    NATS,
    NATS_URL,
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
TARGETS = {
    "sql": ("first <= 3", "replay 1"),
    "redis": ("first 2", "replay 1"),
    "nats": ("first 2", "replay 1"),
}


LONG_VIEW_SECONDS = 1.1
LONG_VIEW_LOCK_TTL = 1


def nothing(request: HttpRequest) -> HttpResponse:
    """The measured view: answers 201 and touches no store."""
    return HttpResponse(b'{"ok": true}', status=201, content_type="application/json")


def nap(request: HttpRequest) -> HttpResponse:
    """The long view: sleeps (``?s=`` seconds), touches no store, answers 201."""
    time.sleep(float(request.GET.get("s", LONG_VIEW_SECONDS)))
    return nothing(request)


@idempotent
def decorated_nothing(request: HttpRequest) -> HttpResponse:
    """``nothing`` under ``@idempotent``: inside ATOMIC_REQUESTS it completes in the transaction."""
    return nothing(request)


urlpatterns = [
    path("nothing/", nothing),
    path("nap/", nap),
    path("decorated-nothing/", decorated_nothing),
]


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
    if is_up(MEMCACHED):
        caches["memcached"] = {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": MEMCACHED_LOCATION,
            "KEY_PREFIX": RUN,
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
class LongView:
    """A view of ``LONG_VIEW_SECONDS`` under ``LOCK_TTL = LONG_VIEW_LOCK_TTL``."""

    renewals: int
    """How many times the backend's ``renew`` ran."""
    round_trips: int | None
    """Every statement or command sent during the request, from any thread."""
    first_round_trips: int | None
    """The same view's claim and completion alone (a short view's first execution)."""


@dataclass
class Waiting:
    """A duplicate waiting for a first request of ``WAITED_VIEW_SECONDS``."""

    pushed: bool
    claims: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.claims / self.seconds if self.seconds else 0.0


WAITED_VIEW_SECONDS = 2.0
WAITED_AFTER = 0.2
"""Seconds into the first request at which the duplicate arrives."""


@dataclass
class Row:
    """The figures of one backend, or why it was skipped."""

    case: BackendCase
    kind: str = "none"  # "sql", "redis", "nats", "memcached" or "none" (an in-process store)
    first: Traffic | None = None
    replay: Traffic | None = None
    note: str = ""
    renewals_of_first: int = 0
    """Lease renewals during the measured first executions (a short view: none)."""
    long_view: LongView | None = None
    waiting: Waiting | None = None
    in_transaction: int | None = None
    """Statements on the records' table for a first execution of a decorated view under
    ATOMIC_REQUESTS: the claim (private connection) and the completion (in the transaction)."""

    def round_trips(self, traffic: Traffic | None) -> int | None:
        if traffic is None or self.kind == "none":
            return None
        return len(traffic.sql) if self.kind == "sql" else sum(traffic.sent.values())

    @property
    def has_targets(self) -> bool:
        """Every backend that talks to a server has targets (CacheBackend over
        django-redis speaks Redis's own commands, as RedisBackend does)."""
        return self.kind in ("sql", "redis", "nats")

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
    """The Redis commands, NATS bucket operations and memcached commands this process sends."""
    with (
        counting_nats_operations() as nats_operations,
        counting_memcached_commands() as memcached_commands,
        counting_redis_commands() as sent,
    ):
        yield sent
        sent += nats_operations + memcached_commands


@contextmanager
def counting_nats_operations() -> Iterator[list[str]]:
    """NatsBackend's bucket operations: one round trip each (create_and_read: two requests)."""
    try:
        from django_idempotency.backends.nats_client import Bucket
    except ImportError:
        yield []
        return
    with counting_calls(Bucket, ("create_and_read", "put", "get", "purge"), "nats ") as operations:
        yield operations


@contextmanager
def counting_memcached_commands() -> Iterator[list[str]]:
    """The commands Django's PyMemcacheCache sends through pymemcache: one round trip each.

    Counted on pymemcache's one-server client, which the hashing client Django
    builds calls once per command (``set_many`` is one round trip for its keys).
    """
    try:
        from pymemcache.client.base import Client
    except ImportError:
        yield []
        return
    names = ("add", "get", "get_many", "set", "set_many", "delete", "delete_many", "touch")
    with counting_calls(Client, names) as commands:
        yield commands


@contextmanager
def counting_calls(cls: type, names: tuple[str, ...], label: str = "") -> Iterator[list[str]]:
    """Every call of the methods ``names`` of ``cls``, sync or async, by name, in the block."""
    calls: list[str] = []
    originals = {name: getattr(cls, name) for name in names}

    def counting(name: str, original: Any) -> Any:
        if inspect.iscoroutinefunction(original):

            async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append(label + name)
                return await original(self, *args, **kwargs)

            return acall

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(label + name)
            return original(self, *args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(cls, name, counting(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(cls, name, original)


CONNECTION_HANDSHAKE = frozenset({"hello", "client", "auth", "select"})


@contextmanager
def counting_redis_commands() -> Iterator[list[str]]:
    """The names of the Redis commands this process sends in the block.

    A connection's handshake (``HELLO``, ``CLIENT ...``, ``AUTH``, ``SELECT``)
    is left out: a pool pays it once per connection it opens, not per request.
    (A pool may open one in the middle of a measure when another thread, such
    as a closing change listener, still holds the connection it had.)
    """
    try:
        from redis.connection import AbstractConnection
    except ImportError:
        yield []
        return
    sent: list[str] = []
    original = AbstractConnection.send_command

    def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
        name = (args[0].decode() if isinstance(args[0], bytes) else str(args[0])).lower()
        if name not in CONNECTION_HANDSHAKE:
            sent.append(name)
        original(self, *args, **kwargs)

    AbstractConnection.send_command = send_command  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_command = original  # type: ignore[method-assign]


def post(client: Any, key: str, view: str = "nothing", query: str = "") -> Any:
    path = f"/{view}/" + (f"?{query}" if query else "")
    return client.post(path, BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


@contextmanager
def counting_renewals() -> Iterator[list[bool]]:
    """What the engine's backend's ``renew`` answered, from whichever thread, in the block."""
    from django_idempotency.backends import handler

    backend = handler.get_backend()
    answers: list[bool] = []
    real_renew = backend.renew

    def renew(storage_key: str, owner_token: str, lease_seconds: int) -> bool:
        renewed = real_renew(storage_key, owner_token, lease_seconds)
        answers.append(renewed)
        return renewed

    backend.renew = renew  # type: ignore[method-assign]
    try:
        yield answers
    finally:
        del backend.renew


@contextmanager
def counting_statements(alias: str) -> Iterator[list[str]]:
    """Statements on ``alias`` from every thread: the request's and the renewal thread's."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    statements: list[str] = []
    lock = threading.Lock()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with lock:
            statements.append(sql)
        return execute(sql, params, many, context)

    hooked: list[Any] = []

    def hook(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == alias and count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)
            hooked.append(connection)

    connection_created.connect(hook)
    hook(None, connections[alias])
    try:
        yield statements
    finally:
        connection_created.disconnect(hook)
        for connection in hooked:
            with suppress(ValueError):
                connection.execute_wrappers.remove(count)


def measure_long_view(case: BackendCase, row: Row) -> LongView:
    """One request to the long view: renewals, and all it cost the store."""
    from django.test import Client, override_settings

    settings = {**case.settings, "LOCK_TTL": LONG_VIEW_LOCK_TTL}
    with override_settings(IDEMPOTENCY=settings):
        # The new settings build a new backend: its connections open here,
        # outside the count, as the first table's warm-up does.
        check(case, post(Client(), "long-view-warm-up"), replayed=False)
        return _long_view_counted(case, row)


def _long_view_counted(case: BackendCase, row: Row) -> LongView:
    from django.test import Client

    with counting_renewals() as renewals:
        if row.kind == "sql" and case.database:
            with counting_statements(case.database) as statements:
                response = post(Client(), "long-view", view="nap")
            total: int | None = len(statements)
        else:
            with counting_sent_commands() as sent:
                response = post(Client(), "long-view", view="nap")
            total = len(sent) if row.kind in ("redis", "nats", "memcached") else None
        check(case, response, replayed=False)
    return LongView(len(renewals), total, row.round_trips(row.first))


def measure(case: BackendCase, samples: int, redis_calls: Callable[[], Counter[str]] | None) -> Row:
    """Warm up, then measure ``samples`` first executions and replays, each on a new key."""
    from django.conf import settings
    from django.test import Client, override_settings

    service: Service | None = case.service
    if service is not None and not is_up(service):
        return Row(case, note="skipped: " + unavailable_reason(service))
    if case.database is not None and case.database not in settings.DATABASES:
        return Row(case, note=f"skipped: database {case.database!r} is not configured")
    kind = (
        "sql"
        if case.database
        else "redis"
        if service is REDIS
        else "nats"
        if service is NATS
        else "memcached"
        if service is MEMCACHED
        else "none"
    )
    row = Row(case, kind)
    counter = redis_calls if kind == "redis" else None
    client = Client()
    firsts: list[Traffic] = []
    replays: list[Traffic] = []
    with override_settings(IDEMPOTENCY=case.settings):
        for _ in range(2):  # connections opened, scripts loaded, first-use paths taken
            post(client, "warm-up")
        with counting_renewals() as renewals:
            for sample in range(samples):
                key = f"sample-{sample}"
                first, first_traffic = measure_request(client, key, case.database, counter)
                replay, replay_traffic = measure_request(client, key, case.database, counter)
                check(case, first, replayed=False)
                check(case, replay, replayed=True)
                firsts.append(first_traffic)
                replays.append(replay_traffic)
    row.renewals_of_first = len(renewals)
    # The quietest sample: other clients' commands only ever add to an INFO delta.
    row.first = min(firsts, key=lambda traffic: sum(traffic.info.values()))
    row.replay = min(replays, key=lambda traffic: sum(traffic.info.values()))
    row.note = _consistency_note(row, firsts + replays)
    row.long_view = measure_long_view(case, row)
    row.waiting = measure_waiting(case)
    if row.kind == "sql" and case.database:
        row.in_transaction = measure_in_transaction(case, case.database)
    return row


def measure_in_transaction(case: BackendCase, alias: str) -> int:
    """Statements on the records' table for ``@idempotent`` inside ATOMIC_REQUESTS."""
    from django.db import connections
    from django.test import Client, override_settings

    from django_idempotency.models import IdempotencyRecord

    table = IdempotencyRecord._meta.db_table
    settings_dict = connections[alias].settings_dict
    settings_dict["ATOMIC_REQUESTS"] = True
    try:
        with override_settings(IDEMPOTENCY=case.settings):
            post(Client(), "atomic-warm-up", "decorated-nothing")
            with counting_statements(alias) as statements:
                response = post(Client(), "atomic-first", "decorated-nothing")
            check(case, response, replayed=False)
    finally:
        settings_dict["ATOMIC_REQUESTS"] = False
    return sum(table in statement for statement in statements)


def measure_waiting(case: BackendCase) -> Waiting:
    """Claims made by a duplicate while it waits (WAIT = 5) for a 2 s first request."""
    from django.db import connections
    from django.test import Client, override_settings

    from django_idempotency.backends import handler

    query = f"s={WAITED_VIEW_SECONDS}"

    def first_request() -> None:
        try:
            post(Client(), "waited", "nap", query)
        finally:
            connections.close_all()

    with override_settings(IDEMPOTENCY={**case.settings, "WAIT": 5}):
        backend = handler.get_backend()
        first = threading.Thread(target=first_request)
        first.start()
        time.sleep(WAITED_AFTER)
        waiter = threading.get_ident()
        claims = 0
        real_claim = backend.claim

        def claim(*args: Any) -> Any:
            nonlocal claims
            if threading.get_ident() == waiter:
                claims += 1
            return real_claim(*args)

        backend.claim = claim  # type: ignore[method-assign,assignment]
        started = time.monotonic()
        try:
            response = post(Client(), "waited", "nap", query)
        finally:
            del backend.claim
        seconds = time.monotonic() - started
        first.join(10)
        pushed = backend.watch("probe").pushed
        check(case, response, replayed=True)
    return Waiting(pushed, claims, seconds)


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
        f"{'backend':<20}{'store':<7}{'first':>6}{'replay':>7}{'renewals':>10}  {'target':<24}"
        f"{'verdict':<9}{'SAVEPOINTs':<12}{'INFO calls':<12}first | replay"
    )
    print(header)
    print("-" * 156)
    notes: list[str] = []
    for row in rows:
        if row.first is None or row.replay is None:
            print(f"{row.case.id:<20}{row.note}")
            continue
        if row.note:
            notes.append(f"{row.case.id}: {row.note}")
        store = {
            "sql": "SQL",
            "redis": "Redis",
            "nats": "NATS",
            "memcached": "memc",
            "none": "local",
        }[row.kind]
        target = " / ".join(TARGETS[row.kind]) if row.has_targets else "-"
        verdict = {True: "meets", False: "MISSES", None: "-"}[row.meets_targets]
        savepoints, info, detail = "-", "-", "in-process store: no round trip"
        if row.kind == "sql":
            savepoints = f"{row.first.savepoints} | {row.replay.savepoints}"
            detail = f"{row.first.sql_summary()} | {row.replay.sql_summary()}"
        elif row.kind == "redis":
            info = f"{sum(row.first.info.values())} | {sum(row.replay.info.values())}"
            detail = f"{row.first.redis_summary()} | {row.replay.redis_summary()}"
        elif row.kind in ("nats", "memcached"):
            detail = f"{_names(row.first.sent)} | {_names(row.replay.sent)}"
        first, replay = row.round_trips(row.first), row.round_trips(row.replay)
        print(
            f"{row.case.id:<20}{store:<7}{_figure(first):>6}{_figure(replay):>7}"
            f"{row.renewals_of_first:>10}  {target:<24}"
            f"{verdict:<9}{savepoints:<12}{info:<12}{detail}"
        )
    print(
        "\nfirst/replay: round trips (SQL statements on the records' alias; Redis commands "
        "sent).\nrenewals: lease renewals during all the first executions measured (the view "
        "returns at once).\nINFO calls: the INFO commandstats delta, which also counts the "
        "commands a Lua script runs inside Redis.\nNATS: a refused put-if-absent says nothing of "
        "the value, so a replay reads it after the put (2) unless READ_ON_CLAIM sends the get "
        "beside the put\n(1 round trip; every first execution then sends 3 requests in its 2 "
        "round trips)."
    )
    for note in notes:
        print("note:", note)
    report_long_views(rows)
    report_waiting(rows)
    report_in_transaction(rows)


def report_in_transaction(rows: list[Row]) -> None:
    print(
        "\n@idempotent under ATOMIC_REQUESTS: the claim is committed apart (a private "
        "connection), the response\nstored inside the view's transaction "
        "(crash-consistent completion). Statements on the records' table:\n"
    )
    for row in rows:
        if row.in_transaction is not None:
            print(f"{row.case.id:<20}{row.in_transaction:>3}   (target <= 3)")


def report_waiting(rows: list[Row]) -> None:
    print(
        f"\nWAIT: a duplicate arriving {WAITED_AFTER} s into a {WAITED_VIEW_SECONDS} s request "
        "waits for its replay.\n"
    )
    print(f"{'backend':<20}{'woken by':<12}{'waited':>8}{'claims':>8}{'per second':>12}")
    print("-" * 60)
    for row in rows:
        waiting = row.waiting
        if waiting is None:
            continue
        how = "the store" if waiting.pushed else "polling"
        print(
            f"{row.case.id:<20}{how:<12}{waiting.seconds:>7.2f}s{waiting.claims:>8}"
            f"{waiting.per_second:>12.1f}"
        )
    print(
        "\nclaims: the waiter's claims, each one store operation; the first finds the request "
        "running,\nthe last gets the replay. Polling claims at 0.05 s, doubling up to 1 s."
    )


def report_long_views(rows: list[Row]) -> None:
    print(
        f"\nA view of {LONG_VIEW_SECONDS} s under LOCK_TTL = {LONG_VIEW_LOCK_TTL}: renewed "
        "every third of its lease, from the renewal thread.\n"
    )
    print(f"{'backend':<20}{'renewals':>9}{'round trips':>13}{'of which renewing':>19}")
    print("-" * 62)
    for row in rows:
        long_view = row.long_view
        if long_view is None:
            continue
        total, base = long_view.round_trips, long_view.first_round_trips
        renewing = None if total is None or base is None else total - base
        print(
            f"{row.case.id:<20}{long_view.renewals:>9}{_figure(total):>13}{_figure(renewing):>19}"
        )
    print(
        "\nround trips: every statement or command sent during the request, from any thread; "
        "of which renewing: beyond the\nclaim and completion of a short view (one per renewal "
        "means each renewal is one round trip)."
    )


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
        if is_up(NATS):
            from tests.nats_buckets import delete_bucket

            for bucket in NATS_BUCKETS:
                delete_bucket(NATS_URL, bucket)
    report(rows, args.samples)


if __name__ == "__main__":
    main()
