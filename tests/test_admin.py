"""The admin: the database backend's read-only ModelAdmin and the store pages of the others.

Database tests run once per database case (SQLite, PostgreSQL, MariaDB) with
rows made by model-bakery on the backend's own alias; store tests run once
per other backend with records written through ``backend.claim/complete``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from html import unescape
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client, override_settings
from django.urls import reverse
from model_bakery import baker

from django_idempotency import admin as idempotency_admin
from django_idempotency.admin_views import StoreAdmin
from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.keys import storage_key
from django_idempotency.models import IdempotencyRecord
from django_idempotency.previews import TEXT_LIMIT, preview_body, preview_response
from django_idempotency.records import Claim, State, StoredResponse
from tests.backends import CASES, DB, BackendCase

DB_CASES = [case for case in CASES if case.backend == DB]
STORE_CASES = [case for case in CASES if case.backend != DB]
LISTABLE_STORE_CASES = [case for case in STORE_CASES if case.listable]
UNLISTABLE_STORE_CASES = [case for case in STORE_CASES if not case.listable]

CHANGELIST = "admin:django_idempotency_idempotencyrecord_changelist"
STORE = "admin:django_idempotency_idempotencyrecord_store"
STORE_RECORD = "admin:django_idempotency_idempotencyrecord_store_record"
STORE_DELETE = "admin:django_idempotency_idempotencyrecord_store_delete"

JSON_BODY = b'{"id": 7, "status": "paid", "items": [1, 2]}'
JSON_RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/payments/7/")),
    body=JSON_BODY,
)
XSS = "<script>alert('stored')</script>"

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response
else:
    from django.http import HttpResponse as Response

TestFunction = TypeVar("TestFunction", bound=Callable[..., Any])
BeforeRelease = Callable[[Callable[[str, str], object]], None]


def on_cases(cases: list[BackendCase], **db: Any) -> Callable[[TestFunction], TestFunction]:
    """Run a test once per backend case (the ``backend_case`` fixture, parametrized)."""

    def decorate(test: TestFunction) -> TestFunction:
        per_case = pytest.mark.parametrize(
            "backend_case", cases, indirect=True, ids=[case.id for case in cases]
        )
        marked: TestFunction = per_case(pytest.mark.django_db(**db)(test))
        return marked

    return decorate


over_db_cases = on_cases(DB_CASES, transaction=True, databases="__all__")
over_store_cases = on_cases(STORE_CASES)
over_listable_stores = on_cases(LISTABLE_STORE_CASES)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Show times in UTC: MariaDB without time zone tables cannot convert to another zone.

    The date hierarchy converts ``created_at`` to the current time zone in SQL,
    which MySQL and MariaDB can only do once ``mysql_tzinfo_to_sql`` was loaded.
    """
    with override_settings(TIME_ZONE="UTC"):
        yield


# -- helpers --------------------------------------------------------------------


