"""The database backend's table: one row per record.

Times are stored as ``DateTimeField`` values converted as
:mod:`~django_idempotency.rows` says (UTC, aware iff ``USE_TZ``).

One caveat without ``USE_TZ``: PostgreSQL reads naive values in the session
time zone Django sets to ``TIME_ZONE``, so a naive UTC time that falls in the
hour a daylight-saving change skips there comes back an hour later. The
record then lives an hour longer, which is harmless; use ``USE_TZ = True``.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from django_idempotency.records import Record, State, StoredResponse
from django_idempotency.rows import row_values, to_epoch

STATE_CHOICES = [
    (State.IN_PROGRESS.value, _("in progress")),
    (State.COMPLETED.value, _("completed")),
]


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
    response_reason = models.TextField(
        _("response reason phrase"),
        blank=True,
        default="",
        help_text=_("Set only when the view gave its own reason phrase."),
    )
    response_headers = models.JSONField(
        _("response headers"),
        default=list,
        blank=True,
        help_text=_("The replayed headers, as a list of [name, value] pairs."),
    )
    response_body = models.BinaryField(
        _("response body"),
        null=True,
        blank=True,
        help_text=_(
            "Empty (NULL) on a completed record when the response could not be kept: "
            "the view ran, and a retry is told so instead of getting a replay."
        ),
    )

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
        return cls(**row_values(record))

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
            body=None if self.response_body is None else bytes(self.response_body),
            reason=self.response_reason,
        )
