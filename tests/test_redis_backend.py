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
import re
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
from django_idempotency.backends.cache import CacheBackend
from django_idempotency.backends.redis import RedisBackend
from django_idempotency.backends.redis_client import scan_keys
from django_idempotency.backends.serialization import FORMAT_VERSION
from django_idempotency.checks import check_backend
from django_idempotency.keys import storage_key
from django_idempotency.records import Claim, ClaimOutcome
from tests.backends import CACHE, CASES_BY_ID, REDIS_NATIVE, REDIS_URL_CASE, BackendCase
from tests.conftest import NewClaim, require_service
from tests.http import BODY, executions, post
from tests.services import REDIS, REDIS_URL
from tests.settings import RUN_ID
from tests.storage import RESPONSE, make_claim, scanned_keys

REDIS_CASES = [CASES_BY_ID["redis"], REDIS_URL_CASE]
redis_cases = pytest.mark.parametrize(
    "backend_case", REDIS_CASES, indirect=True, ids=[case.id for case in REDIS_CASES]
)
WORKER_KEY = re.compile(rf"idempotency-test-{re.escape(RUN_ID)}[:-]")
"""A key of this test worker's: its cache's and its URL cases' prefixes start so."""

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
    """The commands this test's clients send to the test database inside the block.

    Seen by Redis's MONITOR; commands run by Lua scripts are left out. This
    test's clients are the connections that sent a key of this test worker's
    prefix (other pytest-xdist workers share the database): every command of
    theirs counts, a reconnect's handshake too. The block's end is marked by
    an ECHO from a connection opened beforehand.
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
    sent = [
        command for command in seen if command["db"] == database and command["client_type"] != "lua"
    ]
    ours = {
        (command["client_address"], command["client_port"])
        for command in sent
        if WORKER_KEY.search(command["command"])
    }
    commands += [
        command["command"]
        for command in sent
        if (command["client_address"], command["client_port"]) in ours
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


class ScanReorderedByARehash:
    """SCAN as Redis answers a repeated call after other clients made it rehash its table.

    Not a stand-in for Redis: ``scan_keys`` pages over whatever SCAN returns,
    and this replays one documented answer (the same bucket's keys, in another
    order the second time) that a real server gives only under a racing load.
    """

    KEYS = (b"p:a", b"p:b", b"p:c", b"p:d")

    def __init__(self) -> None:
        self.calls = 0

    def scan(self, cursor: int, *, match: str, count: int) -> tuple[int, list[bytes]]:
        self.calls += 1
        return 0, list(self.KEYS if self.calls == 1 else self.KEYS[::-1])


def test_a_page_split_inside_one_scan_call_loses_no_key_when_the_call_comes_back_reordered() -> (
    None
):
    client = ScanReorderedByARehash()

    first, cursor = scan_keys(client, "p:*", None, 3)
    second, end = scan_keys(client, "p:*", cursor, 3)

    assert len(first) == 3
    assert end is None
    assert set(first) | set(second) == set(ScanReorderedByARehash.KEYS)
    assert not set(first) & set(second)  # what the first page took is skipped, by name


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


def test_unknown_cache_alias_is_e011_and_a_storage_error_at_runtime() -> None:
    backend = RedisBackend({"CACHE": "nowhere"})

    messages = backend.check()

    assert [m.id for m in messages] == ["django_idempotency.E011"]
    assert "'nowhere' is not a cache alias" in messages[0].msg
    with pytest.raises(StorageError, match="'nowhere' is not a cache alias"):
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


# -- clients that decode replies as text ---------------------------------------------------


def _redis_cache(**options: Any) -> dict[str, Any]:
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL, **options}


@pytest.mark.parametrize(
    ("options", "caches", "where"),
    [
        ({"URL": REDIS_URL + "?decode_responses=True"}, {}, r"\['URL'\]"),
        (
            {"CACHE": "decoding"},
            {
                "decoding": _redis_cache(
                    OPTIONS={"CONNECTION_POOL_KWARGS": {"decode_responses": True}}
                )
            },
            r"settings\.CACHES\['decoding'\]",
        ),
        (
            {"CACHE": "decoding"},
            {"decoding": _redis_cache(LOCATION=REDIS_URL + "?decode_responses=1")},
            r"settings\.CACHES\['decoding'\]",
        ),
    ],
    ids=["url", "cache-pool-kwargs", "cache-location"],
)
def test_a_connection_that_decodes_replies_is_refused_when_the_backend_is_built(
    settings: Any, options: dict[str, Any], caches: dict[str, Any], where: str
) -> None:
    settings.CACHES = {**settings.CACHES, **caches}
    settings.IDEMPOTENCY = {"BACKEND": REDIS_NATIVE, "OPTIONS": options}

    with pytest.raises(ImproperlyConfigured, match=f"{where}.*decode_responses.*remove"):
        RedisBackend(options)
    messages = check_backend()
    assert [message.id for message in messages] == ["django_idempotency.E003"]
    assert "decode_responses" in messages[0].msg


@pytest.mark.parametrize(
    "cache",
    [
        _redis_cache(OPTIONS={"CONNECTION_POOL_KWARGS": {"decode_responses": True}}),
        _redis_cache(LOCATION=REDIS_URL + "?decode_responses=1"),
    ],
    ids=["pool-kwargs", "location"],
)
def test_cache_backend_over_a_cache_that_decodes_replies_is_refused_when_built(
    settings: Any, cache: dict[str, Any]
) -> None:
    """CacheBackend writes to a django-redis cache with RedisBackend's code, and refuses alike."""
    settings.CACHES = {**settings.CACHES, "decoding": cache}
    settings.IDEMPOTENCY = {"BACKEND": CACHE, "OPTIONS": {"CACHE": "decoding"}}

    with pytest.raises(
        ImproperlyConfigured, match=r"settings\.CACHES\['decoding'\].*decode_responses"
    ):
        CacheBackend({"CACHE": "decoding"})
    messages = check_backend()
    assert [message.id for message in messages] == ["django_idempotency.E003"]
    assert "decode_responses" in messages[0].msg


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("policy", ["fail", "pass"])
def test_a_reply_the_client_cannot_decode_is_a_storage_error_never_a_500(
    settings: Any, policy: str
) -> None:
    require_service(REDIS)
    separator = "&" if "?" in REDIS_URL else "?"
    decoding = _redis_cache(
        # A URL of its own: django-redis shares one pool per URL between all its caches.
        LOCATION=f"{REDIS_URL}{separator}client_name=idempotency-decoding-test",
        KEY_PREFIX=f"idempotency-test-{RUN_ID}-decoding",
        OPTIONS={"CONNECTION_FACTORY": "tests.testapp.redis_factories.DecodingConnectionFactory"},
    )
    settings.CACHES = {**settings.CACHES, "decoding": decoding}
    settings.IDEMPOTENCY = {
        "BACKEND": REDIS_NATIVE,
        "OPTIONS": {"CACHE": "decoding"},
        "ON_STORAGE_ERROR": policy,
    }
    client = Client(raise_request_exception=False)
    try:
        first = post(client, "/binary/")
        retry = post(client, "/binary/")
    finally:
        redis.Redis.from_url(REDIS_URL).delete(
            f"idempotency-test-{RUN_ID}-decoding:idempotency:{storage_key('anonymous', 'key-1')}"
        )

    assert first.status_code == 200
    if policy == "fail":
        assert retry.status_code == 503
        assert retry["Content-Type"] == "application/problem+json"
        assert executions("binary") == 1
    else:
        assert retry.status_code == 200  # run unguarded rather than fail
        assert executions("binary") == 2
