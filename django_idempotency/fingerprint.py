"""What identifies a request, so that a key reused for another request is caught.

The fingerprint is a SHA-256 over the scope, the method, the path with its
query string and the body bytes (an empty body too). The scope is length
prefixed and the method and path end at a NUL, which neither can contain (a
method is a token, and Django percent-encodes the path), so no two different
requests share a fingerprint by shifting bytes from one part into the next.
"""

from __future__ import annotations

import hashlib


def fingerprint(scope: str, method: str, full_path: str, body: bytes) -> str:
    """Hex SHA-256 of the request's identifying parts."""
    digest = hashlib.sha256(f"{len(scope)}:{scope}{method}\x00{full_path}\x00".encode())
    digest.update(body)  # not copied: bodies can be large
    return digest.hexdigest()
