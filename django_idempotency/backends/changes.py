"""Telling a waiting duplicate that the record it waits on changed: watches and listeners.

A request that arrives while the first request with its key still runs may
wait for it (``WAIT``): it watches the record's storage key, and the engine
claims again each time the watch wakes it (see
:mod:`~django_idempotency.waiting`).

* :class:`SleepingWatch` is every store's default: it never hears of a
  change, so waiting is polling (the engine sleeps on a capped backoff).
* :class:`ChangeListener` is for stores that announce changes themselves
  (Redis pub/sub, PostgreSQL ``LISTEN``/``NOTIFY``): one listener thread per
  process and store receives the storage keys that were completed or
  released and wakes the watches registered for them, sync ones through a
  ``threading.Event`` and async ones through an ``asyncio.Event`` set on
  their own loop, so an async wait never blocks its event loop. The store
  supplies only the loop that connects, subscribes and receives.

A watch that was woken, or whose listener is down, never promises that the
record changed: the engine always claims again to find out, and polls on
its own schedule whenever :attr:`Watch.pushed` is False.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol

logger = logging.getLogger("django_idempotency")

READY_TIMEOUT = 1.0
"""Seconds a new watch waits for a listener that is (re)connecting before it polls instead."""
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Seconds between a listener's attempts to reconnect, the last one repeated."""


class Watch(Protocol):
    """What the engine waits on while a duplicate waits for its first request."""

    @property
    def pushed(self) -> bool:
        """True when a change wakes the watch at once; False: only the timeout does."""

    def wait(self, timeout: float) -> None:
        """Block until the record may have changed, at most ``timeout`` seconds."""

    async def await_change(self, timeout: float) -> None:
        """Async :meth:`wait`; it never blocks the event loop."""

    def close(self) -> None:
        """Stop watching."""


class SleepingWatch:
    """A watch that hears nothing: the waiter polls."""

    pushed = False

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    async def await_change(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    def close(self) -> None:
        return None


Listen = Callable[[Callable[[], None], Callable[[str], None], threading.Event], None]
"""A store's listening loop: ``listen(ready, deliver, stop)`` connects and subscribes,
calls ``ready()``, then calls ``deliver(storage_key)`` for each change until ``stop``
is set; it raises when the connection fails (the listener reconnects)."""


class ChangeListener:
    """One thread per process that hears which records changed and wakes their watches."""

    def __init__(self, name: str, listen: Listen) -> None:
        self.name = name
        self._listen = listen
        self._lock = threading.Lock()
        self._watches: dict[str, set[_ListenerWatch]] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._connections = 0

    def watch(self, storage_key: str) -> _ListenerWatch:
        """A watch on ``storage_key``; waits briefly for the listener to be subscribed."""
        watch = self._register(storage_key)
        watch.pushed = self._ready.wait(READY_TIMEOUT)
        return watch

    async def awatch(self, storage_key: str) -> _ListenerWatch:
        """Async :meth:`watch`: the wait for the listener never blocks the loop."""
        watch = self._register(storage_key)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        watch.pushed = self._ready.is_set()
        return watch

    def close(self) -> None:
        """Stop the listener thread (the backend is closing)."""
        self._stop.set()

    def _register(self, storage_key: str) -> _ListenerWatch:
        watch = _ListenerWatch(self, storage_key)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the thread stayed in the parent
                self._thread, self._pid, self._connections = None, os.getpid(), 0
                self._ready.clear()
            self._watches.setdefault(storage_key, set()).add(watch)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"django-idempotency-{self.name}", daemon=True
                )
                self._thread.start()
        return watch

    def _unregister(self, watch: _ListenerWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.storage_key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[watch.storage_key]

    def _deliver(self, storage_key: str) -> None:
        with self._lock:
            watches = list(self._watches.get(storage_key, ()))
        for watch in watches:
            watch.wake()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._listen(self._connected, self._deliver, self._stop)
            except Exception as error:  # the store dropped us: reconnect, waiters poll meanwhile
                self._ready.clear()
                self._wake_all()
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                logger.warning(
                    "idempotency: the %s listener lost its connection (%s); waiting duplicates "
                    "poll until it reconnects in %g s",
                    self.name,
                    error,
                    delay,
                )
                attempt += 1
                self._stop.wait(delay)
            else:
                attempt = 0

    def _connected(self) -> None:
        self._ready.set()
        if self._connections:
            # Reconnected: a change may have come while we were not subscribed.
            # (On the first connection, every watch re-reads once it is returned.)
            self._wake_all()
        self._connections += 1

    def _wake_all(self) -> None:
        with self._lock:
            watches = [watch for watches in self._watches.values() for watch in watches]
        for watch in watches:
            watch.wake()


class ListenedChanges:
    """``watch``/``awatch`` for a backend whose every change is announced.

    The backend sets ``_changes`` to its :class:`ChangeListener` (and closes it
    with itself); this mixin, listed before ``BaseBackend``, replaces the
    default polling watch with the listener's.
    """

    _changes: ChangeListener

    def watch(self, storage_key: str) -> Watch:
        """Woken by the completion or release of the record."""
        return self._changes.watch(storage_key)

    async def awatch(self, storage_key: str) -> Watch:
        """Async :meth:`watch`."""
        return await self._changes.awatch(storage_key)


class _ListenerWatch:
    """A watch woken by a :class:`ChangeListener`, from a thread or on an event loop."""

    def __init__(self, listener: ChangeListener, storage_key: str) -> None:
        self.listener = listener
        self.storage_key = storage_key
        self.pushed = False
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_event: asyncio.Event | None = None

    def wake(self) -> None:
        """Called from the listener thread."""
        self._event.set()
        loop, event = self._loop, self._async_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    async def await_change(self, timeout: float) -> None:
        if self._async_event is None:
            self._loop = asyncio.get_running_loop()
            self._async_event = asyncio.Event()
            if self._event.is_set():  # woken before this loop was known
                self._async_event.set()
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._async_event.wait(), timeout)
        self._async_event.clear()
        self._event.clear()

    def close(self) -> None:
        self.listener._unregister(self)
