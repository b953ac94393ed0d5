"""The database backend's table: one row per record.

Records cross processes as float epoch seconds (see :mod:`records`); the
table stores them as ``DateTimeField`` values so that the admin can filter and
browse them by date. :func:`to_datetime` and :func:`to_epoch` convert between
the two: aware UTC datetimes when ``USE_TZ`` is True, naive UTC datetimes
when it is False (so the stored value never depends on ``TIME_ZONE``).

One caveat without ``USE_TZ``: PostgreSQL reads naive values in the session
time zone Django sets to ``TIME_ZONE``, so a naive UTC time that falls in the
hour a daylight-saving change skips there comes back an hour later. The
record then lives an hour longer, which is harmless; use ``USE_TZ = True``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from django_idempotency.records import Record, State, StoredResponse

STATE_CHOICES = [
    (State.IN_PROGRESS.value, _("in progress")),
    (State.COMPLETED.value, _("completed")),
]


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds as the datetime the table stores: UTC, aware iff ``USE_TZ``."""
    value = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return value if settings.USE_TZ else value.replace(tzinfo=None)


def to_epoch(value: datetime) -> float:
    """A datetime read from the table as epoch seconds; naive values are UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class IdempotencyRecord(models.Model):
    """What :class:`~django_idempotency.backends.db.DatabaseBackend` stores per storage key.

    The unique constraint on ``storage_key`` is what makes a claim atomic
    across processes; the index on ``expires_at`` keeps purging dead records
    cheap. The raw key is kept, and indexed, because operators look records up
    by it; log lines never show it.
    """

    storage_key = models.CharField(
        _("storage key"),
        max_length=64,
        help_text=_("SHA-256 of the scope and the key: what the record is stored under."),
    )
    key = models.CharField(
        _("key"),
        max_length=255,
        help_text=_("The Idempotency-Key the client sent."),
    )
    scope = models.CharField(
        _("scope"), max_length=255, help_text=_("Whose key it is (user, tenant...).")
    )
    method = models.CharField(_("method"), max_length=10)
    path = models.TextField(_("path"), help_text=_("The path with its query string."))
    fingerprint = models.CharField(
        _("fingerprint"),
        max_length=64,
        help_text=_("SHA-256 of the scope, method, path and body of the first request."),
    )
    state = models.CharField(_("state"), max_length=16, choices=STATE_CHOICES)
    owner_token = models.CharField(
        _("owner token"),
        max_length=64,
        help_text=_("Random per claim: only its holder may complete or release the record."),
    )
    created_at = models.DateTimeField(_("created at"))
    expires_at = models.DateTimeField(
        _("expires at"),
        help_text=_(
            "End of the lease while in progress, end of the replay window once completed. "
            "After it the record is dead: a retry claims the key again."
        ),
    )
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_headers = models.JSONField(
        _("response headers"),
        default=list,
        blank=True,
        help_text=_("The replayed headers, as a list of [name, value] pairs."),
    )
    response_body = models.BinaryField(_("response body"), null=True, blank=True)

    class Meta:
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        ordering = ("-created_at",)
        # Declared here rather than with unique=True / db_index=True so that
        # PostgreSQL gets no extra varchar_pattern_ops ("_like") index: nobody
        # runs LIKE on these columns, and every index costs each claim a write.
        constraints = (
            models.UniqueConstraint(fields=("storage_key",), name="django_idem_storage_key_uniq"),
        )
        indexes = (
            models.Index(fields=("key",), name="django_idem_key_idx"),
            models.Index(fields=("expires_at",), name="django_idem_expires_at_idx"),
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.get_state_display()})"

    @classmethod
    def from_record(cls, record: Record) -> IdempotencyRecord:
        """An unsaved row holding ``record``."""
        response = record.response
        return cls(
            storage_key=record.storage_key,
            key=record.key,
            scope=record.scope,
            method=record.method,
            path=record.path,
            fingerprint=record.fingerprint,
            state=record.state.value,
            owner_token=record.owner_token,
            created_at=to_datetime(record.created_at),
            expires_at=to_datetime(record.expires_at),
            completed_at=None if record.completed_at is None else to_datetime(record.completed_at),
            response_status=None if response is None else response.status,
            response_headers=[] if response is None else [list(pair) for pair in response.headers],
            response_body=None if response is None else response.body,
        )

    def to_record(self) -> Record:
        """The row as the value object every backend speaks."""
        return Record(
            storage_key=self.storage_key,
            key=self.key,
            scope=self.scope,
            fingerprint=self.fingerprint,
            method=self.method,
            path=self.path,
            state=State(self.state),
            owner_token=self.owner_token,
            created_at=to_epoch(self.created_at),
            expires_at=to_epoch(self.expires_at),
            completed_at=None if self.completed_at is None else to_epoch(self.completed_at),
            response=self._stored_response(),
        )

    def _stored_response(self) -> StoredResponse | None:
        if self.state != State.COMPLETED.value or self.response_status is None:
            return None
        return StoredResponse(
            status=self.response_status,
            headers=tuple((str(name), str(value)) for name, value in self.response_headers or ()),
            body=bytes(self.response_body or b""),
        )
