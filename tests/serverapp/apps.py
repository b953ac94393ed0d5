"""Signals sent inside a server's workers, kept as ``SideEffect`` rows a test can count.

A test cannot connect a receiver inside another process, so the servers the
fault tests start install this app (see :mod:`tests.server_settings`): each
``lease_lost`` and ``interrupted`` becomes a row labelled
``signal:<name>:<operation or error>`` in the default database, which the
test and the server share.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

RECORDED = ("lease_lost", "interrupted")


class ServerAppConfig(AppConfig):
    name = "tests.serverapp"
    label = "serverapp"

    def ready(self) -> None:
        from django_idempotency import signals

        for name in RECORDED:
            getattr(signals, name).connect(_recorder(name), weak=False)


def _recorder(name: str) -> Any:
    def record(sender: Any, **kwargs: Any) -> None:
        from tests.testapp.models import SideEffect

        detail = kwargs.get("operation") or type(kwargs.get("error")).__name__
        SideEffect.objects.create(label=f"signal:{name}:{detail}", payload=kwargs["storage_key"])

    return record
