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


def create_as_user(request: HttpRequest) -> HttpResponse:
    """The same view as an authenticated API's: it looks at ``request.user``."""
    label = f"bench-{request.user.pk}" if request.user.is_authenticated else "bench-anonymous"
    effect = SideEffect.objects.create(label=label, payload=request.body.decode())
    return JsonResponse({"id": effect.pk, "label": effect.label}, status=201)


urlpatterns = [
    path("plain/guarded/", create),
    path("plain/unguarded/", idempotent_exempt(create)),
    path("user/guarded/", create_as_user),
    path("user/unguarded/", idempotent_exempt(create_as_user)),
]
