"""``manage.py purge_idempotency`` over every backend case.

Dead records are written through the contract with the backend's clock
turned back an hour, so they are dead from the start; live ones are written
with the real clock.
"""

from __future__ import annotations

import inspect
import re
import secrets
import time
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any, TypeVar

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.utils.module_loading import import_string

from django_idempotency.backends.base import BaseBackend, StorageError
from django_idempotency.records import Claim, StoredResponse
from tests.backends import CASES, BackendCase

RESPONSE = StoredResponse(201, (("Content-Type", "application/json"),), b'{"id": 1}')
_Test = TypeVar("_Test", bound=Callable[..., Any])


def _param(case: BackendCase) -> Any:
    marks = [pytest.mark.django_db(transaction=True, databases="__all__")] if case.database else []
    return pytest.param(case, id=case.id, marks=marks)


def _native(case: BackendCase) -> bool | None:
    """Whether the backend class declares native expiry; None when its server decides.

    NatsBackend expires natively from nats-server 2.11 only: it answers at run
    time, so its case runs in both groups and skips in the one that does not fit.
    """
    declared = inspect.getattr_static(import_string(case.backend), "has_native_expiry")
    return None if isinstance(declared, property) else bool(declared)


PURGEABLE = [_param(case) for case in CASES if _native(case) is not True]
NATIVE = [_param(case) for case in CASES if _native(case) is not False]


def _over(cases: list[Any], native: bool) -> Callable[[_Test], _Test]:
    def decorate(test: _Test) -> _Test:
        test.needs_native_expiry = native  # type: ignore[attr-defined]
        marked: _Test = pytest.mark.parametrize("backend_case", cases, indirect=True)(test)
        return marked

    return decorate


over_purgeable = _over(PURGEABLE, native=False)
over_native = _over(NATIVE, native=True)


@pytest.fixture(autouse=True)
def _expiry_as_the_test_needs(request: pytest.FixtureRequest) -> None:
    """Skip a case whose server decided otherwise (NATS before or after 2.11)."""
    needed = getattr(request.function, "needs_native_expiry", None)
    if needed is None or "backend_case" not in request.fixturenames:
        return
    backend = request.getfixturevalue("idempotency_backend")
    if backend.has_native_expiry != needed:
        case = request.getfixturevalue("backend_case")
        has = "forgets dead records itself" if backend.has_native_expiry else "keeps dead records"
        pytest.skip(f"{case.id}: this server {has}")


def write(backend: BaseBackend, *, completed: bool = True) -> str:
    """One record, completed or in progress; returns its storage key."""
    claim = Claim(
        storage_key=secrets.token_hex(32),
        key="key-" + secrets.token_hex(4),
        scope="user:1",
        fingerprint="f" * 64,
        method="POST",
        path="/payments/",
        owner_token=secrets.token_hex(16),
        lease_seconds=60,
    )
    assert backend.claim(claim).claimed
    if completed:
        assert backend.complete(claim.storage_key, claim.owner_token, RESPONSE, ttl=300)
    return claim.storage_key


