"""DatabaseBackend against real SQLite, PostgreSQL and MariaDB databases.

Every test that takes ``db_backend`` runs once per database case of
``tests/backends.py``. The contract (``test_backend_contract.py``) runs over
the same cases; this module holds what only the database backend does: rows,
queries, take-overs of dead rows, time zones, transactions. It also serves as
a URLconf for the views that prove how the backend behaves inside the view's
transaction.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, Error, connections, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path
from model_bakery import baker

from django_idempotency import conf, engine, idempotent
from django_idempotency.backends import handler
from django_idempotency.backends.base import StorageError
from django_idempotency.backends.db import DatabaseBackend
from django_idempotency.backends.db_statements import RecordTable
from django_idempotency.keys import storage_key
from django_idempotency.models import IdempotencyRecord
from django_idempotency.records import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Record,
    State,
    StoredResponse,
)
from django_idempotency.rows import to_datetime, to_epoch
from tests.backends import CASES, DB, BackendCase
from tests.storage import in_threads
from tests.testapp.models import SideEffect

DB_CASES = [case for case in CASES if case.backend == DB]
TestFunction = TypeVar("TestFunction", bound=Callable[..., Any])


SERVER_CASES = [case for case in DB_CASES if case.service is not None]
SQLITE_CASES = [case for case in DB_CASES if case.service is None]


def on_cases(cases: list[BackendCase]) -> Callable[[TestFunction], TestFunction]:
    """Run a test once per case, as a transactional test over every database."""

    def decorate(test: TestFunction) -> TestFunction:
        on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")
        per_case = pytest.mark.parametrize(
            "backend_case", cases, indirect=True, ids=[case.id for case in cases]
        )
        marked: TestFunction = per_case(on_every_database(test))
        return marked

    return decorate


over_db_cases = on_cases(DB_CASES)


FIRST_EXECUTION_QUERIES = {"postgresql": 2, "sqlite": 3, "mysql": 3}
"""Claim + complete of a new key: one CTE on PostgreSQL; SELECT, INSERT, UPDATE elsewhere."""

RESPONSE = StoredResponse(
    status=201, headers=(("Content-Type", "application/json"), ("Location", "/x/1/")), body=b"{}"
)
UNREACHABLE = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1",
    "PORT": 1,
    "NAME": "nowhere",
    "USER": "postgres",
    "OPTIONS": {"connect_timeout": 2},
}


# -- fixtures and helpers -----------------------------------------------------


@pytest.fixture
def db_backend(backend_case: BackendCase) -> DatabaseBackend:
    """The engine's DatabaseBackend for the current database case."""
    backend = handler.get_backend()
    assert isinstance(backend, DatabaseBackend)
    return backend


def vendor_of(backend: DatabaseBackend) -> str:
    return connections[backend.alias].vendor


def make_claim(key: str = "key-1", *, token: str | None = None, lease: int = 60) -> Claim:
    return Claim(
        storage_key=storage_key("user:1", key),
        key=key,
        scope="user:1",
        fingerprint="f" * 64,
        method="POST",
        path="/orders/?coupon=1",
        owner_token=token or secrets.token_hex(16),
        lease_seconds=lease,
    )


def make_row(backend: DatabaseBackend, claim: Claim, **fields: Any) -> IdempotencyRecord:
    """A row written directly, bypassing the backend (model-bakery fills the rest)."""
    values: dict[str, Any] = {
        "storage_key": claim.storage_key,
        "key": claim.key,
        "scope": claim.scope,
        "fingerprint": claim.fingerprint,
        "method": claim.method,
        "path": claim.path,
        "owner_token": claim.owner_token,
        "state": State.IN_PROGRESS.value,
        "created_at": to_datetime(time.time() - 120),
        "expires_at": to_datetime(time.time() - 60),
        "response_headers": [],
        **fields,
    }
    row: IdempotencyRecord = baker.make(IdempotencyRecord, _using=backend.alias, **values)
    return row


def row_of(backend: DatabaseBackend, claim: Claim) -> IdempotencyRecord:
    return IdempotencyRecord.objects.using(backend.alias).get(storage_key=claim.storage_key)


