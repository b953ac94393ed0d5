"""The hot path's SHA-256 gives exactly ``hashlib.sha256``'s digest, whatever the size."""

from __future__ import annotations

import hashlib
import sys

import pytest

from django_idempotency import digests


@pytest.mark.parametrize(
    "size", [0, 1, digests.SMALL_INPUT - 1, digests.SMALL_INPUT, digests.SMALL_INPUT + 1, 1 << 20]
)
def test_sha256_hex_is_sha256_of_head_and_tail(size: int) -> None:
    tail = bytes(range(256)) * (size // 256 + 1)
    tail = tail[:size]

    assert digests.sha256_hex(b"head", tail) == hashlib.sha256(b"head" + tail).hexdigest()


def test_without_cpythons_own_sha256_openssl_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as on a build without the module.
    monkeypatch.setitem(sys.modules, "_sha2", None)
    monkeypatch.setitem(sys.modules, "_sha256", None)

    assert digests._builtin_sha256() is hashlib.sha256


def test_cpythons_own_sha256_is_used_where_it_exists() -> None:
    assert digests.small_sha256 is not hashlib.sha256
    assert digests.small_sha256(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()
