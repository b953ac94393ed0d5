"""Turning a request into the claim it makes: key, scope, path, fingerprint, token.

Everything the engine needs to know about a request before it asks the
store is read here, in one pass and in the order that costs least: the key
first (a missing or malformed key is answered without touching the session,
the body or the store), then the scope and the body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, RawPostDataException, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase
from django.utils.encoding import escape_uri_path

from django_idempotency import problems
from django_idempotency.conf import Policy
from django_idempotency.fingerprint import fingerprint, request_body
from django_idempotency.keys import InvalidKey, parse_key, storage_key
from django_idempotency.records import Claim
from django_idempotency.scopes import ascope_of, scope_of
from django_idempotency.tokens import new_owner_token

logger = logging.getLogger("django_idempotency")

AUTO_KEY = "\x00auto"
"""Sentinel key of a keyless request under ``AUTO_KEY`` (no real key holds a NUL)."""
AUTO_KEY_PREFIX = "auto\N{MIDDLE DOT}"
"""What the key derived from a keyless request's fingerprint starts with.

Not ASCII, so no header can carry it (a client key is printable ASCII): a
client that sends a key looking like a derived one can never take the place
of somebody's keyless request."""

ClaimOrAnswer = Claim | HttpResponseBase | None
"""The claim to make, a response to send at once (400, 413), or None: not guarded."""
BodyReader = Callable[[HttpRequest], tuple[bytes, str]]
"""What stands for a request's body in its fingerprint, and its kind."""


def claim_of(
    request: HttpRequest, policy: Policy, body: BodyReader = request_body
) -> ClaimOrAnswer:
    """The claim this request makes under ``policy`` (sync).

    ``body`` reads the body: an integration whose framework may have parsed
    the stream already (Django REST framework) passes its own.
    """
    key = read_key(request, policy)
    if not isinstance(key, str):
        return key
    return _claim(request, policy, scope_of(request, policy.settings), key, body)


async def aclaim_of(
    request: HttpRequest, policy: Policy, body: BodyReader = request_body
) -> ClaimOrAnswer:
    """The claim this request makes under ``policy`` (async)."""
    key = read_key(request, policy)
    if not isinstance(key, str):
        return key
    return _claim(request, policy, await ascope_of(request, policy.settings), key, body)


def read_key(request: HttpRequest, policy: Policy) -> str | HttpResponseBase | None:
    """The request's key, a 400, or None when the request passes unguarded."""
    if request.method not in policy.methods:
        return None
    settings = policy.settings
    raw_key = request.META.get(settings.meta_key)
    if raw_key is None:
        if settings.auto_key:
            return AUTO_KEY
        return problems.key_missing(settings.header) if policy.required else None
    try:
        return parse_key(raw_key, settings.max_key_length)
    except InvalidKey as error:
        return problems.key_invalid(settings.header, error.reason)


def _claim(
    request: HttpRequest, policy: Policy, scope: str, key: str, body_of: BodyReader
) -> Claim | HttpResponseBase:
    """The claim, or a 400/413 when the body cannot be read to fingerprint it.

    The path is percent-encoded again as Django's ``get_full_path()`` does:
    a ``?`` or a NUL inside the decoded path can then be neither mistaken
    for the query string nor refused by a database.
    """
    path = escape_uri_path(request.path)
    query = request.META.get("QUERY_STRING", "")
    method = request.method or ""
    try:
        body, body_kind = body_of(request)
    except RequestDataTooBig:
        return problems.body_too_large(django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    except (RawPostDataException, MultiPartParserError, UnreadablePostError) as error:
        logger.warning("idempotency: the body of %s %s cannot be read: %s", method, path, error)
        return problems.body_unreadable(str(error))
    request_fingerprint = fingerprint(scope, method, path, query, body, body_kind)
    if key is AUTO_KEY:
        key = AUTO_KEY_PREFIX + request_fingerprint
    return Claim(
        storage_key=storage_key(scope, key),
        key=key,
        scope=scope,
        fingerprint=request_fingerprint,
        method=method,
        path=f"{path}?{query}" if query else path,
        owner_token=new_owner_token(),
        lease_seconds=policy.lock_ttl,
    )
