"""The payments app's configuration."""

from __future__ import annotations

from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """``payments``: the demo's only model and its API."""

    name = "payments"
    default_auto_field = "django.db.models.BigAutoField"
