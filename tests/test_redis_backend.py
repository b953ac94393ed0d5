"""RedisBackend against a real Redis: commands per request, owner checks, async.

Round trips are counted by Redis itself: a MONITOR connection sees every
command a client sends (and tags the ones a Lua script runs, which are not
round trips). Every key a test writes is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient, Client, override_settings

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.redis import RedisBackend
from django_idempotency.backends.serialization import FORMAT_VERSION
from django_idempotency.checks import check_backend
from django_idempotency.records import Claim, ClaimOutcome, State, StoredResponse
from tests.backends import CASES_BY_ID, REDIS_NATIVE, BackendCase
from tests.conftest import require_service
from tests.http import BODY, assert_problem, executions, post
from tests.services import REDIS, REDIS_URL
from tests.settings import RUN_ID

URL_CASE = BackendCase(
    "redis-url",
    REDIS_NATIVE,
    {"URL": REDIS_URL, "KEY_PREFIX": f"idempotency-test-{RUN_ID}-url:"},
    REDIS,
)
REDIS_CASES = [CASES_BY_ID["redis"], URL_CASE]
redis_cases = pytest.mark.parametrize(
    "backend_case", REDIS_CASES, indirect=True, ids=[case.id for case in REDIS_CASES]
)
cache_case = pytest.mark.parametrize("backend_case", [CASES_BY_ID["redis"]], indirect=True)
DOWN_URL = "redis://127.0.0.1:1/0"
RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/payments/1/")),
    body=b'{"id": 1}',
)

NewClaim = Callable[..., Claim]


def make_claim(storage_key: str | None = None, lease: int = 60) -> Claim:
    """A claim with its own owner token, on ``storage_key`` or a fresh one."""
    return Claim(
        storage_key=storage_key or f"test-{secrets.token_hex(16)}",
        key="client-key",
        scope="user:1",
        fingerprint="f" * 64,
        method="POST",
        path="/payments/?currency=EUR",
        owner_token=secrets.token_hex(16),
        lease_seconds=lease,
    )


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client on the test database, to look under the backend."""
    require_service(REDIS)
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def new_claim(idempotency_backend: BaseBackend) -> Iterator[NewClaim]:
    """Makes claims like :func:`make_claim` and deletes their records afterwards."""
    storage_keys: list[str] = []

    def make(storage_key: str | None = None, lease: int = 60) -> Claim:
        claim = make_claim(storage_key, lease)
        storage_keys.append(claim.storage_key)
        return claim

    yield make
    for storage_key in set(storage_keys):
        idempotency_backend.delete(storage_key)


def redis_key(backend: BaseBackend, storage_key: str) -> str:
    assert isinstance(backend, RedisBackend)
    return backend.key_prefix + storage_key


@contextmanager
def commands_sent(url: str = REDIS_URL) -> Iterator[list[str]]:
    """The commands clients send to the test database inside the block.

    Seen by Redis's MONITOR; commands run by Lua scripts are left out. The
    block's end is marked by an ECHO from a connection opened beforehand.
    """
    database = redis.Redis.from_url(url).connection_pool.connection_kwargs["db"]
    marker = f"end-of-measure-{secrets.token_hex(8)}"
    marker_client = redis.Redis.from_url(url)
    marker_client.ping()
    monitor_client = redis.Redis.from_url(url, socket_timeout=10)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as monitor:
            ready.set()
            while (command := monitor.next_command())["command"] != f"ECHO {marker}":
                seen.append(command)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10), "MONITOR did not start"
    commands: list[str] = []
    try:
        yield commands
    finally:
        marker_client.echo(marker)
        thread.join(10)
        marker_client.close()
        monitor_client.close()
    assert not thread.is_alive(), "MONITOR never saw the end marker"
    commands += [
        command["command"]
        for command in seen
        if command["db"] == database and command["client_type"] != "lua"
    ]


def names(commands: list[str]) -> list[str]:
    return [command.split(" ", 1)[0].upper() for command in commands]


