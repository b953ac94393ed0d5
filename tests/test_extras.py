"""Optional packages: a backend whose extra is missing says how to install it.

Each test runs a fresh interpreter in which the driver cannot be imported
(``sys.modules["redis"] = None``), since this process has it imported
already and cannot forget it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

EXTRAS = [
    pytest.param(
        "redis",
        "django_idempotency.backends.redis",
        "RedisBackend",
        "redis-py",
        'pip install "django-idempotency[redis]"',
        id="redis",
    ),
    pytest.param(
        "nats",
        "django_idempotency.backends.nats",
        "NatsBackend",
        "nats-py",
        'pip install "django-idempotency[nats]"',
        id="nats",
    ),
]
extras = pytest.mark.parametrize(("driver", "module", "backend", "package", "install"), EXTRAS)


def run_without(driver: str, script: str) -> dict[str, Any]:
    """Run ``script`` where ``driver`` cannot be imported; the JSON it prints."""
    preamble = f"import json\nimport sys\n\nsys.modules[{driver!r}] = None  # import fails\n"
    completed = subprocess.run(
        [sys.executable, "-c", preamble + script],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


@extras
def test_importing_the_backend_without_its_driver_names_the_extra(
    driver: str, module: str, backend: str, package: str, install: str
) -> None:
    result = run_without(
        driver,
        f"""
try:
    import {module}
except ImportError as error:
    print(json.dumps({{"raised": True, "message": str(error), "cause": repr(error.__cause__)}}))
else:
    print(json.dumps({{"raised": False}}))
""",
    )

    assert result["raised"] is True
    assert install in result["message"]
    assert f"{backend} needs {package}" in result["message"]
    assert "ModuleNotFoundError" in result["cause"]  # chained from the original


@extras
def test_the_backend_setting_without_its_driver_gives_the_pip_command_at_check_time(
    driver: str, module: str, backend: str, package: str, install: str
) -> None:
    path = f"{module}.{backend}"
    result = run_without(
        driver,
        f"""
import django
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

django.setup()
from django_idempotency import conf
from django_idempotency.checks import check_settings

try:
    conf.parse_settings({{"BACKEND": {path!r}}})
except ImproperlyConfigured as error:
    result = {{"raised": True, "message": str(error)}}
else:
    result = {{"raised": False}}
with override_settings(IDEMPOTENCY={{"BACKEND": {path!r}}}):
    result["checks"] = [[message.id, message.msg] for message in check_settings()]
print(json.dumps(result))
""",
    )

    assert result["raised"] is True
    message = result["message"]
    assert f"IDEMPOTENCY['BACKEND'] = {path!r}" in message
    assert package in message
    assert install in message
    assert "Use one of" not in message
    assert result["checks"] == [["django_idempotency.E001", message]]  # manage.py check
