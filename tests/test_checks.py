"""System checks: a misconfiguration shows at ``manage.py check`` time."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

from django_idempotency.checks import check_backend, check_settings

MEMORY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
IDEMPOTENCY = "django_idempotency.middleware.IdempotencyMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


@override_settings(IDEMPOTENCY={"TTL": 0})
def test_invalid_setting_is_e001() -> None:
    messages = check_settings()

    assert ids(messages) == ["django_idempotency.E001"]
    assert "IDEMPOTENCY['TTL']" in messages[0].msg


@override_settings(IDEMPOTENCY={"BACKEND": "nowhere.Backend"})
def test_unknown_backend_path_is_e001_and_backend_check_stays_quiet() -> None:
    assert ids(check_settings()) == ["django_idempotency.E001"]
    assert check_backend() == []


@override_settings(MIDDLEWARE=[SESSION, IDEMPOTENCY, AUTH], IDEMPOTENCY=MEMORY)
def test_middleware_before_authentication_is_e002() -> None:
    messages = check_settings()

    assert ids(messages) == ["django_idempotency.E002"]
    assert "AuthenticationMiddleware" in messages[0].msg


@override_settings(MIDDLEWARE=[SESSION, IDEMPOTENCY], IDEMPOTENCY=MEMORY)
def test_middleware_without_authentication_is_e002() -> None:
    assert ids(check_settings()) == ["django_idempotency.E002"]


@override_settings(MIDDLEWARE=[SESSION, IDEMPOTENCY, AUTH], IDEMPOTENCY={**MEMORY, "SCOPE": None})
def test_middleware_order_does_not_matter_without_user_scope() -> None:
    assert check_settings() == []


@override_settings(MIDDLEWARE=[SESSION, AUTH, IDEMPOTENCY], IDEMPOTENCY=MEMORY)
def test_correct_order_passes() -> None:
    assert check_settings() == []


@pytest.mark.parametrize(("debug", "expected"), [(False, ["django_idempotency.W001"]), (True, [])])
def test_memory_backend_outside_debug_is_w001(debug: bool, expected: list[str]) -> None:
    with override_settings(DEBUG=debug, IDEMPOTENCY=MEMORY):
        assert ids(check_backend()) == expected


@override_settings(IDEMPOTENCY={**MEMORY, "OPTIONS": {"MAX_ENTRIES": -1}})
def test_bad_backend_options_are_e003() -> None:
    messages = check_backend()

    assert ids(messages) == ["django_idempotency.E003"]
    assert "MAX_ENTRIES" in messages[0].msg


def test_checks_are_registered_with_django() -> None:
    with override_settings(IDEMPOTENCY={"TTL": -1}):
        messages = checks.run_checks()

    assert "django_idempotency.E001" in ids(messages)
