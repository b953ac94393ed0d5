"""The admin of idempotency records: what operators look at when a client retries.

When the backend keeps its records as rows of the app's model (its
``model_database`` is a database alias, as DatabaseBackend's is), they are
browsed through a read-only ModelAdmin on that database. With any other
backend the same admin entry redirects to the store pages of
:mod:`django_idempotency.admin_views`, which read the backend through its
contract (``scan``, ``get``, ``delete``).

Nothing here edits a record: a stored response is evidence of what a client
was told. Operators can only delete records (the client's retry then runs
the view again), release claims stuck in progress (owner-safe), and purge
dead records.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_idempotency.admin_views import StoreAdmin
from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.handler import get_backend
from django_idempotency.models import IdempotencyRecord
from django_idempotency.previews import REQUEST_BODY_HELP, preview_response
from django_idempotency.records import State
from django_idempotency.rows import to_datetime

if TYPE_CHECKING:
    RecordModelAdmin = admin.ModelAdmin[IdempotencyRecord]
else:  # ModelAdmin is generic for type checkers only
    RecordModelAdmin = admin.ModelAdmin

PURGE_TIME_BUDGET = 5.0
"""Seconds one click on "purge" may spend; ``manage.py purge_idempotency`` has no limit."""
PURGE_BATCH_SIZE = 1000


class ExpiryListFilter(admin.SimpleListFilter):
    """Live records (still replayed or locked) versus dead ones (waiting for a purge)."""

    title = _("expiry")
    parameter_name = "expiry"

    def lookups(self, request: HttpRequest, model_admin: RecordModelAdmin) -> list[tuple[str, Any]]:
        return [
            ("live", _("Live (not expired)")),
            ("expired", _("Expired (dead, purgeable)")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        now = to_datetime(get_backend().now())
        if self.value() == "live":
            return queryset.filter(expires_at__gt=now)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


class ReplayableListFilter(admin.SimpleListFilter):
    """Completed records a retry gets back, versus those completed without their body."""

    title = _("replay")
    parameter_name = "replayable"

    def lookups(self, request: HttpRequest, model_admin: RecordModelAdmin) -> list[tuple[str, Any]]:
        return [
            ("yes", _("Replayable")),
            ("no", _("Not replayable (the response was not kept)")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        completed = queryset.filter(state=State.COMPLETED.value)
        if self.value() == "yes":
            return completed.filter(response_body__isnull=False)
        if self.value() == "no":
            return completed.filter(response_body__isnull=True)
        return queryset


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(RecordModelAdmin):
    """Read-only browsing of records, with delete, release and purge actions."""

    list_display = (
        "key",
        "scope",
        "method",
        "path",
        "state",
        "response_status",
        "replayable",
        "created_at",
        "expires_at",
        "is_live",
    )
    list_display_links = ("key",)
    list_filter = ("state", ReplayableListFilter, "method", "response_status", ExpiryListFilter)
    search_fields = ("key", "path")
    search_help_text = _("Matches part of the key or of the path.")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("release_claims", "purge_expired")
    fieldsets = (
        (
            _("Request"),
            {
                "fields": ("key", "scope", "storage_key", "method", "path", "fingerprint"),
                "description": REQUEST_BODY_HELP,
            },
        ),
        (
            _("Claim"),
            {
                "fields": (
                    "state",
                    "owner_token",
                    "created_at",
                    "expires_at",
                    "is_live",
                    "completed_at",
                )
            },
        ),
        (_("Stored response"), {"fields": ("stored_response",)}),
    )
    readonly_fields = (
        "key",
        "scope",
        "storage_key",
        "method",
        "path",
        "fingerprint",
        "state",
        "owner_token",
        "created_at",
        "expires_at",
        "is_live",
        "completed_at",
        "stored_response",
    )

    # -- which store ----------------------------------------------------------

    def uses_database(self) -> bool:
        """Whether the configured backend keeps its records in this model's table."""
        return get_backend().model_database is not None

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyRecord]:
        """The rows of the database the backend keeps them in."""
        queryset = super().get_queryset(request)
        database = get_backend().model_database
        if database is not None:
            queryset = queryset.using(database)
        return queryset

    def get_urls(self) -> list[URLPattern]:
        return [*StoreAdmin(self.admin_site, self.opts, self).get_urls(), *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The rows; the store pages for other backends; purge without a selection."""
        if not self.uses_database():
            return HttpResponseRedirect(self._store_url())
        if self._is_purge_without_selection(request):
            self._purge(request)
            return HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if not self.uses_database():
            return HttpResponseRedirect(self._store_url())
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.uses_database():
            return HttpResponseRedirect(self._store_url())
        return super().delete_view(request, object_id, extra_context)

    # -- read only ------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: IdempotencyRecord | None = None
    ) -> bool:
        return False

    # -- computed columns -----------------------------------------------------

    @admin.display(description=_("replayable"), boolean=True)
    def replayable(self, obj: IdempotencyRecord) -> bool | None:
        """Completed with its body (a retry gets the replay); unknown while in progress."""
        if obj.state != State.COMPLETED.value:
            return None
        return obj.response_body is not None

    @admin.display(description=_("live"), boolean=True)
    def is_live(self, obj: IdempotencyRecord) -> bool:
        return obj.expires_at > to_datetime(get_backend().now())

    @admin.display(description=_("stored response"))
    def stored_response(self, obj: IdempotencyRecord) -> SafeString:
        """Status, headers table and body, every part escaped by the template."""
        response = obj.to_record().response
        if response is None:
            reason = (
                gettext("No response yet: the claim is in progress.")
                if obj.state == State.IN_PROGRESS.value
                else gettext("No response was stored.")
            )
            return format_html("<p>{}</p>", reason)
        return render_to_string(
            "admin/django_idempotency/includes/stored_response.html",
            {"preview": preview_response(response)},
        )

    # -- actions --------------------------------------------------------------

    @admin.action(description=_("Release selected in-progress claims"), permissions=["delete"])
    def release_claims(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> HttpResponse | None:
        """Delete stuck in-progress records, each only while it still carries its token.

        The owner token of each row is passed to ``backend.release``, which
        deletes only an in-progress record that still carries it: a record
        completed (or taken over) after this page was loaded is left alone.
        """
        claims = queryset.filter(state=State.IN_PROGRESS.value)
        if request.POST.get("post") != "yes":
            return self._confirm_release(request, queryset, claims)
        backend = get_backend()
        selected = queryset.count()
        released = 0
        try:
            for storage_key, owner_token in claims.values_list("storage_key", "owner_token"):
                released += backend.release(storage_key, owner_token)
        except StorageError as error:
            messages.error(
                request,
                gettext("The store failed after %(released)d release(s): %(error)s")
                % {"released": released, "error": error},
            )
            return None
        skipped = selected - released
        self.message_user(
            request,
            ngettext(
                "Released %(released)d claim: a retry with its key runs the view again.",
                "Released %(released)d claims: a retry with their keys runs the view again.",
                released,
            )
            % {"released": released}
            + " "
            + ngettext(
                "Skipped %(skipped)d record (completed, taken over or gone).",
                "Skipped %(skipped)d records (completed, taken over or gone).",
                skipped,
            )
            % {"skipped": skipped},
            messages.SUCCESS if released else messages.WARNING,
        )
        return None

    @admin.action(
        description=_("Purge expired records (all of them, selected or not)"),
        permissions=["delete"],
    )
    def purge_expired(self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]) -> None:
        """Delete every dead record through ``backend.purge_expired()``."""
        self._purge(request)

    def _confirm_release(
        self,
        request: HttpRequest,
        queryset: QuerySet[IdempotencyRecord],
        claims: QuerySet[IdempotencyRecord],
    ) -> TemplateResponse:
        shown = list(claims[:100])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Release in-progress claims?"),
            "claims": shown,
            "claim_count": claims.count(),
            "selected_count": queryset.count(),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            "admin/django_idempotency/idempotencyrecord/release_confirmation.html",
            context,
        )

    def _is_purge_without_selection(self, request: HttpRequest) -> bool:
        """A POST of the purge action with no row ticked (Django would refuse it)."""
        if request.method != "POST" or "index" not in request.POST:
            return False
        actions = request.POST.getlist("action")
        try:
            action = actions[int(request.POST.get("index", 0))]
        except (IndexError, ValueError):
            return False
        return (
            action == "purge_expired"
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
            and request.POST.get("select_across", "0") == "0"
            and self.has_delete_permission(request)
        )

    def _purge(self, request: HttpRequest) -> None:
        """Purge in batches for at most :data:`PURGE_TIME_BUDGET` seconds and say how it went."""
        started = time.monotonic()
        try:
            deleted, finished = _purge_for_a_while(get_backend(), started)
        except StorageError as error:
            messages.error(request, gettext("The store failed: %(error)s") % {"error": error})
            return
        message = ngettext(
            "Purged %(count)d expired record in %(seconds).1f s.",
            "Purged %(count)d expired records in %(seconds).1f s.",
            deleted,
        ) % {"count": deleted, "seconds": time.monotonic() - started}
        if not finished:
            message += " " + gettext(
                "Stopped after %(budget)d s; more expired records may remain: purge again, or "
                "run manage.py purge_idempotency."
            ) % {"budget": PURGE_TIME_BUDGET}
        self.message_user(request, message, messages.SUCCESS)

    def _store_url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_store",
            current_app=self.admin_site.name,
        )


def _purge_for_a_while(backend: BaseBackend, started: float) -> tuple[int, bool]:
    """(records deleted, whether the purge finished) within :data:`PURGE_TIME_BUDGET`.

    The batches are a generator: it is closed when the time is up, so the
    backend stops between two batches and never leaves one half done.
    """
    deleted = 0
    batches = backend.purge_expired(batch_size=PURGE_BATCH_SIZE)
    try:
        for count in batches:
            deleted += count
            if time.monotonic() - started > PURGE_TIME_BUDGET:
                return deleted, False
        return deleted, True
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