def write_dead(backend: BaseBackend, count: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``count`` records that expired long ago: half in progress, half completed."""
    with monkeypatch.context() as patch:
        patch.setattr(backend, "now", lambda: time.time() - 3600)
        return [write(backend, completed=bool(n % 2)) for n in range(count)]


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_idempotency", *args, stdout=out)
    return out.getvalue()


def stored(backend: BaseBackend, keys: list[str]) -> list[str]:
    return [key for key in keys if backend.get(key) is not None]


@over_purgeable
def test_purge_deletes_dead_records_and_keeps_live_ones(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = write_dead(idempotency_backend, 5, monkeypatch)
    live = [write(idempotency_backend), write(idempotency_backend, completed=False)]

    output = purge()

    assert re.fullmatch(r"Deleted 5 expired record\(s\) in \d+\.\d\ds\.\n", output)
    assert stored(idempotency_backend, dead) == []
    assert stored(idempotency_backend, live) == live
    assert purge().startswith("Deleted 0 expired record(s)")


@over_purgeable
def test_verbosity_2_reports_each_batch(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dead(idempotency_backend, 5, monkeypatch)

    lines = purge("--batch-size", "2", "--verbosity", "2").splitlines()

    assert [line.split(" (")[0] for line in lines[:3]] == [
        "Batch 1: deleted 2",
        "Batch 2: deleted 2",
        "Batch 3: deleted 1",
    ]
    assert lines[3].startswith("Deleted 5 expired record(s) in ")
    assert len(lines) == 4


@over_purgeable
def test_verbosity_0_prints_nothing(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = write_dead(idempotency_backend, 2, monkeypatch)

    assert purge("--verbosity", "0") == ""
    assert stored(idempotency_backend, dead) == []


@over_purgeable
def test_dry_run_counts_and_deletes_nothing(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = write_dead(idempotency_backend, 3, monkeypatch)
    live = [write(idempotency_backend)]

    output = purge("--dry-run")

    assert output == "Would delete 3 expired record(s) (dry run).\n"
    assert stored(idempotency_backend, dead + live) == dead + live


@over_native
@pytest.mark.parametrize("args", [[], ["--dry-run"], ["--batch-size", "10", "-v", "2"]])
def test_native_expiry_backends_have_nothing_to_purge(
    idempotency_backend: BaseBackend, args: list[str]
) -> None:
    live = write(idempotency_backend)

    output = purge(*args)

    store = type(idempotency_backend).__name__.removesuffix("Backend")
    assert output == f"{store} expires records itself; nothing to purge.\n"
    assert idempotency_backend.get(live) is not None


@pytest.mark.parametrize(
    "backend_case", [_param(case) for case in CASES if case.id == "redis"], indirect=True
)
def test_native_expiry_message_names_redis(idempotency_backend: BaseBackend) -> None:
    assert purge() == "Redis expires records itself; nothing to purge.\n"


@over_purgeable
@pytest.mark.parametrize("args", [[], ["--dry-run"]], ids=["purge", "dry-run"])
def test_a_storage_error_becomes_a_command_error(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    def purge_fails(*, batch_size: int = 1000) -> Iterator[int]:
        yield 1
        raise StorageError("connection lost")

    def count_fails() -> int:
        raise StorageError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(idempotency_backend, "purge_expired", purge_fails)
        patch.setattr(idempotency_backend, "count_expired", count_fails)
        with pytest.raises(CommandError) as raised:
            purge(*args)

    name = type(idempotency_backend).__name__
    assert str(raised.value) == (
        f"Could not purge the idempotency records of {name}: connection lost"
    )


@over_purgeable
def test_a_storage_error_exits_non_zero_from_the_command_line(
    idempotency_backend: BaseBackend,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def count_fails() -> int:
        raise StorageError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(idempotency_backend, "count_expired", count_fails)
        with pytest.raises(SystemExit) as exited:
            ManagementUtility(["manage.py", "purge_idempotency", "--dry-run"]).execute()

    assert exited.value.code == 1
    assert "CommandError: Could not purge" in capsys.readouterr().err


@over_purgeable
def test_a_backend_without_purge_is_a_command_error(
    idempotency_backend: BaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_implemented(*, batch_size: int = 1000) -> Iterator[int]:
        raise NotImplementedError("MyBackend must implement purge_expired().")

    with monkeypatch.context() as patch:
        patch.setattr(idempotency_backend, "purge_expired", not_implemented)
        with pytest.raises(CommandError, match="cannot purge: MyBackend must implement"):
            purge()


@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_batch_size_must_be_a_positive_integer(size: str) -> None:
    with pytest.raises(CommandError, match="--batch-size: must be a positive integer"):
        purge("--batch-size", size)
