"""Fixtures shared by the whole suite: one backend per case, cleaned after use."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.db import connections
from django.test import override_settings

from django_idempotency import conf
from django_idempotency.backends.base import BaseBackend
from django_idempotency.records import Claim
from tests.backends import CASES, BackendCase
from tests.services import IN_CI, Service, is_up, unavailable_reason
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
    with override_settings(IDEMPOTENCY={**_base_settings(request), **case.settings}):
        backend = conf.get_backend()
        _empty(backend, case)
        try:
            yield case
        finally:
            _empty(backend, case)


@pytest.fixture
def idempotency_backend(backend_case: BackendCase) -> BaseBackend:
    """The backend instance the engine uses for the current case."""
    return conf.get_backend()


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

    Listable stores delete what they list (never a whole shared Redis); a
    cache that cannot list is a test-only local cache and is cleared.
    """
    if not backend.supports_listing:
        if "CACHE" in case.options:
            caches[case.options["CACHE"]].clear()
        return
    cursor: str | None = None
    while True:
        records, cursor = backend.scan(cursor, 500)
        for record in records:
            backend.delete(record.storage_key)
        if cursor is None:
            return


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "idempotency(**settings): extra IDEMPOTENCY keys for the backend_case fixture"
    )
