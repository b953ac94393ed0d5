"""``manage.py purge_idempotency``: delete the dead records of the configured backend.

Like ``clearsessions``, it only asks the backend: ``purge_expired()`` deletes
in batches (so a table of millions of rows is purged without a long lock) and
``count_expired()`` answers ``--dry-run``. A store that forgets dead records
by itself (``has_native_expiry``) has nothing to purge, and the command says so.
Run it from cron.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.handler import get_backend

DEFAULT_BATCH_SIZE = 1000


def _batch_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value!r}")
    return size


class Command(BaseCommand):
    help = (
        "Delete the expired idempotency records of the configured backend, in batches. "
        "Backends whose store expires records itself (Redis, caches) have nothing to purge."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=_batch_size,
            default=DEFAULT_BATCH_SIZE,
            help=f"Records deleted per statement (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the records that would be deleted.",
        )

    def handle(
        self, *args: Any, batch_size: int, dry_run: bool, verbosity: int, **options: Any
    ) -> None:
        backend = get_backend()
        name = type(backend).__name__
        if backend.has_native_expiry:
            self._say(verbosity, 1, f"{_store(backend)} expires records itself; nothing to purge.")
            return
        try:
            if dry_run:
                count = backend.count_expired()
                self._say(verbosity, 1, f"Would delete {count} expired record(s) (dry run).")
                return
            self._purge(backend, batch_size, verbosity)
        except StorageError as error:
            raise CommandError(
                f"Could not purge the idempotency records of {name}: {error}"
            ) from error
        except NotImplementedError as error:
            raise CommandError(f"{name} cannot purge: {error}") from error

    def _purge(self, backend: BaseBackend, batch_size: int, verbosity: int) -> None:
        started = time.monotonic()
        total = 0
        for number, deleted in enumerate(backend.purge_expired(batch_size=batch_size), start=1):
            total += deleted
            self._say(
                verbosity,
                2,
                f"Batch {number}: deleted {deleted} (total {total}, "
                f"{time.monotonic() - started:.2f}s).",
            )
        elapsed = time.monotonic() - started
        self._say(verbosity, 1, f"Deleted {total} expired record(s) in {elapsed:.2f}s.")

    def _say(self, verbosity: int, level: int, message: str) -> None:
        if verbosity >= level:
            self.stdout.write(message)


def _store(backend: BaseBackend) -> str:
    """How the messages name the store: ``RedisBackend`` -> ``Redis``."""
    return type(backend).__name__.removesuffix("Backend") or type(backend).__name__
