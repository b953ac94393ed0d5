"""Signals sent by the engine, each exactly once per event.

Every signal is sent with ``sender`` = the backend class and these keyword
arguments: ``request`` (the HttpRequest), ``storage_key`` (the hashed scope
and key), ``scope``; some add more, as listed. Receivers must be quick and
must not raise: they run inside the request.
"""

from __future__ import annotations

from django.dispatch import Signal

claimed = Signal()
"""A first request claimed a key and is about to run the view. Extra: ``record``."""

taken_over = Signal()
"""A dead record (expired lease) was replaced by a new claim. Extra: ``record``.

Sent in addition to ``claimed``. Stores with native expiry (Redis, caches)
forget dead claims themselves, so they send ``claimed`` only.
"""

completed = Signal()
"""The view's response was stored for replay. Extra: ``status``.

Inside a database transaction the DatabaseBackend stores it when the
transaction commits (and not at all if it rolls back); the signal is sent
when the store accepted it.
"""

replayed = Signal()
"""A stored response was replayed. Extra: ``record``."""

conflict = Signal()
"""A retry arrived while the first request was in progress (409). Extra: ``record``."""

mismatch = Signal()
"""A key was reused for a different request (422). Extra: ``record``."""

released = Signal()
"""A claim was released so that a retry runs the view again. Extra: ``reason``."""

storage_error = Signal()
"""The store failed. Extra: ``operation`` (claim/complete/release), ``error``."""