def seen_by_another_worker(key: str) -> Record | None:
    """What a request running in another thread (its own connection) reads now."""
    return in_threads(1, lambda _: handler.get_backend().get(key))[0]  # type: ignore[no-any-return]


@pytest.fixture
def unguarded_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Database access without Django's test case, which refuses aliases added mid-test.

    For the tests that add a database alias; they write nothing to the test databases.
    """
    with django_db_blocker.unblock():
        yield


@contextmanager
def extra_database(alias: str, config: dict[str, Any]) -> Iterator[None]:
    """Add ``alias`` to DATABASES (and so to ``connections``) for the block."""
    configured = connections.configure_settings({DEFAULT_DB_ALIAS: {}, alias: dict(config)})
    connections.settings[alias] = configured[alias]
    try:
        yield
    finally:
        with suppress(AttributeError):
            connections[alias].close()
            del connections[alias]
        del connections.settings[alias]


# -- views for the transaction tests (this module is their URLconf) -----------

PROBES: list[Record | None] = []
ATTEMPTS: dict[str, int] = {}


def _records_alias() -> str:
    return str(conf.get_settings().options["DATABASE"])


def _request_storage_key(request: HttpRequest) -> str:
    return storage_key("anonymous", request.headers["Idempotency-Key"])


@idempotent(required=True)
def probe_view(request: HttpRequest) -> HttpResponse:
    """Writes a row, then looks at its own claim from another worker."""
    effect = SideEffect.objects.using(_records_alias()).create(label="probe")
    PROBES.append(seen_by_another_worker(_request_storage_key(request)))
    return JsonResponse({"id": effect.pk}, status=201)


@idempotent(required=True)
def flaky_view(request: HttpRequest) -> HttpResponse:
    """Writes a row, then raises on its first run only."""
    effect = SideEffect.objects.using(_records_alias()).create(label="flaky")
    ATTEMPTS["flaky"] = ATTEMPTS.get("flaky", 0) + 1
    if ATTEMPTS["flaky"] == 1:
        raise RuntimeError("the first attempt fails after its write")
    return JsonResponse({"id": effect.pk}, status=201)


@idempotent(required=True, lock_ttl=1)
def short_lease_view(request: HttpRequest) -> HttpResponse:
    """Writes a row; its claim's lease is one second."""
    effect = SideEffect.objects.using(_records_alias()).create(label="short-lease")
    return JsonResponse({"id": effect.pk}, status=201)


@idempotent(required=True)
def slow_view(request: HttpRequest) -> HttpResponse:
    """Writes a row, then takes a while."""
    effect = SideEffect.objects.using(_records_alias()).create(label="slow")
    time.sleep(0.3)
    return JsonResponse({"id": effect.pk}, status=201)


urlpatterns = [
    path("probe/", probe_view),
    path("flaky/", flaky_view),
    path("short-lease/", short_lease_view),
    path("slow/", slow_view),
]


@pytest.fixture
def atomic_requests(
    db_backend: DatabaseBackend, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> DatabaseBackend:
    """ATOMIC_REQUESTS on the records' database, and this module as URLconf."""
    monkeypatch.setitem(connections.settings[db_backend.alias], "ATOMIC_REQUESTS", True)
    settings.ROOT_URLCONF = __name__
    PROBES.clear()
    ATTEMPTS.clear()
    return db_backend


def open_connections(alias: str, expected: int | None = None) -> int:
    """How many sessions the server has open on the alias's database.

    With ``expected``, wait up to 5 seconds for the count to settle on it: a
    server notices a closed connection a moment later.
    """
    connection = connections[alias]
    sql = {
        "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()",
        "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()",
    }[connection.vendor]
    deadline = time.monotonic() + 5
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            count = int(cursor.fetchone()[0])
        if expected is None or count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def effects(alias: str, label: str) -> int:
    return SideEffect.objects.using(alias).filter(label=label).count()


def anonymous_post(key: str) -> HttpRequest:
    request = RequestFactory().post(
        "/short-lease/", data=b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )
    request.user = AnonymousUser()
    return request


# -- the claim ------------------------------------------------------------------


@over_db_cases
def test_claim_of_a_live_record_returns_it_and_writes_nothing(db_backend: DatabaseBackend) -> None:
    first = make_claim()
    db_backend.claim(first)
    result = db_backend.claim(make_claim())
    assert result.outcome is ClaimOutcome.EXISTING
    assert result.record.owner_token == first.owner_token
    assert row_of(db_backend, first).owner_token == first.owner_token


@over_db_cases
def test_replay_costs_one_query_and_first_execution_at_most_three(
    db_backend: DatabaseBackend,
) -> None:
    claim = make_claim()
    connection = connections[db_backend.alias]
    with CaptureQueriesContext(connection) as first:
        assert db_backend.claim(claim).outcome is ClaimOutcome.CREATED
        assert db_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=60)
    with CaptureQueriesContext(connection) as replay:
        assert db_backend.claim(make_claim()).outcome is ClaimOutcome.EXISTING

    assert len(first) == FIRST_EXECUTION_QUERIES[connection.vendor], first.captured_queries
    assert len(replay) == 1, replay.captured_queries
    statements = [query["sql"].upper() for query in [*first, *replay]]
    assert not [sql for sql in statements if "SAVEPOINT" in sql or sql.startswith("BEGIN")]


