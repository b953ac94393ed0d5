"""The admin end to end in real headless Chromium, through Playwright's sync API.

One test runs against pytest-django's ``live_server`` (the test project,
DatabaseBackend on the SQLite file database both threads share); the other
starts the example project as ``make demo`` does and reads, in its admin, the
record a real guarded payment left. Chromium is the system one
(``/usr/bin/chromium``, Debian's ``chromium`` package); Playwright's own
browser downloads are never used. Without Chromium or Playwright the test
skips locally and fails under ``CI=true``. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
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

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, databases="__all__")]


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


@pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["db-sqlite"]], indirect=True, ids=["db-sqlite"]
)
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


EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example_project"
SERVER_START_TIMEOUT = 30.0


@contextmanager
def example_project_server(tmp_path: Path) -> Iterator[str]:
    """The example project on its own SQLite file, migrated, with its demo user.

    Runs ``manage.py migrate``, ``ensure_demo_user`` and ``runserver`` exactly
    as ``make demo`` does, on a free loopback port; stopped afterwards.
    """
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.sqlite3'}",
        "DJANGO_DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    }
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    manage = [sys.executable, str(EXAMPLE_PROJECT / "manage.py")]
    for command in (["migrate", "--noinput", "-v", "0"], ["ensure_demo_user"]):
        subprocess.run(
            [*manage, *command],
            cwd=EXAMPLE_PROJECT,
            env=environment,
            check=True,
            capture_output=True,
            timeout=60,
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "runserver.log").open("w")
    server = subprocess.Popen(
        [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=EXAMPLE_PROJECT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base_url + "/admin/login/", server)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def _wait_for(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the example project exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the example project did not answer {url} in {SERVER_START_TIMEOUT}s")


def _pay(base_url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        base_url + "/payments/",
        data=b'{"amount": "42.00", "currency": "EUR", "description": "browser test"}',
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "Authorization": "Token demo-token-alice",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_example_project_admin_shows_the_record_a_real_payment_left(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with example_project_server(tmp_path) as base_url:
        first = _pay(base_url, "pay-browser-1")
        retry = _pay(base_url, "pay-browser-1")
        assert first[0] == retry[0] == 201
        assert retry[2] == first[2]
        assert retry[1].get("Idempotent-Replayed") == "true"

        with chromium_page() as page:
            page.goto(f"{base_url}/admin/login/?next=/admin/django_idempotency/idempotencyrecord/")
            page.fill("#id_username", "demo")
            page.fill("#id_password", "demo")
            page.click("input[type=submit]")
            page.wait_for_url(re.compile(r".*/admin/django_idempotency/idempotencyrecord/$"))
            page.fill("#searchbar", "pay-browser-1")
            page.press("#searchbar", "Enter")
            results = page.locator("#result_list tbody tr")
            expect(results).to_have_count(1)
            page.click("#result_list tbody tr th a")
            body = page.locator("pre.idempotency-body")
            expect(body).to_contain_text('"amount": "42.00"')
            expect(page.locator(".idempotency-status")).to_contain_text("201 Created")
