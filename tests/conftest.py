"""Fixtures shared by the whole suite: one backend per case, cleaned after use."""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.db import connections
from django.test import override_settings

from django_idempotency.backends import handler
from django_idempotency.backends.base import BaseBackend
from django_idempotency.backends.django_caches import configured_cache_class
from django_idempotency.records import Claim
from tests.backends import CASES, NATS_BUCKETS, BackendCase
from tests.services import IN_CI, NATS, NATS_URL, Service, is_up, unavailable_reason
from tests.settings import MEMCACHED_NAMESPACE_VARIABLE
from tests.storage import make_claim

NewClaim = Callable[..., Claim]


def require_service(service: Service | None) -> None:
    """Skip (or, under CI=true, fail) when the service does not answer."""
    if service is None or is_up(service):
        return
    if IN_CI:
        pytest.fail(f"CI=true and {unavailable_reason(service)}")
    pytest.skip(unavailable_reason(service))


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def backend_case(request: pytest.FixtureRequest) -> Iterator[BackendCase]:
    """Each backend case in turn, installed as ``IDEMPOTENCY`` and emptied afterwards."""
    case: BackendCase = request.param
    require_service(case.service)
    with (
        _own_memcached_namespace(case),
        override_settings(IDEMPOTENCY={**_base_settings(request), **case.settings}),
    ):
        backend = handler.get_backend()
        _empty(backend, case)
        try:
            yield case
        finally:
            _empty(backend, case)


@pytest.fixture
def idempotency_backend(backend_case: BackendCase) -> BaseBackend:
    """The backend instance the engine uses for the current case."""
    return handler.get_backend()


@pytest.fixture
def new_claim(idempotency_backend: BaseBackend) -> Iterator[NewClaim]:
    """Makes claims like :func:`tests.storage.make_claim` and deletes their keys afterwards.

    Each key is deleted whatever it holds by then: ``backend_case`` cleans up
    by listing records, which a foreign value a test wrote would break.
    """
    storage_keys: list[str] = []

    def make(storage_key: str | None = None, lease: int = 60) -> Claim:
        claim = make_claim(storage_key, lease)
        storage_keys.append(claim.storage_key)
        return claim

    yield make
    for storage_key in set(storage_keys):
        idempotency_backend.delete(storage_key)


@pytest.fixture
def idempotency_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra IDEMPOTENCY keys a test sets with ``@pytest.mark.idempotency(...)``."""
    return _base_settings(request)


def _base_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("idempotency")
    return dict(marker.kwargs) if marker else {}


def _empty(backend: BaseBackend, case: BackendCase) -> None:
    """Delete the records of earlier tests.

    Listable stores delete what they list (never a whole shared Redis); the
    shared memcached loses this worker's keys only; a local cache is cleared.
    """
    if not backend.supports_listing:
        if "CACHE" in case.options:
            _empty_cache(case.options["CACHE"])
        return
    cursor: str | None = None
    while True:
        records, cursor = backend.scan(cursor, 500)
        for record in records:
            backend.delete(record.storage_key)
        if cursor is None:
            return


def _empty_cache(alias: str) -> None:
    if is_memcached(alias):
        return  # each test has keys of its own (see _own_memcached_namespace)
    # A cache object of its own: ``caches[alias]`` would stay in this context
    # and be handed to every request an async test starts, sharing one client.
    cache = caches.create_connection(alias)
    try:
        cache.clear()  # a local cache: this worker's alone
    finally:
        cache.close()


def is_memcached(alias: str) -> bool:
    cache_class = configured_cache_class(alias)
    return cache_class is not None and issubclass(cache_class, BaseMemcachedCache)


@contextmanager
def _own_memcached_namespace(case: BackendCase) -> Iterator[None]:
    """Give a test over memcached a key prefix no other test uses.

    The shared memcached cannot be cleared (``flush_all`` would wipe the other
    pytest-xdist worker's records) and cannot list keys reliably: ``lru_crawler
    metadump`` was measured missing 60-75 % of the entries just rewritten and
    read. So each test writes under a prefix of its own, and what it leaves
    expires on its TTL. The servers it starts inherit the prefix through the
    environment.
    """
    alias = case.options.get("CACHE")
    if alias is None or not is_memcached(alias):
        yield
        return
    namespace = f"-{uuid.uuid4().hex[:12]}"
    os.environ[MEMCACHED_NAMESPACE_VARIABLE] = namespace
    config = dict(settings.CACHES[alias])
    config["KEY_PREFIX"] += namespace
    try:
        with override_settings(CACHES={**settings.CACHES, alias: config}):
            yield
    finally:
        del os.environ[MEMCACHED_NAMESPACE_VARIABLE]


@pytest.fixture(autouse=True)
def _close_async_thread_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the connections async tests opened in asgiref's sync thread.

    ``sync_to_async`` runs ORM calls in one long-lived worker thread whose
    connections Django never closes; left open they keep PostgreSQL from
    dropping the test database at the end of the run.
    """
    yield
    if inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        asyncio.run(sync_to_async(connections.close_all)())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each backend case's tests only the databases that case uses.

    Tests marked ``django_db(databases="__all__")`` flush every database
    after they run (PostgreSQL and MariaDB too: about 0.2 s per test). A
    test run for one backend case writes to ``default`` (the side-effect
    rows, users, sessions) and to the case's own database, if any, so only
    those are allowed and flushed.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("backend_case") if callspec is not None else None
        marker = item.get_closest_marker("django_db")
        if not isinstance(case, BackendCase) or marker is None:
            continue
        if marker.kwargs.get("databases") != "__all__":
            continue
        databases = list(dict.fromkeys(["default", case.database or "default"]))
        item.add_marker(
            pytest.mark.django_db(*marker.args, **{**marker.kwargs, "databases": databases}),
            append=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _delete_this_runs_nats_bucket() -> Iterator[None]:
    """The NATS cases' buckets live on the shared server: remove them when the run ends."""
    yield
    if not is_up(NATS):
        return
    from tests.nats_buckets import delete_bucket

    for bucket in NATS_BUCKETS:
        delete_bucket(NATS_URL, bucket)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "idempotency(**settings): extra IDEMPOTENCY keys for the backend_case fixture"
    )