@over_db_cases
def test_dead_in_progress_record_is_taken_over(db_backend: DatabaseBackend) -> None:
    dead = make_claim(token="old-owner")
    make_row(db_backend, dead)
    claim = make_claim()
    connection = connections[db_backend.alias]
    with CaptureQueriesContext(connection) as queries:
        result = db_backend.claim(claim)
    assert result.outcome is ClaimOutcome.TAKEN_OVER
    assert len(queries) == 2  # read (or the CTE) + compare-and-set
    row = row_of(db_backend, claim)
    assert row.owner_token == claim.owner_token
    assert row.state == State.IN_PROGRESS.value
    assert to_epoch(row.expires_at) > time.time() + 50


@over_db_cases
def test_dead_completed_record_is_taken_over_and_its_response_cleared(
    db_backend: DatabaseBackend,
) -> None:
    dead = make_claim(token="old-owner")
    make_row(
        db_backend,
        dead,
        state=State.COMPLETED.value,
        completed_at=to_datetime(time.time() - 90),
        response_status=201,
        response_headers=[["Location", "/old/"]],
        response_body=b"old",
    )
    result = db_backend.claim(make_claim())
    assert result.outcome is ClaimOutcome.TAKEN_OVER
    row = row_of(db_backend, dead)
    assert row.state == State.IN_PROGRESS.value
    assert (row.completed_at, row.response_status, row.response_body) == (None, None, None)
    assert row.response_headers == []


@over_db_cases
def test_racing_takeovers_of_one_dead_record_have_exactly_one_winner(
    db_backend: DatabaseBackend,
) -> None:
    for round_number in range(3):
        dead = make_claim(f"race-{round_number}", token="old-owner")
        make_row(db_backend, dead)
        claims = [make_claim(f"race-{round_number}") for _ in range(8)]

        def take_over(index: int, claims: list[Claim] = claims) -> ClaimResult:
            return db_backend.claim(claims[index])

        results = in_threads(len(claims), take_over)

        outcomes = [result.outcome for result in results]
        assert outcomes.count(ClaimOutcome.TAKEN_OVER) == 1, outcomes
        assert outcomes.count(ClaimOutcome.EXISTING) == len(claims) - 1, outcomes
        winner = claims[outcomes.index(ClaimOutcome.TAKEN_OVER)].owner_token
        assert row_of(db_backend, dead).owner_token == winner
        assert {r.record.owner_token for r in results} == {winner}


@over_db_cases
def test_takeover_fails_once_the_late_owner_completed_the_record(
    db_backend: DatabaseBackend,
) -> None:
    late = make_claim(token="late-owner")
    make_row(db_backend, late)
    snapshot = db_backend.get(late.storage_key)
    assert snapshot is not None
    # The late owner completes between a takeover's read and its compare-and-set.
    assert db_backend.complete(late.storage_key, "late-owner", RESPONSE, ttl=60)
    now = time.time()
    mine = Record.from_claim(make_claim(), now)
    assert not RecordTable(connections[db_backend.alias]).take_over(snapshot, mine, now)
    assert db_backend.claim(make_claim()).outcome is ClaimOutcome.EXISTING
    assert row_of(db_backend, late).owner_token == "late-owner"