def connections_named(raw: redis.Redis, name: str) -> int:
    return sum(1 for client in raw.client_list() if client.get("name") == name)


# -- round trips ---------------------------------------------------------------------


@pytest.mark.django_db
@cache_case
def test_first_execution_costs_two_commands_and_a_replay_one(
    backend_case: BackendCase, client: Client
) -> None:
    post(client, key="warm-up")  # loads the scripts, opens the pooled connection

    with commands_sent() as first_execution:
        first = post(client, key="measured")
    with commands_sent() as replay:
        retry = post(client, key="measured")

    assert names(first_execution) == ["SET", "EVALSHA"]
    assert names(replay) == ["SET"]
    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert executions() == 2  # the warm-up and the measured request


@pytest.mark.django_db(transaction=True)
@cache_case
async def test_async_stack_costs_the_same_commands(backend_case: BackendCase) -> None:
    client = AsyncClient()
    headers = {"Idempotency-Key": "measured-async"}
    await client.post("/async-plain/", BODY, content_type="application/json", headers=headers)

    with commands_sent() as replay:
        retry = await client.post(
            "/async-plain/", BODY, content_type="application/json", headers=headers
        )

    assert names(replay) == ["SET"]
    assert retry["Idempotent-Replayed"] == "true"


# -- claim ---------------------------------------------------------------------------


