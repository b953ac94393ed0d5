"""URLs of the Django REST framework views, mounted under /drf/ when DRF is installed."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from tests.testapp import drf_views

router = SimpleRouter()
router.register("payments", drf_views.PaymentViewSet, basename="payments")
router.register("actions", drf_views.ActionViewSet, basename="actions")

urlpatterns = [
    path("plain/", drf_views.PlainView.as_view()),
    path("mixin/", drf_views.MixinView.as_view()),
    path("required/", drf_views.RequiredMixinView.as_view()),
    path("handler/", drf_views.HandlerDecoratedView.as_view()),
    path("class/", drf_views.ClassDecoratedView.as_view()),
    path("above/", drf_views.above_api_view),
    path("below/", drf_views.below_api_view),
    path("data-first/", drf_views.DataFirstView.as_view()),
    path("upload/", drf_views.StreamedUploadView.as_view()),
    *router.urls,
]
