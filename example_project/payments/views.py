"""The payments API: ``POST /payments/`` creates a payment at most once per key and user.

A Django REST framework ViewSet with token (and session) authentication. The
``IdempotentMixin`` claims the key after DRF has authenticated the request,
so each API user's keys are their own: two users sending the same key and
body get two payments, each their own. ``idempotency = {"required": True}``
refuses a POST without an ``Idempotency-Key`` with 400.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from django_idempotency.drf import IdempotentMixin
from payments.models import Payment
from payments.serializers import PaymentSerializer

MAX_SLOW_SECONDS = 10.0


class PaymentViewSet(
    IdempotentMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own payments: list, retrieve, and create (guarded)."""

    idempotency = {"required": True}
    serializer_class = PaymentSerializer

    def get_queryset(self) -> QuerySet[Payment]:
        return Payment.objects.filter(owner=self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a payment; ``?slow=<seconds>`` (at most 10) waits after creating it.

        The wait shows what a retry sent meanwhile gets: 409, request in progress.
        """
        slow = slow_seconds(request.query_params.get("slow"))
        response = super().create(request, *args, **kwargs)
        time.sleep(slow)
        return response

    def perform_create(self, serializer: PaymentSerializer) -> None:  # type: ignore[override]
        serializer.save(owner=self.request.user)

    def get_success_headers(self, data: Any) -> dict[str, str]:
        return {"Location": f"/payments/{data['id']}/"}


def slow_seconds(raw: str | None) -> float:
    """The requested delay capped at ``MAX_SLOW_SECONDS``; 400 if it is not a number."""
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValidationError({"slow": "slow must be a number of seconds."})
    return min(seconds, MAX_SLOW_SECONDS)
