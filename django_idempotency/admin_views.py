"""The admin's store pages: the records of a backend that is not the database.

With a store whose records are not rows of the app's model (memory, cache,
Redis), the admin shows these read-only pages instead of the changelist: a
page of live records read through :meth:`BaseBackend.scan`, paginated by the
store's own cursor; one record; and a confirmed delete. A store that cannot
list its records (``supports_listing = False``) gets a lookup by key and
scope, or by storage key, instead of a list. Which pages show is asked of
the backend (:attr:`BaseBackend.model_database`), never of its class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from django import forms
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.db.models.options import Options
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.backends.handler import get_backend
from django_idempotency.conf import get_settings
from django_idempotency.keys import log_label, storage_key
from django_idempotency.previews import REQUEST_BODY_HELP, preview_response
from django_idempotency.records import Record, State
from django_idempotency.scopes import ANONYMOUS_SCOPE, user_scope_of

logger = logging.getLogger("django_idempotency")

STORE_PAGE_SIZE = 100
"""Records per page of the store list: one ``scan`` call each, so a page stays cheap."""


# -- records as the store pages show them -------------------------------------


@dataclass(frozen=True)
class RecordView:
    """A :class:`Record` with datetimes, for the templates."""

    record: Record
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None
    is_live: bool

    @classmethod
    def of(cls, record: Record, now: float) -> RecordView:
        return cls(
            record=record,
            created_at=_datetime(record.created_at),
            expires_at=_datetime(record.expires_at),
            completed_at=None if record.completed_at is None else _datetime(record.completed_at),
            is_live=record.is_live(now),
        )

    @property
    def state_label(self) -> str:
        if self.record.state is State.IN_PROGRESS:
            return gettext("in progress")
        response = self.record.response
        if response is not None and not response.replayable:
            return gettext("completed, not replayable")
        return gettext("completed")


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class LookupForm(forms.Form):
    """Find one record: by its storage key, or by the key and scope it was sent with."""

    storage_key = forms.CharField(
        label=_("Storage key"),
        required=False,
        max_length=64,
        help_text=_("The 64 hexadecimal characters a record is stored under."),
    )
    key = forms.CharField(
        label=_("Key"),
        required=False,
        max_length=255,
        help_text=_("The Idempotency-Key the client sent."),
    )
    scope = forms.CharField(
        label=_("Scope"),
        required=False,
        max_length=255,
        strip=False,
        help_text=_(
            "Whose key it is: '%(user)s' for a signed-in user, '%(anonymous)s' for "
            "anonymous clients, empty when IDEMPOTENCY['SCOPE'] is None, or what your "
            "SCOPE callable returns."
        )
        % {"user": user_scope_of("<id>"), "anonymous": ANONYMOUS_SCOPE},
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("storage_key") and not cleaned.get("key"):
            raise forms.ValidationError(gettext("Give a storage key, or a key and its scope."))
        return cleaned

    def lookup_storage_key(self) -> str:
        """The storage key to read: given, or computed from the key and scope."""
        given: str = self.cleaned_data.get("storage_key") or ""
        if given:
            return given.strip().lower()
        return storage_key(self.cleaned_data.get("scope") or "", self.cleaned_data["key"])


# -- the store pages ----------------------------------------------------------


class Permissions(Protocol):
    """What the store pages ask of the ModelAdmin they are mounted by: who may do what."""

    def has_view_or_change_permission(self, request: HttpRequest) -> bool: ...

    def has_delete_permission(self, request: HttpRequest) -> bool: ...


class StoreAdmin:
    """Read-only admin pages over a backend whose records are not rows of the model.

    Mounted by :class:`~django_idempotency.admin.IdempotencyRecordAdmin` under
    its own URLs (``.../idempotencyrecord/store/...``); its changelist
    redirects here when the backend has no ``model_database``, and these
    pages redirect back when it has one.
    """

    page_size = STORE_PAGE_SIZE

    def __init__(self, admin_site: AdminSite, opts: Options[Any], permissions: Permissions) -> None:
        self.admin_site = admin_site
        self.opts = opts
        self.permissions = permissions

    def get_urls(self) -> list[URLPattern]:
        """The list, record and delete pages, behind the admin's login and CSRF checks."""
        wrap = self.admin_site.admin_view
        name = self.url_name
        return [
            path("store/", wrap(self.list_view), name=name("store")),
            path("store/<str:key>/", wrap(self.record_view), name=name("store_record")),
            path("store/<str:key>/delete/", wrap(self.delete_view), name=name("store_delete")),
        ]

    def url_name(self, page: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{page}"

    def url(self, page: str, *args: str) -> str:
        return reverse(f"admin:{self.url_name(page)}", args=args, current_app=self.admin_site.name)

    # -- views --------------------------------------------------------------

    @property
    def _changelist_url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )

    def list_view(self, request: HttpRequest) -> HttpResponse:
        """A page of live records, or the lookup form when the store cannot list."""
        if _records_are_rows():
            return HttpResponseRedirect(self._changelist_url)
        self._require_view_permission(request)
        backend = get_backend()
        form = LookupForm(request.GET if _is_lookup(request) else None)
        if form.is_bound and form.is_valid():
            return self._lookup(request, backend, form.lookup_storage_key())
        cursor = request.GET.get("cursor") or None
        records: list[RecordView] = []
        next_cursor: str | None = None
        hidden = 0
        error: str | None = None
        if backend.supports_listing:
            try:
                page, next_cursor = backend.scan(cursor, self.page_size)
            except StorageError as exc:
                error = str(exc)
            except ValueError:
                messages.warning(request, gettext("That page no longer exists: back to page 1."))
                return HttpResponseRedirect(self.url("store"))
            else:
                now = backend.now()
                records = [RecordView.of(record, now) for record in page if record.is_live(now)]
                hidden = len(page) - len(records)
        context = {
            **self._context(request, backend, gettext("Idempotency records")),
            "form": form,
            "records": records,
            "dead_hidden": hidden,
            "cursor": cursor,
            "next_cursor": next_cursor,
            "storage_error": error,
            "page_size": self.page_size,
        }
        return TemplateResponse(request, "admin/django_idempotency/store_list.html", context)

    def record_view(self, request: HttpRequest, key: str) -> HttpResponse:
        """One record with its stored response."""
        if _records_are_rows():
            return HttpResponseRedirect(self._changelist_url)
        self._require_view_permission(request)
        backend = get_backend()
        record = self._get(request, backend, key)
        if record is None:
            return HttpResponseRedirect(self.url("store"))
        response = record.response
        context = {
            **self._context(request, backend, gettext("Idempotency record")),
            "item": RecordView.of(record, backend.now()),
            "preview": None if response is None else preview_response(response),
            "request_body_help": REQUEST_BODY_HELP,
            "has_delete_permission": self.permissions.has_delete_permission(request),
        }
        return TemplateResponse(request, "admin/django_idempotency/store_record.html", context)

    def delete_view(self, request: HttpRequest, key: str) -> HttpResponse:
        """Confirm (GET), then delete (POST, CSRF-checked by ``admin_view``)."""
        if _records_are_rows():
            return HttpResponseRedirect(self._changelist_url)
        if not self.permissions.has_delete_permission(request):
            raise PermissionDenied
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        backend = get_backend()
        if request.method == "POST":
            return self._delete(request, backend, key)
        record = self._get(request, backend, key)
        if record is None:
            return HttpResponseRedirect(self.url("store"))
        context = {
            **self._context(request, backend, gettext("Delete idempotency record")),
            "item": RecordView.of(record, backend.now()),
        }
        return TemplateResponse(request, "admin/django_idempotency/store_delete.html", context)

    # -- helpers ------------------------------------------------------------

    def _delete(self, request: HttpRequest, backend: BaseBackend, key: str) -> HttpResponse:
        try:
            deleted = backend.delete(key)
        except StorageError as exc:
            messages.error(request, gettext("The store failed: %(error)s") % {"error": exc})
            return HttpResponseRedirect(self.url("store_record", key))
        if not deleted:
            messages.warning(request, gettext("The record was already gone."))
            return HttpResponseRedirect(self.url("store"))
        logger.info("Admin user %s deleted idempotency record %s.", request.user.pk, log_label(key))
        messages.success(
            request,
            gettext(
                "Deleted the record: the client's next retry with its key runs the view again."
            ),
        )
        return HttpResponseRedirect(self.url("store"))

    def _lookup(self, request: HttpRequest, backend: BaseBackend, key: str) -> HttpResponse:
        record = self._get(request, backend, key)
        if record is None:
            return HttpResponseRedirect(self.url("store"))
        return HttpResponseRedirect(self.url("store_record", record.storage_key))

    def _get(self, request: HttpRequest, backend: BaseBackend, key: str) -> Record | None:
        """The record, or None with a message saying why there is none."""
        try:
            record = backend.get(key)
        except StorageError as exc:
            messages.error(request, gettext("The store failed: %(error)s") % {"error": exc})
            return None
        if record is None:
            messages.warning(
                request,
                gettext(
                    "No record is stored under that key: it was never sent, it expired, "
                    "or it was deleted."
                ),
            )
        return record

    def _require_view_permission(self, request: HttpRequest) -> None:
        if not self.permissions.has_view_or_change_permission(request):
            raise PermissionDenied

    def _context(self, request: HttpRequest, backend: BaseBackend, title: str) -> dict[str, Any]:
        request.current_app = self.admin_site.name
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "backend_name": type(backend).__name__,
            "backend_path": get_settings().backend_path,
            "supports_listing": backend.supports_listing,
            "per_process": not backend.is_shared_across_processes,
            "store_url": self.url("store"),
        }


def _records_are_rows() -> bool:
    """Whether the backend keeps its records in the model's table (the changelist shows them)."""
    return get_backend().model_database is not None


def _is_lookup(request: HttpRequest) -> bool:
    return any(name in request.GET for name in ("storage_key", "key", "scope"))
