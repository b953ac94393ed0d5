"""Each signal is sent exactly once per event, with its documented arguments."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.dispatch import Signal
from django.test import Client

from django_idempotency import signals
from django_idempotency.backends.base import BaseBackend
from django_idempotency.keys import storage_key
from tests.backends import BackendCase
from tests.http import post
from tests.test_middleware import claim_as_request

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ALL = {
    name: getattr(signals, name)
    for name in (
        "claimed",
        "taken_over",
        "completed",
        "replayed",
        "conflict",
        "mismatch",
        "released",
        "storage_error",
        "interrupted",
        "lease_lost",
    )
}


class Recorder:
    """Connects to every signal and keeps (name, kwargs) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._receivers = {name: self._receiver(name) for name in ALL}

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal")
            self.events.append((name, kwargs))

        return receive

    def connect(self) -> None:
        for name, signal in ALL.items():
            signal.connect(self._receivers[name], weak=False)

    def disconnect(self) -> None:
        for name, signal in ALL.items():
            signal.disconnect(self._receivers[name])

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    recorder.connect()
    yield recorder
    recorder.disconnect()


def test_first_request_sends_claimed_then_completed(
    backend_case: BackendCase, client: Client, recorder: Recorder
) -> None:
    post(client)

    assert recorder.names == ["claimed", "completed"]
    claimed = recorder.events[0][1]
    assert claimed["storage_key"] == storage_key("anonymous", "key-1")
    assert claimed["scope"] == "anonymous"
    assert claimed["request"].path == "/create/"
    assert recorder.events[1][1]["status"] == 201


def test_replay_conflict_and_mismatch_each_send_one_signal(
    backend_case: BackendCase,
    client: Client,
    idempotency_backend: BaseBackend,
    recorder: Recorder,
) -> None:
    post(client)
    post(client)
    post(client, body=b"other")
    claim_as_request(idempotency_backend, "key-2")
    post(client, key="key-2")

    assert recorder.names == ["claimed", "completed", "replayed", "mismatch", "conflict"]
    assert recorder.events[2][1]["record"].state.value == "completed"


def test_release_sends_released_with_the_reason(
    backend_case: BackendCase, client: Client, recorder: Recorder
) -> None:
    post(client, "/status/503/")

    assert recorder.names == ["claimed", "released"]
    assert recorder.events[1][1]["reason"] == "status 503"


@pytest.mark.idempotency(LOCK_TTL=1)
def test_takeover_sends_taken_over_where_the_store_can_tell(
    backend_case: BackendCase,
    client: Client,
    idempotency_backend: BaseBackend,
    recorder: Recorder,
) -> None:
    claim_as_request(idempotency_backend, "key-1", lease=1)
    time.sleep(1.2 + backend_case.lease_slack)

    post(client)

    expected = ["claimed", "completed"]
    if not idempotency_backend.has_native_expiry:
        expected = ["claimed", "taken_over", "completed"]
    assert recorder.names == expected


def test_storage_error_is_signalled_and_logged_once(
    client: Client, settings: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY = {"BACKEND": "tests.testapp.backends.UnreachableBackend"}
    caplog.set_level(logging.DEBUG, logger="django_idempotency")

    post(client)

    assert recorder.names == ["storage_error"]
    assert recorder.events[0][1]["operation"] == "claim"
    assert len([r for r in caplog.records if r.name == "django_idempotency"]) == 1
    assert caplog.records[0].levelno == logging.ERROR


def test_one_log_line_per_event_without_the_raw_key(
    backend_case: BackendCase, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_idempotency")

    post(client, key="customer-secret-key")
    post(client, key="customer-secret-key")

    lines = [r for r in caplog.records if r.name == "django_idempotency"]
    assert [r.getMessage().rsplit(": ", 1)[-1] for r in lines] == [
        "claimed",
        "completed",
        "replayed",
    ]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.DEBUG, logging.INFO]
    assert "customer-secret-key" not in caplog.text
    assert storage_key("anonymous", "customer-secret-key")[:12] in caplog.text


def test_signals_are_documented_instances() -> None:
    assert all(isinstance(signal, Signal) for signal in ALL.values())
