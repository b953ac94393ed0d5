"""The HTTP contract, through IdempotencyMiddleware, on every backend."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from model_bakery import baker

from django_idempotency import signals
from django_idempotency.backends.base import BaseBackend
from django_idempotency.conf import MAX_SECONDS
from django_idempotency.fingerprint import fingerprint
from django_idempotency.keys import storage_key
from django_idempotency.records import Claim, Record, State
from tests.backends import NATS_BACKEND, BackendCase
from tests.http import BODY, assert_problem, executions, post
from tests.testapp.models import SideEffect
from tests.testapp.views import BINARY_BODY

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def claim_as_request(
    backend: BaseBackend, key: str, body: bytes = BODY, path: str = "/create/", lease: int = 60
) -> Claim:
    """Claim a key exactly as an anonymous POST to ``path`` would."""
    claim = Claim(
        storage_key=storage_key("anonymous", key),
        key=key,
        scope="anonymous",
        fingerprint=fingerprint("anonymous", "POST", path, "", body),
        method="POST",
        path=path,
        owner_token="other-worker",
        lease_seconds=lease,
    )
    assert backend.claim(claim).claimed
    return claim


# -- first request and replay ----------------------------------------------------


@pytest.mark.idempotency(TTL=MAX_SECONDS, LOCK_TTL=MAX_SECONDS)
def test_the_longest_ttl_and_lease_are_stored_and_replayed_by_every_backend(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    """The bound on TTL and LOCK_TTL is one every store can date (a 500 came from 10**12)."""
    started = time.time()

    first = post(client)
    retry = post(client)

    assert first.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert executions() == 1
    record = idempotency_backend.get(storage_key("anonymous", "key-1"))
    assert record is not None
    assert record.expires_at >= started + MAX_SECONDS - 1


def test_first_request_runs_the_view_once(backend_case: BackendCase, client: Client) -> None:
    response = post(client)

    assert response.status_code == 201
    assert executions() == 1
    assert "Idempotent-Replayed" not in response


@pytest.mark.smoke
def test_retry_after_completion_replays_stored_response_byte_for_byte(
    backend_case: BackendCase, client: Client
) -> None:
    first = post(client)
    retry = post(client)

    assert executions() == 1
    assert retry.status_code == first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    for header in ("Content-Type", "Location", "X-Effect-Id"):
        assert retry[header] == first[header]


def test_replay_leaves_out_set_cookie(backend_case: BackendCase, client: Client) -> None:
    first = post(client)
    retry = post(client)

    assert "session-hint" in first.cookies
    assert "session-hint" not in retry.cookies
    assert "Set-Cookie" not in retry.headers


def test_binary_body_is_replayed_byte_for_byte(backend_case: BackendCase, client: Client) -> None:
    first = post(client, "/binary/")
    retry = post(client, "/binary/")

    assert first.content == retry.content == BINARY_BODY
    assert retry["Content-Type"] == "application/octet-stream"
    assert retry["Idempotent-Replayed"] == "true"
    assert executions("binary") == 1


def test_request_body_stays_readable_by_the_view(backend_case: BackendCase, client: Client) -> None:
    response = post(client, "/echo/", b'{"a": [1, 2]}')

    assert json.loads(response.content) == {"received": {"a": [1, 2]}}


def test_patch_is_guarded_like_post(backend_case: BackendCase, client: Client) -> None:
    post(client, method="patch")
    retry = post(client, method="patch")

    assert retry["Idempotent-Replayed"] == "true"
    assert executions() == 1


# -- keys -----------------------------------------------------------------------


def test_quoted_and_bare_key_are_one_key(backend_case: BackendCase, client: Client) -> None:
    post(client, key="abc")
    retry = post(client, key='"abc"')

    assert retry["Idempotent-Replayed"] == "true"
    assert executions() == 1


def test_key_of_max_length_is_accepted(backend_case: BackendCase, client: Client) -> None:
    response = post(client, key="k" * 255)

    assert response.status_code == 201


@pytest.mark.parametrize(
    "raw_key",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param('""', id="empty-quoted"),
        pytest.param("k" * 256, id="too-long"),
        pytest.param("clé", id="non-ascii"),
        pytest.param("tab\there", id="control-character"),
        pytest.param("key-1, key-2", id="header-repeated"),
        pytest.param('"key-1", "key-2"', id="quoted-header-repeated"),
        pytest.param('"unterminated', id="unterminated-quote"),
        pytest.param('"bad\\escape"', id="bad-escape"),
    ],
)
@pytest.mark.smoke
def test_malformed_key_answers_400_and_runs_nothing(
    backend_case: BackendCase, client: Client, raw_key: str
) -> None:
    response = post(client, key=raw_key)

    problem = assert_problem(response, 400, "key-invalid")
    assert "Idempotency-Key" in problem["detail"]
    assert executions() == 0


@pytest.mark.idempotency(MAX_KEY_LENGTH=8)
def test_max_key_length_setting_is_enforced(backend_case: BackendCase, client: Client) -> None:
    assert post(client, key="k" * 8).status_code == 201
    assert_problem(post(client, key="k" * 9), 400, "key-invalid")


@pytest.mark.idempotency(REQUIRED=True)
def test_missing_key_answers_400_when_required(backend_case: BackendCase, client: Client) -> None:
    response = post(client, key=None)

    assert_problem(response, 400, "key-missing")
    assert executions() == 0


def test_missing_key_passes_through_when_not_required(
    backend_case: BackendCase, client: Client
) -> None:
    post(client, key=None)
    post(client, key=None)

    assert executions() == 2


@pytest.mark.idempotency(HEADER="X-Request-Id")
def test_header_name_is_configurable(backend_case: BackendCase, client: Client) -> None:
    post(client, key=None, HTTP_X_REQUEST_ID="r-1")
    retry = post(client, key=None, HTTP_X_REQUEST_ID="r-1")

    assert retry["Idempotent-Replayed"] == "true"
    assert executions() == 1


# -- fingerprints -------------------------------------------------------------------


@pytest.mark.smoke
def test_same_key_with_different_body_answers_422_and_keeps_original(
    backend_case: BackendCase, client: Client
) -> None:
    first = post(client)
    mismatch = post(client, body=b'{"amount": "99.00", "currency": "EUR"}')
    retry = post(client)

    assert_problem(mismatch, 422, "key-reused")
    assert executions() == 1
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    ("path", "method"),
    [("/create/?page=2", "post"), ("/echo/", "post"), ("/create/", "patch")],
    ids=["query-string", "path", "method"],
)
def test_same_key_on_another_request_answers_422(
    backend_case: BackendCase, client: Client, path: str, method: str
) -> None:
    post(client)
    response = post(client, path, method=method)

    assert_problem(response, 422, "key-reused")


def test_the_record_keeps_the_path_and_query_string_as_the_client_sent_them(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    first = post(client, "/create/?note=caf%C3%A9&page=2")
    retry = post(client, "/create/?note=caf%C3%A9&page=2")
    reordered = post(client, "/create/?page=2&note=caf%C3%A9")

    record = idempotency_backend.get(storage_key("anonymous", "key-1"))
    assert record is not None
    assert record.path == "/create/?note=caf%C3%A9&page=2"
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert_problem(reordered, 422, "key-reused")
    assert executions() == 1


def test_empty_body_is_fingerprinted_too(backend_case: BackendCase, client: Client) -> None:
    post(client, body=b"")
    retry = post(client, body=b"")
    other = post(client, body=b"{}")

    assert retry["Idempotent-Replayed"] == "true"
    assert_problem(other, 422, "key-reused")
    assert executions() == 1


# -- in progress, leases, TTL -------------------------------------------------------------


def test_retry_while_first_is_in_progress_answers_409(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    claim_as_request(idempotency_backend, "key-1")

    response = post(client)

    assert_problem(response, 409, "request-in-progress")
    assert response["Retry-After"] == "1"
    assert executions() == 0


def test_different_body_while_in_progress_answers_422(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    claim_as_request(idempotency_backend, "key-1", body=b"other")

    assert_problem(post(client), 422, "key-reused")


@pytest.mark.idempotency(LOCK_TTL=1)
def test_expired_lease_is_taken_over_and_old_owner_cannot_complete(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    stale = claim_as_request(idempotency_backend, "key-1", lease=1)
    time.sleep(1.2 + backend_case.lease_slack)

    response = post(client)
    retry = post(client)

    assert response.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert executions() == 1
    replaced = idempotency_backend.get(stale.storage_key)
    assert replaced is not None
    assert replaced.owner_token != stale.owner_token
    assert not idempotency_backend.release(stale.storage_key, stale.owner_token)
    record = idempotency_backend.get(stale.storage_key)
    assert record is not None
    assert record.state is State.COMPLETED


@pytest.mark.idempotency(TTL=1)
def test_record_is_forgotten_after_ttl(backend_case: BackendCase, client: Client) -> None:
    post(client)
    time.sleep(1.2)
    again = post(client)

    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert executions() == 2


# -- what is stored, what is released ---------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 202, 204, 400, 404, 409, 422])
def test_status_below_500_is_stored_and_replayed(
    backend_case: BackendCase, client: Client, code: int
) -> None:
    first = post(client, f"/status/{code}/")
    retry = post(client, f"/status/{code}/")

    assert first.status_code == retry.status_code == code
    assert retry["Idempotent-Replayed"] == "true"
    assert executions(f"status-{code}") == 1


@pytest.mark.parametrize("code", [401, 403, 408, 429, 500, 502, 503])
def test_retryable_status_releases_the_key(
    backend_case: BackendCase, client: Client, code: int
) -> None:
    post(client, f"/status/{code}/")
    retry = post(client, f"/status/{code}/")

    assert retry.status_code == code
    assert "Idempotent-Replayed" not in retry
    assert executions(f"status-{code}") == 2


@pytest.mark.idempotency(RETRYABLE_STATUSES=[404])
def test_retryable_statuses_are_configurable(backend_case: BackendCase, client: Client) -> None:
    post(client, "/status/404/")
    post(client, "/status/404/")
    post(client, "/status/429/")
    replay = post(client, "/status/429/")

    assert executions("status-404") == 2
    assert executions("status-429") == 1
    assert replay["Idempotent-Replayed"] == "true"


def test_exception_in_view_releases_the_key(backend_case: BackendCase) -> None:
    client = Client(raise_request_exception=False)

    first = post(client, "/explode/")
    retry = post(client, "/explode/")

    assert first.status_code == retry.status_code == 500
    assert executions("explode") == 2


def test_csrf_rejection_uses_up_no_key(
    backend_case: BackendCase, idempotency_backend: BaseBackend
) -> None:
    client = Client(enforce_csrf_checks=True)

    rejected = post(client)

    assert rejected.status_code == 403
    assert idempotency_backend.get(storage_key("anonymous", "key-1")) is None
    assert executions() == 0


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "django_idempotency" and r.levelno == logging.WARNING
    ]


def test_a_streaming_response_passes_through_and_counts_as_executed(
    backend_case: BackendCase,
    client: Client,
    idempotency_backend: BaseBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="django_idempotency")
    first = post(client, "/stream/")
    streamed = b"".join(first.streaming_content)  # type: ignore[attr-defined]
    retries = [post(client, "/stream/") for _ in range(2)]

    assert first.status_code == 200
    assert streamed == b"chunk-1;chunk-2;chunk-3"  # passed through intact
    for retry in retries:
        problem = assert_problem(retry, 409, "response-not-replayable")
        assert problem["original_status"] == 200
    assert executions("stream") == 1  # never run again
    record = idempotency_backend.get(storage_key("anonymous", "key-1"))
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body is None  # status and headers kept, body dropped
    assert ("Content-Type", "text/html; charset=utf-8") in record.response.headers
    warnings = _warnings(caplog)
    assert len(warnings) == 1  # once per record, at completion; the retries log INFO
    assert "completed without its response (a streaming response)" in warnings[0]


@pytest.mark.idempotency(MAX_RESPONSE_BYTES=1000)
def test_a_response_over_max_response_bytes_is_sent_whole_and_not_replayed(
    backend_case: BackendCase,
    client: Client,
    idempotency_backend: BaseBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="django_idempotency")
    large = post(client, "/sized/1001/", key="large")
    large_retry = post(client, "/sized/1001/", key="large")
    small = post(client, "/sized/1000/", key="small")
    small_retry = post(client, "/sized/1000/", key="small")

    assert large.status_code == 201
    assert large.content == b"x" * 1001
    problem = assert_problem(large_retry, 409, "response-not-replayable")
    assert problem["original_status"] == 201
    assert small_retry["Idempotent-Replayed"] == "true"
    assert small_retry.content == small.content == b"x" * 1000
    assert executions("sized") == 2  # each once
    record = idempotency_backend.get(storage_key("anonymous", "large"))
    assert record is not None
    assert record.response is not None
    assert record.response.body is None
    assert record.response.status == 201
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "1001 bytes, over MAX_RESPONSE_BYTES (1000)" in warnings[0]


@pytest.mark.idempotency(MAX_RESPONSE_BYTES=None)
def test_max_response_bytes_none_keeps_every_body_the_store_takes(
    backend_case: BackendCase, client: Client
) -> None:
    first = post(client, "/sized/1200000/")
    retry = post(client, "/sized/1200000/")

    assert executions("sized") == 1
    # Over the store's largest value (1 MiB):
    if backend_case.id == "cache-memcached" or backend_case.backend == NATS_BACKEND:
        assert_problem(retry, 409, "response-not-replayable")
        return
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content


async def test_an_async_streaming_response_counts_as_executed(backend_case: BackendCase) -> None:
    client = AsyncClient()
    headers = {"Idempotency-Key": "async-stream"}
    send: Any = client.post

    first = await send("/async-stream/", BODY, content_type="application/json", headers=headers)
    chunks = [chunk async for chunk in first.streaming_content]
    retry = await send("/async-stream/", BODY, content_type="application/json", headers=headers)

    assert b"".join(chunks) == b"async-1;async-2"
    assert_problem(retry, 409, "response-not-replayable")
    assert await SideEffect.objects.filter(label="async-stream").acount() == 1


@pytest.mark.parametrize("method", ["get", "head", "options", "trace"])
def test_safe_methods_are_never_intercepted(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend, method: str
) -> None:
    for _ in range(2):
        response = getattr(client, method)("/create/", HTTP_IDEMPOTENCY_KEY="key-1")
        assert "Idempotent-Replayed" not in response
        assert response.status_code != 409
    assert idempotency_backend.get(storage_key("anonymous", "key-1")) is None


@pytest.mark.parametrize("method", ["put", "delete"])
def test_put_and_delete_are_not_guarded_by_default(
    backend_case: BackendCase, client: Client, method: str
) -> None:
    post(client, method=method)
    retry = post(client, method=method)

    assert "Idempotent-Replayed" not in retry
    assert executions() == 2


@pytest.mark.idempotency(METHODS=["POST", "PUT"])
def test_guarded_methods_are_configurable(backend_case: BackendCase, client: Client) -> None:
    post(client, method="patch")
    post(client, method="patch")

    assert executions() == 2


# -- scopes ---------------------------------------------------------------------------


@pytest.mark.smoke
def test_keys_are_scoped_per_user(backend_case: BackendCase) -> None:
    alice, bob = baker.make(User, _quantity=2)
    alice_client, bob_client = Client(), Client()
    alice_client.force_login(alice)
    bob_client.force_login(bob)

    alice_first = post(alice_client)
    bob_first = post(bob_client)
    alice_retry = post(alice_client)

    assert executions() == 2
    assert bob_first.status_code == 201
    assert "Idempotent-Replayed" not in bob_first
    assert bob_first.content != alice_first.content
    assert alice_retry.content == alice_first.content


def test_anonymous_clients_share_one_scope(backend_case: BackendCase) -> None:
    post(Client())
    retry = post(Client())

    assert retry["Idempotent-Replayed"] == "true"


def test_user_and_anonymous_client_do_not_share_keys(backend_case: BackendCase) -> None:
    user_client = Client()
    user_client.force_login(baker.make(User))

    post(user_client)
    anonymous = post(Client())

    assert "Idempotent-Replayed" not in anonymous
    assert executions() == 2


@pytest.mark.idempotency(SCOPE=None)
def test_scope_none_shares_keys_between_users(backend_case: BackendCase) -> None:
    alice, bob = Client(), Client()
    alice.force_login(baker.make(User))
    bob.force_login(baker.make(User))

    post(alice)
    retry = post(bob)

    assert retry["Idempotent-Replayed"] == "true"


@pytest.mark.idempotency(SCOPE="tests.testapp.scopes.by_tenant")
def test_scope_callable_separates_tenants(backend_case: BackendCase, client: Client) -> None:
    post(client, HTTP_X_TENANT="a")
    other_tenant = post(client, HTTP_X_TENANT="b")
    same_tenant = post(client, HTTP_X_TENANT="a")

    assert "Idempotent-Replayed" not in other_tenant
    assert same_tenant["Idempotent-Replayed"] == "true"
    assert executions() == 2


# -- AUTO_KEY -----------------------------------------------------------------------------


@pytest.mark.idempotency(AUTO_KEY=True)
def test_auto_key_deduplicates_identical_keyless_requests(
    backend_case: BackendCase, client: Client
) -> None:
    first = post(client, key=None)
    retry = post(client, key=None)
    different = post(client, key=None, body=b'{"amount": "1.00"}')

    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert "Idempotent-Replayed" not in different
    assert executions() == 2


@pytest.mark.idempotency(AUTO_KEY=True, REQUIRED=True)
def test_auto_key_satisfies_required(backend_case: BackendCase, client: Client) -> None:
    assert post(client, key=None).status_code == 201


# -- storage outages ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail", "pass"])
def test_storage_outage_on_claim(
    client: Client, settings: object, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY = {  # type: ignore[attr-defined]
        "BACKEND": "tests.testapp.backends.UnreachableBackend",
        "ON_STORAGE_ERROR": policy,
    }
    caplog.set_level(logging.WARNING, logger="django_idempotency")

    response = post(client)

    if policy == "fail":
        assert_problem(response, 503, "storage-unavailable")
        assert response["Retry-After"] == "5"
        assert executions() == 0
    else:
        assert response.status_code == 201
        assert executions() == 1
    assert "storage error on claim" in caplog.text


def test_storage_outage_after_the_view_ran_still_returns_its_response(
    client: Client, settings: object, caplog: pytest.LogCaptureFixture
) -> None:
    settings.IDEMPOTENCY = {  # type: ignore[attr-defined]
        "BACKEND": "tests.testapp.backends.FailsAfterClaimBackend"
    }
    caplog.set_level(logging.ERROR, logger="django_idempotency")

    response = post(client)

    assert response.status_code == 201
    assert executions() == 1
    assert "storage error on complete" in caplog.text
    assert "key-1" not in caplog.text  # raw keys are never logged


def test_auth_middleware_rejection_uses_up_no_key(
    backend_case: BackendCase, client: Client, settings: Any, idempotency_backend: BaseBackend
) -> None:
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE[:-1],
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
        "django_idempotency.middleware.IdempotencyMiddleware",
    ]

    rejected = post(client)

    assert rejected.status_code == 302  # to the login page
    assert idempotency_backend.get(storage_key("anonymous", "key-1")) is None
    assert executions() == 0


@pytest.mark.idempotency(AUTO_KEY=True)
def test_a_client_key_can_never_reach_the_record_of_a_keyless_request(
    backend_case: BackendCase, client: Client, idempotency_backend: BaseBackend
) -> None:
    derived: list[str] = []

    def remember(sender: object, record: Record, **kwargs: object) -> None:
        derived.append(record.key)

    signals.claimed.connect(remember)
    try:
        post(client, key=None)
    finally:
        signals.claimed.disconnect(remember)
    idempotency_backend.delete(storage_key("anonymous", derived[0]))
    look_alike = "auto:" + derived[0][len("auto:") :]

    squatter = post(client, key=look_alike, body=b'{"amount": "0.01"}')
    victim = post(client, key=None)

    assert squatter.status_code == 201
    assert victim.status_code == 201  # its own execution, not the squatter's 422 or replay
    assert "Idempotent-Replayed" not in victim
    assert_problem(post(client, key=derived[0]), 400, "key-invalid")  # no header carries it
    assert executions() == 3


@pytest.mark.smoke
def test_a_custom_reason_phrase_is_replayed(backend_case: BackendCase, client: Client) -> None:
    first = post(client, "/custom-reason/")
    retry = post(client, "/custom-reason/")

    assert first.status_code == retry.status_code == 202
    assert first.reason_phrase == retry.reason_phrase == "Queued For Review"
    assert retry["Idempotent-Replayed"] == "true"
    assert executions("custom-reason") == 1
