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


def test_a_nul_in_the_path_cannot_stand_for_the_end_of_the_path() -> None:
    # A decoded path may hold a NUL (%00); the length prefix keeps the parts apart.
    assert fingerprint("s", "POST", "/a\x00b", b"c") != fingerprint("s", "POST", "/a", b"b\x00c")
    assert fingerprint("s\x00", "POST", "/a", b"") != fingerprint("s", "\x00POST", "/a", b"")
