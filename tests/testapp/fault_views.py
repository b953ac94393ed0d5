"""Views the fault tests send to real servers: stuck, frozen and crashing workers.

Each writes a ``SideEffect`` row labelled from the URL (the payload is the
worker's pid, so a test can stop or freeze that very process) and misbehaves
only during its first execution for that label: the retry that takes a
claim over then runs quickly.
"""

from __future__ import annotations

import asyncio
import os
import time

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from django_idempotency import idempotent, idempotent_exempt
from django_idempotency.conf import get_settings
from tests.testapp.models import SideEffect

AWAKE_STEP = 0.1
"""The frozen view sleeps in steps this long, so time spent stopped does not count."""


def _created(effect: SideEffect) -> JsonResponse:
    return JsonResponse({"id": effect.pk, "label": effect.label, "pid": os.getpid()}, status=201)


def _record(label: str, using: str = "default") -> tuple[SideEffect, bool]:
    """A row for this execution, and whether it is the label's first."""
    effect = SideEffect.objects.using(using).create(label=label, payload=str(os.getpid()))
    return effect, SideEffect.objects.using(using).filter(label=label).count() == 1


def records_database() -> str:
    """The database alias of DatabaseBackend's records."""
    return str(get_settings().options.get("DATABASE", "default"))


# -- stuck until the worker is stopped (gunicorn's --timeout) ------------------------------


def stuck(request: HttpRequest, label: str) -> HttpResponse:
    """Guarded by the middleware: a row, then ``?sleep=`` seconds the first time."""
    effect, first = _record(label)
    if first:
        time.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


@idempotent
def decorated_stuck(request: HttpRequest, label: str) -> HttpResponse:
    """The same under the decorator."""
    return stuck(request, label)


async def async_stuck(request: HttpRequest, label: str) -> HttpResponse:
    """An async view guarded by the middleware."""
    effect, first = await sync_to_async(_record)(label)
    if first:
        await asyncio.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


@idempotent
async def decorated_async_stuck(request: HttpRequest, label: str) -> HttpResponse:
    """The async view under the decorator."""
    return await async_stuck(request, label)


# -- frozen with SIGSTOP, then resumed -----------------------------------------------------


def _stay_awake(request: HttpRequest) -> None:
    """Run ``?awake=`` seconds of the worker's own time, in short sleeps.

    A worker stopped with SIGSTOP resumes in the middle of a short sleep, so
    after SIGCONT it still has nearly all of its awake time ahead of it: its
    renewal (overdue by then) runs while the view has not returned yet.
    """
    for _ in range(round(float(request.GET.get("awake", "0")) / AWAKE_STEP)):
        time.sleep(AWAKE_STEP)


def frozen(request: HttpRequest, label: str) -> HttpResponse:
    """Guarded by the middleware: a row, then ``?awake=`` seconds; ``?then=raise`` fails."""
    effect, first = _record(label)
    if first:
        # Written once this execution knows it is the first, naming the worker to freeze:
        # frozen any earlier, it would count the takeover's row and skip its misbehaviour.
        SideEffect.objects.create(label=f"{label}-worker", payload=str(os.getpid()))
        _stay_awake(request)
        if request.GET.get("then") == "raise":
            raise RuntimeError("the frozen view fails after it resumed")
    return _created(effect)


@idempotent
def _frozen_in_transaction(request: HttpRequest, label: str) -> HttpResponse:
    alias = records_database()
    effect, first = _record(label, using=alias)
    if first:
        # The row above commits with the view; this one at once, naming the worker.
        SideEffect.objects.create(label=f"{label}-worker", payload=str(os.getpid()))
        _stay_awake(request)
    return _created(effect)


@idempotent_exempt  # the guard is the decorator inside the transaction, not the middleware
def frozen_in_transaction(request: HttpRequest, label: str) -> HttpResponse:
    """``@idempotent`` inside a transaction on the records' database, its row in that database."""
    with transaction.atomic(using=records_database()):
        return _frozen_in_transaction(request, label)


# -- killed right after its transaction committed --------------------------------------


def _write_then_die_after_commit(label: str) -> HttpResponse:
    alias = records_database()
    effect, _ = _record(label, using=alias)
    # The first thing to run after the commit: the process ends, before any
    # other on_commit callback or line of code could store the response.
    transaction.on_commit(lambda: os._exit(1), using=alias)
    return _created(effect)


@idempotent
def _dies_after_commit(request: HttpRequest, label: str) -> HttpResponse:
    return _write_then_die_after_commit(label)


@idempotent_exempt  # the guard is the decorator inside the transaction, not the middleware
def dies_after_commit(request: HttpRequest, label: str) -> HttpResponse:
    """``@idempotent`` inside ``transaction.atomic()``; the process dies once it commits."""
    with transaction.atomic(using=records_database()):
        return _dies_after_commit(request, label)


@idempotent
def dies_after_commit_of_atomic_requests(request: HttpRequest, label: str) -> HttpResponse:
    """``@idempotent`` on a view that ``ATOMIC_REQUESTS`` runs in a transaction."""
    return _write_then_die_after_commit(label)
