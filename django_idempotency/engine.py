"""The state machine: claim, run, complete or release, replay, conflict, mismatch.

The middleware and the decorator are thin adapters over three steps:

1. ``begin`` (``abegin``): read the key, fingerprint the request and claim the
   storage key in one backend operation. The answer is a response to send
   right away (replay, 400, 409, 422, 503), a :class:`Guard` (the claim is
   ours: run the view), or None (not guarded: pass the request through).
2. The caller runs the view.
3. ``finish`` (``afinish``) stores the response or releases the claim;
   ``abort`` (``aabort``) releases it when the view raised.

Sync and async share every decision; they differ only in awaiting the
backend. The engine never asks which backend it talks to.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, TypeGuard

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import SimpleTemplateResponse

from django_idempotency import problems, signals
from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.conf import IdempotencySettings, Policy, get_backend, get_settings
from django_idempotency.fingerprint import fingerprint
from django_idempotency.keys import InvalidKey, log_label, parse_key, storage_key
from django_idempotency.records import Claim, ClaimOutcome, ClaimResult, State, StoredResponse
from django_idempotency.tokens import new_owner_token

logger = logging.getLogger("django_idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"
AUTO_KEY = "\x00auto"
"""Sentinel key of a keyless request under ``AUTO_KEY`` (no real key holds a NUL)."""
ANONYMOUS_SCOPE = "anonymous"
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


class Guard(NamedTuple):
    """A claim this request owns: the view must run, then finish or abort."""

    claim: Claim
    policy: Policy
    backend: BaseBackend
    request: HttpRequest


Decision = HttpResponseBase | Guard | None


# -- begin --------------------------------------------------------------------


def begin(request: HttpRequest, policy: Policy) -> Decision:
    """Decide what to do with a request before its view runs (sync)."""
    config = get_settings()
    key = _read_key(request, config, policy)
    if not isinstance(key, str):
        return key
    claim = _claim_for(request, policy, _scope(request, config), key)
    backend = get_backend()
    try:
        result = backend.claim(claim)
    except StorageError as error:
        return _claim_failed(request, config, backend, claim, error)
    return _decide(request, policy, backend, claim, result)


async def abegin(request: HttpRequest, policy: Policy) -> Decision:
    """Decide what to do with a request before its view runs (async)."""
    config = get_settings()
    key = _read_key(request, config, policy)
    if not isinstance(key, str):
        return key
    claim = _claim_for(request, policy, await _ascope(request, config), key)
    backend = get_backend()
    try:
        result = await backend.aclaim(claim)
    except StorageError as error:
        return _claim_failed(request, config, backend, claim, error)
    return _decide(request, policy, backend, claim, result)


def _read_key(
    request: HttpRequest, config: IdempotencySettings, policy: Policy
) -> str | HttpResponseBase | None:
    """The request's key, a 400, or None when the request passes unguarded.

    Checked before anything costlier (the user, the body): a malformed or
    missing key is answered without touching the session or the store.
    """
    if request.method not in policy.methods:
        return None
    raw_key = request.META.get(config.meta_key)
    if raw_key is None:
        if config.auto_key:
            return AUTO_KEY
        return problems.key_missing(config.header) if policy.required else None
    try:
        return parse_key(raw_key, config.max_key_length)
    except InvalidKey as error:
        return problems.key_invalid(config.header, error.reason)


def _claim_for(request: HttpRequest, policy: Policy, scope: str, key: str) -> Claim:
    """The claim this request makes; AUTO_KEY requests are keyed by their fingerprint."""
    path = request_path(request)
    method = request.method or ""
    request_fingerprint = fingerprint(scope, method, path, request.body)
    if key is AUTO_KEY:
        key = "auto:" + request_fingerprint
    # tuple.__new__ builds the named tuple without the Python frame of its
    # generated __new__: every first request and every replay comes here.
    return tuple.__new__(
        Claim,
        (
            storage_key(scope, key),
            key,
            scope,
            request_fingerprint,
            method,
            path,
            new_owner_token(),
            policy.lock_ttl,
        ),
    )


def request_path(request: HttpRequest) -> str:
    """The path and the query string, as fingerprinted and stored.

    The path as Django decoded it and the query string as the client sent
    it: the same request always gives the same string, two different ones
    never do, and it costs no re-encoding (``get_full_path()`` percent-encodes
    the path again on every call).
    """
    query = request.META.get("QUERY_STRING")
    return f"{request.path}?{query}" if query else request.path


def _scope(request: HttpRequest, config: IdempotencySettings) -> str:
    scope = config.scope
    if scope == "user":
        try:
            user = request.user
        except AttributeError:
            raise _no_user_error() from None
        return _user_scope(user)
    if scope is None:
        return ""
    return _custom_scope(request, scope(request))


async def _ascope(request: HttpRequest, config: IdempotencySettings) -> str:
    scope = config.scope
    if scope == "user":
        auser = getattr(request, "auser", None)
        if auser is None:
            raise _no_user_error()
        return _user_scope(await auser())
    if scope is None:
        return ""
    return _custom_scope(request, await sync_to_async(scope)(request))


def _no_user_error() -> ImproperlyConfigured:
    return ImproperlyConfigured(
        "IDEMPOTENCY['SCOPE'] is 'user' but the request has no user: put "
        "'django_idempotency.middleware.IdempotencyMiddleware' after "
        "'django.contrib.auth.middleware.AuthenticationMiddleware' in MIDDLEWARE, "
        "or set IDEMPOTENCY['SCOPE'] to None or a callable."
    )


def _user_scope(user: Any) -> str:
    """Each authenticated user has a scope of their own; anonymous clients share one."""
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return ANONYMOUS_SCOPE


MAX_SCOPE_LENGTH = 255
"""What every store keeps of a scope (the database column's length)."""


def _custom_scope(request: HttpRequest, scope: object) -> str:
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        raise ImproperlyConfigured(
            f"The IDEMPOTENCY['SCOPE'] callable must return a str of at most "
            f"{MAX_SCOPE_LENGTH} characters; it returned {scope!r:.80}."
        )
    return scope


def _decide(
    request: HttpRequest,
    policy: Policy,
    backend: BaseBackend,
    claim: Claim,
    result: ClaimResult,
) -> Decision:
    """Turn the claim's outcome into a guard or a response."""
    record = result.record
    outcome = result.outcome
    if outcome is not ClaimOutcome.EXISTING:
        # The hot path: the emit checks are inlined so that nobody listening costs nothing.
        if signals.claimed.receivers or logger.isEnabledFor(logging.DEBUG):
            _emit(signals.claimed, logging.DEBUG, "claimed", request, backend, claim, record=record)
        if outcome is ClaimOutcome.TAKEN_OVER:
            _emit(
                signals.taken_over,
                logging.WARNING,
                "taken over (the previous lease expired)",
                request,
                backend,
                claim,
                record=record,
            )
        return tuple.__new__(Guard, (claim, policy, backend, request))  # see _claim_for
    if record.fingerprint != claim.fingerprint:
        _emit(
            signals.mismatch,
            logging.WARNING,
            "reused for a different request (422)",
            request,
            backend,
            claim,
            record=record,
        )
        return problems.key_reused()
    if record.state is State.IN_PROGRESS or record.response is None:
        _emit(
            signals.conflict,
            logging.INFO,
            "still in progress (409)",
            request,
            backend,
            claim,
            record=record,
        )
        return problems.request_in_progress()
    _emit(signals.replayed, logging.INFO, "replayed", request, backend, claim, record=record)
    return replay_response(record.response)


def _claim_failed(
    request: HttpRequest,
    config: IdempotencySettings,
    backend: BaseBackend,
    claim: Claim,
    error: StorageError,
) -> HttpResponseBase | None:
    passing = config.on_storage_error == "pass"
    consequence = "running the view unguarded" if passing else "answering 503"
    _emit(
        signals.storage_error,
        logging.WARNING if passing else logging.ERROR,
        f"storage error on claim, {consequence}: {error}",
        request,
        backend,
        claim,
        operation="claim",
        error=error,
    )
    return None if passing else problems.storage_unavailable()


# -- finish -------------------------------------------------------------------


def finish(guard: Guard, response: HttpResponseBase) -> HttpResponseBase:
    """Store the view's response for replay, or release the claim (sync)."""
    if _awaits_rendering(response):
        response.add_post_render_callback(lambda rendered: _finish_now(guard, rendered))
        return response
    return _finish_now(guard, response)


def _finish_now(guard: Guard, response: HttpResponseBase) -> HttpResponseBase:
    claim, policy, backend, _ = guard
    reason = _release_reason(response, policy)
    try:
        if reason is None:
            stored = backend.complete(
                claim.storage_key, claim.owner_token, stored_response(response), policy.ttl
            )
        else:
            stored = backend.release(claim.storage_key, claim.owner_token)
    except StorageError as error:
        _finish_failed(guard, reason, error)
    else:
        _after_finish(guard, response, reason, stored)
    return response


async def afinish(guard: Guard, response: HttpResponseBase) -> HttpResponseBase:
    """Store the view's response for replay, or release the claim (async)."""
    if _awaits_rendering(response):
        # Django renders in a worker thread (sync_to_async), so the sync path runs there.
        response.add_post_render_callback(lambda rendered: _finish_now(guard, rendered))
        return response
    claim, policy, backend, _ = guard
    reason = _release_reason(response, policy)
    try:
        if reason is None:
            stored = await backend.acomplete(
                claim.storage_key, claim.owner_token, stored_response(response), policy.ttl
            )
        else:
            stored = await backend.arelease(claim.storage_key, claim.owner_token)
    except StorageError as error:
        _finish_failed(guard, reason, error)
    else:
        _after_finish(guard, response, reason, stored)
    return response


def abort(guard: Guard) -> None:
    """Release the claim because the view raised (sync)."""
    try:
        released = guard.backend.release(guard.claim.storage_key, guard.claim.owner_token)
    except StorageError as error:
        _finish_failed(guard, "exception", error)
    else:
        _released(guard, "exception", released)


async def aabort(guard: Guard) -> None:
    """Release the claim because the view raised (async)."""
    try:
        released = await guard.backend.arelease(guard.claim.storage_key, guard.claim.owner_token)
    except StorageError as error:
        _finish_failed(guard, "exception", error)
    else:
        _released(guard, "exception", released)


def _awaits_rendering(response: HttpResponseBase) -> TypeGuard[SimpleTemplateResponse]:
    """A template response (DRF's ``Response`` too) is stored once Django renders it.

    The decorator returns it before the handler renders it; its bytes do not
    exist yet.
    """
    return isinstance(response, SimpleTemplateResponse) and not response.is_rendered


def _release_reason(response: HttpResponseBase, policy: Policy) -> str | None:
    """Why the response must not be stored, or None to store it."""
    if response.streaming:
        return "streaming response"
    status = response.status_code
    if status < 500 and status not in policy.retryable_statuses:
        return None
    return f"status {status}"


def _after_finish(guard: Guard, response: HttpResponseBase, reason: str | None, ok: bool) -> None:
    """Log and signal how finishing went; a stored response nobody listens for costs one test."""
    if (
        reason is None
        and ok
        and not (signals.completed.receivers or logger.isEnabledFor(logging.DEBUG))
    ):
        return
    if reason is not None:
        _released(guard, reason, ok)
    elif not ok:
        logger.warning(
            "idempotency key %s: the response was not stored, the claim was no longer ours "
            "(its lease expired and it was taken over or purged); raise LOCK_TTL above the "
            "view's longest run",
            log_label(guard.claim.storage_key),
        )
    else:
        _emit(
            signals.completed,
            logging.DEBUG,
            "completed",
            guard.request,
            guard.backend,
            guard.claim,
            status=response.status_code,
        )


def _released(guard: Guard, reason: str, ok: bool) -> None:
    if ok:
        level = logging.WARNING if reason == "streaming response" else logging.INFO
        _emit(
            signals.released,
            level,
            f"released ({reason})",
            guard.request,
            guard.backend,
            guard.claim,
            reason=reason,
        )


def _finish_failed(guard: Guard, reason: str | None, error: StorageError) -> None:
    operation = "complete" if reason is None else "release"
    _emit(
        signals.storage_error,
        logging.ERROR,
        f"storage error on {operation}; the response was returned but the claim stays "
        f"until its lease expires: {error}",
        guard.request,
        guard.backend,
        guard.claim,
        operation=operation,
        error=error,
    )


# -- responses ----------------------------------------------------------------


def stored_response(response: HttpResponseBase) -> StoredResponse:
    """What is kept of a response: status, replayable headers, body bytes."""
    assert isinstance(response, HttpResponse)  # streaming responses are never stored
    # ResponseHeaders keeps {lowercased name: (name, value)}: reading that dict
    # skips the Mapping protocol's generators and a lower() per header, which
    # were a third of the cost of storing a response.
    headers = []
    for name, pair in response.headers._store.items():
        if name not in UNSTORED_HEADERS:
            headers.append(pair)
    return tuple.__new__(  # see _claim_for
        StoredResponse, (response.status_code, tuple(headers), response.content)
    )


def replay_response(stored: StoredResponse) -> HttpResponse:
    """The stored response, byte for byte, marked ``Idempotent-Replayed: true``."""
    response = HttpResponse(stored.body, status=stored.status)
    del response["Content-Type"]
    for name, value in stored.headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


# -- events -------------------------------------------------------------------


def _emit(
    signal: Signal,
    level: int,
    message: str,
    request: HttpRequest,
    backend: BaseBackend,
    claim: Claim,
    **extra: Any,
) -> None:
    """Log one line and send one signal for one event; never the raw key.

    Hot-path callers check ``signal.receivers or logger.isEnabledFor(level)``
    first, so that an event nobody listens to costs no call.
    """
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "idempotency key %s (%s %s): %s",
            log_label(claim.storage_key),
            claim.method,
            request.path,
            message,
        )
    if signal.receivers:
        signal.send(
            sender=type(backend),
            request=request,
            storage_key=claim.storage_key,
            scope=claim.scope,
            **extra,
        )
