"""What the engine keeps of a response and how it replays it."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, RequestFactory, override_settings

from django_idempotency import engine
from django_idempotency.conf import get_settings
from django_idempotency.responses import REPLAYED_HEADER, replay_response, stored_response
from tests.backends import CACHE, CASES_BY_ID, NATS_BACKEND, REDIS_NATIVE, BackendCase
from tests.http import assert_problem, executions, post
from tests.own_servers import redis_server


def test_cookies_date_and_hop_by_hop_headers_are_never_stored() -> None:
    response = JsonResponse({"ok": True}, status=201)
    response["Location"] = "/payments/1/"
    for name in ("Date", "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE"):
        response[name] = "x"
    response.headers["Set-Cookie"] = "sessionid=secret"
    response.set_cookie("csrftoken", "secret")

    stored = stored_response(response)

    assert dict(stored.headers) == {
        "Content-Type": "application/json",
        "Location": "/payments/1/",
    }
    assert stored.status == 201
    assert stored.body == b'{"ok": true}'


def test_replay_restores_status_headers_and_body_exactly() -> None:
    original = HttpResponse(b"\x00\xffraw", status=202, content_type="application/x-custom")
    original["X-Trace"] = "abc"

    replay = replay_response(stored_response(original))

    assert replay.status_code == 202
    assert replay.content == b"\x00\xffraw"
    assert replay["Content-Type"] == "application/x-custom"
    assert replay["X-Trace"] == "abc"
    assert replay[REPLAYED_HEADER] == "true"
    assert not replay.cookies


def test_replay_without_content_type_adds_none() -> None:
    original = HttpResponse(b"", status=204)
    del original["Content-Type"]

    replay = replay_response(stored_response(original))

    assert "Content-Type" not in replay


def _keyed_request() -> HttpRequest:
    request = RequestFactory().post("/create/", b"{}", content_type="application/json")
    request.META["HTTP_IDEMPOTENCY_KEY"] = "k"
    return request


MEMORY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}


@pytest.mark.parametrize(
    ("callable_path", "returned"),
    [("tests.testapp.scopes.not_a_string", "42"), ("tests.testapp.scopes.too_long", "'ttt")],
)
def test_scope_callable_returning_a_bad_scope_is_improperly_configured(
    callable_path: str, returned: str
) -> None:
    with (
        override_settings(IDEMPOTENCY={**MEMORY, "SCOPE": callable_path}),
        pytest.raises(
            ImproperlyConfigured, match=f"at most 255 characters; it returned {returned}"
        ),
    ):
        engine.begin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY=MEMORY)
def test_user_scope_without_authentication_middleware_names_the_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"after 'django\.contrib\.auth\.middleware"):
        engine.begin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY=MEMORY)
async def test_async_user_scope_without_authentication_middleware_names_the_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"after 'django\.contrib\.auth\.middleware"):
        await engine.abegin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY={**MEMORY, "SCOPE": "tests.testapp.scopes.by_tenant"})
async def test_async_scope_callable_is_called_in_a_thread() -> None:
    request = _keyed_request()
    request.META["HTTP_X_TENANT"] = "acme"

    guard = await engine.abegin(request, get_settings().policy)

    assert isinstance(guard, engine.Guard)
    assert guard.claim.scope == "tenant:acme"
    await engine.aabort(guard)


# -- a response the store refuses -------------------------------------------------------

REFUSING_CASES = [
    CASES_BY_ID[name]
    for name in (
        *("db-sqlite", "db-postgres", "db-mariadb"),
        *("cache-redis", "redis", "cache-memcached", "nats", "nats-read-on-claim"),
    )
]
RECORDS_TABLE = "django_idempotency_idempotencyrecord"


@contextmanager
def refusing_large_responses(case: BackendCase) -> Iterator[int]:
    """Make the real store refuse a response body over a limit; yield a size over it.

    MariaDB refuses a statement over ``max_allowed_packet`` (16 MiB here),
    memcached an item over 1 MiB and NATS a message over 1 MiB, as
    configured; the other stores are given a lower limit of their own for the
    test: a CHECK constraint on PostgreSQL, SQLite's length limit, a Redis
    started with a low ``proto-max-bulk-len`` (the backend case is pointed at
    it).
    """
    if case.id == "db-mariadb":
        with connections["mariadb"].cursor() as cursor:
            cursor.execute("SELECT @@max_allowed_packet")
            (limit,) = cursor.fetchone()
        yield int(limit) + 1024 * 1024
    elif case.id == "db-postgres":
        with connections["postgres"].cursor() as cursor:
            cursor.execute(
                f"ALTER TABLE {RECORDS_TABLE} ADD CONSTRAINT test_small_bodies "
                "CHECK (octet_length(response_body) <= 1000000)"
            )
        try:
            yield 2_000_000
        finally:
            with connections["postgres"].cursor() as cursor:
                cursor.execute(f"ALTER TABLE {RECORDS_TABLE} DROP CONSTRAINT test_small_bodies")
    elif case.id == "db-sqlite":
        if sys.version_info < (3, 11):
            pytest.skip("sqlite3.Connection.setlimit() needs Python 3.11")
        connection = connections["default"]
        connection.ensure_connection()
        previous = connection.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)
        try:
            yield 2_000_000
        finally:
            connection.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, previous)
    elif case.id == "cache-memcached" or case.backend == NATS_BACKEND:
        yield 2 * 1024 * 1024
    else:
        # A Redis of the test's own: lowering the shared one's limit would make
        # tests running meanwhile in other workers fail.
        with redis_server("--proto-max-bulk-len", "1mb") as url:
            refusing_cache = {**settings.CACHES["redis"], "LOCATION": url}
            idempotency = (
                {"BACKEND": REDIS_NATIVE, "OPTIONS": {"URL": url, "KEY_PREFIX": "refusing:"}}
                if case.backend == REDIS_NATIVE
                else {"BACKEND": CACHE, "OPTIONS": {"CACHE": "refusing"}}
            )
            caches = {**settings.CACHES, "refusing": refusing_cache}
            with override_settings(
                CACHES=caches, IDEMPOTENCY={**settings.IDEMPOTENCY, **idempotency}
            ):
                yield 2 * 1024 * 1024


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.idempotency(LOCK_TTL=1, MAX_RESPONSE_BYTES=None)  # every body goes to the store
@pytest.mark.parametrize(
    "backend_case", REFUSING_CASES, indirect=True, ids=[case.id for case in REFUSING_CASES]
)
def test_a_response_the_store_refuses_still_counts_as_executed(
    backend_case: BackendCase, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with refusing_large_responses(backend_case) as size:
        first = post(client, f"/sized/{size}/")
        # Past the lease: a claim left in progress would now be taken over.
        time.sleep(1.2 + backend_case.lease_slack)
        retry = post(client, f"/sized/{size}/")

    assert first.status_code == 201
    assert len(first.content) == size  # the client got the whole response
    problem = assert_problem(retry, 409, "response-not-replayable")
    assert problem["original_status"] == 201
    assert not retry.has_header("Retry-After")  # retrying cannot help
    assert executions("sized") == 1
    assert "recording that the view ran, without its response" in caplog.text
