"""Async paths never block the event loop, on every backend.

A ticker task sleeps 5 ms at a time and records the longest gap between its
wake-ups while concurrent async requests claim, complete and replay keys
through the engine; a blocking call on the loop (a synchronous socket read,
a database query) would show as a gap. The database backend pays one thread
hop per store operation, counted.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from asgiref import sync
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory

from django_idempotency import engine
from django_idempotency.backends import base
from django_idempotency.conf import get_settings
from tests.backends import CACHE, CASES, DB, REDIS_NATIVE, BackendCase
from tests.conftest import require_service
from tests.latency import slow_replies
from tests.services import REDIS, REDIS_URL
from tests.settings import RUN_ID

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

MAX_STALL = 0.050
TICK = 0.005
TASKS = 20
KEYS_PER_TASK = 10


def _request(key: str) -> HttpRequest:
    request = RequestFactory().post(
        "/create/", b'{"amount": "1.00"}', content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )  # fmt: skip
    request.user = AnonymousUser()
    return request


async def _first_then_replay(key: str) -> None:
    """A first request and its retry, yielding where a server would.

    An ASGI server awaits between the claim and the completion (the view,
    sending the response) and between two requests (reading the next one):
    the loop runs other tasks there. Without those yields, a store that never
    awaits (MemoryBackend) would run a whole client's requests as one block,
    and the ticker would measure the CPU time of the load, not store I/O.
    """
    policy = get_settings().policy
    guard = await engine.abegin(_request(key), policy)
    assert isinstance(guard, engine.Guard), guard
    await asyncio.sleep(0)  # the view runs
    await engine.afinish(guard, JsonResponse({"key": key}, status=201))
    await asyncio.sleep(0)  # the response goes out, the retry comes in
    replay = await engine.abegin(_request(key), policy)
    assert replay is not None
    assert not isinstance(replay, engine.Guard)
    assert replay["Idempotent-Replayed"] == "true"


async def _longest_stall_during(work: Callable[[], Awaitable[Any]]) -> float:
    """The longest the loop went without running the ticker while ``work`` ran.

    The garbage collector is paused meanwhile: a full collection over the
    test session's heap takes tens of milliseconds in any Python program, and
    what is measured here is whether the store's I/O ever runs on the loop.
    """
    gc.collect()
    gc.disable()
    try:
        return await _measure(work)
    finally:
        gc.enable()


async def _measure(work: Callable[[], Awaitable[Any]]) -> float:
    longest = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            longest = max(longest, now - last - TICK)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(TICK * 2)  # let it start
    try:
        await work()
    finally:
        done.set()
        await ticking
    return longest


async def test_concurrent_async_requests_never_stall_the_event_loop(
    backend_case: BackendCase,
) -> None:
    """20 clients, 10 keys each, at once; a store's I/O must never run on the loop."""

    async def client(task: int) -> None:
        for index in range(KEYS_PER_TASK):
            await _first_then_replay(f"loop-{task}-{index}")
            await asyncio.sleep(0)  # a server reads the next request from a socket

    async def load() -> None:
        await asyncio.gather(*(client(task) for task in range(TASKS)))

    await _first_then_replay("warm-up")  # connections and scripts, before measuring
    stall = await _longest_stall_during(load)

    assert stall < MAX_STALL, f"the event loop stalled for {stall * 1000:.0f} ms"


@pytest.mark.parametrize(
    "backend_case",
    [case for case in CASES if case.backend == DB],
    indirect=True,
    ids=lambda case: case.id,
)
async def test_the_database_costs_one_thread_hop_per_store_operation(
    backend_case: BackendCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []
    real = sync.sync_to_async

    def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return real(function, *args, **kwargs)

    monkeypatch.setattr(base, "sync_to_async", counting)
    policy = get_settings().policy

    guard = await engine.abegin(_request("hops"), policy)
    assert isinstance(guard, engine.Guard)
    await engine.afinish(guard, JsonResponse({}, status=201))
    await engine.abegin(_request("hops"), policy)  # a replay

    assert hops == ["claim", "complete", "claim"]


@pytest.mark.parametrize(
    "backend_case",
    [case for case in CASES if case.backend == REDIS_NATIVE],
    indirect=True,
    ids=lambda case: case.id,
)
async def test_more_concurrent_requests_than_pool_connections_wait_for_one(
    backend_case: BackendCase,
) -> None:
    """One loop serves more requests at once than the pool has connections (100)."""
    await asyncio.gather(*(_first_then_replay(f"crowd-{index}") for index in range(250)))


STORE_LATENCY = 0.100
"""Twice ``MAX_STALL``: one store call made on the loop is a stall the ticker cannot miss."""
SLOW_CLIENTS = 40


@pytest.fixture
def slow_redis() -> Iterator[str]:
    """RedisBackend and a django-redis cache reached through 100 ms of reply latency.

    On loopback a blocking call returns in a fraction of a millisecond and
    would hide among the ticks; with every reply ``STORE_LATENCY`` late, any
    one store call run on the loop stalls it for twice the bound.
    """
    require_service(REDIS)
    with slow_replies(REDIS.host, REDIS.port, delay=STORE_LATENCY) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("mode", ["url", "cache"])
async def test_a_store_with_latency_never_stalls_the_loop(
    slow_redis: str, settings: Any, mode: str
) -> None:
    prefix = f"idempotency-test-{RUN_ID}-loop-{mode}"
    if mode == "url":
        options: dict[str, Any] = {"URL": slow_redis, "KEY_PREFIX": prefix + ":"}
        backend = REDIS_NATIVE
    else:
        settings.CACHES = {
            **settings.CACHES,
            "slow": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": slow_redis,
                "KEY_PREFIX": prefix,
            },
        }
        options, backend = {"CACHE": "slow"}, CACHE
    settings.IDEMPOTENCY = {"BACKEND": backend, "OPTIONS": options}

    async def client(number: int) -> None:
        # Arrivals spread over one latency period, as a server receives them:
        # all 40 are in flight at once, without the proxy's fixed delay lining
        # their CPU work up into one artificial burst.
        await asyncio.sleep(number * STORE_LATENCY / SLOW_CLIENTS)
        await _first_then_replay(f"slow-{mode}-{number}")

    async def load() -> None:
        await asyncio.gather(*(client(number) for number in range(SLOW_CLIENTS)))

    await _first_then_replay(f"slow-{mode}-warm-up")
    try:
        stall = await _longest_stall_during(load)
    finally:
        redis.Redis.from_url(REDIS_URL).delete(
            *redis.Redis.from_url(REDIS_URL).keys(prefix + "*") or ["-"]
        )

    assert stall < MAX_STALL, f"the event loop stalled for {stall * 1000:.0f} ms"
