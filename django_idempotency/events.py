"""What happened to a key: one log line and one signal per event, never the raw key.

Every event the engine reports goes through :func:`emit`, so a signal and its
log line can never disagree; logs name a record by the first 12 hex digits
of its storage key.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal
from django.http import HttpRequest

from django_idempotency.keys import log_label
from django_idempotency.records import Claim

logger = logging.getLogger("django_idempotency")


def emit(
    signal: Signal,
    level: int,
    message: str,
    request: HttpRequest,
    backend: object,
    claim: Claim,
    **extra: Any,
) -> None:
    """Log one line at ``level`` and send ``signal`` with the documented arguments.

    The sender is the backend's class; ``extra`` are the event's own arguments.
    """
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "idempotency key %s (%s %s): %s",
            log_label(claim.storage_key),
            claim.method,
            request.path,
            message,
        )
    if signal.receivers:
        signal.send(
            sender=type(backend),
            request=request,
            storage_key=claim.storage_key,
            scope=claim.scope,
            **extra,
        )
