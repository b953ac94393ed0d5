"""The IDEMPOTENCY setting: defaults, validation, override_settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import override_settings

from django_idempotency import conf, idempotent
from django_idempotency.backends import handler
from django_idempotency.backends.memory import MemoryBackend
from tests.testapp.scopes import by_tenant

pytestmark = pytest.mark.smoke


def test_defaults() -> None:
    config = conf.parse_settings(None)

    assert config.backend_path == "django_idempotency.backends.db.DatabaseBackend"
    assert config.header == "Idempotency-Key"
    assert config.meta_key == "HTTP_IDEMPOTENCY_KEY"
    assert config.methods == {"POST", "PATCH"}
    assert config.required is False
    assert config.ttl == 86400
    assert config.lock_ttl == 60
    assert config.max_key_length == 255
    assert config.scope == "user"
    assert config.auto_key is False
    assert config.on_storage_error == "fail"
    assert config.retryable_statuses == {401, 403, 408, 429}
    assert config.max_response_bytes == 1024 * 1024
    assert conf.parse_settings({"MAX_RESPONSE_BYTES": None}).max_response_bytes is None


def test_scope_dotted_path_is_imported() -> None:
    assert conf.parse_settings({"SCOPE": "tests.testapp.scopes.by_tenant"}).scope is by_tenant


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ([], "IDEMPOTENCY must be a dict"),
        ({"TTL_SECONDS": 5}, "Unknown key(s) in IDEMPOTENCY: 'TTL_SECONDS'"),
        ({"BACKEND": "nope.Backend"}, "IDEMPOTENCY['BACKEND'] = 'nope.Backend' cannot be imported"),
        ({"BACKEND": "django.http.HttpResponse"}, "is not a subclass of"),
        ({"BACKEND": 3}, "IDEMPOTENCY['BACKEND'] must be a dotted path"),
        ({"OPTIONS": []}, "IDEMPOTENCY['OPTIONS'] must be a dict"),
        ({"HEADER": ""}, "IDEMPOTENCY['HEADER'] must be a non-empty string"),
        ({"METHODS": "POST"}, "IDEMPOTENCY['METHODS'] must be a list"),
        ({"METHODS": ["GET"]}, "IDEMPOTENCY['METHODS'] must list some of"),
        ({"METHODS": []}, "IDEMPOTENCY['METHODS'] must list some of"),
        ({"REQUIRED": "yes"}, "IDEMPOTENCY['REQUIRED'] must be True or False"),
        ({"TTL": 0}, "IDEMPOTENCY['TTL'] must be a positive integer"),
        ({"TTL": -5}, "IDEMPOTENCY['TTL'] must be a positive integer"),
        ({"TTL": 1.5}, "IDEMPOTENCY['TTL'] must be a positive integer"),
        ({"TTL": True}, "IDEMPOTENCY['TTL'] must be a positive integer"),
        ({"LOCK_TTL": 0}, "IDEMPOTENCY['LOCK_TTL'] must be a positive integer"),
        ({"TTL": 10**12}, "IDEMPOTENCY['TTL'] must be a positive integer number of seconds"),
        ({"LOCK_TTL": 10**12}, "IDEMPOTENCY['LOCK_TTL'] must be a positive integer"),
        ({"MAX_KEY_LENGTH": 0}, "IDEMPOTENCY['MAX_KEY_LENGTH'] must be an integer from 1 to 255"),
        ({"MAX_KEY_LENGTH": 256}, "IDEMPOTENCY['MAX_KEY_LENGTH'] must be an integer"),
        ({"SCOPE": "session"}, "IDEMPOTENCY['SCOPE'] = 'session' cannot be imported"),
        ({"SCOPE": 5}, "IDEMPOTENCY['SCOPE'] must be 'user', 'token', None"),
        ({"AUTO_KEY": 1}, "IDEMPOTENCY['AUTO_KEY'] must be True or False"),
        ({"ON_STORAGE_ERROR": "ignore"}, "IDEMPOTENCY['ON_STORAGE_ERROR'] must be 'fail'"),
        ({"RETRYABLE_STATUSES": [500]}, "IDEMPOTENCY['RETRYABLE_STATUSES'] must hold 4xx"),
        ({"RETRYABLE_STATUSES": 429}, "IDEMPOTENCY['RETRYABLE_STATUSES'] must be a list"),
        ({"MAX_RESPONSE_BYTES": 0}, "IDEMPOTENCY['MAX_RESPONSE_BYTES'] must be a positive"),
        ({"MAX_RESPONSE_BYTES": "1MB"}, "IDEMPOTENCY['MAX_RESPONSE_BYTES'] must be a positive"),
        ({"MAX_RESPONSE_BYTES": True}, "IDEMPOTENCY['MAX_RESPONSE_BYTES'] must be a positive"),
        ({"WAIT": -1}, "IDEMPOTENCY['WAIT'] must be a number of seconds from 0"),
        ({"WAIT": 301}, "IDEMPOTENCY['WAIT'] must be a number of seconds from 0"),
        ({"WAIT": "5"}, "IDEMPOTENCY['WAIT'] must be a number of seconds from 0"),
        ({"WAIT": True}, "IDEMPOTENCY['WAIT'] must be a number of seconds from 0"),
    ],
)
def test_bad_values_raise_improperly_configured_naming_the_setting(raw: Any, names: str) -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings(raw)

    assert names in str(error.value)


@pytest.mark.parametrize("name", ["TTL", "LOCK_TTL"])
def test_seconds_settings_are_bounded_to_365_days(name: str) -> None:
    assert getattr(conf.parse_settings({name: 31_536_000}), name.lower()) == 31_536_000
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings({name: 31_536_001})

    message = str(error.value)
    assert f"IDEMPOTENCY[{name!r}]" in message
    assert "31536001" in message
    assert "from 1 to 31536000" in message


@pytest.mark.parametrize("argument", ["ttl", "lock_ttl"])
def test_decorator_seconds_are_bounded_to_365_days_at_decoration_time(argument: str) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    longest: dict[str, Any] = {argument: 31_536_000}
    assert callable(idempotent(**longest)(view))
    too_long: dict[str, Any] = {argument: 31_536_001}
    with pytest.raises(ImproperlyConfigured) as error:
        idempotent(**too_long)

    assert f"@idempotent({argument}=...)" in str(error.value)
    assert "31536001" in str(error.value)
    assert "from 1 to 31536000" in str(error.value)


def test_wait_is_seconds_from_0_to_300_in_the_setting_and_the_decorator() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert conf.parse_settings(None).wait == 0
    assert conf.parse_settings({"WAIT": 2.5}).wait == 2.5
    assert conf.parse_settings({"WAIT": 300}).wait == 300
    assert callable(idempotent(wait=0.5)(view))
    with pytest.raises(ImproperlyConfigured, match=r"@idempotent\(wait=...\) must be"):
        idempotent(wait=-0.1)


@pytest.mark.parametrize(
    "header",
    [
        "Content-Type",
        "content-type",
        "CONTENT-LENGTH",
        "Content-Length",
        "Idempotency_Key",
        "Idempotency Key",
        "Idempotency-Key:",
        " Idempotency-Key",
        "Idempotency-Kéy",
        "X-Key\n",
    ],
)
def test_header_that_can_never_reach_the_middleware_is_refused(header: str) -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings({"HEADER": header})

    message = str(error.value)
    assert "IDEMPOTENCY['HEADER']" in message
    assert repr(header) in message
    assert "use a dedicated header such as 'Idempotency-Key'" in message


@pytest.mark.parametrize(
    ("header", "field"),
    [("HTTP_IDEMPOTENCY_KEY", "Idempotency-Key"), ("http_x_request_id", "X-Request-Id")],
)
def test_header_given_as_its_meta_key_names_the_field_name_to_use(header: str, field: str) -> None:
    """django-idempotency-key's HEADER is ``request.META``'s key; ours is the field name."""
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings({"HEADER": header})

    assert f"use {field!r}, not {header!r}" in str(error.value)


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("HEADER_NAME", "HEADER"),
        ("BACKEND_OPTIONS", "OPTIONS"),
        ("TTL_SECONDS", "TTL"),
        ("LOCK_TTL_SECONDS", "LOCK_TTL"),
        ("REQUIRE_KEY", "REQUIRED"),
    ],
)
def test_drf_idempotency_key_names_are_refused_with_ours(theirs: str, ours: str) -> None:
    """drf-idempotency reads the same IDEMPOTENCY setting under other key names."""
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings({theirs: 1, "MAX_KEY_LENGTH": 255})

    assert f"Unknown key(s) in IDEMPOTENCY: {theirs!r}. {theirs!r} is {ours!r} here." in str(
        error.value
    )


@pytest.mark.parametrize(
    ("header", "meta_key"),
    [("Idempotency-Key", "HTTP_IDEMPOTENCY_KEY"), ("X-Request-Id", "HTTP_X_REQUEST_ID")],
)
def test_plain_header_names_are_accepted(header: str, meta_key: str) -> None:
    assert conf.parse_settings({"HEADER": header}).meta_key == meta_key


def test_override_settings_takes_effect_and_closes_the_old_backend() -> None:
    memory = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}
    with override_settings(IDEMPOTENCY={**memory, "TTL": 5}):
        assert conf.get_settings().ttl == 5
        first = handler.get_backend()
        assert isinstance(first, MemoryBackend)
        assert handler.get_backend() is first
        with override_settings(IDEMPOTENCY={**memory, "OPTIONS": {"MAX_ENTRIES": 3}}):
            assert conf.get_settings().ttl == 86400
            assert handler.get_backend() is not first
            assert handler.get_backend().max_entries == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("options", [{"MAX_ENTRIES": 0}, {"MAX_ENTRIES": "10"}, {"MAXENTRIES": 10}])
def test_memory_backend_options_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"IDEMPOTENCY\['OPTIONS'\]"):
        MemoryBackend(options)
