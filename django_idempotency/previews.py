"""What the admin shows of a stored response: status, headers, a readable body.

The database admin's change page and the store pages share it, so a record
looks the same whatever holds it. Everything shown is escaped by the
templates: bodies are whatever a view returned, and a stored ``<script>``
must stay text.
"""

from __future__ import annotations

import http
import json
from dataclasses import dataclass
from typing import Literal

from django.utils.http import parse_header_parameters
from django.utils.translation import gettext_lazy as _

from django_idempotency.records import StoredResponse

TEXT_LIMIT = 10 * 1024
"""Characters of a text or JSON body the admin shows; the rest is cut with a note."""
JSON_PARSE_LIMIT = 1024 * 1024
"""Bodies larger than this (bytes) are shown as text, not parsed to be pretty-printed."""
REQUEST_BODY_HELP = _(
    "Request bodies are never stored: the fingerprint (a SHA-256 of the scope, method, "
    "path and body of the first request) is all that identifies the request."
)

BodyKind = Literal["empty", "json", "text", "binary", "not_kept"]

_TEXT_MEDIA_TYPES = frozenset(
    {
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
    }
)
_ALLOWED_CONTROL_CHARACTERS = frozenset("\t\n\r\f")


@dataclass(frozen=True)
class BodyPreview:
    """What the admin shows of a stored body."""

    kind: BodyKind
    text: str
    """The (pretty-printed, truncated) text; empty for binary and empty bodies."""
    size: int
    """The body's size in bytes."""
    content_type: str
    shown_characters: int = 0
    total_characters: int = 0

    @property
    def truncated(self) -> bool:
        """Whether ``text`` is only the start of the body."""
        return self.shown_characters < self.total_characters


@dataclass(frozen=True)
class ResponsePreview:
    """A stored response as the admin shows it."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: BodyPreview


def preview_response(response: StoredResponse) -> ResponsePreview:
    """Status with its reason phrase, the headers, and a readable body.

    A response whose body was not kept (the store refused it) says so: the
    view ran, and its retries are told that instead of getting a replay.
    """
    reason = response.reason
    if not reason:
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
    content_type = next(
        (value for name, value in response.headers if name.lower() == "content-type"), ""
    )
    body = (
        BodyPreview("not_kept", "", 0, content_type)
        if response.body is None
        else preview_body(response.body, content_type)
    )
    return ResponsePreview(
        status=response.status, reason=reason, headers=response.headers, body=body
    )


def preview_body(body: bytes, content_type: str, limit: int = TEXT_LIMIT) -> BodyPreview:
    """Pretty JSON, text cut at ``limit`` characters, or only the size of a binary body.

    A body is JSON when its Content-Type says so, or when it is text whose
    content parses as a JSON object or array. A declared non-text media type
    (``application/octet-stream``, ``image/png``...) is binary without looking
    at the bytes; so is a body that does not decode in its charset or holds
    control characters.
    """
    size = len(body)
    if not body:
        return BodyPreview("empty", "", 0, content_type)
    media_type, params = parse_header_parameters(content_type) if content_type else ("", {})
    media_type = media_type.lower()
    if media_type and not _is_textual(media_type):
        return BodyPreview("binary", "", size, content_type)
    text = _decode(body, params.get("charset", "utf-8"))
    if text is None:
        return BodyPreview("binary", "", size, content_type)
    kind: BodyKind = "text"
    if size <= JSON_PARSE_LIMIT and (_is_json(media_type) or text.lstrip()[:1] in {"{", "["}):
        pretty = _pretty_json(text)
        if pretty is not None:
            kind, text = "json", pretty
    return BodyPreview(
        kind,
        text[:limit],
        size,
        content_type,
        shown_characters=min(len(text), limit),
        total_characters=len(text),
    )


def _is_json(media_type: str) -> bool:
    return media_type.endswith(("/json", "+json"))


def _is_textual(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or _is_json(media_type)
        or media_type.endswith(("/xml", "+xml"))
        or media_type in _TEXT_MEDIA_TYPES
    )


def _decode(body: bytes, charset: str) -> str | None:
    """The body as text, or None when it is not text in ``charset`` (or UTF-8)."""
    try:
        text = body.decode(charset)
    except LookupError:
        return _decode(body, "utf-8") if charset.lower() != "utf-8" else None
    except UnicodeDecodeError:
        return None
    if any(char < " " and char not in _ALLOWED_CONTROL_CHARACTERS for char in text):
        return None
    return text


def _pretty_json(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False)
