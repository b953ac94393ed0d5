"""What the engine keeps of a response and how it replays it."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory, override_settings

from django_idempotency import engine
from django_idempotency.conf import get_settings
from django_idempotency.engine import REPLAYED_HEADER, replay_response, stored_response


def test_cookies_date_and_hop_by_hop_headers_are_never_stored() -> None:
    response = JsonResponse({"ok": True}, status=201)
    response["Location"] = "/payments/1/"
    for name in ("Date", "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE"):
        response[name] = "x"
    response.headers["Set-Cookie"] = "sessionid=secret"
    response.set_cookie("csrftoken", "secret")

    stored = stored_response(response)

    assert dict(stored.headers) == {
        "Content-Type": "application/json",
        "Location": "/payments/1/",
    }
    assert stored.status == 201
    assert stored.body == b'{"ok": true}'


def test_replay_restores_status_headers_and_body_exactly() -> None:
    original = HttpResponse(b"\x00\xffraw", status=202, content_type="application/x-custom")
    original["X-Trace"] = "abc"

    replay = replay_response(stored_response(original))

    assert replay.status_code == 202
    assert replay.content == b"\x00\xffraw"
    assert replay["Content-Type"] == "application/x-custom"
    assert replay["X-Trace"] == "abc"
    assert replay[REPLAYED_HEADER] == "true"
    assert not replay.cookies


def test_replay_without_content_type_adds_none() -> None:
    original = HttpResponse(b"", status=204)
    del original["Content-Type"]

    replay = replay_response(stored_response(original))

    assert "Content-Type" not in replay


def _keyed_request() -> HttpRequest:
    request = RequestFactory().post("/create/", b"{}", content_type="application/json")
    request.META["HTTP_IDEMPOTENCY_KEY"] = "k"
    return request


MEMORY = {"BACKEND": "django_idempotency.backends.memory.MemoryBackend"}


@pytest.mark.parametrize(
    ("callable_path", "returned"),
    [("tests.testapp.scopes.not_a_string", "42"), ("tests.testapp.scopes.too_long", "'ttt")],
)
def test_scope_callable_returning_a_bad_scope_is_improperly_configured(
    callable_path: str, returned: str
) -> None:
    with (
        override_settings(IDEMPOTENCY={**MEMORY, "SCOPE": callable_path}),
        pytest.raises(
            ImproperlyConfigured, match=f"at most 255 characters; it returned {returned}"
        ),
    ):
        engine.begin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY=MEMORY)
def test_user_scope_without_authentication_middleware_names_the_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"after 'django\.contrib\.auth\.middleware"):
        engine.begin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY=MEMORY)
async def test_async_user_scope_without_authentication_middleware_names_the_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"after 'django\.contrib\.auth\.middleware"):
        await engine.abegin(_keyed_request(), get_settings().policy)


@override_settings(IDEMPOTENCY={**MEMORY, "SCOPE": "tests.testapp.scopes.by_tenant"})
async def test_async_scope_callable_is_called_in_a_thread() -> None:
    request = _keyed_request()
    request.META["HTTP_X_TENANT"] = "acme"

    guard = await engine.abegin(request, get_settings().policy)

    assert isinstance(guard, engine.Guard)
    assert guard.claim.scope == "tenant:acme"
    await engine.aabort(guard)
