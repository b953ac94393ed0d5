"""Which connection the database backend's statements run on, and its transaction policy.

A claim must be visible to other workers at once and must not be rolled back
with the view's transaction, so inside an atomic block on the records'
database the statements run on a private autocommit connection, one per
thread; SQLite, which has one writer per file, joins the view's transaction
instead (see :mod:`~django_idempotency.backends.db`). The backend's
``JOIN_TRANSACTIONS`` option makes every vendor join, for test suites that
wrap each test in a transaction and roll it back.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from django.db import Error, connections
from django.db.backends.base.base import BaseDatabaseWrapper


def needs_private_connection(connection: BaseDatabaseWrapper, join_transactions: bool) -> bool:
    """Whether statements must stay out of the caller's open transaction."""
    return connection.in_atomic_block and connection.vendor != "sqlite" and not join_transactions


def drop_if_broken(connection: BaseDatabaseWrapper) -> None:
    """Close a connection an error broke, so that the next statement reconnects.

    MySQL and MariaDB hang up on a statement over ``max_allowed_packet``;
    without this, recording that the view ran (a smaller write, right after)
    would fail on the dead connection too. Never inside an atomic block: that
    connection holds the view's transaction.
    """
    if connection.in_atomic_block or connection.connection is None:
        return
    with suppress(Error):
        if connection.is_usable():
            return
    connection.close()


class PrivateConnections:
    """One autocommit connection per thread to the alias's database, apart from Django's.

    After each use the connection is closed or kept as the alias's
    ``CONN_MAX_AGE`` and health checks say, as Django does at the end of a
    request; a connection left by a finished thread is closed with it.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._local = threading.local()
        self._lock = threading.Lock()
        self._wrappers: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()

    @contextmanager
    def connection(self) -> Iterator[BaseDatabaseWrapper]:
        """This thread's private connection, opened on first use."""
        wrapper: BaseDatabaseWrapper | None = getattr(self._local, "wrapper", None)
        if wrapper is None:
            wrapper = connections.create_connection(self.alias)
            self._local.wrapper = wrapper
            with self._lock:
                self._wrappers.add(wrapper)
        try:
            yield wrapper
        finally:
            with suppress(Error):
                wrapper.close_if_unusable_or_obsolete()

    def close_all(self) -> None:
        """Close every thread's private connection."""
        with self._lock:
            wrappers = list(self._wrappers)
        for wrapper in wrappers:
            wrapper.inc_thread_sharing()  # close() may come from another thread
            try:
                with suppress(Error):
                    wrapper.close()
            finally:
                wrapper.dec_thread_sharing()