@pytest.fixture
def before_release(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> BeforeRelease:
    """Installs ``hook(storage_key, owner_token)``, run before each release of the backend.

    The hook sees what the admin releases; it can change the record first (a
    worker completing in between) or raise (the store failing).
    """
    release = idempotency_backend.release

    def install(hook: Callable[[str, str], object]) -> None:
        def hooked(storage_key: str, owner_token: str) -> bool:
            hook(storage_key, owner_token)
            return release(storage_key, owner_token)

        monkeypatch.setattr(idempotency_backend, "release", hooked)

    return install


def make_row(case: BackendCase, **values: Any) -> IdempotencyRecord:
    """A row in the case's database; model-bakery fills what the test does not care about."""
    now = datetime.now(timezone.utc)
    key = values.pop("key", "key-" + secrets.token_hex(4))
    scope = values.pop("scope", "user:1")
    defaults: dict[str, Any] = {
        "key": key,
        "scope": scope,
        "storage_key": storage_key(scope, key),
        "method": "POST",
        "path": "/payments/",
        "state": State.COMPLETED.value,
        "owner_token": secrets.token_hex(16),
        "created_at": now - timedelta(minutes=1),
        "expires_at": now + timedelta(hours=1),
        "completed_at": now,
        "response_status": 201,
        "response_headers": [["Content-Type", "application/json"]],
        "response_body": b'{"id": 1}',
    }
    if values.get("state") == State.IN_PROGRESS.value:
        defaults.update(completed_at=None, response_status=None, response_headers=[])
        defaults["response_body"] = None
    assert case.database is not None
    row: IdempotencyRecord = baker.make(
        IdempotencyRecord, _using=case.database, **{**defaults, **values}
    )
    return row


def rows(case: BackendCase) -> list[IdempotencyRecord]:
    return list(IdempotencyRecord.objects.using(case.database).order_by("pk"))


def changelist(client: Client, **params: Any) -> Response:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200, response.content[:2000]
    return response


def listed_keys(response: Response) -> set[str]:
    """The keys in the changelist's result table."""
    return {
        unescape(match)
        for match in re.findall(
            r'<th class="field-key"><a href="[^"]*">([^<]*)</a></th>', response.content.decode()
        )
    }


def change_page(client: Client, row: IdempotencyRecord) -> str:
    url = reverse("admin:django_idempotency_idempotencyrecord_change", args=[row.pk])
    response = client.get(url)
    assert response.status_code == 200, response.content[:2000]
    return response.content.decode()


def action(client: Client, name: str, selected: list[IdempotencyRecord], **extra: str) -> Response:
    data = {
        "action": name,
        "index": "0",
        ACTION_CHECKBOX_NAME: [str(row.pk) for row in selected],
        **extra,
    }
    return client.post(reverse(CHANGELIST), data, follow=True)


def message_texts(response: Response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def store_record(
    backend: BaseBackend,
    key: str,
    scope: str = "user:1",
    response: StoredResponse | None = JSON_RESPONSE,
    path: str = "/payments/",
) -> Claim:
    """A record written through the contract: claimed, then completed with ``response``."""
    claim = Claim(
        storage_key=storage_key(scope, key),
        key=key,
        scope=scope,
        fingerprint="f" * 64,
        method="POST",
        path=path,
        owner_token=secrets.token_hex(16),
        lease_seconds=60,
    )
    assert backend.claim(claim).claimed
    if response is not None:
        assert backend.complete(claim.storage_key, claim.owner_token, response, ttl=300)
    return claim


# -- the database admin: list, filters, search, date hierarchy ----------------------


@over_db_cases
def test_changelist_lists_records_of_the_backends_database(
    admin_client: Client, backend_case: BackendCase
) -> None:
    make_row(backend_case, key="order-1", scope="user:42", path="/orders/?x=1", method="PATCH")

    response = changelist(admin_client)

    assert listed_keys(response) == {"order-1"}
    html = response.content.decode()
    for column in ("key", "scope", "method", "path", "state", "response_status"):
        assert f'class="sortable column-{column}' in html, column
    for column in ("created_at", "expires_at"):
        assert f"column-{column}" in html, column
    assert "user:42" in html
    assert "/orders/?x=1" in html
    assert "PATCH" in html


@over_db_cases
def test_changelist_is_read_only(admin_client: Client, backend_case: BackendCase) -> None:
    row = make_row(backend_case)

    html = changelist(admin_client).content.decode()

    assert "Add idempotency record" not in html
    add = admin_client.get(reverse("admin:django_idempotency_idempotencyrecord_add"))
    assert add.status_code == 403
    page = change_page(admin_client, row)
    assert 'name="_save"' not in page
    url = reverse("admin:django_idempotency_idempotencyrecord_change", args=[row.pk])
    assert admin_client.post(url, {"key": "changed"}).status_code == 403
    assert rows(backend_case)[0].key == row.key


@over_db_cases
def test_state_filter(admin_client: Client, backend_case: BackendCase) -> None:
    make_row(backend_case, key="done")
    make_row(backend_case, key="running", state=State.IN_PROGRESS.value)

    assert listed_keys(changelist(admin_client, state="in_progress")) == {"running"}
    assert listed_keys(changelist(admin_client, state="completed")) == {"done"}


@over_db_cases
def test_replay_filter_and_column_tell_records_completed_without_their_body(
    admin_client: Client, backend_case: BackendCase
) -> None:
    make_row(backend_case, key="kept")
    make_row(backend_case, key="streamed", response_body=None, response_status=200)
    make_row(backend_case, key="running", state=State.IN_PROGRESS.value)

    response = changelist(admin_client)

    assert listed_keys(changelist(admin_client, replayable="yes")) == {"kept"}
    assert listed_keys(changelist(admin_client, replayable="no")) == {"streamed"}
    html = response.content.decode()
    assert "column-replayable" in html
    assert html.count('alt="True"') >= 1  # kept
    assert html.count('alt="False"') >= 1  # streamed
    streamed = change_page(admin_client, rows(backend_case)[1])
    assert "its response body was not kept" in streamed


@over_db_cases
def test_method_filter(admin_client: Client, backend_case: BackendCase) -> None:
    make_row(backend_case, key="posted", method="POST")
    make_row(backend_case, key="patched", method="PATCH")

    response = changelist(admin_client, method="PATCH")

    assert listed_keys(response) == {"patched"}
    assert "?method=POST" in response.content.decode()  # the filter offers the other value


@over_db_cases
def test_response_status_filter(admin_client: Client, backend_case: BackendCase) -> None:
    make_row(backend_case, key="created", response_status=201)
    make_row(backend_case, key="refused", response_status=422)

    assert listed_keys(changelist(admin_client, response_status="422")) == {"refused"}


@over_db_cases
def test_expiry_filter_separates_live_from_dead_records(
    admin_client: Client, backend_case: BackendCase
) -> None:
    now = datetime.now(timezone.utc)
    make_row(backend_case, key="live", expires_at=now + timedelta(minutes=5))
    make_row(backend_case, key="dead", expires_at=now - timedelta(minutes=5))

    assert listed_keys(changelist(admin_client, expiry="live")) == {"live"}
    assert listed_keys(changelist(admin_client, expiry="expired")) == {"dead"}
    assert listed_keys(changelist(admin_client)) == {"live", "dead"}


@over_db_cases
def test_search_matches_the_key_and_the_path(
    admin_client: Client, backend_case: BackendCase
) -> None:
    make_row(backend_case, key="invoice-2024-001", path="/invoices/")
    make_row(backend_case, key="refund-9", path="/refunds/?order=77")
    make_row(backend_case, key="other", path="/other/")

    assert listed_keys(changelist(admin_client, q="invoice-2024")) == {"invoice-2024-001"}
    assert listed_keys(changelist(admin_client, q="order=77")) == {"refund-9"}
    assert listed_keys(changelist(admin_client, q="nothing-like-it")) == set()


@over_db_cases
def test_date_hierarchy_drills_down_by_creation_date(
    admin_client: Client, backend_case: BackendCase
) -> None:
    make_row(backend_case, key="old", created_at=datetime(2024, 3, 5, 10, tzinfo=timezone.utc))
    make_row(backend_case, key="new", created_at=datetime(2025, 7, 1, 10, tzinfo=timezone.utc))

    top = changelist(admin_client).content.decode()
    assert "created_at__year=2024" in top
    assert "created_at__year=2025" in top

    assert listed_keys(changelist(admin_client, created_at__year="2024")) == {"old"}
    month = changelist(admin_client, created_at__year="2024", created_at__month="3")
    assert listed_keys(month) == {"old"}
    assert "created_at__day=5" in month.content.decode()


# -- the database admin: the change page ----------------------------------------------


@over_db_cases
def test_change_page_pretty_prints_a_json_body(
    admin_client: Client, backend_case: BackendCase
) -> None:
    row = make_row(
        backend_case,
        response_status=201,
        response_headers=[["Content-Type", "application/json"], ["Location", "/payments/7/"]],
        response_body=JSON_RESPONSE.body,
    )

    page = change_page(admin_client, row)

    assert "201 Created" in page
    assert "<td>Location</td><td>/payments/7/</td>" in page
    pretty = json.dumps(json.loads(JSON_BODY), indent=2)
    assert unescape(pretty) in unescape(page)
    assert "idempotency-body-json" in page
    assert "Request bodies are never stored" in page


@over_db_cases
def test_change_page_pretty_prints_a_body_that_parses_as_json(
    admin_client: Client, backend_case: BackendCase
) -> None:
    row = make_row(
        backend_case,
        response_headers=[["Content-Type", "text/plain; charset=utf-8"]],
        response_body=b'{"a":1,"b":[true,null]}',
    )

    page = change_page(admin_client, row)

    assert "idempotency-body-json" in page
    assert '"b": [\n    true,\n    null\n  ]' in unescape(page)


@over_db_cases
def test_change_page_truncates_a_long_text_body_with_a_note(
    admin_client: Client, backend_case: BackendCase
) -> None:
    body = ("line of text\n" * 2000).encode()  # 26,000 bytes
    row = make_row(
        backend_case, response_headers=[["Content-Type", "text/plain"]], response_body=body
    )

    page = change_page(admin_client, row)

    shown = re.search(
        r'<pre class="idempotency-body idempotency-body-text">(.*?)</pre>', page, re.S
    )
    assert shown is not None
    assert len(unescape(shown.group(1))) == TEXT_LIMIT
    assert f"showing the first {TEXT_LIMIT} of {len(body)} characters" in page


@over_db_cases
def test_change_page_shows_only_the_size_of_a_binary_body(
    admin_client: Client, backend_case: BackendCase
) -> None:
    body = bytes(range(256)) * 4
    row = make_row(
        backend_case,
        response_headers=[["Content-Type", "application/octet-stream"]],
        response_body=body,
    )

    page = change_page(admin_client, row)

    assert "Binary body (application/octet-stream)" in page
    assert "(1024 bytes)" in page
    assert "idempotency-body-text" not in page
    assert "<pre" not in page


@over_db_cases
def test_change_page_escapes_the_stored_response_and_the_key(
    admin_client: Client, backend_case: BackendCase
) -> None:
    row = make_row(
        backend_case,
        key="<b>key</b>",
        path="/x/?q=<img src=x onerror=alert(1)>",
        response_headers=[["Content-Type", "text/html"], ["X-Note", '"><svg onload=alert(2)>']],
        response_body=f"<html>{XSS}</html>".encode(),
    )

    page = change_page(admin_client, row)

    assert XSS not in page
    assert "<b>key</b>" not in page
    assert "<svg onload" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;stored&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;key&lt;/b&gt;" in page


@over_db_cases
def test_change_page_of_an_in_progress_claim_has_no_response_yet(
    admin_client: Client, backend_case: BackendCase
) -> None:
    row = make_row(backend_case, state=State.IN_PROGRESS.value)

    assert "No response yet: the claim is in progress." in change_page(admin_client, row)


# -- the database admin: actions -----------------------------------------------------


@over_db_cases
def test_delete_selected_warns_that_the_retry_runs_the_view_again(
    admin_client: Client, backend_case: BackendCase
) -> None:
    doomed, kept = make_row(backend_case), make_row(backend_case)

    confirm = action(admin_client, "delete_selected", [doomed])
    assert "the client's next retry with that key runs the view again" in unescape(
        confirm.content.decode()
    )
    assert len(rows(backend_case)) == 2

    done = action(admin_client, "delete_selected", [doomed], post="yes")

    assert done.status_code == 200
    assert [row.pk for row in rows(backend_case)] == [kept.pk]


@over_db_cases
def test_delete_view_warns_then_deletes_one_record(
    admin_client: Client, backend_case: BackendCase
) -> None:
    row = make_row(backend_case)
    url = reverse("admin:django_idempotency_idempotencyrecord_delete", args=[row.pk])

    assert "runs the view again" in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"post": "yes"}).status_code == 302

    assert rows(backend_case) == []


