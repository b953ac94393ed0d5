"""Whose key it is: the scope a request's key is stored under.

With ``SCOPE = "user"`` each authenticated user has a scope of their own and
anonymous clients share :data:`ANONYMOUS_SCOPE`; ``"token"`` gives each API
token its own (``request.auth``, which Django REST framework's authenticators
set), and a request without one the user's; ``None`` is one global scope; a
callable returns the scope itself. The user is ``request.user`` as
the request carries it when the view runs, on WSGI and ASGI alike.
"""

from __future__ import annotations

import hashlib
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.functional import LazyObject

from django_idempotency.conf import IdempotencySettings

ANONYMOUS_SCOPE = "anonymous"
MAX_SCOPE_LENGTH = 255
"""What every store keeps of a scope (the database column's length)."""


def user_scope_of(pk: object) -> str:
    """The scope of the user whose primary key is ``pk``."""
    return f"user:{pk}"


def scope_of(request: HttpRequest, settings: IdempotencySettings) -> str:
    """The request's scope (sync)."""
    scope = settings.scope
    if scope == "token":
        return token_scope(request) or user_scope(_user_of(request))
    if scope == "user":
        return user_scope(_user_of(request))
    if scope is None:
        return ""
    return _checked(scope(request))


async def ascope_of(request: HttpRequest, settings: IdempotencySettings) -> str:
    """The request's scope (async): what may touch the database runs in a thread."""
    scope = settings.scope
    if scope == "token":
        token = token_scope(request)
        if token is not None:
            return token
    if scope in ("user", "token"):
        user = _user_of(request)
        if isinstance(user, LazyObject):
            # Django's session user, not looked up yet: that lookup queries the
            # database, so it runs in a thread. Not ``request.auser()``: it
            # caches the session's user apart from ``request.user``, which a
            # later middleware (RemoteUserMiddleware) may have replaced.
            return await sync_to_async(user_scope)(user)
        return user_scope(user)
    if scope is None:
        return ""
    assert callable(scope)
    return _checked(await sync_to_async(scope)(request))


def token_scope(request: HttpRequest) -> str | None:
    """The scope of the request's API token, or None when it carries none.

    The token is hashed: a scope is stored and shown in the admin, a token
    must not be.
    """
    auth = getattr(request, "auth", None)
    if auth is None:
        return None
    return "token:" + hashlib.sha256(str(auth).encode()).hexdigest()


def user_scope(user: Any) -> str:
    """Each authenticated user has a scope of their own; anonymous clients share one."""
    if user is not None and user.is_authenticated:
        return user_scope_of(user.pk)
    return ANONYMOUS_SCOPE


def _user_of(request: HttpRequest) -> Any:
    try:
        return request.user
    except AttributeError:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['SCOPE'] is 'user' but the request has no user: put "
            "'django_idempotency.middleware.IdempotencyMiddleware' after "
            "'django.contrib.auth.middleware.AuthenticationMiddleware' in MIDDLEWARE, "
            "or set IDEMPOTENCY['SCOPE'] to None or a callable."
        ) from None


def _checked(scope: object) -> str:
    """A callable's scope, which every store must be able to keep."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        raise ImproperlyConfigured(
            f"The IDEMPOTENCY['SCOPE'] callable must return a str of at most "
            f"{MAX_SCOPE_LENGTH} characters; it returned {scope!r:.80}."
        )
    return scope
