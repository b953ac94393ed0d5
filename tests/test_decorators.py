"""``@idempotent`` and ``@idempotent_exempt``, with and without the middleware."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.utils.decorators import method_decorator
from django.views import View

from django_idempotency import engine, idempotent, idempotent_exempt, marks, problems
from django_idempotency.backends import handler
from django_idempotency.conf import get_settings
from tests.backends import BackendCase
from tests.http import BODY, assert_problem, executions, post
from tests.testapp.models import SideEffect

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

WITHOUT_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


@pytest.fixture(params=["with-middleware", "decorator-only"])
def stack(request: pytest.FixtureRequest) -> object:
    """Run each decorator test with and without the middleware installed."""
    if request.param == "with-middleware":
        yield request.param
        return
    with override_settings(MIDDLEWARE=WITHOUT_MIDDLEWARE):
        yield request.param


def test_decorated_view_runs_once_and_replays(
    backend_case: BackendCase, stack: str, client: Client
) -> None:
    first = post(client, "/decorated/")
    retry = post(client, "/decorated/")

    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert executions("decorated") == 1


def test_decorator_arguments_override_settings(
    backend_case: BackendCase, stack: str, client: Client
) -> None:
    assert_problem(post(client, "/decorated/", key=None), 400, "key-missing")
    assert executions("decorated") == 0


def test_decorator_methods_and_ttl_override_settings(
    backend_case: BackendCase, stack: str, client: Client
) -> None:
    post(client, "/decorated-put/", method="post")
    post(client, "/decorated-put/", method="post")
    assert executions("decorated-put") == 2  # POST is not in methods=["PUT"]

    post(client, "/decorated-put/", method="put")
    replay = post(client, "/decorated-put/", method="put")
    time.sleep(1.2)  # ttl=1
    again = post(client, "/decorated-put/", method="put")

    assert replay["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in again
    assert executions("decorated-put") == 4


@pytest.mark.parametrize("path", ["/cbv-class/", "/cbv-dispatch/"])
def test_class_based_views_are_guarded(
    backend_case: BackendCase, stack: str, client: Client, path: str
) -> None:
    label = path.strip("/")
    post(client, path)
    retry = post(client, path)

    assert retry["Idempotent-Replayed"] == "true"
    assert executions(label) == 1


def test_dispatch_decorator_arguments_apply(
    backend_case: BackendCase, stack: str, client: Client
) -> None:
    assert_problem(post(client, "/cbv-dispatch/", key=None), 400, "key-missing")


def test_exempt_view_is_left_alone_by_the_middleware(
    backend_case: BackendCase, client: Client
) -> None:
    post(client, "/exempt/")
    retry = post(client, "/exempt/")

    assert "Idempotent-Replayed" not in retry
    assert executions("exempt") == 2


def test_decorated_view_under_middleware_claims_once(
    backend_case: BackendCase, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="django_idempotency")

    post(client, "/decorated/")

    assert caplog.text.count(": claimed") == 1
    assert caplog.text.count(": completed") == 1


def test_exception_in_decorated_view_releases_the_key(
    backend_case: BackendCase, stack: str
) -> None:
    client = Client(raise_request_exception=False)

    first = post(client, "/decorated-explode/")
    retry = post(client, "/decorated-explode/")

    assert first.status_code == retry.status_code == 500
    assert executions("decorated-explode") == 2


async def test_async_decorated_view_runs_once_and_replays(
    backend_case: BackendCase, async_client: object
) -> None:
    first = await async_client.post(  # type: ignore[attr-defined]
        "/async/", b"{}", content_type="application/json", headers={"Idempotency-Key": "a-1"}
    )
    retry = await async_client.post(  # type: ignore[attr-defined]
        "/async/", b"{}", content_type="application/json", headers={"Idempotency-Key": "a-1"}
    )

    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert await SideEffect.objects.filter(label="async").acount() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "@idempotent(ttl=...)"),
        ({"lock_ttl": -1}, "@idempotent(lock_ttl=...)"),
        ({"methods": ["GET"]}, "@idempotent(methods=...)"),
        ({"methods": "POST"}, "@idempotent(methods=...)"),
        ({"required": "yes"}, "@idempotent(required=...)"),
    ],
)
def test_bad_decorator_arguments_fail_at_import(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(").replace(")", r"\)")):
        idempotent(**kwargs)  # type: ignore[call-overload]


def test_decorators_keep_the_view_metadata() -> None:
    def pay(request: HttpRequest) -> HttpResponse:
        """Pay."""
        return HttpResponse()

    assert idempotent(pay).__name__ == "pay"
    assert idempotent(pay).__doc__ == "Pay."
    assert idempotent_exempt(pay).__name__ == "pay"


@pytest.mark.smoke
def test_template_response_is_stored_once_rendered(
    backend_case: BackendCase, stack: str, client: Client
) -> None:
    first = post(client, "/decorated-template/")
    retry = post(client, "/decorated-template/")

    assert first.status_code == retry.status_code == 201
    assert first.content.startswith(b"created ")
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert executions("decorated-template") == 1


async def test_async_template_response_is_stored_once_rendered(
    backend_case: BackendCase, async_client: Any
) -> None:
    headers = {"Idempotency-Key": "t-1"}
    send = async_client.post
    path = "/async-decorated-template/"
    first = await send(path, b"{}", content_type="application/json", headers=headers)
    retry = await send(path, b"{}", content_type="application/json", headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert await SideEffect.objects.filter(label="async-template").acount() == 1


# -- one claim per request, whatever the decoration -------------------------------------


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/decorated/", "decorated"),
        ("/cbv-class/", "cbv-class"),
        ("/cbv-dispatch/", "cbv-dispatch"),
        ("/cbv-method/", "cbv-method"),
        ("/nested-guard/", "decorated"),
    ],
    ids=["function", "class", "dispatch", "method-decorator-on-post", "nested"],
)
@pytest.mark.smoke
def test_every_decoration_form_claims_once_and_replays(
    backend_case: BackendCase,
    stack: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
    path: str,
    label: str,
) -> None:
    caplog.set_level("DEBUG", logger="django_idempotency")

    first = post(client, path)
    retry = post(client, path)
    again = post(client, path)

    assert first.status_code == 201, first.content
    assert retry.status_code == again.status_code == 201
    assert retry.content == again.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert executions(label) == 1
    assert caplog.text.count(": claimed") == 1


async def test_async_decorated_view_claims_once_under_the_middleware(
    backend_case: BackendCase, async_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="django_idempotency")
    headers = {"Idempotency-Key": "a-once"}

    first = await async_client.post(
        "/async/", b"{}", content_type="application/json", headers=headers
    )
    retry = await async_client.post(
        "/async/", b"{}", content_type="application/json", headers=headers
    )

    assert first.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert caplog.text.count(": claimed") == 1
    assert await SideEffect.objects.filter(label="async").acount() == 1


def test_the_middleware_sees_a_decorator_on_the_handler_of_the_requests_method() -> None:
    view = View.as_view()
    view.view_class = type(  # type: ignore[attr-defined]
        "Handler", (View,), {"post": method_decorator(idempotent)(lambda self, request: None)}
    )

    assert marks.handled_elsewhere(view, "POST")
    assert not marks.handled_elsewhere(view, "PUT")


def test_a_refusal_is_never_stored_as_the_views_response(backend_case: BackendCase) -> None:
    request = RequestFactory().post(
        "/create/", b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="refused"
    )
    request.user = AnonymousUser()
    policy = get_settings().policy
    guard = engine.begin(request, policy)
    assert isinstance(guard, engine.Guard)

    engine.finish(guard, problems.request_in_progress())

    assert handler.get_backend().get(guard.claim.storage_key) is None  # released, not stored


# -- failures after the view returned --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/decorated-broken-template/", "broken-template"),
        ("/decorated-returns-none/", "returns-none"),
    ],
    ids=["template-fails-to-render", "view-returns-none"],
)
@pytest.mark.smoke
def test_a_failure_after_the_view_returned_releases_the_claim(
    backend_case: BackendCase, stack: str, path: str, label: str
) -> None:
    client = Client(raise_request_exception=False)

    first = post(client, path)
    retry = post(client, path)

    assert first.status_code == retry.status_code == 500  # not 409: the claim was released
    assert executions(label) == 2


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/async-decorated-broken-template/", "async-broken-template"),
        ("/async-decorated-returns-none/", "async-returns-none"),
    ],
    ids=["template-fails-to-render", "view-returns-none"],
)
async def test_a_failure_after_an_async_view_returned_releases_the_claim(
    backend_case: BackendCase, stack: str, path: str, label: str
) -> None:
    client = AsyncClient(raise_request_exception=False)
    headers = {"Idempotency-Key": "after-return"}

    first = await client.post(path, BODY, content_type="application/json", headers=headers)
    retry = await client.post(path, BODY, content_type="application/json", headers=headers)

    assert first.status_code == retry.status_code == 500  # not 409: the claim was released
    assert await SideEffect.objects.filter(label=label).acount() == 2