@over_db_cases
def test_release_asks_for_confirmation_first(
    admin_client: Client, backend_case: BackendCase
) -> None:
    claim = make_row(backend_case, key="stuck", state=State.IN_PROGRESS.value)

    response = action(admin_client, "release_claims", [claim])

    html = response.content.decode()
    assert "Release in-progress claims?" in html
    assert claim.owner_token in html
    assert "if the view is still running, the retry runs it a second time" in html
    assert len(rows(backend_case)) == 1


@over_db_cases
def test_release_deletes_in_progress_claims_and_skips_completed_records(
    admin_client: Client, backend_case: BackendCase
) -> None:
    stuck = make_row(backend_case, key="stuck", state=State.IN_PROGRESS.value)
    done = make_row(backend_case, key="done")

    response = action(admin_client, "release_claims", [stuck, done], post="yes")

    assert [row.pk for row in rows(backend_case)] == [done.pk]
    [message] = message_texts(response)
    assert "Released 1 claim" in message
    assert "Skipped 1 record" in message


@over_db_cases
def test_release_never_deletes_a_record_completed_meanwhile(
    admin_client: Client,
    backend_case: BackendCase,
    idempotency_backend: BaseBackend,
    before_release: BeforeRelease,
) -> None:
    row = make_row(backend_case, state=State.IN_PROGRESS.value)

    def complete_first(key: str, owner_token: str) -> None:
        # The stuck worker finishes between the admin's read and its release.
        assert idempotency_backend.complete(key, owner_token, JSON_RESPONSE, ttl=60)

    before_release(complete_first)

    response = action(admin_client, "release_claims", [row], post="yes")

    [kept] = rows(backend_case)
    assert kept.state == State.COMPLETED.value
    assert bytes(kept.response_body or b"") == JSON_RESPONSE.body
    [message] = message_texts(response)
    assert "Released 0 claims" in message
    assert "Skipped 1 record" in message


