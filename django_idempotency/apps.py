"""The app's configuration: registers system checks and settings receivers."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    """``django_idempotency``: idempotency keys for unsafe HTTP requests."""

    name = "django_idempotency"
    label = "django_idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_idempotency import checks, conf
        from django_idempotency.backends import handler

        checks.register_checks()
        setting_changed.connect(conf.on_setting_changed, dispatch_uid="django_idempotency.conf")
        setting_changed.connect(
            handler.on_setting_changed, dispatch_uid="django_idempotency.backends.handler"
        )
