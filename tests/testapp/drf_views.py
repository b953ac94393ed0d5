"""Django REST framework views, guarded every way the README shows; rows prove executions.

Each view records a SideEffect labelled after itself, with the id of the
user DRF authenticated, and answers it: a replay handed to the wrong user
would show that user the other's id.
"""

from __future__ import annotations

from rest_framework import viewsets
from rest_framework.decorators import (
    action,
    api_view,
    permission_classes,
    renderer_classes,
    throttle_classes,
)
from rest_framework.parsers import FileUploadParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_idempotency import idempotent
from django_idempotency.drf import IdempotentMixin
from tests.testapp.models import SideEffect


class HeaderThrottle(BaseThrottle):
    """Throttles a request that asks for it (``X-Throttle: yes``), deterministically."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        return request.headers.get("X-Throttle") != "yes"

    def wait(self) -> float:
        return 1.0


def _created(request: Request, label: str) -> Response:
    user = request.user.pk if request.user.is_authenticated else None
    effect = SideEffect.objects.create(label=label, payload=str(user))
    return Response({"id": effect.pk, "user": user, "label": label}, status=201)


class Guarded(APIView):
    """The policies every view here shares: authentication, a permission and a throttle."""

    permission_classes = [IsAuthenticated]
    throttle_classes = [HeaderThrottle]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]


class PlainView(Guarded):
    """No integration: the middleware guards it, authenticating as DRF will."""

    def post(self, request: Request) -> Response:
        return _created(request, "drf-plain")


class MixinView(IdempotentMixin, Guarded):
    """The mixin."""

    def post(self, request: Request) -> Response:
        return _created(request, "drf-mixin")


class RequiredMixinView(IdempotentMixin, Guarded):
    """The mixin with a policy of its own."""

    idempotency = {"required": True}

    def post(self, request: Request) -> Response:
        return _created(request, "drf-required")


class HandlerDecoratedView(Guarded):
    """``@idempotent`` on the handler method."""

    @idempotent
    def post(self, request: Request) -> Response:
        return _created(request, "drf-handler")


@idempotent
class ClassDecoratedView(Guarded):
    """``@idempotent`` on the class."""

    def post(self, request: Request) -> Response:
        return _created(request, "drf-class")


@idempotent
@api_view(["POST"])
@renderer_classes([JSONRenderer])
@throttle_classes([HeaderThrottle])
@permission_classes([IsAuthenticated])
def above_api_view(request: Request) -> Response:
    """``@idempotent`` above ``@api_view``."""
    return _created(request, "drf-above")


@api_view(["POST"])
@renderer_classes([JSONRenderer])
@throttle_classes([HeaderThrottle])
@permission_classes([IsAuthenticated])
@idempotent
def below_api_view(request: Request) -> Response:
    """``@idempotent`` under ``@api_view``."""
    return _created(request, "drf-below")


class PaymentViewSet(IdempotentMixin, viewsets.ViewSet):
    """A ViewSet with the mixin: create, update and partial_update are guarded."""

    idempotency = {"methods": ["POST", "PUT", "PATCH"]}
    permission_classes = [IsAuthenticated]
    throttle_classes = [HeaderThrottle]

    def create(self, request: Request) -> Response:
        return _created(request, "viewset-create")

    def update(self, request: Request, pk: str) -> Response:
        return _created(request, "viewset-update")

    def partial_update(self, request: Request, pk: str) -> Response:
        return _created(request, "viewset-partial-update")


class ActionViewSet(viewsets.ViewSet):
    """A ViewSet whose create and ``@action`` carry the decorator."""

    permission_classes = [IsAuthenticated]
    throttle_classes = [HeaderThrottle]

    @idempotent
    def create(self, request: Request) -> Response:
        return _created(request, "action-create")

    @action(detail=True, methods=["post"])
    @idempotent(required=True)
    def refund(self, request: Request, pk: str) -> Response:
        return _created(request, "action-refund")


class ReadsDataFirst(IsAuthenticated):
    """A permission that parses the body before the view (and the claim) does."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.data is not None) and super().has_permission(request, view)


class DataFirstView(Guarded):
    """The body was parsed by a permission class before the decorated handler claims."""

    permission_classes = [ReadsDataFirst]

    @idempotent
    def post(self, request: Request) -> Response:
        return _created(request, "drf-data-first")


class StreamedUploadView(IdempotentMixin, Guarded):
    """A raw file upload a permission class parsed from the stream before the claim."""

    permission_classes = [ReadsDataFirst]
    parser_classes = [FileUploadParser]

    def post(self, request: Request) -> Response:
        response = _created(request, "drf-upload")
        response.data["size"] = request.FILES["file"].size
        return response
