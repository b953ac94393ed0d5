"""Owner tokens: unique for every claim, across threads, processes and machines.

A token only has to be unique: it never leaves the server, and only the
worker holding it may complete or release its claim. So it is a random
per-process prefix (128 bits from ``os.urandom``) and a per-process counter,
rather than 16 fresh random bytes per claim, which cost a system call on
every first request. The prefix is drawn again in a forked child (a
preloading gunicorn forks its workers after importing the app), so no two
processes ever share it.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _new_process() -> None:
    global _prefix, _counter
    _prefix = os.urandom(16).hex()
    _counter = itertools.count()


_new_process()
os.register_at_fork(after_in_child=_new_process)


def new_owner_token() -> str:
    """A token no other claim, in any process, has had or will have (at most 48 characters)."""
    # next() on an itertools.count is atomic under the GIL: no lock needed.
    return f"{_prefix}{next(_counter):x}"
