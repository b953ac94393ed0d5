"""Where the test services are, read from environment variables.

Defaults are the loopback servers a developer machine and CI run. A service
that does not answer makes its tests skip with the address tried, except
when ``CI=true``: there a missing service fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class Service:
    """A network service the tests need, and the Python driver that talks to it."""

    name: str
    host: str
    port: int
    driver: str | None = None
    install: str = "pip install -e '.[test]'"
    """How to install the driver."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


POSTGRES = Service(
    "PostgreSQL", _env("TEST_POSTGRES_HOST", "127.0.0.1"), int(_env("TEST_POSTGRES_PORT", "5432"))
)
MARIADB = Service(
    "MariaDB",
    _env("TEST_MARIADB_HOST", "127.0.0.1"),
    int(_env("TEST_MARIADB_PORT", "3306")),
    driver="MySQLdb",
    install="pip install -e '.[mysql]', which needs libmariadb-dev and pkg-config",
)
REDIS_URL = _env("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_redis = urlsplit(REDIS_URL)
REDIS = Service("Redis", _redis.hostname or "127.0.0.1", _redis.port or 6379)
NATS_URL = _env("TEST_NATS_URL", "nats://127.0.0.1:4222")
_nats = urlsplit(NATS_URL)
NATS = Service("NATS", _nats.hostname or "127.0.0.1", _nats.port or 4222, driver="nats")

MEMCACHED_LOCATION = _env("TEST_MEMCACHED_LOCATION", "127.0.0.1:11211")
_memcached_host, _, _memcached_port = MEMCACHED_LOCATION.rpartition(":")
MEMCACHED = Service("memcached", _memcached_host, int(_memcached_port), driver="pymemcache")

SERVICES = {
    "postgres": POSTGRES,
    "mariadb": MARIADB,
    "redis": REDIS,
    "nats": NATS,
    "memcached": MEMCACHED,
}


@cache
def is_up(service: Service) -> bool:
    """Whether the driver is installed and the service accepts TCP connections.

    Asked once per run.
    """
    if service.driver is not None and importlib.util.find_spec(service.driver) is None:
        return False
    try:
        with socket.create_connection((service.host, service.port), timeout=1):
            return True
    except OSError:
        return False


def unavailable_reason(service: Service) -> str:
    if service.driver is not None and importlib.util.find_spec(service.driver) is None:
        return f"the {service.name} driver ({service.driver}) is not installed ({service.install})"
    return (
        f"{service.name} is not reachable at {service.address} "
        "(set the TEST_* environment variables to point at one)"
    )


def postgres_database(test_name: str) -> dict[str, Any]:
    """The DATABASES entry of the test PostgreSQL; ``test_name`` is the database made."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": POSTGRES.host,
        "PORT": POSTGRES.port,
        "USER": _env("TEST_POSTGRES_USER", "postgres"),
        "PASSWORD": _env("TEST_POSTGRES_PASSWORD", ""),
        "NAME": _env("TEST_POSTGRES_NAME", "postgres"),
        "TEST": {"NAME": test_name},
    }


def mariadb_database(test_name: str) -> dict[str, Any]:
    """The DATABASES entry of the test MariaDB; ``test_name`` is the database made."""
    return {
        "ENGINE": "django.db.backends.mysql",
        "HOST": MARIADB.host,
        "PORT": MARIADB.port,
        "USER": _env("TEST_MARIADB_USER", "root"),
        "PASSWORD": _env("TEST_MARIADB_PASSWORD", ""),
        "NAME": _env("TEST_MARIADB_NAME", "test"),
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": test_name, "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }
