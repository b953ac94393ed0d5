"""What is kept of a view's response, and the replay made from it.

Replays carry the stored status, reason phrase, body and headers, except
those that belong to one client, one moment or one connection, plus
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from http.client import responses

from django.http import HttpResponse
from django.http.response import HttpResponseBase

from django_idempotency.records import StoredResponse

REPLAYED_HEADER = "Idempotent-Replayed"
UNSTORED_HEADERS = frozenset(
    {
        "set-cookie",
        "date",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Never replayed: cookies belong to one client, Date to one moment, and
hop-by-hop headers to one connection."""


def unkept_body_reason(response: HttpResponseBase, max_body_bytes: int | None) -> str | None:
    """Why the response's body cannot be kept for replay, or None when it can.

    A streaming response's body does not exist yet (it is produced while it is
    sent, and may be endless); a body over ``MAX_RESPONSE_BYTES`` would make
    every record that large. Either way the view ran, so the record is
    completed without the body: retries are told so, never run again.
    """
    if response.streaming:
        return "a streaming response"
    if max_body_bytes is not None:
        size = len(response.content)  # type: ignore[attr-defined]
        if size > max_body_bytes:
            return f"{size} bytes, over MAX_RESPONSE_BYTES ({max_body_bytes})"
    return None


def stored_response(response: HttpResponseBase, keep_body: bool = True) -> StoredResponse:
    """What is kept of a response: status, reason phrase, replayable headers, body.

    Without ``keep_body`` the body is left out (None): the record says that
    the view ran and how it answered, but cannot replay it.
    """
    headers = tuple(
        (name, value) for name, value in response.items() if name.lower() not in UNSTORED_HEADERS
    )
    status = response.status_code
    reason = response.reason_phrase
    if reason == responses.get(status, "Unknown Status Code"):
        reason = ""  # the standard phrase: replayed from the status alone
    body = response.content if keep_body else None  # type: ignore[attr-defined]
    return StoredResponse(status=status, headers=headers, body=body, reason=reason)


def replay_response(stored: StoredResponse) -> HttpResponse:
    """The stored response, byte for byte, marked ``Idempotent-Replayed: true``."""
    response = HttpResponse(stored.body, status=stored.status, reason=stored.reason or None)
    del response["Content-Type"]
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response
