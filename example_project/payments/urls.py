"""``/payments/``: the list (GET) and create (POST) share a URL; one per payment."""

from __future__ import annotations

from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("", views.payment_collection, name="collection"),
    path("<int:pk>/", views.payment_detail, name="detail"),
]