@over_db_cases
def test_release_passes_each_rows_own_owner_token(
    admin_client: Client, backend_case: BackendCase, before_release: BeforeRelease
) -> None:
    first = make_row(backend_case, state=State.IN_PROGRESS.value)
    second = make_row(backend_case, state=State.IN_PROGRESS.value)
    calls: list[tuple[str, str]] = []
    before_release(lambda key, owner_token: calls.append((key, owner_token)))

    action(admin_client, "release_claims", [first, second], post="yes")

    assert sorted(calls) == sorted(
        [(first.storage_key, first.owner_token), (second.storage_key, second.owner_token)]
    )
    assert rows(backend_case) == []


@on_cases(DB_CASES[:1], transaction=True, databases="__all__")
def test_release_reports_a_storage_error(
    admin_client: Client, backend_case: BackendCase, before_release: BeforeRelease
) -> None:
    row = make_row(backend_case, state=State.IN_PROGRESS.value)

    def fail(key: str, owner_token: str) -> None:
        raise StorageError("database is locked")

    before_release(fail)

    response = action(admin_client, "release_claims", [row], post="yes")

    assert message_texts(response) == ["The store failed after 0 release(s): database is locked"]
    assert len(rows(backend_case)) == 1


@over_db_cases
def test_purge_deletes_expired_records_only(
    admin_client: Client, backend_case: BackendCase
) -> None:
    now = datetime.now(timezone.utc)
    live = make_row(backend_case, expires_at=now + timedelta(minutes=5))
    dead = [make_row(backend_case, expires_at=now - timedelta(minutes=m)) for m in (1, 2, 3)]

    response = action(admin_client, "purge_expired", [dead[0]])

    assert [row.pk for row in rows(backend_case)] == [live.pk]
    [message] = message_texts(response)
    assert message.startswith("Purged 3 expired records in ")


