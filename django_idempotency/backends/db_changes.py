"""PostgreSQL ``LISTEN``/``NOTIFY`` for duplicates waiting on a record (``WAIT``).

Completing and releasing a record notify :data:`CHANNEL` with its storage
key, in the same statement (``SELECT pg_notify(...)`` over the rows the
``UPDATE`` or ``DELETE`` changed): no round trip of its own, and delivered
only when that statement's transaction commits, so a waiter never wakes
for a completion that is then rolled back. One connection per process,
apart from Django's, listens (see
:class:`~django_idempotency.backends.changes.ChangeListener`).

psycopg 3 only: with psycopg2, or another vendor, waiting duplicates poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.util import find_spec

from django.db import connections

from django_idempotency.backends.changes import Listen

CHANNEL = "django_idempotency"
LISTEN_POLL = 1.0
"""Seconds the listener blocks for notifications before it looks at ``stop``."""


def can_listen(alias: str) -> bool:
    """Whether the alias's database can tell waiters about changes (PostgreSQL, psycopg 3).

    Django's PostgreSQL backend uses psycopg 3 whenever it can import it.
    """
    return connections[alias].vendor == "postgresql" and find_spec("psycopg") is not None


def change_listener(alias: str) -> Listen:
    """The loop of the process's listener: ``LISTEN`` on a connection of its own."""

    def listen(
        ready: Callable[[], None], deliver: Callable[[str], None], stop: threading.Event
    ) -> None:
        wrapper = connections.create_connection(alias)
        try:
            wrapper.ensure_connection()
            connection = wrapper.connection
            with wrapper.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            ready()
            while not stop.is_set():
                for notification in connection.notifies(timeout=LISTEN_POLL):
                    deliver(notification.payload)
        finally:
            wrapper.close()

    return listen
