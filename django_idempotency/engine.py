"""The state machine: claim, run, complete or release, replay, conflict, mismatch.

The middleware and the decorator are thin adapters over three steps:

1. ``begin`` (``abegin``): turn the request into its claim
   (:mod:`~django_idempotency.claims`) and claim the storage key in one
   backend operation (again while an identical request runs, with ``WAIT``:
   :mod:`~django_idempotency.waiting`). The answer is a response to send
   right away (replay, 400, 409, 422, 503), a :class:`Guard` (the claim is
   ours: run the view), or None (not guarded: pass the request through).
2. The caller runs the view, while the guard's lease is renewed
   (:mod:`~django_idempotency.leases`).
3. ``finish`` (``afinish``) stores the response or releases the claim;
   ``abort`` (``aabort``) releases it when the view raised an ``Exception``;
   ``interrupt`` keeps it when the view was interrupted (its process
   stopping, its task cancelled): what it did is unknown, so the claim lives
   until its lease ends and a retry then takes it over.

Sync and async share every decision; they differ only in awaiting the
backend. The engine never asks which backend it talks to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, TypeGuard

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import SimpleTemplateResponse

from django_idempotency import leases, problems, signals, waiting
from django_idempotency.backends.base import BaseBackend, RolledBack, StorageError
from django_idempotency.backends.handler import get_backend
from django_idempotency.claims import BodyReader, aclaim_of, claim_of
from django_idempotency.conf import Policy
from django_idempotency.events import emit
from django_idempotency.fingerprint import request_body
from django_idempotency.records import Claim, ClaimOutcome, ClaimResult, State, StoredResponse
from django_idempotency.responses import replay_response, stored_response, unkept_body_reason


class Guard(NamedTuple):
    """A claim this request owns: the view must run, then finish or abort."""

    claim: Claim
    policy: Policy
    backend: BaseBackend
    request: HttpRequest
    lease: leases.Lease
    """Renewed while the view runs; every way out of the view stops it."""


Decision = HttpResponseBase | Guard | None


# -- begin --------------------------------------------------------------------


def begin(request: HttpRequest, policy: Policy, body: BodyReader = request_body) -> Decision:
    """Decide what to do with a request before its view runs (sync)."""
    claim = claim_of(request, policy, body)
    if not isinstance(claim, Claim):
        return claim
    backend = get_backend()
    try:
        result = backend.claim(claim)
        if policy.wait and waiting.is_waiting_for(result, claim):
            result = waiting.wait(backend, claim, result, policy.wait)
    except StorageError as error:
        return _claim_failed(request, policy, backend, claim, error)
    return _decide(request, policy, backend, claim, result, leases.keep)


async def abegin(request: HttpRequest, policy: Policy, body: BodyReader = request_body) -> Decision:
    """Decide what to do with a request before its view runs (async)."""
    claim = await aclaim_of(request, policy, body)
    if not isinstance(claim, Claim):
        return claim
    backend = get_backend()
    try:
        result = await backend.aclaim(claim)
        if policy.wait and waiting.is_waiting_for(result, claim):
            result = await waiting.await_(backend, claim, result, policy.wait)
    except StorageError as error:
        return _claim_failed(request, policy, backend, claim, error)
    return _decide(request, policy, backend, claim, result, leases.akeep)


def _decide(
    request: HttpRequest,
    policy: Policy,
    backend: BaseBackend,
    claim: Claim,
    result: ClaimResult,
    keep: Callable[[Claim, BaseBackend, HttpRequest], leases.Lease],
) -> Decision:
    """Turn the claim's outcome into a guard or a response."""
    record = result.record
    outcome = result.outcome
    if outcome is not ClaimOutcome.EXISTING:
        emit(signals.claimed, logging.DEBUG, "claimed", request, backend, claim, record=record)
        if outcome is ClaimOutcome.TAKEN_OVER:
            emit(
                signals.taken_over,
                logging.WARNING,
                "taken over (the previous lease expired)",
                request,
                backend,
                claim,
                record=record,
            )
        lease = keep(claim, backend, request)
        return Guard(claim=claim, policy=policy, backend=backend, request=request, lease=lease)
    if record.fingerprint != claim.fingerprint:
        emit(
            signals.mismatch,
            logging.WARNING,
            "reused for a different request (422)",
            request,
            backend,
            claim,
            record=record,
        )
        return problems.key_reused()
    response = record.response
    if record.state is State.IN_PROGRESS or response is None:
        emit(
            signals.conflict,
            logging.INFO,
            "still in progress (409)",
            request,
            backend,
            claim,
            record=record,
        )
        return problems.request_in_progress()
    if not response.replayable:
        emit(
            signals.conflict,
            logging.INFO,
            "already processed, its response was not kept (409)",
            request,
            backend,
            claim,
            record=record,
        )
        return problems.response_not_replayable(response.status)
    emit(signals.replayed, logging.INFO, "replayed", request, backend, claim, record=record)
    return replay_response(response)


