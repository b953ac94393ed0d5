"""``django_idempotency.testing``: the helper users assert their views are guarded with."""

from __future__ import annotations

import pytest
from django.test import AsyncClient, Client

from django_idempotency.testing import aassert_idempotent, assert_idempotent
from tests.backends import BackendCase
from tests.http import BODY, executions
from tests.testapp.models import SideEffect

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def _rows() -> int:
    return executions()


@pytest.mark.smoke
def test_a_guarded_view_passes(backend_case: BackendCase, client: Client) -> None:
    first, retry = assert_idempotent(client, "/create/", {"amount": "1.00"}, side_effects=_rows)

    assert first.status_code == retry.status_code == 201
    assert executions() == 1


def test_an_unguarded_view_fails_saying_why(backend_case: BackendCase, client: Client) -> None:
    with pytest.raises(AssertionError, match="the retry was not replayed"):
        assert_idempotent(client, "/exempt/", {"amount": "1.00"})


def test_side_effects_that_do_not_grow_by_one_fail(
    backend_case: BackendCase, client: Client
) -> None:
    def other_rows() -> int:
        return executions("binary")  # what /create/ never writes

    with pytest.raises(AssertionError, match="grew by 0, not 1"):
        assert_idempotent(client, "/create/", BODY, side_effects=other_rows)


def test_a_key_used_before_fails(backend_case: BackendCase, client: Client) -> None:
    assert_idempotent(client, "/create/", {"amount": "1.00"}, key="same")

    with pytest.raises(AssertionError, match="the key was used before"):
        assert_idempotent(client, "/create/", {"amount": "1.00"}, key="same")


async def test_the_async_helper_counts_async_side_effects(backend_case: BackendCase) -> None:
    async def rows() -> int:
        return await SideEffect.objects.filter(label="async").acount()

    first, _ = await aassert_idempotent(AsyncClient(), "/async/", {}, side_effects=rows)

    assert first.status_code == 201
