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
    framed = b"".join(
        len(part).to_bytes(8, "big") + part
        for part in (scope.encode(), method.encode(), full_path.encode(), b"")
    )
    digest = hashlib.sha256(framed[:-8])  # every part but the body, framed
    digest.update(len(body).to_bytes(8, "big"))
    digest.update(body)  # not copied: bodies can be large
    return digest.hexdigest()


def request_fingerprint(request: HttpRequest, scope: str, full_path: str) -> str:
    """The fingerprint of a Django request under ``scope``."""
    return fingerprint(scope, request.method or "", full_path, request.body)