@redis_cases
def test_claim_writes_a_versioned_string_that_expires_with_the_lease(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    claim = new_claim(lease=30)

    result = idempotency_backend.claim(claim)

    key = redis_key(idempotency_backend, claim.storage_key)
    assert result.outcome is ClaimOutcome.CREATED
    assert raw.type(key) == b"string"
    assert raw.getrange(key, 0, 0) == bytes([FORMAT_VERSION])
    assert 29_000 < raw.pttl(key) <= 30_000


@redis_cases
def test_a_later_claim_gets_the_live_record_and_writes_nothing(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    first = new_claim()
    idempotency_backend.claim(first)
    key = redis_key(idempotency_backend, first.storage_key)
    stored = raw.get(key)

    result = idempotency_backend.claim(new_claim(first.storage_key))

    assert result.outcome is ClaimOutcome.EXISTING
    assert result.record.owner_token == first.owner_token
    assert result.record.state is State.IN_PROGRESS
    assert raw.get(key) == stored


@redis_cases
def test_a_claim_retried_with_its_own_owner_token_is_still_ours(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.claim(claim).outcome is ClaimOutcome.CREATED


@redis_cases
def test_32_threads_claiming_one_key_have_exactly_one_winner(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    first = new_claim()
    claims = [first] + [new_claim(first.storage_key) for _ in range(31)]
    barrier = threading.Barrier(len(claims))
    outcomes: list[ClaimOutcome | BaseException] = []

    def race(claim: Claim) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(idempotency_backend.claim(claim).outcome)
        except BaseException as error:  # reported by the assertion below
            outcomes.append(error)

    threads = [threading.Thread(target=race, args=(claim,), daemon=True) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert outcomes.count(ClaimOutcome.CREATED) == 1, outcomes
    assert outcomes.count(ClaimOutcome.EXISTING) == 31, outcomes


# -- complete and release ------------------------------------------------------------


@redis_cases
def test_only_the_owner_completes_and_the_ttl_becomes_the_replay_window(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert not idempotency_backend.complete(claim.storage_key, "stranger", RESPONSE, ttl=300)
    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    record = idempotency_backend.claim(new_claim(claim.storage_key)).record
    assert record.state is State.COMPLETED
    assert record.response == RESPONSE
    assert record.expires_at == pytest.approx(time.time() + 300, abs=5)
    assert 299_000 < raw.pttl(redis_key(idempotency_backend, claim.storage_key)) <= 300_000


@redis_cases
def test_a_completed_response_never_changes(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)
    idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    assert idempotency_backend.complete(
        claim.storage_key, claim.owner_token, StoredResponse(200, (), b"second"), ttl=300
    )

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE


@redis_cases
def test_release_needs_the_owner_and_an_in_progress_record(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    released, completed = new_claim(), new_claim()
    idempotency_backend.claim(released)
    idempotency_backend.claim(completed)
    idempotency_backend.complete(completed.storage_key, completed.owner_token, RESPONSE, 60)

    assert not idempotency_backend.release(released.storage_key, "stranger")
    assert idempotency_backend.release(released.storage_key, released.owner_token)
    assert not idempotency_backend.release(completed.storage_key, completed.owner_token)
    assert idempotency_backend.get(released.storage_key) is None
    assert idempotency_backend.get(completed.storage_key) is not None


@redis_cases
def test_expired_lease_frees_the_key_and_the_stale_owner_cannot_touch_the_new_claim(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    stale = new_claim(lease=1)
    done = new_claim()
    idempotency_backend.claim(stale)
    idempotency_backend.claim(done)
    idempotency_backend.complete(done.storage_key, done.owner_token, RESPONSE, ttl=1)
    time.sleep(1.1)

    fresh = new_claim(stale.storage_key)
    assert idempotency_backend.claim(fresh).outcome is ClaimOutcome.CREATED
    assert not idempotency_backend.complete(stale.storage_key, stale.owner_token, RESPONSE, 60)
    assert not idempotency_backend.release(stale.storage_key, stale.owner_token)
    record = idempotency_backend.get(stale.storage_key)
    assert record is not None
    assert (record.owner_token, record.state) == (fresh.owner_token, State.IN_PROGRESS)
    assert idempotency_backend.get(done.storage_key) is None


@redis_cases
def test_every_byte_value_and_unicode_headers_survive_the_round_trip(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)
    response = StoredResponse(
        200,
        (("Content-Type", "application/octet-stream"), ("X-Name", "Zoë ✓"), ("X-Empty", "")),
        bytes(range(256)) * 4,
    )

    idempotency_backend.complete(claim.storage_key, claim.owner_token, response, ttl=60)

    record = idempotency_backend.get(claim.storage_key)
    assert record is not None
    assert record.response == response


@pytest.mark.django_db
@cache_case
def test_binary_view_replays_byte_for_byte(backend_case: BackendCase, client: Client) -> None:
    first = post(client, "/binary/", key="binary")
    retry = post(client, "/binary/", key="binary")

    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content == bytes(range(256)) * 4


# -- get, delete, scan ----------------------------------------------------------------


@redis_cases
def test_delete_removes_any_record_whatever_its_owner(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.delete(claim.storage_key)
    assert not idempotency_backend.delete(claim.storage_key)
    assert idempotency_backend.get(claim.storage_key) is None


@redis_cases
@pytest.mark.parametrize("page_size", [1, 3, 100])
def test_scan_lists_every_record_in_pages_of_at_most_count(
    idempotency_backend: BaseBackend, new_claim: NewClaim, page_size: int
) -> None:
    claims = [new_claim() for _ in range(7)]
    for claim in claims:
        idempotency_backend.claim(claim)

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page, cursor = idempotency_backend.scan(cursor, page_size)
        assert len(page) <= page_size
        seen += [record.storage_key for record in page]
        if cursor is None:
            break

    assert set(seen) == {claim.storage_key for claim in claims}


def test_scan_matches_the_key_prefix_literally(raw: redis.Redis) -> None:
    backend = RedisBackend({"URL": REDIS_URL, "KEY_PREFIX": f"idem[t]*?-{RUN_ID}:"})
    claim = make_claim()
    decoy = f"idemtXY-{RUN_ID}:decoy"  # matched by the prefix read as a glob pattern
    raw.set(decoy, b"not a record", px=60_000)
    try:
        backend.claim(claim)
        records, cursor = backend.scan(None, 1000)
        while cursor is not None:
            page, cursor = backend.scan(cursor, 1000)
            records += page
    finally:
        raw.delete(decoy)
        backend.delete(claim.storage_key)
        backend.close()

    assert [record.storage_key for record in records] == [claim.storage_key]


@redis_cases
def test_redis_expires_records_so_there_is_nothing_to_purge(
    idempotency_backend: BaseBackend,
) -> None:
    assert idempotency_backend.has_native_expiry
    assert idempotency_backend.supports_listing
    assert idempotency_backend.is_shared_across_processes
    assert list(idempotency_backend.purge_expired()) == []
    assert idempotency_backend.count_expired() == 0


@redis_cases
def test_foreign_values_are_storage_errors(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    newer, other_type = new_claim(), new_claim()
    raw.set(redis_key(idempotency_backend, newer.storage_key), b"\x09from a newer release")
    raw.hset(redis_key(idempotency_backend, other_type.storage_key), "a", "b")

    for claim in (newer, other_type):
        with pytest.raises(StorageError):
            idempotency_backend.claim(claim)
        with pytest.raises(StorageError):
            idempotency_backend.get(claim.storage_key)
        with pytest.raises(StorageError):
            idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        with pytest.raises(StorageError):
            idempotency_backend.release(claim.storage_key, claim.owner_token)


# -- async ---------------------------------------------------------------------------


@redis_cases
async def test_async_flavours_follow_the_contract(
    idempotency_backend: BaseBackend, new_claim: NewClaim
) -> None:
    claim, released = new_claim(), new_claim()

    assert (await idempotency_backend.aclaim(claim)).outcome is ClaimOutcome.CREATED
    assert (await idempotency_backend.aclaim(new_claim(claim.storage_key))).outcome is (
        ClaimOutcome.EXISTING
    )
    assert (await idempotency_backend.aclaim(claim)).outcome is ClaimOutcome.CREATED
    assert not await idempotency_backend.acomplete(claim.storage_key, "stranger", RESPONSE, 60)
    assert await idempotency_backend.acomplete(claim.storage_key, claim.owner_token, RESPONSE, 60)
    record = await idempotency_backend.aget(claim.storage_key)
    assert record is not None
    assert record.response == RESPONSE
    assert not await idempotency_backend.arelease(claim.storage_key, claim.owner_token)
    assert await idempotency_backend.adelete(claim.storage_key)
    assert not await idempotency_backend.adelete(claim.storage_key)
    await idempotency_backend.aclaim(released)
    assert await idempotency_backend.arelease(released.storage_key, released.owner_token)
    assert await idempotency_backend.aget(released.storage_key) is None


def test_each_event_loop_gets_a_client_closed_with_the_loop(raw: redis.Redis) -> None:
    name = f"idempotency-test-{secrets.token_hex(4)}"
    backend = RedisBackend({"URL": f"{REDIS_URL}?client_name={name}"})
    claim = make_claim()

    async def claim_and_count(claim: Claim) -> tuple[ClaimOutcome, int]:
        outcome = (await backend.aclaim(claim)).outcome
        return outcome, connections_named(raw, name)

    try:
        # async_to_sync runs each call on a new event loop, as a WSGI server does.
        first = async_to_sync(claim_and_count)(claim)
        after_first_loop = connections_named(raw, name)
        second = async_to_sync(claim_and_count)(make_claim(claim.storage_key))
        after_second_loop = connections_named(raw, name)
    finally:
        backend.delete(claim.storage_key)
        backend.close()

    assert first == (ClaimOutcome.CREATED, 1)
    assert second == (ClaimOutcome.EXISTING, 1)
    assert after_first_loop == after_second_loop == 0


async def test_close_disconnects_the_running_loops_client(raw: redis.Redis) -> None:
    name = f"idempotency-test-{secrets.token_hex(4)}"
    backend = RedisBackend({"URL": f"{REDIS_URL}?client_name={name}"})
    await backend.aget("0" * 64)
    backend.get("0" * 64)
    assert connections_named(raw, name) == 2

    backend.close()
    await asyncio.sleep(0.1)  # the loop's client is closed by a task on the loop

    assert connections_named(raw, name) == 0


# -- outage ---------------------------------------------------------------------------


def test_unreachable_redis_is_a_storage_error_answered_fast() -> None:
    backend = RedisBackend({"URL": DOWN_URL})
    claim = make_claim()
    started = time.monotonic()

    for operation in (
        lambda: backend.claim(claim),
        lambda: backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60),
        lambda: backend.release(claim.storage_key, claim.owner_token),
        lambda: backend.get(claim.storage_key),
        lambda: backend.delete(claim.storage_key),
        lambda: backend.scan(),
        lambda: async_to_sync(backend.aclaim)(claim),
        lambda: async_to_sync(backend.acomplete)(claim.storage_key, "o", RESPONSE, 60),
        lambda: async_to_sync(backend.arelease)(claim.storage_key, claim.owner_token),
        lambda: async_to_sync(backend.aget)(claim.storage_key),
        lambda: async_to_sync(backend.adelete)(claim.storage_key),
    ):
        with pytest.raises(StorageError, match="Redis failed"):
            operation()
    backend.close()

    assert time.monotonic() - started < 5


@pytest.mark.django_db
@override_settings(IDEMPOTENCY={"BACKEND": REDIS_NATIVE, "OPTIONS": {"URL": DOWN_URL}})
def test_redis_outage_answers_503_and_the_view_does_not_run(client: Client) -> None:
    response = post(client, key="outage-1")

    assert_problem(response, 503, "storage-unavailable")
    assert response["Retry-After"]
    assert executions() == 0


@pytest.mark.django_db
@override_settings(
    IDEMPOTENCY={
        "BACKEND": REDIS_NATIVE,
        "OPTIONS": {"URL": DOWN_URL},
        "ON_STORAGE_ERROR": "pass",
    }
)
def test_redis_outage_with_pass_runs_the_view_once_and_warns(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        response = post(client, key="outage-2")

    assert response.status_code == 201
    assert executions() == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("storage error on claim" in r.getMessage() for r in warnings), caplog.text


# -- configuration and checks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "neither given"),
        ({"CACHE": "redis", "URL": REDIS_URL}, "both given"),
        ({"CACHE": "nowhere"}, "'nowhere' is not a cache alias"),
        ({"CACHE": "locmem"}, "only a django-redis cache"),
    ],
)
def test_unusable_connection_options_are_e011_and_fail_loudly_at_runtime(
    options: dict[str, Any], message: str
) -> None:
    backend = RedisBackend(options)

    messages = backend.check()

    assert [m.id for m in messages] == ["django_idempotency.E011"]
    assert message in messages[0].msg
    with pytest.raises(ImproperlyConfigured, match=message):
        backend.get("0" * 64)


@override_settings(IDEMPOTENCY={"BACKEND": REDIS_NATIVE, "OPTIONS": {"CACHE": "locmem"}})
def test_e011_is_reported_by_the_system_checks() -> None:
    assert "django_idempotency.E011" in [message.id for message in check_backend()]


@pytest.mark.parametrize("options", [{"URL": REDIS_URL}, {"CACHE": "redis"}])
def test_usable_connection_options_pass_the_checks(options: dict[str, Any]) -> None:
    require_service(REDIS)  # the "redis" alias exists only when Redis answers

    assert RedisBackend(options).check() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"URL": REDIS_URL, "DB": 1}, r"IDEMPOTENCY\['OPTIONS'\]\['DB'\]"),
        ({"URL": 6379}, "must be a string"),
        ({"URL": REDIS_URL, "KEY_PREFIX": ""}, "must not be empty"),
        ({"URL": REDIS_URL, "SOCKET_TIMEOUT": 0}, "positive number of seconds"),
        ({"URL": REDIS_URL, "SOCKET_CONNECT_TIMEOUT": "1"}, "positive number of seconds"),
        ({"CACHE": "redis", "SOCKET_TIMEOUT": 1}, "in that cache's OPTIONS"),
    ],
)
def test_bad_options_are_improperly_configured(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        RedisBackend(options)


@cache_case
def test_keys_reuse_the_cache_key_prefix_by_default(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert raw.exists(f"idempotency-test-{RUN_ID}:idempotency:{claim.storage_key}")
