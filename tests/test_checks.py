"""System checks: a misconfiguration shows at ``manage.py check`` time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core import checks
from django.test import Client, override_settings

from django_idempotency.checks import check_backend, check_settings
from django_idempotency.middleware import IdempotencyMiddleware
from tests.http import assert_problem, executions, post

MEMORY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
LOGIN_REQUIRED = "django.contrib.auth.middleware.LoginRequiredMiddleware"
IDEMPOTENCY = "django_idempotency.middleware.IdempotencyMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
MY_AUTH = "tests.test_checks.MyAuthenticationMiddleware"
MY_IDEMPOTENCY = "tests.test_checks.MyIdempotencyMiddleware"


class MyAuthenticationMiddleware(AuthenticationMiddleware):
    """A project's own authentication: it sets ``request.user`` like its parent."""


class MyIdempotencyMiddleware(IdempotencyMiddleware):
    """A project's own idempotency middleware: it scopes keys per user like its parent."""


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


@override_settings(MIDDLEWARE=[SESSION, MY_AUTH, IDEMPOTENCY], IDEMPOTENCY=MEMORY)
def test_subclass_of_authentication_middleware_before_the_middleware_passes() -> None:
    assert check_settings() == []


@override_settings(MIDDLEWARE=[SESSION, AUTH, LOGIN_REQUIRED, MY_IDEMPOTENCY], IDEMPOTENCY=MEMORY)
def test_subclass_of_the_middleware_after_authentication_passes() -> None:
    assert check_settings() == []


@override_settings(MIDDLEWARE=[SESSION, MY_IDEMPOTENCY, MY_AUTH], IDEMPOTENCY=MEMORY)
def test_subclass_of_the_middleware_before_authentication_is_e002() -> None:
    messages = check_settings()

    assert ids(messages) == ["django_idempotency.E002"]
    assert messages[0].msg.startswith(MY_IDEMPOTENCY + " must come after")


@override_settings(
    MIDDLEWARE=["nowhere.NoMiddleware", SESSION, "tests.test_checks.Missing", AUTH, IDEMPOTENCY],
    IDEMPOTENCY=MEMORY,
)
def test_middleware_entry_that_cannot_be_imported_does_not_crash_the_check() -> None:
    assert check_settings() == []


@override_settings(
    MIDDLEWARE=[SESSION, "nowhere.NoMiddleware", IDEMPOTENCY, AUTH], IDEMPOTENCY=MEMORY
)
def test_entry_that_cannot_be_imported_leaves_e002_standing() -> None:
    assert ids(check_settings()) == ["django_idempotency.E002"]


@pytest.mark.parametrize(("debug", "expected"), [(False, ["django_idempotency.W001"]), (True, [])])
def test_memory_backend_outside_debug_is_w001(debug: bool, expected: list[str]) -> None:
    with override_settings(DEBUG=debug, IDEMPOTENCY=MEMORY):
        assert ids(check_backend()) == expected


DATABASE_BACKEND = {"BACKEND": "django_idempotency.backends.db.DatabaseBackend"}


@pytest.mark.parametrize(
    ("atomic_requests", "middleware", "backend", "expected"),
    [
        (True, [SESSION, AUTH, IDEMPOTENCY], DATABASE_BACKEND, ["django_idempotency.I001"]),
        (True, [SESSION, AUTH, MY_IDEMPOTENCY], DATABASE_BACKEND, ["django_idempotency.I001"]),
        (False, [SESSION, AUTH, IDEMPOTENCY], DATABASE_BACKEND, []),
        (True, [SESSION, AUTH], DATABASE_BACKEND, []),
        (True, [SESSION, AUTH, IDEMPOTENCY], MEMORY, []),
    ],
    ids=["middleware", "subclass", "no-atomic-requests", "decorator-only", "records-elsewhere"],
)
def test_atomic_requests_with_the_middleware_is_i001_naming_the_decorator(
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    atomic_requests: bool,
    middleware: list[str],
    backend: dict[str, Any],
    expected: list[str],
) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", atomic_requests)
    settings.MIDDLEWARE = middleware
    settings.IDEMPOTENCY = backend
    settings.DEBUG = True  # leave W001 (MemoryBackend outside DEBUG) out of it

    messages = [m for m in check_backend() if m.id != "django_idempotency.W020"]

    assert ids(messages) == expected
    if expected:
        assert messages[0].level == checks.INFO
        assert "'default'" in messages[0].msg
        assert "@idempotent" in (messages[0].hint or "")


@override_settings(IDEMPOTENCY={**MEMORY, "OPTIONS": {"MAX_ENTRIES": -1}})
def test_bad_backend_options_are_e003() -> None:
    messages = check_backend()

    assert ids(messages) == ["django_idempotency.E003"]
    assert "MAX_ENTRIES" in messages[0].msg


def test_checks_are_registered_with_django() -> None:
    with override_settings(IDEMPOTENCY={"TTL": -1}):
        messages = checks.run_checks(tags=["django_idempotency"])

    assert "django_idempotency.E001" in ids(messages)


MISSING_ALIASES = [
    pytest.param(
        "django_idempotency.backends.db.DatabaseBackend",
        {"DATABASE": "nowhere"},
        "django_idempotency.E020",
        id="database",
    ),
    pytest.param(
        "django_idempotency.backends.cache.CacheBackend",
        {"CACHE": "nowhere"},
        "django_idempotency.E010",
        id="cache",
    ),
    pytest.param(
        "django_idempotency.backends.redis.RedisBackend",
        {"CACHE": "nowhere"},
        "django_idempotency.E011",
        id="redis",
    ),
]


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize(("backend", "options", "check_id"), MISSING_ALIASES)
def test_every_store_named_by_a_missing_alias_is_a_check_error_and_a_503(
    settings: Any, backend: str, options: dict[str, str], check_id: str
) -> None:
    settings.IDEMPOTENCY = {"BACKEND": backend, "OPTIONS": options}

    messages = check_backend()
    response = post(Client(), key="alias-1")

    assert [message.id for message in messages] == [check_id]
    assert isinstance(messages[0], checks.Error)
    assert_problem(response, 503, "storage-unavailable")
    assert executions() == 0


def test_every_check_id_is_unique_and_documented_in_the_readme() -> None:
    root = Path(__file__).resolve().parent.parent
    written: list[str] = []
    for path in sorted((root / "django_idempotency").rglob("*.py")):
        written += re.findall(r'id="(django_idempotency\.[EWI]\d{3})"', path.read_text())
    readme = (root / "README.rst").read_text()
    documented = re.findall(r"^   \* - ``(django_idempotency\.[EWI]\d{3})``", readme, re.M)

    assert written, "no check ids found"
    assert len(written) == len(set(written)), f"an id is used twice: {sorted(written)}"
    assert sorted(written) == sorted(documented)
