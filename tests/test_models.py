"""IdempotencyRecord: time conversion, record conversion, labels (no database needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.test import override_settings

from django_idempotency.models import IdempotencyRecord
from django_idempotency.records import Record, State, StoredResponse
from django_idempotency.rows import to_datetime, to_epoch

EPOCH = 1_700_000_000.123456  # 2023-11-14 22:13:20.123456 UTC


def completed_record() -> Record:
    return Record(
        storage_key="a" * 64,
        key="order-42",
        scope="user:7",
        fingerprint="f" * 64,
        method="POST",
        path="/orders/?coupon=1",
        state=State.COMPLETED,
        owner_token="t" * 32,
        created_at=EPOCH,
        expires_at=EPOCH + 86400,
        completed_at=EPOCH + 0.5,
        response=StoredResponse(
            status=201, headers=(("Location", "/orders/42/"),), body=bytes(range(256))
        ),
    )


def test_to_datetime_is_aware_utc_when_use_tz() -> None:
    with override_settings(USE_TZ=True):
        value = to_datetime(EPOCH)
    assert value == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    assert value.utcoffset() == timedelta(0)


@override_settings(USE_TZ=False, TIME_ZONE="America/Chicago")
def test_to_datetime_is_naive_utc_without_use_tz_whatever_the_time_zone() -> None:
    assert to_datetime(EPOCH) == datetime(2023, 11, 14, 22, 13, 20, 123456)


@pytest.mark.parametrize("use_tz", [True, False])
def test_to_epoch_inverts_to_datetime(use_tz: bool) -> None:
    with override_settings(USE_TZ=use_tz):
        assert to_epoch(to_datetime(EPOCH)) == pytest.approx(EPOCH, abs=1e-6)


def test_to_epoch_reads_naive_values_as_utc_and_aware_values_in_their_zone() -> None:
    naive = datetime(2023, 11, 14, 22, 13, 20)
    elsewhere = datetime(2023, 11, 15, 7, 13, 20, tzinfo=timezone(timedelta(hours=9)))
    assert to_epoch(naive) == to_epoch(elsewhere) == 1_700_000_000


@pytest.mark.parametrize("use_tz", [True, False])
def test_completed_record_round_trips_through_a_row(use_tz: bool) -> None:
    record = completed_record()
    with override_settings(USE_TZ=use_tz):
        row = IdempotencyRecord.from_record(record)
        back = row.to_record()
    times = ("created_at", "expires_at", "completed_at")
    assert [getattr(back, name) for name in times] == pytest.approx(
        [getattr(record, name) for name in times], abs=1e-6
    )
    assert back._replace(**{name: getattr(record, name) for name in times}) == record
    assert row.response_headers == [["Location", "/orders/42/"]]


def test_in_progress_row_has_no_response() -> None:
    in_progress = completed_record()._replace(
        state=State.IN_PROGRESS, expires_at=EPOCH + 60, completed_at=None, response=None
    )
    row = IdempotencyRecord.from_record(in_progress)
    assert (row.response_status, row.response_headers, row.response_body) == (None, [], None)
    assert row.to_record().response is None


def test_str_shows_method_path_and_state() -> None:
    row = IdempotencyRecord.from_record(completed_record())
    assert str(row) == "POST /orders/?coupon=1 (completed)"


def test_labels_use_the_project_vocabulary() -> None:
    meta = IdempotencyRecord._meta
    assert meta.verbose_name == "idempotency record"
    labels = {field.name: str(field.verbose_name) for field in meta.concrete_fields}
    for name, label in {
        "storage_key": "storage key",
        "key": "key",
        "scope": "scope",
        "fingerprint": "fingerprint",
        "owner_token": "owner token",
        "expires_at": "expires at",
    }.items():
        assert labels[name] == label
    assert "lease" in str(meta.get_field("expires_at").help_text)
    assert meta.ordering == ("-created_at",)
