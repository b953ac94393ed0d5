"""What identifies a request, so that a key reused for another request is caught.

The fingerprint is a SHA-256 over the scope, the method, the path with its
query string and the body bytes (an empty body too). Every part but the body
(which comes last) is prefixed with its length, so no two different requests
share a fingerprint by shifting characters from one part into the next,
whatever the parts contain (a decoded path may hold a NUL).
"""

from __future__ import annotations

from django_idempotency.digests import sha256_hex


def fingerprint(scope: str, method: str, path: str, body: bytes) -> str:
    """Hex SHA-256 of the request's identifying parts."""
    head = f"{len(scope)}:{scope}{len(method)}:{method}{len(path)}:{path}".encode()
    return sha256_hex(head, body)
