"""The IDEMPOTENCY setting: defaults, validation, override_settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_idempotency import conf
from django_idempotency.backends.memory import MemoryBackend
from tests.testapp.scopes import by_tenant


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
        ({"MAX_KEY_LENGTH": 0}, "IDEMPOTENCY['MAX_KEY_LENGTH'] must be an integer from 1 to 255"),
        ({"MAX_KEY_LENGTH": 256}, "IDEMPOTENCY['MAX_KEY_LENGTH'] must be an integer"),
        ({"SCOPE": "session"}, "IDEMPOTENCY['SCOPE'] = 'session' cannot be imported"),
        ({"SCOPE": 5}, "IDEMPOTENCY['SCOPE'] must be 'user', None"),
        ({"AUTO_KEY": 1}, "IDEMPOTENCY['AUTO_KEY'] must be True or False"),
        ({"ON_STORAGE_ERROR": "ignore"}, "IDEMPOTENCY['ON_STORAGE_ERROR'] must be 'fail'"),
        ({"RETRYABLE_STATUSES": [500]}, "IDEMPOTENCY['RETRYABLE_STATUSES'] must hold 4xx"),
        ({"RETRYABLE_STATUSES": 429}, "IDEMPOTENCY['RETRYABLE_STATUSES'] must be a list"),
    ],
)
def test_bad_values_raise_improperly_configured_naming_the_setting(raw: Any, names: str) -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        conf.parse_settings(raw)

    assert names in str(error.value)


def test_override_settings_takes_effect_and_closes_the_old_backend() -> None:
    memory = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}
    with override_settings(IDEMPOTENCY={**memory, "TTL": 5}):
        assert conf.get_settings().ttl == 5
        first = conf.get_backend()
        assert isinstance(first, MemoryBackend)
        assert conf.get_backend() is first
        with override_settings(IDEMPOTENCY={**memory, "OPTIONS": {"MAX_ENTRIES": 3}}):
            assert conf.get_settings().ttl == 86400
            assert conf.get_backend() is not first
            assert conf.get_backend().max_entries == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("options", [{"MAX_ENTRIES": 0}, {"MAX_ENTRIES": "10"}, {"MAXENTRIES": 10}])
def test_memory_backend_options_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"IDEMPOTENCY\['OPTIONS'\]"):
        MemoryBackend(options)
