"""Parsing the Idempotency-Key header (RFC 8941 sf-string) and storage keys."""

from __future__ import annotations

import pytest

from django_idempotency.keys import InvalidKey, log_label, parse_key, storage_key

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  abc\t", "abc"),
        ('"a,b"', "a,b"),
        ('"say \\"hi\\""', 'say "hi"'),
        ('"back\\\\slash"', "back\\slash"),
        ("with inner space", "with inner space"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    ],
)
def test_valid_keys_are_unquoted(raw: str, key: str) -> None:
    assert parse_key(raw, 255) == key


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ('""', "empty"),
        ("a, b", "more than once"),
        ('"a" "b"', "more than once"),
        ('"open', "no closing quote"),
        ('"\\n"', "escaped"),
        ("é", "printable ASCII"),
        ("a\x7fb", "printable ASCII"),
        ("k" * 11, "limit is 10"),
    ],
)
def test_invalid_keys_say_why(raw: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        parse_key(raw, 10)


def test_storage_key_separates_scope_and_key() -> None:
    assert storage_key("a:b", "c") != storage_key("a", "b:c")
    assert storage_key("user:1", "k") != storage_key("user:2", "k")
    assert len(storage_key("scope", "k" * 255)) == 64


def test_log_label_never_contains_the_key() -> None:
    label = log_label(storage_key("anonymous", "secret-key"))

    assert "secret" not in label
    assert len(label) == 12
