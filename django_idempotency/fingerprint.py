"""What identifies a request, so that a key reused for another request is caught.

The fingerprint is a SHA-256 over the scope, the method, the path with its
query string and the body bytes (an empty body too). Each part is length
prefixed, so no two different requests can share a fingerprint by shifting
bytes from one part into the next.
"""

from __future__ import annotations

import hashlib

from django.http import HttpRequest


def fingerprint(scope: str, method: str, full_path: str, body: bytes) -> str:
    """Hex SHA-256 of the request's identifying parts."""
    digest = hashlib.sha256()
    for part in (scope.encode(), method.encode(), full_path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def request_fingerprint(request: HttpRequest, scope: str) -> str:
    """The fingerprint of a Django request under ``scope``."""
    return fingerprint(scope, request.method or "", request.get_full_path(), request.body)
