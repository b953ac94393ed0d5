"""Views the suite sends requests to; each records its executions in SideEffect."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator

from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views import View

from django_idempotency import idempotent, idempotent_exempt
from tests.testapp.models import SideEffect

BINARY_BODY = bytes(range(256)) * 4


def _record(request: HttpRequest, label: str) -> SideEffect:
    return SideEffect.objects.create(label=label, payload=_payload(request))


def _payload(request: HttpRequest) -> str:
    """The body as text; a multipart form (already parsed, its stream read) as its fields."""
    if request.content_type == "multipart/form-data":
        return request.POST.urlencode()
    return request.body.decode("latin-1")


def _created(effect: SideEffect) -> JsonResponse:
    response = JsonResponse({"id": effect.pk, "label": effect.label}, status=201)
    response["Location"] = f"/effects/{effect.pk}/"
    response["X-Effect-Id"] = str(effect.pk)
    response.set_cookie("session-hint", str(effect.pk))
    return response


def create(request: HttpRequest) -> HttpResponse:
    """Guarded by the middleware: POST/PATCH create a row."""
    if request.method == "GET":
        return JsonResponse({"count": SideEffect.objects.filter(label="create").count()})
    effect = _record(request, "create")
    delay = float(request.GET.get("sleep", "0"))
    if delay:
        time.sleep(delay)
    return _created(effect)


def slow_first_time(request: HttpRequest) -> HttpResponse:
    """Like ``create``, but sleeps only during its first execution.

    The crash test's worker dies in that sleep; the identical retry that
    takes the claim over then runs quickly.
    """
    effect = _record(request, "create")
    if SideEffect.objects.filter(label="create").count() == 1:
        time.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


def status(request: HttpRequest, code: int) -> HttpResponse:
    """Creates a row, then answers with the status in the URL."""
    effect = _record(request, f"status-{code}")
    return JsonResponse({"id": effect.pk}, status=code)


def binary(request: HttpRequest) -> HttpResponse:
    """Creates a row and answers with every byte value."""
    _record(request, "binary")
    return HttpResponse(BINARY_BODY, content_type="application/octet-stream")


def explode(request: HttpRequest) -> HttpResponse:
    """Creates a row, then raises: the claim must be released."""
    _record(request, "explode")
    raise RuntimeError("the view failed after its side effect")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """A streaming response: passed through, its body never stored."""
    _record(request, "stream")
    return StreamingHttpResponse(iter([b"chunk-1;", b"chunk-2;", b"chunk-3"]))


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    """An async view streaming from an async iterator."""
    await SideEffect.objects.acreate(label="async-stream", payload="")

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"async-1;", b"async-2"):
            yield chunk

    return StreamingHttpResponse(chunks())


@idempotent_exempt
def exempt(request: HttpRequest) -> HttpResponse:
    """The middleware leaves it alone: every request runs."""
    return _created(_record(request, "exempt"))


@idempotent
def decorated_sleepy_create(request: HttpRequest) -> HttpResponse:
    """``create`` under the decorator: a row, then ``?sleep=`` seconds."""
    return create(request)


@idempotent(required=True)
def decorated_required(request: HttpRequest) -> HttpResponse:
    """Guarded by the decorator (and skipped by the middleware)."""
    return _created(_record(request, "decorated"))


@idempotent(methods=["PUT"], ttl=1)
def decorated_put(request: HttpRequest) -> HttpResponse:
    """Guards PUT only, with a one-second replay window."""
    return _created(_record(request, "decorated-put"))


@idempotent
def decorated_explode(request: HttpRequest) -> HttpResponse:
    """Guarded by the decorator; creates a row, then raises."""
    _record(request, "decorated-explode")
    raise RuntimeError("the decorated view failed after its side effect")


@idempotent
def decorated_template(request: HttpRequest) -> TemplateResponse:
    """Returns a TemplateResponse, rendered only after the decorator returned it."""
    effect = _record(request, "decorated-template")
    return TemplateResponse(
        request, "testapp/created.txt", {"effect": effect}, status=201, content_type="text/plain"
    )


@idempotent
async def async_decorated_template(request: HttpRequest) -> TemplateResponse:
    """The same, as an async view."""
    effect = await SideEffect.objects.acreate(label="async-template", payload="")
    return TemplateResponse(
        request, "testapp/created.txt", {"effect": effect}, status=201, content_type="text/plain"
    )


@idempotent
async def async_create(request: HttpRequest) -> HttpResponse:
    """An async view under the decorator."""
    effect = await SideEffect.objects.acreate(label="async", payload=request.body.decode())
    return _created(effect)


async def async_plain(request: HttpRequest) -> HttpResponse:
    """An async view guarded by the middleware only."""
    effect = await SideEffect.objects.acreate(label="async-plain", payload=request.body.decode())
    return _created(effect)


@idempotent
class DecoratedClassView(View):
    """A class-based view decorated on the class."""

    def post(self, request: HttpRequest) -> HttpResponse:
        return _created(_record(request, "cbv-class"))


class DispatchDecoratedView(View):
    """A class-based view decorated on dispatch."""

    @method_decorator(idempotent(required=True))
    def dispatch(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return super().dispatch(request, *args, **kwargs)  # type: ignore[return-value]

    def post(self, request: HttpRequest) -> HttpResponse:
        return _created(_record(request, "cbv-dispatch"))


def echo_json(request: HttpRequest) -> HttpResponse:
    """Returns the parsed JSON body, to check the body is still readable."""
    data = json.loads(request.body or b"{}")
    _record(request, "echo")
    return JsonResponse({"received": data}, status=200)


class MethodDecoratedView(View):
    """A class-based view whose ``post()`` handler carries the decorator."""

    @method_decorator(idempotent)
    def post(self, request: HttpRequest) -> HttpResponse:
        return _created(_record(request, "cbv-method"))


def nested_guard(request: HttpRequest) -> HttpResponse:
    """Guarded by the middleware, and calls a decorated view with the same request."""
    return decorated_required(request)


@idempotent
def decorated_broken_template(request: HttpRequest) -> TemplateResponse:
    """Creates a row, then returns a template response that cannot be rendered."""
    _record(request, "broken-template")
    return TemplateResponse(request, "testapp/no-such-template.txt", {})


@idempotent
def decorated_returns_none(request: HttpRequest) -> HttpResponse:
    """Creates a row, then forgets to return a response."""
    _record(request, "returns-none")
    return None  # type: ignore[return-value]


def custom_reason(request: HttpRequest) -> HttpResponse:
    """Creates a row and answers 202 with a reason phrase of its own."""
    effect = _record(request, "custom-reason")
    return JsonResponse({"id": effect.pk}, status=202, reason="Queued For Review")


def sized(request: HttpRequest, size: int) -> HttpResponse:
    """Creates a row and answers ``size`` bytes, to test what a store refuses."""
    _record(request, "sized")
    return HttpResponse(b"x" * size, status=201, content_type="application/octet-stream")


def upload(request: HttpRequest) -> HttpResponse:
    """A form upload: creates a row and answers what it received."""
    files = {
        name: hashlib.sha256(ups[-1].read()).hexdigest() for name, ups in request.FILES.lists()
    }
    effect = SideEffect.objects.create(label="upload", payload=request.POST.urlencode())
    return JsonResponse(
        {"id": effect.pk, "fields": request.POST.dict(), "files": files}, status=201
    )


def anywhere(request: HttpRequest, rest: str) -> HttpResponse:
    """Any path under /p/: creates a row and echoes the path Django decoded."""
    effect = _record(request, "anywhere")
    return JsonResponse({"id": effect.pk, "path": request.path}, status=201)


async def async_slow_first_time(request: HttpRequest) -> HttpResponse:
    """An async view guarded by the middleware; only its first execution is slow."""
    effect = await SideEffect.objects.acreate(label="async-slow", payload="")
    if await SideEffect.objects.filter(label="async-slow").acount() == 1:
        await asyncio.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


@idempotent
async def decorated_async_slow_first_time(request: HttpRequest) -> HttpResponse:
    """The same under the decorator."""
    return await async_slow_first_time(request)


async def async_sleepy_create(request: HttpRequest) -> HttpResponse:
    """An async view guarded by the middleware: a row, then ``?sleep=`` seconds."""
    effect = await SideEffect.objects.acreate(label="create", payload=str(os.getpid()))
    await asyncio.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


@idempotent
async def decorated_async_sleepy_create(request: HttpRequest) -> HttpResponse:
    """The same under the decorator."""
    return await async_sleepy_create(request)


async def async_killable_first_time(request: HttpRequest) -> HttpResponse:
    """Like ``slow_first_time``, async: the row names the worker, so a test can kill it."""
    effect = await SideEffect.objects.acreate(label="create", payload=str(os.getpid()))
    if await SideEffect.objects.filter(label="create").acount() == 1:
        await asyncio.sleep(float(request.GET.get("sleep", "0")))
    return _created(effect)


@idempotent
async def decorated_async_killable_first_time(request: HttpRequest) -> HttpResponse:
    """The same under the decorator."""
    return await async_killable_first_time(request)


@idempotent
async def async_decorated_broken_template(request: HttpRequest) -> TemplateResponse:
    """An async view: creates a row, then returns a template response that cannot be rendered."""
    await SideEffect.objects.acreate(label="async-broken-template", payload="")
    return TemplateResponse(request, "testapp/no-such-template.txt", {})


@idempotent
async def async_decorated_returns_none(request: HttpRequest) -> HttpResponse:
    """An async view: creates a row, then forgets to return a response."""
    await SideEffect.objects.acreate(label="async-returns-none", payload="")
    return None  # type: ignore[return-value]