@over_db_cases
def test_stale_owner_can_neither_complete_nor_release_the_new_owners_record(
    db_backend: DatabaseBackend,
) -> None:
    stale = make_claim(token="stale-owner")
    make_row(db_backend, stale)  # its lease expired while its view was still running
    new = make_claim()
    assert db_backend.claim(new).outcome is ClaimOutcome.TAKEN_OVER

    assert not db_backend.complete(stale.storage_key, "stale-owner", RESPONSE, ttl=60)
    assert not db_backend.release(stale.storage_key, "stale-owner")
    row = row_of(db_backend, new)
    assert (row.owner_token, row.state) == (new.owner_token, State.IN_PROGRESS.value)
    assert db_backend.complete(new.storage_key, new.owner_token, RESPONSE, ttl=60)


# -- what is stored -------------------------------------------------------------


@over_db_cases
@pytest.mark.parametrize("use_tz", [True, False], ids=["use-tz", "no-tz"])
def test_times_are_utc_aware_with_use_tz_and_naive_utc_without(
    db_backend: DatabaseBackend, use_tz: bool
) -> None:
    with override_settings(USE_TZ=use_tz):
        claim = make_claim()
        created = db_backend.claim(claim).record
        db_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=600)
        stored = db_backend.get(claim.storage_key)
        row = row_of(db_backend, claim)
        dead = make_claim("dead")
        make_row(db_backend, dead)
        assert db_backend.claim(make_claim("dead")).outcome is ClaimOutcome.TAKEN_OVER

    assert stored is not None
    assert stored.created_at == pytest.approx(created.created_at, abs=1e-5)
    assert stored.completed_at is not None
    assert stored.expires_at == pytest.approx(stored.completed_at + 600, abs=1e-5)
    utc_now = datetime.now(timezone.utc)
    if use_tz:
        assert row.created_at.utcoffset() == timedelta(0)
    else:
        assert row.created_at.tzinfo is None
        utc_now = utc_now.replace(tzinfo=None)  # naive UTC, not the local TIME_ZONE
    assert abs(row.created_at - utc_now) < timedelta(minutes=1)


# -- housekeeping ---------------------------------------------------------------


@over_db_cases
def test_purge_deletes_dead_records_in_batches_and_keeps_live_ones(
    db_backend: DatabaseBackend,
) -> None:
    past, future = to_datetime(time.time() - 60), to_datetime(time.time() + 600)
    baker.make(
        IdempotencyRecord, _quantity=25, _using=db_backend.alias, expires_at=past, created_at=past
    )
    baker.make(
        IdempotencyRecord, _quantity=5, _using=db_backend.alias, expires_at=future, created_at=past
    )
    assert db_backend.count_expired() == 25
    assert list(db_backend.purge_expired(batch_size=10)) == [10, 10, 5]
    assert db_backend.count_expired() == 0
    assert IdempotencyRecord.objects.using(db_backend.alias).count() == 5
    assert list(db_backend.purge_expired(batch_size=10)) == []


@over_db_cases
def test_scan_pages_through_every_record_by_primary_key(db_backend: DatabaseBackend) -> None:
    rows = baker.make(
        IdempotencyRecord,
        _quantity=7,
        _using=db_backend.alias,
        state=State.IN_PROGRESS.value,
        response_headers=[],
    )
    pages: list[list[Record]] = []
    cursor: str | None = None
    while True:
        page, cursor = db_backend.scan(cursor, 3)
        pages.append(page)
        if cursor is None:
            break
    assert [len(page) for page in pages] == [3, 3, 1]
    seen = [record.storage_key for page in pages for record in page]
    assert seen == [row.storage_key for row in sorted(rows, key=lambda row: row.pk)]


# -- transactions -----------------------------------------------------------------


