"""RFC 9457 ``application/problem+json`` responses for every refusal.

Clients tell the problems apart by ``type`` (a tag URI: stable, not meant to
be fetched) and by status. Refusals are never cached: ``Cache-Control:
no-store``. Each is a :class:`ProblemResponse`, so that a guard around a
view that an inner guard refused knows the view did not run and never
stores that refusal as the view's response.
"""

from __future__ import annotations

import json

from django.http import HttpResponse

TYPE_PREFIX = "tag:django-idempotency,2026:"
CONFLICT_RETRY_AFTER = 1
"""Seconds a client should wait before retrying a request still in progress."""
OUTAGE_RETRY_AFTER = 5
"""Seconds a client should wait when the store is unreachable."""


class ProblemResponse(HttpResponse):
    """A refusal answered by this app: the view did not run."""


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    retry_after: int | None = None,
    **extensions: object,
) -> ProblemResponse:
    """A problem+json response; ``slug`` names the problem type.

    ``extensions`` are RFC 9457 extension members, added to the body as given.
    """
    body = {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    response = ProblemResponse(
        json.dumps(body), status=status, content_type="application/problem+json"
    )
    response["Cache-Control"] = "no-store"
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def key_missing(header: str) -> ProblemResponse:
    """400: the view requires a key and none was sent."""
    return problem_response(
        400,
        "key-missing",
        "Idempotency key missing",
        f"This endpoint requires an {header} header; send a unique value (e.g. a UUID) "
        "and reuse it when retrying the same request.",
    )


def key_invalid(header: str, reason: str) -> ProblemResponse:
    """400: the header is malformed."""
    return problem_response(
        400, "key-invalid", "Idempotency key invalid", f"The {header} header is invalid: {reason}"
    )


def request_in_progress() -> ProblemResponse:
    """409: the first request with this key is still running."""
    return problem_response(
        409,
        "request-in-progress",
        "Request in progress",
        "A request with this idempotency key is still being processed; retry later to get "
        "its response.",
        retry_after=CONFLICT_RETRY_AFTER,
    )


def claim_lost() -> ProblemResponse:
    """409: this request's claim lapsed and a retry took the key over; its work was undone.

    Sent instead of the view's response when that response was going to be
    stored inside the view's transaction and the claim turned out to be
    another request's (this worker froze past its lease): the transaction was
    rolled back, and the request that took over holds the key's response.
    """
    return problem_response(
        409,
        "claim-lost",
        "Request superseded",
        "This request took longer than its claim on the idempotency key lasted and another "
        "request with the same key took it over; this request's work was rolled back. Retry "
        "to get the response of the request that completed.",
        retry_after=CONFLICT_RETRY_AFTER,
    )


def key_reused() -> ProblemResponse:
    """422: the key was first used for a different request."""
    return problem_response(
        422,
        "key-reused",
        "Idempotency key reused",
        "This idempotency key was already used for a different request (method, path, query "
        "or body differ); use a new key for a new request.",
    )


def storage_unavailable() -> ProblemResponse:
    """503: the store could not be reached, so the view was not run."""
    return problem_response(
        503,
        "storage-unavailable",
        "Idempotency storage unavailable",
        "The request was not processed because its idempotency key could not be recorded; "
        "retry later with the same key.",
        retry_after=OUTAGE_RETRY_AFTER,
    )


def response_not_replayable(original_status: int) -> ProblemResponse:
    """409: the request was processed, but its response was not kept to replay.

    A 409 like a retry in progress, so that a client never takes it for
    success or for a reason to change the request, but with its own type and
    no ``Retry-After``: retrying again cannot help, the answer stays the same
    until the record expires. ``original_status`` tells what the view answered.
    """
    return problem_response(
        409,
        "response-not-replayable",
        "Response not replayable",
        f"A request with this idempotency key was already processed (it answered "
        f"{original_status}), but its response was not kept and cannot be replayed; it will "
        "not be processed again. Look up the outcome with a read request.",
        original_status=original_status,
    )


def body_unreadable(reason: str) -> ProblemResponse:
    """400: the body could not be read to fingerprint the request."""
    return problem_response(
        400,
        "body-unreadable",
        "Request body unreadable",
        f"The request body could not be read to identify the request: {reason}",
    )


def body_too_large(limit: int) -> ProblemResponse:
    """413: a body larger than Django reads into memory cannot be fingerprinted."""
    return problem_response(
        413,
        "body-too-large",
        "Request body too large",
        f"The request body is larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE), the "
        "most this server reads to identify a request; send it as a multipart/form-data "
        "file upload, or send a smaller body.",
    )
