"""One asyncio client per running event loop, closed with its loop; and a loop thread for sync code.

An asyncio connection (``redis.asyncio``, nats-py) belongs to the event loop
that opened it, and a WSGI server running an async view (``async_to_sync``)
starts a new loop per request, so one shared client would fail on the second
loop. :class:`LoopClients` keeps one client per running loop. Each is paired
with a suspended async generator: a loop finalizes its async generators when
it shuts down (``asyncio.run`` and ``async_to_sync`` do), and that one closes
the client.

:class:`LoopThread` is for a store whose driver is asyncio only (nats-py):
its sync methods run their coroutines on one event loop per process, in a
daemon thread started on first use (and again in a forked child), where
:class:`LoopClients` gives them that loop's client like any other.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Client = TypeVar("Client")
_T = TypeVar("_T")


class LoopClients(Generic[Client]):
    """One client per running event loop, made by ``connect`` and closed by ``close``.

    ``connect`` may return None: the store has no asyncio client for this
    configuration (the caller then runs its sync methods in a thread).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client | None]],
        close: Callable[[Client], Awaitable[None]],
    ) -> None:
        self._connect = connect
        self._close = close
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient[Client]] = {}
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._lock = threading.Lock()

    async def get(self) -> Client | None:
        """This loop's client, created on first use; None when there is no asyncio client.

        The requests that need it first wait for one connection, rather than
        each open their own.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
            connecting = self._connecting.setdefault(loop, asyncio.Lock())
        if entry is not None:
            return entry.client
        async with connecting:
            with self._lock:
                entry = self._clients.get(loop)
            if entry is not None:
                return entry.client
            client = await self._connect()
            if client is None:
                return None
            closer = self._close_with_loop(loop, client)
            with self._lock:
                self._clients[loop] = _LoopClient(client, closer)
            await closer.__anext__()  # the first step registers it with the loop
            return client

    def forget(self, client: Client) -> None:
        """Drop a client that broke for good, so that the next :meth:`get` connects again."""
        with self._lock:
            for loop, entry in list(self._clients.items()):
                if entry.client is client:
                    del self._clients[loop]

    def close(self, wait: float = 0) -> None:
        """Close every loop's client, each on its own loop; wait up to ``wait`` seconds for each.

        Without waiting the closing happens when each loop next runs; a loop
        about to be stopped (a :class:`LoopThread`) must be waited for.
        """
        with self._lock:
            entries = list(self._clients.items())
            self._clients.clear()
        for loop, entry in entries:
            if loop.is_closed():
                continue
            closing = asyncio.run_coroutine_threadsafe(_finalize(entry.closer), loop)
            if wait:
                with suppress(Exception):
                    closing.result(wait)

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, client: Client
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                entry = self._clients.get(loop)
                if entry is not None and entry.client is client:
                    del self._clients[loop]
                    self._connecting.pop(loop, None)
            await self._close(client)


@dataclass(frozen=True)
class _LoopClient(Generic[Client]):
    client: Client
    closer: AsyncGenerator[None, None]


async def _finalize(closer: AsyncGenerator[None, None]) -> None:
    """A coroutine for ``run_coroutine_threadsafe``, which takes no bare awaitable."""
    await closer.aclose()


class LoopThread:
    """An event loop in a daemon thread of this process, for sync code over an asyncio driver."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coroutine`` on the loop and wait for it, at most ``timeout`` seconds.

        Raises ``TimeoutError`` (the coroutine is cancelled) when it takes longer.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout)
        except FutureTimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s") from None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the thread stayed in the parent
                self._loop, self._pid = None, os.getpid()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"django-idempotency-{self.name}", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Cancel what still runs on the loop, then stop it (clients are closed by their owner)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


async def _cancel_all() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