@over_db_cases
def test_claim_under_atomic_requests_is_visible_to_other_workers_while_the_view_runs(
    atomic_requests: DatabaseBackend,
) -> None:
    alias = atomic_requests.alias
    client = Client()
    first = client.post("/probe/", HTTP_IDEMPOTENCY_KEY="p")
    again = client.post("/probe/", HTTP_IDEMPOTENCY_KEY="p")

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert effects(alias, "probe") == 1
    [seen] = PROBES
    if vendor_of(atomic_requests) == "sqlite":
        assert seen is None  # SQLite joins the view's transaction (see the module doc)
    else:
        assert seen is not None
        assert seen.state is State.IN_PROGRESS


@over_db_cases
def test_view_raising_under_atomic_requests_rolls_back_and_releases_the_key(
    atomic_requests: DatabaseBackend,
) -> None:
    alias = atomic_requests.alias
    client = Client(raise_request_exception=False)
    failed = client.post("/flaky/", HTTP_IDEMPOTENCY_KEY="f")
    assert failed.status_code == 500
    assert effects(alias, "flaky") == 0  # the view's write rolled back
    assert atomic_requests.get(storage_key("anonymous", "f")) is None  # and the key is free

    retried = client.post("/flaky/", HTTP_IDEMPOTENCY_KEY="f")
    replayed = client.post("/flaky/", HTTP_IDEMPOTENCY_KEY="f")
    assert retried.status_code == replayed.status_code == 201
    assert replayed["Idempotent-Replayed"] == "true"
    assert ATTEMPTS["flaky"] == 2
    assert effects(alias, "flaky") == 1


@over_db_cases
def test_decorated_view_inside_atomic_stores_its_response_when_the_transaction_commits(
    db_backend: DatabaseBackend,
) -> None:
    alias = db_backend.alias
    key = storage_key("anonymous", "t")
    with transaction.atomic(using=alias):
        response = short_lease_view(anonymous_post("t"))
        during = seen_by_another_worker(key)
    after = db_backend.get(key)
    replay = short_lease_view(anonymous_post("t"))

    assert response.status_code == 201
    if vendor_of(db_backend) == "sqlite":
        assert during is None
    else:
        assert during is not None
        assert during.state is State.IN_PROGRESS  # claimed at once, completed on commit
    assert after is not None
    assert after.state is State.COMPLETED
    assert replay["Idempotent-Replayed"] == "true"
    assert effects(alias, "short-lease") == 1


class Rollback(Exception):
    """Raised to roll back a test's atomic block."""


@over_db_cases
def test_decorated_view_inside_rolled_back_atomic_runs_again_on_retry(
    db_backend: DatabaseBackend,
) -> None:
    alias = db_backend.alias
    key = storage_key("anonymous", "r")

    def run_then_roll_back() -> None:
        with transaction.atomic(using=alias):
            assert short_lease_view(anonymous_post("r")).status_code == 201
            raise Rollback

    with pytest.raises(Rollback):
        run_then_roll_back()
    assert effects(alias, "short-lease") == 0
    left = db_backend.get(key)
    if vendor_of(db_backend) == "sqlite":
        assert left is None  # the claim rolled back with the view's write
    else:
        # The claim was committed apart; nothing was stored, so it waits for its lease.
        assert left is not None
        assert left.state is State.IN_PROGRESS
        time.sleep(max(0.0, left.expires_at - time.time()) + 0.05)

    retried = short_lease_view(anonymous_post("r"))
    assert retried.status_code == 201
    assert not retried.has_header("Idempotent-Replayed")
    assert effects(alias, "short-lease") == 1


