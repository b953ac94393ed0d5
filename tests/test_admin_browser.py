"""The admin end to end in real headless Chromium, through Playwright's sync API.

Runs against pytest-django's ``live_server`` (the test project, DatabaseBackend
on the SQLite file database both threads share). Chromium is the system one
(``/usr/bin/chromium``, Debian's ``chromium`` package); Playwright's own
browser downloads are never used. Without Chromium or Playwright the test
skips locally and fails under ``CI=true``. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth.models import User
from model_bakery import baker

from django_idempotency.keys import storage_key
from django_idempotency.models import IdempotencyRecord
from django_idempotency.records import State
from tests.backends import CASES_BY_ID, BackendCase
from tests.services import IN_CI

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 15_000
NAVIGATION_TIMEOUT_MS = 20_000
PASSWORD = "correct horse battery staple"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize(
        "backend_case", [CASES_BY_ID["db-sqlite"]], indirect=True, ids=["db-sqlite"]
    ),
]


def _unavailable() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"Chromium is not installed at {CHROMIUM} (apt-get install chromium "
            "chromium-driver, or set TEST_CHROMIUM)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def require_browser() -> None:
    """Skip when Chromium or Playwright is missing; fail instead under CI=true."""
    reason = _unavailable()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a fresh headless Chromium, closed afterwards.

    Playwright's sync API runs an event loop in the calling thread, where
    Django refuses ORM calls: write the test data before opening the page.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(ACTION_TIMEOUT_MS)
            page.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_operator_logs_in_searches_a_key_and_reads_the_stored_body(
    backend_case: BackendCase, live_server: Any
) -> None:
    require_browser()
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    now = datetime.now(timezone.utc)
    for key, body in (
        ("order-4711", b'{"order": 4711, "note": "<b>paid</b>"}'),
        ("order-4712", b'{"order": 4712}'),
    ):
        baker.make(
            IdempotencyRecord,
            key=key,
            scope="user:1",
            storage_key=storage_key("user:1", key),
            method="POST",
            path="/orders/",
            state=State.COMPLETED.value,
            created_at=now,
            expires_at=now + timedelta(hours=1),
            completed_at=now,
            response_status=201,
            response_headers=[["Content-Type", "application/json"]],
            response_body=body,
        )
    changelist = f"{live_server.url}/admin/django_idempotency/idempotencyrecord/"
    with chromium_page() as page:
        search_and_open(page, live_server.url, changelist)


def search_and_open(page: Any, base_url: str, changelist: str) -> None:
    """Log in, search one key, open its record and read the stored body."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}/admin/login/?next=/admin/django_idempotency/idempotencyrecord/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(changelist)

    page.fill("#searchbar", "order-4711")
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(r".*\?q=order-4711$"))
    results = page.locator("#result_list tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("order-4711")

    page.click("#result_list tbody tr th a")
    page.wait_for_url(re.compile(r".*/idempotencyrecord/\d+/change/(\?.*)?$"))
    body = page.locator("pre.idempotency-body")
    expect(body).to_contain_text('"order": 4711')
    expect(body).to_contain_text('"note": "<b>paid</b>"')  # shown as text...
    expect(body.locator("b")).to_have_count(0)  # ...never parsed as markup
    expect(page.locator(".idempotency-status")).to_contain_text("201 Created")
