"""The project's URLs: the payments API at ``/payments/``, DRF's login, Django's admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/payments/"), name="home"),
    path("payments/", include("payments.urls")),
    path("api-auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
]
