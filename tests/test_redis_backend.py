"""RedisBackend against a real Redis: commands per request, key layout, connections.

The contract (``test_backend_contract.py``) and what RedisBackend shares with
CacheBackend (``test_cache_and_redis_backends.py``) run over both ways to
connect too; this module looks under the backend. Round trips are counted
by Redis itself: a MONITOR connection sees every command a client sends (and
tags the ones a Lua script runs, which are not round trips). Every key a
test writes is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
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
from django_idempotency.records import Claim, ClaimOutcome
from tests.backends import CASES_BY_ID, REDIS_NATIVE, REDIS_URL_CASE, BackendCase
from tests.conftest import NewClaim, require_service
from tests.http import BODY, executions, post
from tests.services import REDIS, REDIS_URL
from tests.settings import RUN_ID
from tests.storage import RESPONSE, make_claim, scanned_keys

REDIS_CASES = [CASES_BY_ID["redis"], REDIS_URL_CASE]
redis_cases = pytest.mark.parametrize(
    "backend_case", REDIS_CASES, indirect=True, ids=[case.id for case in REDIS_CASES]
)
cache_case = pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["redis"]], indirect=True, ids=["redis"]
)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client on the test database, to look under the backend."""
    require_service(REDIS)
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


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
    assert raw.get(key) == stored


# -- complete ------------------------------------------------------------------------


@redis_cases
def test_completing_sets_the_key_ttl_to_the_replay_window(
    idempotency_backend: BaseBackend, new_claim: NewClaim, raw: redis.Redis
) -> None:
    claim = new_claim()
    idempotency_backend.claim(claim)

    assert idempotency_backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)

    assert 299_000 < raw.pttl(redis_key(idempotency_backend, claim.storage_key)) <= 300_000


# -- scan and foreign values ---------------------------------------------------------


def test_scan_matches_the_key_prefix_literally(raw: redis.Redis) -> None:
    backend = RedisBackend({"URL": REDIS_URL, "KEY_PREFIX": f"idem[t]*?-{RUN_ID}:"})
    claim = make_claim()
    decoy = f"idemtXY-{RUN_ID}:decoy"  # matched by the prefix read as a glob pattern
    raw.set(decoy, b"not a record", px=60_000)
    try:
        backend.claim(claim)
        seen = scanned_keys(backend, 1000)
    finally:
        raw.delete(decoy)
        backend.delete(claim.storage_key)
        backend.close()

    assert seen == [claim.storage_key]


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


# -- async connections ---------------------------------------------------------------


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
