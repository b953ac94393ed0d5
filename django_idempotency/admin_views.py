"""Admin pages that do not need the records' table.

Two things live here:

* :func:`preview_response`, which turns a stored response into what an
  operator can read (status, headers, and the body as pretty JSON, truncated
  text or just the size of a binary body). The database admin's change page
  and the store pages below share it, so a record looks the same whatever
  holds it.
* :class:`StoreAdmin`, the read-only pages the admin shows instead of the
  changelist when the configured backend is not the database (memory, cache,
  Redis): a page of live records read through :meth:`BaseBackend.scan`,
  paginated by the store's own cursor; one record; and a confirmed delete.
  A store that cannot list its records (``supports_listing = False``) gets a
  lookup by key and scope, or by storage key, instead of a list.

Everything shown is escaped by the templates: bodies are whatever a view
returned, and a stored ``<script>`` must stay text.
"""

from __future__ import annotations

import http
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.http import parse_header_parameters
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.conf import get_backend, get_settings
from django_idempotency.engine import ANONYMOUS_SCOPE
from django_idempotency.keys import log_label, storage_key
from django_idempotency.records import Record, State, StoredResponse

if TYPE_CHECKING:
    from django_idempotency.admin import IdempotencyRecordAdmin

logger = logging.getLogger("django_idempotency")

TEXT_LIMIT = 10 * 1024
"""Characters of a text or JSON body the admin shows; the rest is cut with a note."""
JSON_PARSE_LIMIT = 1024 * 1024
"""Bodies larger than this (bytes) are shown as text, not parsed to be pretty-printed."""
STORE_PAGE_SIZE = 100
"""Records per page of the store list: one ``scan`` call each, so a page stays cheap."""

REQUEST_BODY_HELP = _(
    "Request bodies are never stored: the fingerprint (a SHA-256 of the scope, method, "
    "path and body of the first request) is all that identifies the request."
)

BodyKind = Literal["empty", "json", "text", "binary"]

_TEXT_MEDIA_TYPES = frozenset(
    {
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
    }
)
_ALLOWED_CONTROL_CHARACTERS = frozenset("\t\n\r\f")


# -- rendering a stored response ----------------------------------------------


@dataclass(frozen=True)
class BodyPreview:
    """What the admin shows of a stored body."""

    kind: BodyKind
    text: str
    """The (pretty-printed, truncated) text; empty for binary and empty bodies."""
    size: int
    """The body's size in bytes."""
    content_type: str
    shown_characters: int = 0
    total_characters: int = 0

    @property
    def truncated(self) -> bool:
        """Whether ``text`` is only the start of the body."""
        return self.shown_characters < self.total_characters


@dataclass(frozen=True)
class ResponsePreview:
    """A stored response as the admin shows it."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: BodyPreview


def preview_response(response: StoredResponse) -> ResponsePreview:
    """Status with its reason phrase, the headers, and a readable body."""
    try:
        reason = http.HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    content_type = next(
        (value for name, value in response.headers if name.lower() == "content-type"), ""
    )
    return ResponsePreview(
        status=response.status,
        reason=reason,
        headers=response.headers,
        body=preview_body(response.body, content_type),
    )


def preview_body(body: bytes, content_type: str, limit: int = TEXT_LIMIT) -> BodyPreview:
    """Pretty JSON, text cut at ``limit`` characters, or only the size of a binary body.

    A body is JSON when its Content-Type says so, or when it is text whose
    content parses as a JSON object or array. A declared non-text media type
    (``application/octet-stream``, ``image/png``...) is binary without looking
    at the bytes; so is a body that does not decode in its charset or holds
    control characters.
    """
    size = len(body)
    if not body:
        return BodyPreview("empty", "", 0, content_type)
    media_type, params = parse_header_parameters(content_type) if content_type else ("", {})
    media_type = media_type.lower()
    if media_type and not _is_textual(media_type):
        return BodyPreview("binary", "", size, content_type)
    text = _decode(body, params.get("charset", "utf-8"))
    if text is None:
        return BodyPreview("binary", "", size, content_type)
    kind: BodyKind = "text"
    if size <= JSON_PARSE_LIMIT and (_is_json(media_type) or text.lstrip()[:1] in {"{", "["}):
        pretty = _pretty_json(text)
        if pretty is not None:
            kind, text = "json", pretty
    return BodyPreview(
        kind,
        text[:limit],
        size,
        content_type,
        shown_characters=min(len(text), limit),
        total_characters=len(text),
    )


def _is_json(media_type: str) -> bool:
    return media_type.endswith(("/json", "+json"))


def _is_textual(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or _is_json(media_type)
        or media_type.endswith(("/xml", "+xml"))
        or media_type in _TEXT_MEDIA_TYPES
    )


def _decode(body: bytes, charset: str) -> str | None:
    """The body as text, or None when it is not text in ``charset`` (or UTF-8)."""
    try:
        text = body.decode(charset)
    except LookupError:
        return _decode(body, "utf-8") if charset.lower() != "utf-8" else None
    except UnicodeDecodeError:
        return None
    if any(char < " " and char not in _ALLOWED_CONTROL_CHARACTERS for char in text):
        return None
    return text


def _pretty_json(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False)


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
            "Whose key it is: 'user:<id>' for a signed-in user, '%(anonymous)s' for "
            "anonymous clients, empty when IDEMPOTENCY['SCOPE'] is None, or what your "
            "SCOPE callable returns."
        )
        % {"anonymous": ANONYMOUS_SCOPE},
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


class StoreAdmin:
    """Read-only admin pages over a backend that is not the database.

    Mounted by :class:`~django_idempotency.admin.IdempotencyRecordAdmin` under
    its own URLs (``.../idempotencyrecord/store/...``); its changelist
    redirects here when the configured backend is not a DatabaseBackend, and
    these pages redirect back when it is.
    """

    page_size = STORE_PAGE_SIZE

    def __init__(self, model_admin: IdempotencyRecordAdmin) -> None:
        self.model_admin = model_admin
        self.admin_site = model_admin.admin_site
        self.opts = model_admin.opts

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
        if self.model_admin.uses_database():
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
        if self.model_admin.uses_database():
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
            "has_delete_permission": self.model_admin.has_delete_permission(request),
        }
        return TemplateResponse(request, "admin/django_idempotency/store_record.html", context)

    def delete_view(self, request: HttpRequest, key: str) -> HttpResponse:
        """Confirm (GET), then delete (POST, CSRF-checked by ``admin_view``)."""
        if self.model_admin.uses_database():
            return HttpResponseRedirect(self._changelist_url)
        if not self.model_admin.has_delete_permission(request):
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
        if not self.model_admin.has_view_or_change_permission(request):
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


def _is_lookup(request: HttpRequest) -> bool:
    return any(name in request.GET for name in ("storage_key", "key", "scope"))
