"""Every backend configuration the behavioural suite runs against.

A case names the ``IDEMPOTENCY`` BACKEND/OPTIONS it installs and the service
it needs. Tests take the ``backend_case`` fixture (or ``idempotency_backend``)
and run once per case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.services import (
    MARIADB,
    MEMCACHED,
    NATS,
    NATS_URL,
    POSTGRES,
    REDIS,
    REDIS_URL,
    Service,
)
from tests.settings import RUN_ID

DB = "django_idempotency.backends.db.DatabaseBackend"
CACHE = "django_idempotency.backends.cache.CacheBackend"
REDIS_NATIVE = "django_idempotency.backends.redis.RedisBackend"
MEMORY = "django_idempotency.backends.memory.MemoryBackend"
NATS_BACKEND = "django_idempotency.backends.nats.NatsBackend"
NATS_BUCKET = f"idempotency-test-{RUN_ID}"
"""This run's bucket on the shared NATS server (deleted at the end of the session)."""
NATS_READ_ON_CLAIM_BUCKET = f"{NATS_BUCKET}-read-on-claim"
NATS_BUCKETS = (NATS_BUCKET, NATS_READ_ON_CLAIM_BUCKET)
"""Every bucket of this run's NATS cases: records of one case never answer another's."""


@dataclass(frozen=True)
class BackendCase:
    """One backend configuration under test."""

    id: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    service: Service | None = None
    cross_process: bool = True
    """Whether worker processes share records (the multi-process tests run)."""
    database: str | None = None
    """The database alias the records live in, for DatabaseBackend cases."""
    listable: bool = True
    """Whether the store can list its records (``supports_listing``): the admin's store page."""
    lease_slack: float = 0.0
    """Seconds the store may keep a claim past its lease before another can take it:
    memcached's clock ticks once a second, so CacheBackend keeps its claims a second more."""

    @property
    def settings(self) -> dict[str, Any]:
        return {"BACKEND": self.backend, "OPTIONS": dict(self.options)}


CASES = [
    BackendCase("memory", MEMORY, cross_process=False),
    BackendCase("db-sqlite", DB, {"DATABASE": "default"}, database="default"),
    BackendCase("db-postgres", DB, {"DATABASE": "postgres"}, POSTGRES, database="postgres"),
    BackendCase("db-mariadb", DB, {"DATABASE": "mariadb"}, MARIADB, database="mariadb"),
    BackendCase("cache-locmem", CACHE, {"CACHE": "locmem"}, cross_process=False, listable=False),
    BackendCase("cache-redis", CACHE, {"CACHE": "redis"}, REDIS),
    BackendCase(
        "cache-memcached", CACHE, {"CACHE": "memcached"}, MEMCACHED, listable=False, lease_slack=1.0
    ),
    BackendCase("redis", REDIS_NATIVE, {"CACHE": "redis"}, REDIS),
    BackendCase("nats", NATS_BACKEND, {"SERVERS": NATS_URL, "BUCKET": NATS_BUCKET}, NATS),
    BackendCase(
        "nats-read-on-claim",
        NATS_BACKEND,
        {"SERVERS": NATS_URL, "BUCKET": NATS_READ_ON_CLAIM_BUCKET, "READ_ON_CLAIM": True},
        NATS,
    ),
]
CASES_BY_ID = {case.id: case for case in CASES}

REDIS_URL_CASE = BackendCase(
    "redis-url",
    REDIS_NATIVE,
    {"URL": REDIS_URL, "KEY_PREFIX": f"idempotency-test-{RUN_ID}-url:"},
    REDIS,
)
"""RedisBackend on a connection pool of its own; not in CASES, the backend tests add it."""
