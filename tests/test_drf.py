"""Django REST framework: keys scoped to the user DRF authenticated, every way a view is guarded."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from model_bakery import baker

from tests.backends import CASES_BY_ID, BackendCase
from tests.http import BODY, assert_problem, executions
from tests.settings import HAS_DRF, HAS_SIMPLEJWT

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.skipif(not HAS_DRF, reason="Django REST framework is not installed"),
]

if HAS_DRF:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

WITHOUT_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

INTEGRATED = [
    pytest.param("/drf/mixin/", "drf-mixin", id="mixin"),
    pytest.param("/drf/handler/", "drf-handler", id="handler-method"),
    pytest.param("/drf/class/", "drf-class", id="decorated-class"),
    pytest.param("/drf/above/", "drf-above", id="above-api-view"),
    pytest.param("/drf/below/", "drf-below", id="below-api-view"),
    pytest.param("/drf/payments/", "viewset-create", id="viewset-create"),
    pytest.param("/drf/actions/", "action-create", id="viewset-action"),
]
EVERY_VIEW = [pytest.param("/drf/plain/", "drf-plain", id="no-integration"), *INTEGRATED]

AUTHENTICATORS = ["token", "basic", "session", *(["jwt"] if HAS_SIMPLEJWT else [])]


def client_for(user: User, how: str) -> APIClient:
    """A client that authenticates as ``user`` the way ``how`` names."""
    client = APIClient()
    if how == "token":
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    elif how == "basic":
        pair = base64.b64encode(f"{user.username}:secret".encode()).decode()
        client.credentials(HTTP_AUTHORIZATION=f"Basic {pair}")
    elif how == "jwt":
        from rest_framework_simplejwt.tokens import AccessToken

        client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    else:
        client.force_login(user)
    return client


def make_users(count: int = 2) -> list[User]:
    users = []
    for index in range(count):
        user = baker.make(User, username=f"user-{index}")
        user.set_password("secret")
        user.save()
        users.append(user)
    return users


def send(
    client: APIClient, path: str, key: str | None = "k-1", body: bytes = BODY, **extra: Any
) -> Any:
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    return client.post(path, body, content_type="application/json", **extra)


@pytest.fixture(params=["with-middleware", "integration-only"])
def stack(request: pytest.FixtureRequest) -> Iterator[str]:
    """The middleware installed, or the DRF integration alone."""
    if request.param == "with-middleware":
        yield request.param
        return
    with override_settings(MIDDLEWARE=WITHOUT_MIDDLEWARE):
        yield request.param


memory_case = pytest.mark.parametrize(
    "backend_case", [CASES_BY_ID["memory"]], indirect=True, ids=["memory"]
)


# -- whose key it is ------------------------------------------------------------------


@memory_case
@pytest.mark.parametrize("how", AUTHENTICATORS)
@pytest.mark.parametrize(("path", "label"), EVERY_VIEW)
def test_two_users_with_one_key_and_body_each_get_their_own_execution(
    backend_case: BackendCase, how: str, path: str, label: str
) -> None:
    alice, bob = make_users()
    as_alice, as_bob = client_for(alice, how), client_for(bob, how)

    alice_first = send(as_alice, path)
    bob_first = send(as_bob, path)
    alice_retry = send(as_alice, path)

    assert alice_first.status_code == bob_first.status_code == 201, bob_first.content
    assert not bob_first.has_header("Idempotent-Replayed")
    assert bob_first.json()["user"] == bob.pk
    assert alice_retry["Idempotent-Replayed"] == "true"
    assert alice_retry.content == alice_first.content
    assert executions(label) == 2


@pytest.mark.smoke
@pytest.mark.parametrize(("path", "label"), INTEGRATED)
def test_the_integration_alone_scopes_keys_per_user_on_every_backend(
    backend_case: BackendCase, stack: str, path: str, label: str
) -> None:
    alice, bob = make_users()
    as_alice, as_bob = client_for(alice, "token"), client_for(bob, "token")

    alice_first = send(as_alice, path)
    bob_first = send(as_bob, path)
    alice_retry = send(as_alice, path)

    assert bob_first.json()["user"] == bob.pk
    assert alice_retry["Idempotent-Replayed"] == "true"
    assert alice_retry.content == alice_first.content
    assert executions(label) == 2


@memory_case
@pytest.mark.parametrize(("path", "label"), INTEGRATED)
def test_a_view_using_the_integration_is_claimed_once_under_the_middleware(
    backend_case: BackendCase, caplog: pytest.LogCaptureFixture, path: str, label: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_idempotency")
    client = client_for(make_users(1)[0], "token")

    send(client, path)

    assert caplog.text.count(": claimed") == 1
    assert caplog.text.count(": completed") == 1


@memory_case
@pytest.mark.skipif(not HAS_SIMPLEJWT, reason="djangorestframework-simplejwt is not installed")
@pytest.mark.idempotency(SCOPE="token")
def test_scope_token_gives_each_token_of_one_user_its_own_keys(backend_case: BackendCase) -> None:
    from rest_framework_simplejwt.tokens import AccessToken

    user = make_users(1)[0]
    first, second = APIClient(), APIClient()
    first.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    second.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")

    send(first, "/drf/mixin/")
    other_token = send(second, "/drf/mixin/")
    same_token = send(first, "/drf/mixin/")

    assert not other_token.has_header("Idempotent-Replayed")
    assert same_token["Idempotent-Replayed"] == "true"
    assert executions("drf-mixin") == 2


# -- what DRF refuses never uses up a key -----------------------------------------------


@pytest.mark.smoke
@memory_case
@pytest.mark.parametrize(("path", "label"), EVERY_VIEW)
def test_unauthenticated_and_throttled_requests_never_use_up_the_key(
    backend_case: BackendCase, path: str, label: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    anonymous = send(APIClient(), path)
    throttled = send(client, path, HTTP_X_THROTTLE="yes")
    first = send(client, path)
    anonymous_retry = send(APIClient(), path)
    retry = send(client, path)

    assert anonymous.status_code == anonymous_retry.status_code == 401
    assert throttled.status_code == 429
    assert first.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert executions(label) == 1


@memory_case
@pytest.mark.parametrize(
    ("path", "label"), [param for param in INTEGRATED if param.id != "below-api-view"]
)
def test_with_the_integration_a_throttled_retry_is_throttled_not_replayed(
    backend_case: BackendCase, path: str, label: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    send(client, path)
    throttled_retry = send(client, path, HTTP_X_THROTTLE="yes")

    assert throttled_retry.status_code == 429
    assert executions(label) == 1


@memory_case
@override_settings(MIDDLEWARE=WITHOUT_MIDDLEWARE)
def test_the_decorator_under_api_view_alone_claims_after_drfs_throttles(
    backend_case: BackendCase,
) -> None:
    client = client_for(make_users(1)[0], "token")

    send(client, "/drf/below/")
    throttled_retry = send(client, "/drf/below/", HTTP_X_THROTTLE="yes")

    assert throttled_retry.status_code == 429
    assert executions("drf-below") == 1


@memory_case
@pytest.mark.parametrize(
    ("path", "label"),
    [("/drf/plain/", "drf-plain"), ("/drf/below/", "drf-below")],
    ids=["no-integration", "decorator-under-api-view"],
)
def test_with_the_middleware_a_retry_it_claims_is_replayed_before_drfs_throttles_run(
    backend_case: BackendCase, path: str, label: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    first = send(client, path)
    throttled_retry = send(client, path, HTTP_X_THROTTLE="yes")

    assert throttled_retry["Idempotent-Replayed"] == "true"
    assert throttled_retry.content == first.content
    assert executions(label) == 1


# -- what is stored -----------------------------------------------------------------------


@pytest.mark.smoke
@pytest.mark.parametrize("accept", ["application/json", "application/json; indent=4"])
def test_the_replay_is_the_rendered_response_byte_for_byte(
    backend_case: BackendCase, stack: str, accept: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    first = send(client, "/drf/mixin/", HTTP_ACCEPT=accept)
    retry = send(client, "/drf/mixin/", HTTP_ACCEPT=accept)

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry["Content-Type"] == first["Content-Type"]
    assert ("indent=4" in accept) is (b"\n" in first.content)
    assert executions("drf-mixin") == 1


@memory_case
@pytest.mark.parametrize(
    ("method", "path", "label"),
    [
        ("post", "/drf/payments/", "viewset-create"),
        ("put", "/drf/payments/7/", "viewset-update"),
        ("patch", "/drf/payments/7/", "viewset-partial-update"),
        ("post", "/drf/actions/7/refund/", "action-refund"),
    ],
    ids=["create", "update", "partial-update", "action"],
)
def test_viewset_actions_are_guarded(
    backend_case: BackendCase, method: str, path: str, label: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    first = getattr(client, method)(
        path, BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY="v"
    )
    retry = getattr(client, method)(
        path, BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY="v"
    )

    assert first.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert executions(label) == 1


@pytest.mark.smoke
@memory_case
def test_a_body_a_permission_parsed_before_the_claim_is_still_fingerprinted(
    backend_case: BackendCase,
) -> None:
    client = client_for(make_users(1)[0], "token")

    first = send(client, "/drf/data-first/")
    retry = send(client, "/drf/data-first/")
    other = send(client, "/drf/data-first/", body=b'{"amount": "99.00"}')

    assert first.status_code == 201, first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert_problem(other, 422, "key-reused")
    assert executions("drf-data-first") == 1


@memory_case
def test_an_upload_drf_streamed_before_the_claim_is_fingerprinted_from_what_it_parsed(
    backend_case: BackendCase,
) -> None:
    client = client_for(make_users(1)[0], "token")

    def upload(content: bytes) -> Any:
        return client.post(
            "/drf/upload/",
            content,
            content_type="application/pdf",
            HTTP_CONTENT_DISPOSITION="attachment; filename=scan.pdf",
            HTTP_IDEMPOTENCY_KEY="upload-1",
        )

    first = upload(b"%PDF-1.7 scan")
    retry = upload(b"%PDF-1.7 scan")
    other = upload(b"%PDF-1.7 another scan")

    assert first.status_code == 201, first.content
    assert first.json()["size"] == len(b"%PDF-1.7 scan")
    assert retry["Idempotent-Replayed"] == "true"
    assert_problem(other, 422, "key-reused")
    assert executions("drf-upload") == 1


# -- refusals -----------------------------------------------------------------------------


@memory_case
@pytest.mark.parametrize("path", ["/drf/required/", "/drf/actions/7/refund/"])
def test_refusals_are_problem_json_by_default(backend_case: BackendCase, path: str) -> None:
    client = client_for(make_users(1)[0], "token")

    missing = send(client, path, key=None)

    assert_problem(missing, 400, "key-missing")


@memory_case
@pytest.mark.idempotency(DRF_EXCEPTION_HANDLER=True)
@pytest.mark.parametrize("path", ["/drf/required/", "/drf/actions/7/refund/"])
def test_refusals_go_through_drfs_exception_handler_when_asked(
    backend_case: BackendCase, path: str
) -> None:
    client = client_for(make_users(1)[0], "token")

    missing = send(client, path, key=None)
    send(client, path, key="k")
    reused = send(client, path, key="k", body=b'{"amount": "1.00"}')

    assert missing.status_code == 400
    assert missing["Content-Type"] == "application/json"
    assert "Idempotency-Key header" in json.loads(missing.content)["detail"]
    assert reused.status_code == 422
    assert "already used" in json.loads(reused.content)["detail"]


@pytest.mark.django_db(transaction=True, databases=["default"])
@pytest.mark.parametrize(
    "path", ["/drf/required/", "/drf/actions/7/refund/"], ids=["mixin", "decorated-action"]
)
def test_a_refusal_through_drfs_exception_handler_keeps_its_retry_after(
    settings: Any, path: str
) -> None:
    settings.IDEMPOTENCY = {
        "BACKEND": "tests.testapp.backends.UnreachableBackend",
        "DRF_EXCEPTION_HANDLER": True,
    }
    client = client_for(make_users(1)[0], "token")

    outage = send(client, path, key="k")

    assert outage.status_code == 503
    assert outage["Content-Type"] == "application/json"
    assert outage["Retry-After"].isdigit()
    assert executions() == 0


# -- OpenAPI ------------------------------------------------------------------------------


def _operations() -> dict[str, Any]:
    """The schema's paths; tests/settings.py sets IdempotentAutoSchema as DRF's schema class."""
    from drf_spectacular.generators import SchemaGenerator

    from tests.testapp import drf_urls

    schema = SchemaGenerator(patterns=drf_urls.urlpatterns).get_schema(request=None, public=True)
    return schema["paths"]  # type: ignore[no-any-return]


def _key_parameter(operation: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"), None
    )


@pytest.mark.skipif(
    importlib.util.find_spec("drf_spectacular") is None, reason="drf-spectacular is not installed"
)
@pytest.mark.smoke
def test_the_openapi_schema_documents_the_key_and_the_refusals_of_guarded_operations(
    settings: Any,
) -> None:
    paths = _operations()

    for path in ("/mixin/", "/handler/", "/class/", "/plain/", "/payments/"):
        operation = paths[path]["post"]
        parameter = _key_parameter(operation)
        assert parameter is not None, path
        assert parameter["in"] == "header"
        assert parameter["required"] is False
        for status in ("400", "409", "422", "503"):
            content = operation["responses"][status]["content"]
            assert "application/problem+json" in content, (path, status)
    assert _key_parameter(paths["/required/"]["post"])["required"] is True  # type: ignore[index]
    assert _key_parameter(paths["/actions/{id}/refund/"]["post"])["required"] is True  # type: ignore[index]
    assert _key_parameter(paths["/payments/{id}/"]["put"]) is not None  # the ViewSet guards PUT


@pytest.mark.skipif(
    importlib.util.find_spec("drf_spectacular") is None, reason="drf-spectacular is not installed"
)
def test_without_the_middleware_only_views_using_the_integration_are_documented(
    settings: Any,
) -> None:
    settings.MIDDLEWARE = WITHOUT_MIDDLEWARE
    paths = _operations()

    assert _key_parameter(paths["/mixin/"]["post"]) is not None
    assert _key_parameter(paths["/plain/"]["post"]) is None
    assert "409" not in paths["/plain/"]["post"]["responses"]
