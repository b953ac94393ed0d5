"""The benchmark's views: the same payment-like view, guarded and not."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_idempotency import idempotent_exempt
from tests.testapp.models import SideEffect


def create(request: HttpRequest) -> HttpResponse:
    """What a typical unsafe endpoint does: write a row, answer 201 JSON."""
    effect = SideEffect.objects.create(label="bench", payload=request.body.decode())
    return JsonResponse({"id": effect.pk, "label": effect.label}, status=201)


urlpatterns = [
    path("guarded/", create),
    path("unguarded/", idempotent_exempt(create)),
]
