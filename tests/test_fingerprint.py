"""What identifies a request."""

from __future__ import annotations

from django_idempotency.fingerprint import fingerprint


def test_every_part_changes_the_fingerprint() -> None:
    base = fingerprint("s", "POST", "/p/?q=1", b"body")

    assert fingerprint("t", "POST", "/p/?q=1", b"body") != base
    assert fingerprint("s", "PATCH", "/p/?q=1", b"body") != base
    assert fingerprint("s", "POST", "/p/?q=2", b"body") != base
    assert fingerprint("s", "POST", "/p/?q=1", b"bodY") != base
    assert fingerprint("s", "POST", "/p/?q=1", b"body") == base


def test_bytes_cannot_shift_between_parts() -> None:
    assert fingerprint("s", "POST", "/a", b"b") != fingerprint("s", "POST", "/", b"ab")


def test_empty_body_is_fingerprinted() -> None:
    assert fingerprint("s", "POST", "/p/", b"") != fingerprint("s", "POST", "/p/", b" ")