@over_db_cases
def test_concurrent_duplicates_run_a_slow_view_once_without_server_errors(
    db_backend: DatabaseBackend,
) -> None:
    def post(_: int) -> tuple[int, bool]:
        response = Client().post(
            "/create/?sleep=0.5", data={"n": "1"}, HTTP_IDEMPOTENCY_KEY="concurrent"
        )
        return response.status_code, response.has_header("Idempotent-Replayed")

    results = in_threads(24, post)
    late = Client().post("/create/?sleep=0.5", data={"n": "1"}, HTTP_IDEMPOTENCY_KEY="concurrent")

    statuses = sorted(status for status, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    assert [replayed for status, replayed in results if status == 201].count(False) == 1
    assert late.status_code == 201
    assert late["Idempotent-Replayed"] == "true"
    assert SideEffect.objects.filter(label="create").count() == 1


# -- configuration, outages and checks ----------------------------------------------


def test_default_alias_is_default() -> None:
    assert DatabaseBackend().alias == DEFAULT_DB_ALIAS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"DATABASE": 3}, "IDEMPOTENCY['OPTIONS']['DATABASE'] must be the alias"),
        ({"DATABASE": ""}, "IDEMPOTENCY['OPTIONS']['DATABASE'] must be the alias"),
        ({"DATABSE": "default"}, "Unknown IDEMPOTENCY['OPTIONS'] for DatabaseBackend: ['DATABSE']"),
        ({"JOIN_TRANSACTIONS": "yes"}, "IDEMPOTENCY['OPTIONS']['JOIN_TRANSACTIONS'] must be True"),
    ],
)
def test_bad_options_are_improperly_configured(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        DatabaseBackend(options)


@pytest.mark.usefixtures("unguarded_db")
def test_unreachable_database_answers_503_and_runs_nothing() -> None:
    ran_before = SideEffect.objects.filter(label="create").count()
    with (
        extra_database("unreachable", UNREACHABLE),
        override_settings(IDEMPOTENCY={"BACKEND": DB, "OPTIONS": {"DATABASE": "unreachable"}}),
    ):
        response = Client().post("/create/", data={"n": "1"}, HTTP_IDEMPOTENCY_KEY="down")
        backend = handler.get_backend()
        claim = make_claim()
        operations: list[Callable[[], object]] = [
            lambda: backend.claim(claim),
            lambda: backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60),
            lambda: backend.release(claim.storage_key, claim.owner_token),
            lambda: backend.get(claim.storage_key),
            lambda: backend.delete(claim.storage_key),
            lambda: list(backend.purge_expired()),
            backend.count_expired,
            backend.scan,
        ]
        for operation in operations:
            with pytest.raises(StorageError) as raised:
                operation()
            assert isinstance(raised.value.__cause__, Error)

    assert response.status_code == 503
    assert SideEffect.objects.filter(label="create").count() == ran_before


@pytest.mark.usefixtures("unguarded_db")
def test_missing_table_is_a_storage_error_and_warning_w020(tmp_path: Any) -> None:
    empty = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "empty.sqlite3")}
    with extra_database("empty", empty):
        backend = DatabaseBackend({"DATABASE": "empty"})
        with pytest.raises(StorageError) as raised:
            backend.claim(make_claim())
        assert isinstance(raised.value.__cause__, Error)
        never_migrated = backend.check(databases=["empty"])
        MigrationRecorder(connections["empty"]).ensure_schema()  # migrated, without this app
        messages = backend.check(databases=["empty"])
        assert backend.check(databases=None) == []
        assert backend.check(databases=[DEFAULT_DB_ALIAS]) == []
    assert never_migrated == []  # the first ``migrate`` runs the checks before migrating
    assert [message.id for message in messages] == ["django_idempotency.W020"]
    assert "migrate django_idempotency --database empty" in str(messages[0].hint)


@pytest.mark.usefixtures("unguarded_db")
def test_checks_query_only_the_databases_they_are_given() -> None:
    with extra_database("unreachable", UNREACHABLE):
        backend = DatabaseBackend({"DATABASE": "unreachable"})
        assert backend.check() == []
        assert backend.check(databases=[DEFAULT_DB_ALIAS]) == []
        messages = backend.check(databases=["unreachable"])
    assert [message.id for message in messages] == ["django_idempotency.W021"]


def test_alias_that_left_databases_is_e020_and_a_storage_error() -> None:
    with extra_database("gone", UNREACHABLE):
        backend = DatabaseBackend({"DATABASE": "gone"})
    messages = backend.check(databases=None)
    assert [message.id for message in messages] == ["django_idempotency.E020"]
    with pytest.raises(StorageError, match="'gone'"):
        backend.claim(make_claim())
    with pytest.raises(StorageError, match="'gone'"):
        backend.complete("k", "t", RESPONSE, 60)


