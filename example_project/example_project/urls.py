"""The project's URLs: the payments API at ``/payments/`` and Django's admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="payments:collection"), name="home"),
    path("payments/", include("payments.urls")),
    path("admin/", admin.site.urls),
]