@over_db_cases
def test_purge_needs_no_selection(admin_client: Client, backend_case: BackendCase) -> None:
    now = datetime.now(timezone.utc)
    live = make_row(backend_case, expires_at=now + timedelta(minutes=5))
    make_row(backend_case, expires_at=now - timedelta(minutes=5))

    response = action(admin_client, "purge_expired", [])

    assert [row.pk for row in rows(backend_case)] == [live.pk]
    assert message_texts(response)[0].startswith("Purged 1 expired record in ")


@on_cases(DB_CASES[:1], transaction=True, databases="__all__")
def test_purge_stops_after_its_time_budget(
    admin_client: Client, backend_case: BackendCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency_admin, "PURGE_TIME_BUDGET", 0.0)
    monkeypatch.setattr(idempotency_admin, "PURGE_BATCH_SIZE", 2)
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    for _ in range(5):
        make_row(backend_case, expires_at=past)

    response = action(admin_client, "purge_expired", [])

    assert len(rows(backend_case)) == 3
    [message] = message_texts(response)
    assert "Purged 2 expired records" in message
    assert "more expired records may remain" in message


@on_cases(DB_CASES[:1], transaction=True, databases="__all__")
def test_purge_reports_a_storage_error(
    admin_client: Client,
    backend_case: BackendCase,
    idempotency_backend: BaseBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(*, batch_size: int = 1000) -> Iterator[int]:
        raise StorageError("database 'default' failed: disk I/O error")

    monkeypatch.setattr(idempotency_backend, "purge_expired", fail)

    response = action(admin_client, "purge_expired", [])

    assert message_texts(response) == [
        "The store failed: database 'default' failed: disk I/O error"
    ]


@on_cases(DB_CASES[:1], transaction=True, databases="__all__")
def test_view_only_staff_can_browse_but_not_delete_release_or_purge(
    client: Client, backend_case: BackendCase
) -> None:
    row = make_row(backend_case, state=State.IN_PROGRESS.value)
    staff = baker.make(User, is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_idempotencyrecord"))
    client.force_login(staff)

    html = changelist(client).content.decode()
    change_page(client, row)

    assert 'value="release_claims"' not in html
    assert 'value="purge_expired"' not in html
    url = reverse("admin:django_idempotency_idempotencyrecord_delete", args=[row.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    action(client, "purge_expired", [])
    assert len(rows(backend_case)) == 1


# -- the store pages (memory, cache, Redis) ---------------------------------------------


@over_store_cases
def test_changelist_redirects_to_the_store_page(
    admin_client: Client, backend_case: BackendCase
) -> None:
    response = admin_client.get(reverse(CHANGELIST))

    assert response.status_code == 302
    assert response["Location"] == reverse(STORE)


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_change_and_delete_pages_of_rows_redirect_to_the_store_page(
    admin_client: Client, backend_case: BackendCase
) -> None:
    for page in ("change", "delete"):
        url = reverse(f"admin:django_idempotency_idempotencyrecord_{page}", args=[1])
        response = admin_client.get(url)
        assert response.status_code == 302
        assert response["Location"] == reverse(STORE)


@on_cases(DB_CASES[:1], transaction=True, databases="__all__")
def test_store_pages_redirect_to_the_changelist_with_the_database_backend(
    admin_client: Client, backend_case: BackendCase
) -> None:
    for url in (
        reverse(STORE),
        reverse(STORE_RECORD, args=["a" * 64]),
        reverse(STORE_DELETE, args=["a" * 64]),
    ):
        response = admin_client.get(url)
        assert response.status_code == 302
        assert response["Location"] == reverse(CHANGELIST)


@over_listable_stores
def test_store_page_lists_live_records(
    admin_client: Client, backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    store_record(idempotency_backend, "done-1", scope="user:9", path="/orders/")
    store_record(idempotency_backend, "running-1", response=None)

    response = admin_client.get(reverse(STORE))

    html = response.content.decode()
    assert response.status_code == 200
    assert "done-1" in html
    assert "running-1" in html
    assert "user:9" in html
    assert "/orders/" in html
    assert "in progress" in html
    assert "completed" in html
    assert "idempotency-next-page" not in html
    record_url = reverse(STORE_RECORD, args=[storage_key("user:9", "done-1")])
    assert f'href="{record_url}"' in html


@over_listable_stores
def test_store_page_tells_records_completed_without_their_body(
    admin_client: Client, backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    unkept = StoredResponse(status=200, headers=(("Content-Type", "text/csv"),), body=None)
    claim = store_record(idempotency_backend, "exported", response=unkept)

    listing = admin_client.get(reverse(STORE)).content.decode()
    record = admin_client.get(reverse(STORE_RECORD, args=[claim.storage_key])).content.decode()

    assert "completed, not replayable" in listing
    assert "its response body was not kept" in record
    assert "<td>Content-Type</td><td>text/csv</td>" in record


@over_listable_stores
def test_store_page_paginates_by_the_stores_cursor(
    admin_client: Client,
    backend_case: BackendCase,
    idempotency_backend: BaseBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(StoreAdmin, "page_size", 5)
    keys = {f"page-key-{n:02}" for n in range(12)}
    for key in keys:
        store_record(idempotency_backend, key)

    seen: list[str] = []
    url: str | None = reverse(STORE)
    pages = 0
    while url is not None and pages < 20:
        html = admin_client.get(url).content.decode()
        page_keys = re.findall(r">(page-key-\d\d)</a>", html)
        assert len(page_keys) <= 5
        seen += page_keys
        pages += 1
        next_link = re.search(r'href="([^"]*)" class="idempotency-next-page"', html)
        url = unescape(next_link.group(1)) if next_link else None

    assert set(seen) == keys  # SCAN may repeat a key, never miss one
    assert pages >= 3


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_store_page_hides_expired_records(
    admin_client: Client, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as past:
        past.setattr(idempotency_backend, "now", lambda: time.time() - 3600)
        store_record(idempotency_backend, "dead-key")
    store_record(idempotency_backend, "live-key")

    html = admin_client.get(reverse(STORE)).content.decode()

    assert "live-key" in html
    assert "dead-key" not in html
    assert "1 expired record hidden" in html


@over_listable_stores
def test_store_page_reports_a_storage_error(
    admin_client: Client, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(cursor: str | None = None, count: int = 100) -> Any:
        raise StorageError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(idempotency_backend, "scan", fail)
        response = admin_client.get(reverse(STORE))

    assert response.status_code == 200
    assert "The store failed: connection refused" in response.content.decode()


@on_cases(UNLISTABLE_STORE_CASES)
def test_store_page_says_it_cannot_list_and_offers_a_lookup(
    admin_client: Client, backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    store_record(idempotency_backend, "hidden-key")

    html = admin_client.get(reverse(STORE)).content.decode()

    assert "CacheBackend cannot list its records" in html
    assert 'name="storage_key"' in html
    assert 'name="key"' in html
    assert 'name="scope"' in html
    assert "hidden-key" not in html
    # LocMemCache's records are per process; memcached's are shared.
    assert ("lives in each server process" in html) is not backend_case.cross_process


@over_store_cases
def test_lookup_by_key_and_scope_opens_the_record(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "lookup-me", scope="tenant:acme")

    response = admin_client.get(reverse(STORE), {"key": "lookup-me", "scope": "tenant:acme"})

    assert response.status_code == 302
    assert response["Location"] == reverse(STORE_RECORD, args=[claim.storage_key])


@over_store_cases
def test_lookup_by_storage_key_opens_the_record(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "by-storage-key")

    response = admin_client.get(reverse(STORE), {"storage_key": claim.storage_key.upper()})

    assert response["Location"] == reverse(STORE_RECORD, args=[claim.storage_key])


@over_store_cases
def test_lookup_of_an_unknown_key_says_so(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    response = admin_client.get(
        reverse(STORE), {"key": "never-sent", "scope": "user:1"}, follow=True
    )

    assert response.status_code == 200
    assert any("No record is stored under that key" in text for text in message_texts(response))


@over_store_cases
def test_lookup_needs_a_key_or_a_storage_key(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    response = admin_client.get(reverse(STORE), {"scope": "user:1"})

    assert response.status_code == 200
    assert "Give a storage key, or a key and its scope." in response.content.decode()


@over_store_cases
def test_store_record_page_shows_the_stored_response(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "show-me")

    response = admin_client.get(reverse(STORE_RECORD, args=[claim.storage_key]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "show-me" in html
    assert claim.owner_token in html
    assert "201 Created" in html
    assert "<td>Location</td><td>/payments/7/</td>" in html
    assert unescape(json.dumps(json.loads(JSON_BODY), indent=2)) in unescape(html)
    assert "Request bodies are never stored" in html


@over_store_cases
def test_store_record_page_escapes_the_body_and_shows_binary_sizes(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    html_claim = store_record(
        idempotency_backend,
        "<i>xss</i>",
        response=StoredResponse(200, (("Content-Type", "text/html"),), XSS.encode()),
    )
    binary_claim = store_record(
        idempotency_backend,
        "binary",
        response=StoredResponse(200, (("Content-Type", "image/png"),), b"\x89PNG" + bytes(96)),
    )

    html = admin_client.get(reverse(STORE_RECORD, args=[html_claim.storage_key])).content.decode()
    binary = admin_client.get(reverse(STORE_RECORD, args=[binary_claim.storage_key]))

    assert XSS not in html
    assert "<i>xss</i>" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;i&gt;xss&lt;/i&gt;" in html
    assert "Binary body (image/png)" in binary.content.decode()
    assert "(100 bytes)" in binary.content.decode()


@over_store_cases
def test_store_record_page_of_an_in_progress_claim(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "running", response=None)

    html = admin_client.get(reverse(STORE_RECORD, args=[claim.storage_key])).content.decode()

    assert "No response yet: the claim is in progress." in html


@over_store_cases
def test_store_record_page_of_a_missing_record_goes_back_to_the_list(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    response = admin_client.get(reverse(STORE_RECORD, args=["0" * 64]))

    assert response.status_code == 302
    assert response["Location"] == reverse(STORE)


@over_store_cases
def test_store_delete_confirms_then_deletes(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "delete-me")
    url = reverse(STORE_DELETE, args=[claim.storage_key])

    confirm = admin_client.get(url)
    assert "runs the view again" in confirm.content.decode()
    assert idempotency_backend.get(claim.storage_key) is not None

    response = admin_client.post(url, follow=True)

    assert idempotency_backend.get(claim.storage_key) is None
    assert any("Deleted the record" in text for text in message_texts(response))


@over_store_cases
def test_store_delete_needs_a_csrf_token(
    admin_user: User, backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "csrf")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    response = client.post(reverse(STORE_DELETE, args=[claim.storage_key]))

    assert response.status_code == 403
    assert idempotency_backend.get(claim.storage_key) is not None


@over_store_cases
def test_store_pages_need_a_staff_login(client: Client, idempotency_backend: BaseBackend) -> None:
    claim = store_record(idempotency_backend, "private")

    for url in (reverse(STORE), reverse(STORE_RECORD, args=[claim.storage_key])):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    client.post(reverse(STORE_DELETE, args=[claim.storage_key]))
    assert idempotency_backend.get(claim.storage_key) is not None


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_view_only_staff_cannot_delete_from_the_store(
    client: Client, idempotency_backend: BaseBackend
) -> None:
    claim = store_record(idempotency_backend, "view-only")
    staff = baker.make(User, is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_idempotencyrecord"))
    client.force_login(staff)

    record_page = client.get(reverse(STORE_RECORD, args=[claim.storage_key])).content.decode()

    assert "deletelink" not in record_page
    assert client.post(reverse(STORE_DELETE, args=[claim.storage_key])).status_code == 403
    assert idempotency_backend.get(claim.storage_key) is not None


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_a_stale_cursor_goes_back_to_the_first_page(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    response = admin_client.get(reverse(STORE), {"cursor": "not-a-cursor"}, follow=True)

    assert response.redirect_chain == [(reverse(STORE), 302)]
    assert message_texts(response) == ["That page no longer exists: back to page 1."]


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_deleting_a_record_already_gone_says_so(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    response = admin_client.post(reverse(STORE_DELETE, args=["0" * 64]), follow=True)

    assert message_texts(response) == ["The record was already gone."]


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_store_failures_on_read_and_delete_are_reported(
    admin_client: Client, idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = store_record(idempotency_backend, "unreadable")

    def fail(key: str) -> Any:
        raise StorageError("timeout")

    with monkeypatch.context() as patch:
        patch.setattr(idempotency_backend, "get", fail)
        patch.setattr(idempotency_backend, "delete", fail)
        read = admin_client.get(reverse(STORE_RECORD, args=[claim.storage_key]), follow=True)
        delete = admin_client.post(reverse(STORE_DELETE, args=[claim.storage_key]))

    assert message_texts(read) == ["The store failed: timeout"]
    assert delete["Location"] == reverse(STORE_RECORD, args=[claim.storage_key])
    assert idempotency_backend.get(claim.storage_key) is not None


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_store_pages_need_the_view_permission(
    client: Client, idempotency_backend: BaseBackend
) -> None:
    client.force_login(baker.make(User, is_staff=True))

    assert client.get(reverse(STORE)).status_code == 403
    assert client.put(reverse(STORE_DELETE, args=["0" * 64])).status_code == 403


@on_cases([case for case in STORE_CASES if case.id == "memory"])
def test_store_delete_accepts_only_get_and_post(
    admin_client: Client, idempotency_backend: BaseBackend
) -> None:
    assert admin_client.put(reverse(STORE_DELETE, args=["0" * 64])).status_code == 405


# -- rendering bodies --------------------------------------------------------------------


def test_problem_json_is_pretty_printed() -> None:
    preview = preview_body(b'{"type":"about:blank","status":409}', "application/problem+json")

    assert preview.kind == "json"
    assert preview.text == '{\n  "type": "about:blank",\n  "status": 409\n}'


def test_invalid_json_with_a_json_content_type_is_shown_as_text() -> None:
    preview = preview_body(b'{"unfinished": ', "application/json")

    assert (preview.kind, preview.text) == ("text", '{"unfinished": ')


def test_a_body_in_its_declared_charset_is_decoded() -> None:
    preview = preview_body("café".encode("latin-1"), "text/plain; charset=ISO-8859-1")

    assert (preview.kind, preview.text) == ("text", "café")


def test_text_that_does_not_decode_is_binary() -> None:
    preview = preview_body(b"\xff\xfe\x00abc", "text/plain")

    assert (preview.kind, preview.size) == ("binary", 6)


def test_an_unknown_charset_falls_back_to_utf8() -> None:
    assert preview_body("é".encode(), "text/plain; charset=klingon").text == "é"


def test_control_characters_make_a_body_binary() -> None:
    assert preview_body(b"abc\x00def", "").kind == "binary"


def test_a_long_json_body_is_pretty_printed_then_truncated() -> None:
    body = json.dumps(list(range(5000))).encode()

    preview = preview_body(body, "application/json", limit=100)

    assert preview.kind == "json"
    assert preview.text.startswith("[\n  0,\n  1,")
    assert len(preview.text) == 100
    assert preview.truncated
    assert preview.total_characters > len(body)


def test_an_unknown_status_has_no_reason_phrase() -> None:
    preview = preview_response(StoredResponse(599, (), b""))

    assert (preview.status, preview.reason, preview.body.kind) == (599, "", "empty")


def test_an_empty_body_is_empty() -> None:
    assert preview_body(b"", "application/json").kind == "empty"