def _claim_failed(
    request: HttpRequest,
    policy: Policy,
    backend: BaseBackend,
    claim: Claim,
    error: StorageError,
) -> HttpResponseBase | None:
    passing = policy.settings.on_storage_error == "pass"
    consequence = "running the view unguarded" if passing else "answering 503"
    emit(
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


def finish(guard: Guard, response: object) -> Any:
    """Store the view's response for replay, or release the claim (sync).

    Whatever goes wrong here, the claim is not left stuck: a view that
    returned no response, a template that fails to render and an error
    while finishing all release it (Django answers 500, a retry runs again).
    """
    guard.lease.stop()
    if not isinstance(response, HttpResponseBase):
        abort(guard, "the view returned no response")
        return response
    if _awaits_rendering(response):
        _finish_when_rendered(guard, response)
        return response
    try:
        return _finish_now(guard, response)
    except Exception:
        abort(guard)
        raise


async def afinish(guard: Guard, response: object) -> Any:
    """Store the view's response for replay, or release the claim (async)."""
    guard.lease.stop()
    if not isinstance(response, HttpResponseBase):
        await aabort(guard, "the view returned no response")
        return response
    if _awaits_rendering(response):
        # Django renders in a worker thread (sync_to_async), so the sync path runs there.
        _finish_when_rendered(guard, response)
        return response
    try:
        return await _afinish_now(guard, response)
    except Exception:
        await aabort(guard)
        raise


def abort(guard: Guard, reason: str = "exception") -> None:
    """Release the claim because the view failed (sync)."""
    guard.lease.stop()
    backend, claim = guard.backend, guard.claim
    try:
        released = backend.release(claim.storage_key, claim.owner_token)
    except StorageError as error:
        _storage_failed(guard, "release", error)
    else:
        _released(guard, reason, released)


async def aabort(guard: Guard, reason: str = "exception") -> None:
    """Release the claim because the view failed (async)."""
    guard.lease.stop()
    backend, claim = guard.backend, guard.claim
    try:
        released = await backend.arelease(claim.storage_key, claim.owner_token)
    except StorageError as error:
        _storage_failed(guard, "release", error)
    else:
        _released(guard, reason, released)


def interrupt(guard: Guard, error: BaseException) -> None:
    """Keep the claim of a view that was interrupted, until its lease ends.

    ``SystemExit`` (gunicorn's ``--timeout``), ``KeyboardInterrupt`` and
    ``asyncio.CancelledError`` (an ASGI client that disconnected) stop a view
    at an unknown point: it may have done its work. Releasing would let an
    immediate retry run it again; keeping the claim until its lease ends
    (renewal stops here) answers retries 409 meanwhile, then lets one take
    it over. Both adapters call this, so they agree.
    """
    guard.lease.stop()
    emit(
        signals.interrupted,
        logging.WARNING,
        f"interrupted ({type(error).__name__}); the claim is kept until its lease ends",
        guard.request,
        guard.backend,
        guard.claim,
        error=error,
    )


def _finish_now(guard: Guard, response: HttpResponseBase) -> HttpResponseBase:
    """The response to send: the view's, or a problem when its work was rolled back."""
    reason = _release_reason(response, guard.policy)
    if reason is not None:
        abort(guard, reason)
        return response
    unkept = unkept_body_reason(response, guard.policy.settings.max_response_bytes)
    stored = stored_response(response, keep_body=unkept is None)
    try:
        guard.backend.defer_until_commit(partial(_complete, guard, stored, unkept))
    except RolledBack as rolled_back:
        return _rolled_back(guard, rolled_back)
    except StorageError as error:
        _storage_failed(guard, "complete", error)
    return response


async def _afinish_now(guard: Guard, response: HttpResponseBase) -> HttpResponseBase:
    reason = _release_reason(response, guard.policy)
    if reason is not None:
        await aabort(guard, reason)
        return response
    # An async view runs outside any transaction (ATOMIC_REQUESTS refuses
    # them), so there is no commit to wait for.
    unkept = unkept_body_reason(response, guard.policy.settings.max_response_bytes)
    try:
        await _acomplete(guard, stored_response(response, keep_body=unkept is None), unkept)
    except RolledBack as rolled_back:
        return _rolled_back(guard, rolled_back)
    return response


def _rolled_back(guard: Guard, rolled_back: RolledBack) -> HttpResponseBase:
    """The view's transaction will roll back with its response: answer a problem instead.

    A claim that was lost (a retry took it over and ran the view) is a 409:
    retrying gets the new owner's response. A store that failed is a 503
    whose claim is released, so the retry runs the view again.
    """
    if rolled_back.lost:
        leases.lost(guard.claim, guard.backend, guard.request, "complete")
        return problems.claim_lost()
    emit(
        signals.storage_error,
        logging.ERROR,
        f"storage error on complete; the view's transaction is rolled back: {rolled_back}",
        guard.request,
        guard.backend,
        guard.claim,
        operation="complete",
        error=rolled_back,
    )
    abort(guard, "the view's transaction was rolled back")
    return problems.storage_unavailable()


def _complete(guard: Guard, stored: StoredResponse, unkept: str | None = None) -> None:
    """Store the response; if the store refuses it, record that the view ran.

    ``unkept`` says why the body was left out (a streaming response, one over
    ``MAX_RESPONSE_BYTES``), for the warning that the record cannot replay.
    """
    backend, claim, ttl = guard.backend, guard.claim, guard.policy.ttl
    try:
        ok = backend.complete(claim.storage_key, claim.owner_token, stored, ttl)
    except StorageError as error:
        _refused(guard, error)
        stored = stored.status_only()
        try:
            ok = backend.complete(claim.storage_key, claim.owner_token, stored, ttl)
        except StorageError as second_error:
            _storage_failed(guard, "complete", second_error)
            return
        unkept = None  # _refused said why, as an error
    _completed(guard, stored, ok, unkept)


async def _acomplete(guard: Guard, stored: StoredResponse, unkept: str | None = None) -> None:
    """Async :func:`_complete`."""
    backend, claim, ttl = guard.backend, guard.claim, guard.policy.ttl
    try:
        ok = await backend.acomplete(claim.storage_key, claim.owner_token, stored, ttl)
    except StorageError as error:
        _refused(guard, error)
        stored = stored.status_only()
        try:
            ok = await backend.acomplete(claim.storage_key, claim.owner_token, stored, ttl)
        except StorageError as second_error:
            _storage_failed(guard, "complete", second_error)
            return
        unkept = None  # _refused said why, as an error
    _completed(guard, stored, ok, unkept)


def _finish_when_rendered(guard: Guard, response: SimpleTemplateResponse) -> None:
    """Finish once Django renders the response, and release if rendering fails.

    A template response (Django REST framework's ``Response`` too) returned
    through the decorator is rendered by the handler later, so its bytes do
    not exist yet. Its ``render`` is wrapped on this one instance; the wrapper
    removes itself first, so the rendered response pickles as usual (the
    cache middleware pickles it in a post-render callback).
    """
    render = response.render

    def render_then_finish() -> Any:
        del response.__dict__["render"]
        try:
            rendered = render()
        except Exception:
            abort(guard, "rendering failed")
            raise
        return finish(guard, rendered)

    response.__dict__["render"] = render_then_finish


def _awaits_rendering(response: HttpResponseBase) -> TypeGuard[SimpleTemplateResponse]:
    """A template response the handler has not rendered yet."""
    return isinstance(response, SimpleTemplateResponse) and not response.is_rendered


def _release_reason(response: HttpResponseBase, policy: Policy) -> str | None:
    """Why the response must not be stored, or None to store it."""
    if isinstance(response, problems.ProblemResponse):
        # An inner guard refused the request: the view did not run.
        return "answered by the idempotency check, not by the view"
    status = response.status_code
    if status < 500 and status not in policy.retryable_statuses:
        return None
    return f"status {status}"


def _completed(guard: Guard, stored: StoredResponse, ok: bool, unkept: str | None) -> None:
    """Log and signal how completing went; a response left unkept is a warning, once."""
    if not ok:
        leases.lost(guard.claim, guard.backend, guard.request, "complete")
        return
    if unkept is not None:
        level = logging.WARNING
        message = (
            f"completed without its response ({unkept}): retries within TTL are answered "
            "409 response-not-replayable"
        )
    elif stored.replayable:
        level, message = logging.DEBUG, "completed"
    else:
        level, message = logging.DEBUG, "completed without its response (not replayable)"
    emit(
        signals.completed,
        level,
        message,
        guard.request,
        guard.backend,
        guard.claim,
        status=stored.status,
        replayable=stored.replayable,
    )


def _released(guard: Guard, reason: str, ok: bool) -> None:
    if not ok:
        leases.lost(guard.claim, guard.backend, guard.request, "release")
        return
    emit(
        signals.released,
        logging.INFO,
        f"released ({reason})",
        guard.request,
        guard.backend,
        guard.claim,
        reason=reason,
    )


def _refused(guard: Guard, error: StorageError) -> None:
    emit(
        signals.storage_error,
        logging.ERROR,
        f"storage error on complete; recording that the view ran, without its response "
        f"(a retry is told so and does not run it again): {error}",
        guard.request,
        guard.backend,
        guard.claim,
        operation="complete",
        error=error,
    )


def _storage_failed(guard: Guard, operation: str, error: StorageError) -> None:
    emit(
        signals.storage_error,
        logging.ERROR,
        f"storage error on {operation}; the claim stays until its lease expires: {error}",
        guard.request,
        guard.backend,
        guard.claim,
        operation=operation,
        error=error,
    )
