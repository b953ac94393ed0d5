"""RFC 9457 ``application/problem+json`` responses for every refusal.

Clients tell the problems apart by ``type`` (a tag URI: stable, not meant to
be fetched) and by status. Refusals are never cached: ``Cache-Control:
no-store``.
"""

from __future__ import annotations

import json

from django.http import HttpResponse

TYPE_PREFIX = "tag:django-idempotency,2026:"
CONFLICT_RETRY_AFTER = 1
"""Seconds a client should wait before retrying a request still in progress."""
OUTAGE_RETRY_AFTER = 5
"""Seconds a client should wait when the store is unreachable."""


def problem_response(
    status: int, slug: str, title: str, detail: str, retry_after: int | None = None
) -> HttpResponse:
    """A problem+json response; ``slug`` names the problem type."""
    body = {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    response = HttpResponse(
        json.dumps(body), status=status, content_type="application/problem+json"
    )
    response["Cache-Control"] = "no-store"
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def key_missing(header: str) -> HttpResponse:
    """400: the view requires a key and none was sent."""
    return problem_response(
        400,
        "key-missing",
        "Idempotency key missing",
        f"This endpoint requires an {header} header; send a unique value (e.g. a UUID) "
        "and reuse it when retrying the same request.",
    )


def key_invalid(header: str, reason: str) -> HttpResponse:
    """400: the header is malformed."""
    return problem_response(
        400, "key-invalid", "Idempotency key invalid", f"The {header} header is invalid: {reason}"
    )


def request_in_progress() -> HttpResponse:
    """409: the first request with this key is still running."""
    return problem_response(
        409,
        "request-in-progress",
        "Request in progress",
        "A request with this idempotency key is still being processed; retry later to get "
        "its response.",
        retry_after=CONFLICT_RETRY_AFTER,
    )


def key_reused() -> HttpResponse:
    """422: the key was first used for a different request."""
    return problem_response(
        422,
        "key-reused",
        "Idempotency key reused",
        "This idempotency key was already used for a different request (method, path, query "
        "or body differ); use a new key for a new request.",
    )


def storage_unavailable() -> HttpResponse:
    """503: the store could not be reached, so the view was not run."""
    return problem_response(
        503,
        "storage-unavailable",
        "Idempotency storage unavailable",
        "The request was not processed because its idempotency key could not be recorded; "
        "retry later with the same key.",
        retry_after=OUTAGE_RETRY_AFTER,
    )
