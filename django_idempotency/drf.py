"""Django REST framework: claim after DRF has authenticated, checked permissions and throttled.

DRF authenticates inside the view, after every middleware has run, so the
user a key is scoped to is only known once ``APIView.initial()`` is done.
This module claims there:

* :class:`IdempotentMixin` for ``APIView``, ``GenericAPIView`` and ViewSets
  (``class PaymentViewSet(IdempotentMixin, ModelViewSet)``), with the view's
  own policy in ``idempotency = {"required": True, ...}``;
* ``@idempotent`` on such a class, above ``@api_view``, on a handler method
  (``post``, a ViewSet action, an ``@action``) or on the function under
  ``@api_view`` ends up here too (see :mod:`~django_idempotency.decorators`).

A request that DRF refuses (401, 403, 429) never claims its key. The stored
response is the one DRF rendered, negotiated content type included. The
app's own refusals are problem+json, or go through DRF's exception handler
when ``IDEMPOTENCY["DRF_EXCEPTION_HANDLER"]`` is True, so an API keeps one
error format. ``IdempotencyMiddleware`` leaves views using this integration
alone, and guards other DRF views by authenticating with the view's own
authenticators first.

DRF keeps the request it wraps as ``Request._request``: that attribute is
read here, and only here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, RawPostDataException
from django.http.response import HttpResponseBase
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency import engine, marks, problems
from django_idempotency.conf import PolicyCache, get_settings, view_overrides
from django_idempotency.fingerprint import add_file, request_body

PARSED_BODY = "parsed"
"""The kind of a body fingerprinted from what DRF parsed (its bytes were consumed)."""


class Refused(APIException):
    """An idempotency refusal raised through DRF's exception handler.

    ``status_code`` is the refusal's (400, 409, 413, 422, 503); ``problem``
    is the problem+json body it would otherwise have been. ``wait`` is its
    ``Retry-After`` in seconds, which DRF's exception handler sends back as
    that header (as it does for its own throttles).
    """

    def __init__(self, response: problems.ProblemResponse) -> None:
        self.problem: dict[str, Any] = json.loads(response.content)
        self.status_code = response.status_code
        retry_after = response.get("Retry-After")
        self.wait = int(retry_after) if retry_after else None
        super().__init__(detail=self.problem["detail"], code=self.problem["type"])


class _Answer(Exception):
    """Carries a replay or a refusal out of ``initial()`` to ``handle_exception()``."""

    def __init__(self, response: HttpResponseBase) -> None:
        super().__init__()
        self.response = response


class IdempotentMixin:
    """Guard a DRF view: claim after ``initial()``, store what ``finalize_response`` returns.

    ``idempotency`` holds the view's own policy, as ``@idempotent(...)``
    takes it: ``required``, ``ttl``, ``lock_ttl``, ``methods``, ``wait``.
    """

    idempotency: ClassVar[dict[str, Any]] = {}
    _idempotency_policy: ClassVar[PolicyCache] = PolicyCache({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._idempotency_policy = PolicyCache(view_overrides(**cls.idempotency))

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        http_request = unwrap(request)
        decision = engine.begin(http_request, self._idempotency_policy(), parsed_body(request))
        if decision is None:
            return
        if isinstance(decision, engine.Guard):
            marks.keep_guard(http_request, decision)
            return
        raise _Answer(decision)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)  # type: ignore[misc,no-any-return]
        except Exception:  # handle_exception released the claim already
            raise
        except BaseException as error:  # SystemExit, KeyboardInterrupt: the process stops
            guard = marks.drop_guard(request)
            if guard is not None:
                engine.interrupt(guard, error)
            raise

    # Typed as django-stubs' APIView types them (Response); at run time DRF
    # passes on any HttpResponseBase, as a replay is.
    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Answer):
            return cast(Response, answer(exc.response, lambda refused: super_handle(self, refused)))
        try:
            return cast(Response, super_handle(self, exc))
        except Exception:
            guard = marks.drop_guard(unwrap(self.request))  # type: ignore[attr-defined]
            if guard is not None:
                engine.abort(guard)
            raise

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(  # type: ignore[misc]
            request, response, *args, **kwargs
        )
        guard = marks.drop_guard(unwrap(request))
        if guard is None:
            return response
        return cast(Response, engine.finish(guard, response))


def super_handle(view: IdempotentMixin, exc: Exception) -> HttpResponseBase:
    """DRF's own ``handle_exception`` of ``view`` (what the mixin overrides)."""
    return super(IdempotentMixin, view).handle_exception(exc)  # type: ignore[misc,no-any-return]


