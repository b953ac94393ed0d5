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
"""The view's response was stored for replay. Extra: ``status``, ``replayable``.

``replayable`` is False when the store refused the response and only the
fact that the view ran was recorded (retries then get a 409).

Inside a database transaction the DatabaseBackend stores it in that
transaction, so it commits with the view's writes (and not at all if they
roll back); the signal is sent when the store accepted it.
"""

replayed = Signal()
"""A stored response was replayed. Extra: ``record``."""

conflict = Signal()
"""A retry arrived while the first request was in progress, or after it ran
without a replayable response (409). Extra: ``record``."""

mismatch = Signal()
"""A key was reused for a different request (422). Extra: ``record``."""

interrupted = Signal()
"""A guarded view was interrupted (``SystemExit``, ``KeyboardInterrupt``,
``asyncio.CancelledError``): its claim is kept until its lease ends. Extra:
``error``."""

lease_lost = Signal()
"""A claim was no longer ours when its worker renewed, completed or released it.
Extra: ``operation`` (renew/complete/release).

Its lease lapsed (the worker froze, or its store lost the record) and another
request took the key over, or an operator deleted it. What the late worker
tried was refused: the new owner's record stands.
"""

released = Signal()
"""A claim was released so that a retry runs the view again. Extra: ``reason``."""

storage_error = Signal()
"""The store failed. Extra: ``operation`` (claim/complete/release), ``error``."""
