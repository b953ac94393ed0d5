"""Records as rows of the database backend's table: field values and times.

Records cross processes as float epoch seconds (see :mod:`records`); the
table stores them as ``DateTimeField`` values so that the admin can filter and
browse them by date. :func:`to_datetime` and :func:`to_epoch` convert between
the two: aware UTC datetimes when ``USE_TZ`` is True, naive UTC datetimes
when it is False (so the stored value never depends on ``TIME_ZONE``). The
model and the backend's statements share these, so neither imports the other.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.conf import settings

from django_idempotency.records import Record, StoredResponse


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds as the datetime the table stores: UTC, aware iff ``USE_TZ``."""
    value = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return value if settings.USE_TZ else value.replace(tzinfo=None)


def to_epoch(value: datetime) -> float:
    """A datetime read from the table as epoch seconds; naive values are UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def row_values(record: Record) -> dict[str, Any]:
    """The record as the values of the row's fields, by field name.

    What the statements bind, without building a model instance per statement.
    """
    values = {
        "storage_key": record.storage_key,
        "key": record.key,
        "scope": record.scope,
        "method": record.method,
        "path": record.path,
        "fingerprint": record.fingerprint,
        "state": record.state.value,
        "owner_token": record.owner_token,
        "created_at": to_datetime(record.created_at),
        "expires_at": to_datetime(record.expires_at),
        "completed_at": None if record.completed_at is None else to_datetime(record.completed_at),
    }
    if record.response is None:
        no_response = {"response_status": None, "response_reason": ""}
        return {**values, **no_response, "response_headers": [], "response_body": None}
    return {**values, **completion_values(record.response)}


def completion_values(response: StoredResponse) -> dict[str, Any]:
    """The values of the response's fields, by field name."""
    return {
        "response_status": response.status,
        "response_reason": response.reason,
        "response_headers": [list(pair) for pair in response.headers],
        "response_body": response.body,
    }
