"""What identifies a request, so that a key reused for another request is caught.

The fingerprint is a SHA-256 over the scope, the method, the path, the query
string and the body (an empty body too). Every part but the body (which
comes last) is prefixed with its length, so no two different requests share
a fingerprint by shifting characters from one part into the next, whatever
the parts contain.

The body is the bytes the client sent, except for a multipart form (a
browser's file upload): Django parses that from the stream as it arrives,
keeping large files on disk, and the raw bytes are then gone (reading them
again raises ``RawPostDataException``). A form is fingerprinted from what
was parsed instead, its fields and its files' names, types and contents,
which also leaves out the random boundary a client draws again when it
rebuilds the form for a retry.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict

MULTIPART = "multipart/form-data"
RAW_BODY = "raw"
FORM_BODY = "form"


def fingerprint(
    scope: str, method: str, path: str, query: str, body: bytes, body_kind: str = RAW_BODY
) -> str:
    """Hex SHA-256 of the request's identifying parts.

    ``body`` is the raw body (``body_kind`` :data:`RAW_BODY`) or the digest
    of a parsed form (:data:`FORM_BODY`), so the two can never be confused.
    """
    head = (
        f"{len(scope)}:{scope}{len(method)}:{method}{len(path)}:{path}"
        f"{len(query)}:{query}{body_kind}:"
    ).encode()
    digest = hashlib.sha256(head)
    digest.update(body)
    return digest.hexdigest()


def request_body(request: HttpRequest) -> tuple[bytes, str]:
    """What stands for the request's body in its fingerprint, and its kind.

    Raises what Django raises for a body it cannot read: ``RequestDataTooBig``,
    ``RawPostDataException``, ``MultiPartParserError``, ``UnreadablePostError``.
    """
    if request.method == "POST" and request.content_type == MULTIPART:
        return form_digest(request.POST, request.FILES), FORM_BODY
    return request.body, RAW_BODY


def form_digest(fields: QueryDict, files: MultiValueDict[str, UploadedFile[Any]]) -> bytes:
    """SHA-256 of a parsed form: each field's values, each file's name, type and bytes.

    Files are hashed chunk by chunk from wherever Django keeps them (memory
    or a temporary file) and rewound, so the view reads them from the start
    (:func:`add_file`).
    """
    digest = hashlib.sha256()
    for name, values in fields.lists():
        _add(digest, name.encode(), str(len(values)).encode(), *(v.encode() for v in values))
    for name, uploads in files.lists():
        _add(digest, name.encode(), str(len(uploads)).encode())
        for upload in uploads:
            _add(
                digest,
                (upload.name or "").encode(),
                (upload.content_type or "").encode(),
                str(upload.size).encode(),
            )
            add_file(digest, upload)
    return digest.digest()


def add_file(digest: _Digest, upload: UploadedFile[Any]) -> None:
    """Hash an uploaded file's bytes chunk by chunk, then rewind it for the view."""
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _add(digest: _Digest, *parts: bytes) -> None:
    """Each part, prefixed with its length, so parts cannot run into one another."""
    for part in parts:
        digest.update(b"%d:" % len(part))
        digest.update(part)
