"""SHA-256 on the hot path, without OpenSSL's per-call cost for small inputs.

Every guarded request hashes twice (its storage key and its fingerprint),
usually a few hundred bytes. ``hashlib.sha256`` goes through OpenSSL's EVP
layer, whose fixed cost per call (a context allocated and initialised
through the provider machinery, code that is cold by the time a request
reaches it) outweighs hashing that little: measured with
``benchmarks/overhead.py``, leaving OpenSSL out of a request took about 2%
off its time.
CPython ships its own SHA-256 (the module ``hashlib`` falls back to when
OpenSSL lacks a digest), which computes the same digest with a fixed cost
close to nothing, but about six times slower per byte; so inputs above
:data:`SMALL_INPUT` bytes still go to OpenSSL.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any

SMALL_INPUT = 2048
"""Bytes up to which CPython's own SHA-256 beats OpenSSL's (both measured here)."""


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 constructor, or ``hashlib.sha256`` on builds without it."""
    for module_name in ("_sha2", "_sha256"):  # Python 3.12+, then 3.10 and 3.11
        try:
            return importlib.import_module(module_name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256  # a build without CPython's own hashes (some FIPS builds)


small_sha256 = _builtin_sha256()
"""The SHA-256 constructor for inputs of at most :data:`SMALL_INPUT` bytes."""


def sha256_hex(head: bytes, tail: bytes = b"") -> str:
    """Hex SHA-256 of ``head + tail``, without copying a large ``tail``."""
    if len(tail) <= SMALL_INPUT:
        return small_sha256(head + tail).hexdigest()  # type: ignore[no-any-return]
    digest = hashlib.sha256(head)
    digest.update(tail)
    return digest.hexdigest()
