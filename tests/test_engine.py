"""What the engine keeps of a response and how it replays it."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse

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