def answer(
    response: HttpResponseBase, through_handler: Callable[[Exception], HttpResponseBase]
) -> HttpResponseBase:
    """A replay as stored; a refusal as problem+json, or through DRF's exception handler."""
    if isinstance(response, problems.ProblemResponse) and get_settings().drf_exception_handler:
        return through_handler(Refused(response))
    return response


def with_idempotency(view_class: type[APIView], overrides: dict[str, Any]) -> type[APIView]:
    """``view_class`` guarded by :class:`IdempotentMixin` with the given policy."""
    return type(
        view_class.__name__,
        (IdempotentMixin, view_class),
        {
            "__module__": view_class.__module__,
            "__qualname__": view_class.__qualname__,
            "__doc__": view_class.__doc__,
            "idempotency": {k: v for k, v in overrides.items() if v is not None},
        },
    )


def unwrap(request: HttpRequest | Request) -> HttpRequest:
    """The Django request under a DRF ``Request`` (or the request itself)."""
    inner = getattr(request, "_request", None)
    return inner if isinstance(inner, HttpRequest) else request


def parsed_body(request: Request) -> Callable[[HttpRequest], tuple[bytes, str]]:
    """The body reader for a request DRF may already have parsed.

    DRF's parsers read the stream itself, so once a permission class or a
    throttle has looked at ``request.data`` the raw bytes are gone: the
    fingerprint then stands on what DRF parsed, in a canonical form. Each
    view does that the same way on every request, so a retry compares alike.
    """

    def read(http_request: HttpRequest) -> tuple[bytes, str]:
        try:
            return request_body(http_request)
        except RawPostDataException:
            return canonical(request.data), PARSED_BODY

    return read


def canonical(data: object) -> bytes:
    """Parsed request data as bytes that do not depend on the order it was sent in.

    Uploaded files (``FileUploadParser``, a multipart parser) stand as their
    name, type, size and the SHA-256 of their content, read chunk by chunk.
    """
    return json.dumps(_plain(data), sort_keys=True, separators=(",", ":")).encode()


def _plain(value: object) -> object:
    """``value`` as JSON-able data: mappings, lists, files and scalars as text."""
    lists = getattr(value, "lists", None)
    if callable(lists):  # a QueryDict or MultiValueDict: every value of every key
        return {str(key): [_plain(item) for item in items] for key, items in lists()}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, UploadedFile):
        digest = hashlib.sha256()
        add_file(digest, value)
        return ["file", value.name, value.content_type, value.size, digest.hexdigest()]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# -- what the middleware asks -----------------------------------------------------


def is_integrated(view_func: Callable[..., Any], method: str | None) -> bool:
    """Whether the DRF view claims by itself (the mixin, or a decorated handler)."""
    view_class = view_func.cls  # type: ignore[attr-defined]
    if issubclass(view_class, IdempotentMixin):
        return True
    name = (method or "").lower()
    actions = getattr(view_func, "actions", None)  # ViewSets: {"post": "create", ...}
    if actions:
        name = actions.get(name, "")
    handler = getattr(view_class, name, None) if name else None
    return bool(getattr(handler, marks.HANDLED_ATTRIBUTE, False))


def authenticate(request: HttpRequest, view_func: Callable[..., Any]) -> bool:
    """Authenticate as the DRF view will, so the middleware scopes the key to that user.

    DRF sets the user it authenticates on the Django request too, which is
    where the engine reads it. False when authentication fails: the view will
    answer 401 or 403 itself, and that request must not claim its key.
    """
    view = view_func.cls(**getattr(view_func, "initkwargs", {}))  # type: ignore[attr-defined]
    view.action_map = getattr(view_func, "actions", None) or {}
    drf_request = Request(request, authenticators=view.get_authenticators())
    try:
        drf_request.user  # noqa: B018 - runs the authenticators
    except APIException:
        return False
    return True