def test_unknown_alias_is_e020_naming_the_setting() -> None:
    backend = DatabaseBackend({"DATABASE": "nowhere"})

    messages = backend.check(databases=None)

    assert [message.id for message in messages] == ["django_idempotency.E020"]
    assert "IDEMPOTENCY['OPTIONS']['DATABASE']" in messages[0].msg
    with pytest.raises(StorageError, match="'nowhere'"):
        backend.claim(make_claim())


def test_batch_and_page_sizes_must_be_positive() -> None:
    backend = DatabaseBackend()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(backend.purge_expired(batch_size=0))
    with pytest.raises(ValueError, match="count must be a positive integer"):
        backend.scan(None, 0)


@over_db_cases
def test_migrated_database_passes_the_checks(db_backend: DatabaseBackend) -> None:
    assert db_backend.check(databases=[db_backend.alias]) == []


# -- private connections and deferred completion (PostgreSQL, MariaDB) ------------


@on_cases(SERVER_CASES)
def test_private_connections_follow_conn_max_age_and_close_with_the_backend(
    atomic_requests: DatabaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    alias = atomic_requests.alias
    client = Client()
    before = open_connections(alias)
    for number in range(5):
        response = client.post("/short-lease/", HTTP_IDEMPOTENCY_KEY=f"closed-{number}")
        assert response.status_code == 201
    assert open_connections(alias, expected=before) == before  # CONN_MAX_AGE = 0

    monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", None)
    for number in range(3):
        response = client.post("/short-lease/", HTTP_IDEMPOTENCY_KEY=f"kept-{number}")
        assert response.status_code == 201
    assert open_connections(alias, expected=before + 1) == before + 1  # one for this thread
    atomic_requests.close()
    assert open_connections(alias, expected=before) == before


@on_cases(SERVER_CASES)
def test_completion_inside_a_transaction_commits_with_it(db_backend: DatabaseBackend) -> None:
    claim = make_claim()
    with transaction.atomic(using=db_backend.alias):
        assert db_backend.claim(claim).outcome is ClaimOutcome.CREATED
        claimed = seen_by_another_worker(claim.storage_key)
        assert db_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        completed_but_not_committed = seen_by_another_worker(claim.storage_key)
    after = db_backend.get(claim.storage_key)

    assert claimed is not None  # the claim was committed apart, visible at once
    assert completed_but_not_committed is not None
    assert completed_but_not_committed.state is State.IN_PROGRESS
    assert after is not None
    assert after.state is State.COMPLETED
    assert after.response == RESPONSE


@on_cases(SERVER_CASES)
def test_a_duplicate_during_the_views_transaction_never_runs_the_view_again(
    db_backend: DatabaseBackend,
) -> None:
    """The response is stored in the still-open transaction: a duplicate gets 409, or
    waits for the row the completion locked and then gets the replay."""
    alias = db_backend.alias
    answers: list[HttpResponse] = []

    def duplicate() -> None:
        try:
            answers.append(short_lease_view(anonymous_post("in-flight")))
        finally:
            connections.close_all()

    with transaction.atomic(using=alias):
        first = short_lease_view(anonymous_post("in-flight"))
        during = threading.Thread(target=duplicate)
        during.start()
        during.join(0.5)  # it answers at once, or waits on the completion's row lock
    during.join(10)

    assert first.status_code == 201
    assert not during.is_alive()
    assert answers[0].status_code in (201, 409), answers[0].content
    if answers[0].status_code == 201:
        assert answers[0]["Idempotent-Replayed"] == "true"
    assert effects(alias, "short-lease") == 1


@on_cases(SERVER_CASES)
def test_completion_inside_a_rolled_back_transaction_is_undone_with_it(
    db_backend: DatabaseBackend,
) -> None:
    claim = make_claim()

    def complete_then_roll_back() -> None:
        with transaction.atomic(using=db_backend.alias):
            db_backend.claim(claim)
            db_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
            raise Rollback

    with pytest.raises(Rollback):
        complete_then_roll_back()
    left = db_backend.get(claim.storage_key)

    assert left is not None
    assert left.state is State.IN_PROGRESS  # nothing vouches for the rolled-back work


@on_cases(SERVER_CASES)
def test_a_completion_that_finds_its_claim_gone_rolls_the_view_back_and_answers_409(
    db_backend: DatabaseBackend, caplog: pytest.LogCaptureFixture
) -> None:
    alias = db_backend.alias
    request = anonymous_post("secret-key")
    with (
        caplog.at_level(logging.WARNING, logger="django_idempotency"),
        transaction.atomic(using=alias),
    ):
        guard = engine.begin(request, conf.get_settings().policy)
        assert isinstance(guard, engine.Guard)
        SideEffect.objects.using(alias).create(label="superseded")
        # Another worker took the key over (here: deleted it, as an operator could).
        in_threads(1, lambda _: handler.get_backend().delete(guard.claim.storage_key))
        answer = engine.finish(guard, JsonResponse({"id": 1}, status=201))

    assert answer.status_code == 409
    assert json.loads(answer.content)["type"].endswith(":claim-lost")
    assert effects(alias, "superseded") == 0  # the view's write was rolled back
    assert db_backend.get(guard.claim.storage_key) is None
    assert "complete refused" in caplog.text
    assert "secret-key" not in caplog.text


@on_cases(SERVER_CASES)
def test_a_snapshot_older_than_the_claim_completes_on_commit(db_backend: DatabaseBackend) -> None:
    """REPEATABLE READ taken before the claim hides its row from the view's transaction."""
    alias = db_backend.alias
    claim = make_claim()
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        SideEffect.objects.using(alias).count()  # the snapshot starts here
        db_backend.claim(claim)  # committed apart, after the snapshot

        def complete() -> None:
            db_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)

        db_backend.defer_until_commit(complete)
        during = seen_by_another_worker(claim.storage_key)
    after = db_backend.get(claim.storage_key)

    assert during is not None
    assert during.state is State.IN_PROGRESS
    assert after is not None
    assert after.state is State.COMPLETED
    assert after.response == RESPONSE


