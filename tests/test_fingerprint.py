"""What identifies a request."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.client import encode_multipart

from django_idempotency.backends.base import BaseBackend
from django_idempotency.fingerprint import FORM_BODY, fingerprint
from django_idempotency.keys import storage_key
from tests.backends import BackendCase
from tests.http import assert_problem, executions, post


def test_every_part_changes_the_fingerprint() -> None:
    base = fingerprint("s", "POST", "/p/", "q=1", b"body")

    assert fingerprint("t", "POST", "/p/", "q=1", b"body") != base
    assert fingerprint("s", "PATCH", "/p/", "q=1", b"body") != base
    assert fingerprint("s", "POST", "/q/", "q=1", b"body") != base
    assert fingerprint("s", "POST", "/p/", "q=2", b"body") != base
    assert fingerprint("s", "POST", "/p/", "q=1", b"bodY") != base
    assert fingerprint("s", "POST", "/p/", "q=1", b"body", FORM_BODY) != base
    assert fingerprint("s", "POST", "/p/", "q=1", b"body") == base


def test_bytes_cannot_shift_between_parts() -> None:
    assert fingerprint("s", "POST", "/a", "", b"b") != fingerprint("s", "POST", "/", "", b"ab")
    assert fingerprint("s", "POST", "/a", "b", b"") != fingerprint("s", "POST", "/ab", "", b"")


def test_path_and_query_are_kept_apart() -> None:
    # /p/delete%3Fid=1 (a "?" inside the path) is not /p/delete?id=1.
    assert fingerprint("s", "POST", "/p/delete?id=1", "", b"") != fingerprint(
        "s", "POST", "/p/delete", "id=1", b""
    )


def test_empty_body_is_fingerprinted() -> None:
    assert fingerprint("s", "POST", "/p/", "", b"") != fingerprint("s", "POST", "/p/", "", b" ")


def test_a_nul_in_a_part_cannot_stand_for_the_end_of_that_part() -> None:
    # A decoded path or a custom scope may hold a NUL; the length prefix keeps the parts apart.
    assert fingerprint("s", "POST", "/a\x00b", "", b"c") != fingerprint(
        "s", "POST", "/a", "", b"b\x00c"
    )
    assert fingerprint("s\x00", "POST", "/a", "", b"") != fingerprint(
        "s", "\x00POST", "/a", "", b""
    )


# -- over HTTP: what a request's body and path are taken to be ------------------------------

CSRF_SECRET = "k" * 32
THREE_MIB = 3 * 1024 * 1024


def _form_post(
    client: Client, key: str | None, content: bytes, boundary: str = "first-boundary"
) -> Any:
    """A browser's form upload: a CSRF token, a field and a file."""
    data = {
        "csrfmiddlewaretoken": CSRF_SECRET,
        "note": "invoice",
        "file": SimpleUploadedFile("scan.pdf", content, content_type="application/pdf"),
    }
    return client.post(
        "/upload/",
        encode_multipart(boundary, data),
        content_type=f"multipart/form-data; boundary={boundary}",
        headers={} if key is None else {"Idempotency-Key": key},
    )


@pytest.fixture
def browser(backend_case: BackendCase) -> Client:
    """A client held to CSRF checks, with a CSRF cookie, as a browser is."""
    client = Client(enforce_csrf_checks=True)
    client.cookies["csrftoken"] = CSRF_SECRET
    return client


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize(
    "key", [pytest.param("upload-1", id="key"), pytest.param(None, id="auto-key")]
)
@pytest.mark.smoke
@pytest.mark.idempotency(AUTO_KEY=True)
def test_a_form_upload_that_passed_csrf_is_guarded_and_a_rebuilt_form_replays(
    browser: Client, key: str | None
) -> None:
    first = _form_post(browser, key, b"%PDF-1.7 scan")
    rebuilt = _form_post(browser, key, b"%PDF-1.7 scan", boundary="a-new-random-boundary")

    assert first.status_code == 201, first.content
    assert first.json()["files"]["file"] == hashlib.sha256(b"%PDF-1.7 scan").hexdigest()
    assert rebuilt["Idempotent-Replayed"] == "true"
    assert rebuilt.content == first.content
    assert executions("upload") == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_another_file_under_the_same_key_answers_422(browser: Client) -> None:
    _form_post(browser, "upload-1", b"%PDF-1.7 scan")

    other = _form_post(browser, "upload-1", b"%PDF-1.7 another scan")

    assert_problem(other, 422, "key-reused")
    assert executions("upload") == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_an_upload_larger_than_django_keeps_in_memory_is_guarded(browser: Client) -> None:
    content = bytes(range(256)) * (THREE_MIB // 256)

    first = _form_post(browser, "big-upload", content)
    retry = _form_post(browser, "big-upload", content, boundary="another-boundary")

    assert first.status_code == 201, first.content
    assert first.json()["files"]["file"] == hashlib.sha256(content).hexdigest()  # read whole
    assert retry["Idempotent-Replayed"] == "true"
    assert executions("upload") == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_raw_body_larger_than_django_reads_answers_413(
    backend_case: BackendCase, client: Client
) -> None:
    response = post(client, body=b"x" * THREE_MIB)

    assert_problem(response, 413, "body-too-large")
    assert executions() == 0


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_question_mark_inside_the_path_is_not_a_query_string(
    backend_case: BackendCase, client: Client
) -> None:
    first = post(client, "/p/delete%3Fid=1")
    other = post(client, "/p/delete?id=1")

    assert json.loads(first.content)["path"] == "/p/delete?id=1"  # as Django decoded it
    assert_problem(other, 422, "key-reused")
    assert executions("anywhere") == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_nul_in_the_path_is_stored_on_every_backend(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    first = post(client, "/p/a%00b/?q=%00")
    retry = post(client, "/p/a%00b/?q=%00")

    assert first.status_code == 201, first.content
    assert retry["Idempotent-Replayed"] == "true"
    record = idempotency_backend.get(storage_key("anonymous", "key-1"))
    assert record is not None
    assert record.path == "/p/a%00b/?q=%00"
    assert executions("anywhere") == 1