@on_cases(SERVER_CASES)
@pytest.mark.parametrize("join", [False, True], ids=["private-connection", "join-transactions"])
def test_join_transactions_puts_claims_in_the_callers_transaction(
    db_backend: DatabaseBackend, join: bool
) -> None:
    """For suites whose tests each roll back a transaction: the records roll back too."""
    backend = DatabaseBackend({"DATABASE": db_backend.alias, "JOIN_TRANSACTIONS": join})
    claim = make_claim()
    seen: list[Record | None] = []

    def claim_then_roll_back() -> None:
        with transaction.atomic(using=backend.alias):
            assert backend.claim(claim).outcome is ClaimOutcome.CREATED
            seen.append(seen_by_another_worker(claim.storage_key))
            raise Rollback

    try:
        with pytest.raises(Rollback):
            claim_then_roll_back()
        after = db_backend.get(claim.storage_key)
    finally:
        backend.close()
    during = seen[0]

    if join:
        assert during is None  # not committed yet
        assert after is None  # rolled back with the caller's transaction
    else:
        assert during is not None  # committed apart, visible at once
        assert after is not None


# -- SQLite under ATOMIC_REQUESTS ---------------------------------------------------


@on_cases(SQLITE_CASES)
@pytest.mark.parametrize("transaction_mode", [None, "IMMEDIATE"], ids=["deferred", "immediate"])
def test_sqlite_atomic_requests_run_concurrent_duplicates_once_without_500(
    atomic_requests: DatabaseBackend,
    monkeypatch: pytest.MonkeyPatch,
    transaction_mode: str | None,
) -> None:
    if transaction_mode is not None:
        options = connections.settings[atomic_requests.alias]["OPTIONS"]
        monkeypatch.setitem(options, "transaction_mode", transaction_mode)

    def post(_: int) -> int:
        return Client().post("/slow/", HTTP_IDEMPOTENCY_KEY="sqlite-race").status_code

    statuses = in_threads(16, post)
    assert effects(atomic_requests.alias, "slow") == 1
    # Deferred transactions that read and then write deadlock in SQLite, which
    # refuses at once: the claim answers 503 (never 500). IMMEDIATE queues them.
    allowed = {201, 409, 503} if transaction_mode is None else {201, 409}
    assert set(statuses) <= allowed, statuses
    assert 201 in statuses
