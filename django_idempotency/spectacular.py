"""OpenAPI for drf-spectacular: guarded operations document the key header and the refusals.

Set ``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] =
"django_idempotency.spectacular.IdempotentAutoSchema"``, or mix
:class:`IdempotentSchemaMixin` into a schema class of your own. An operation
is guarded when its view uses the DRF integration (the mixin, or
``@idempotent`` on the class or its handler) for that method, or when
``IdempotencyMiddleware`` is installed and guards the method; it then gets an
``Idempotency-Key`` header parameter (required as the view's policy says)
and the ``application/problem+json`` answers 400, 409, 422 and 503.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from drf_spectacular.openapi import AutoSchema

from django_idempotency import marks
from django_idempotency.conf import Policy, get_settings
from django_idempotency.drf import IdempotentMixin

MIDDLEWARE_PATH = "django_idempotency.middleware.IdempotencyMiddleware"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; clients tell problems apart by type.",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}
REFUSALS = {
    "400": "The idempotency key is missing (where required) or malformed.",
    "409": "A request with this key is still being processed (retry after Retry-After), "
    "or was processed and its response cannot be replayed.",
    "422": "The key was already used for a different request.",
    "503": "The idempotency store is unavailable; the request was not processed.",
}


class IdempotentSchemaMixin:
    """Adds the key header and the refusals to every guarded operation."""

    view: Any
    method: str

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(  # type: ignore[misc]
            *args, **kwargs
        )
        policy = guarding_policy(self.view, self.method)
        if operation is None or policy is None:
            return operation
        header = get_settings().header
        operation.setdefault("parameters", []).append(
            {
                "in": "header",
                "name": header,
                "required": policy.required,
                "schema": {"type": "string", "maxLength": get_settings().max_key_length},
                "description": "A unique value per request (a UUID); send it again, unchanged, "
                "when retrying the same request to get its response instead of a second run.",
            }
        )
        responses = operation.setdefault("responses", {})
        for status, description in REFUSALS.items():
            responses.setdefault(
                status,
                {
                    "description": description,
                    "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
                },
            )
        return operation


class IdempotentAutoSchema(IdempotentSchemaMixin, AutoSchema):
    """drf-spectacular's ``AutoSchema`` that documents idempotency keys."""


def guarding_policy(view: Any, method: str) -> Policy | None:
    """The policy that guards ``method`` on the view instance, or None when none does."""
    method = method.upper()
    if isinstance(view, IdempotentMixin):
        policy = type(view)._idempotency_policy()
        return policy if method in policy.methods else None
    handler = getattr(view, getattr(view, "action", None) or method.lower(), None)
    cache = getattr(handler, marks.POLICY_ATTRIBUTE, None)
    if cache is not None:
        policy = cache()
        return policy if method in policy.methods else None
    if getattr(handler, marks.HANDLED_ATTRIBUTE, False):
        return None  # exempt
    if MIDDLEWARE_PATH not in django_settings.MIDDLEWARE:
        return None
    policy = get_settings().policy
    return policy if method in policy.methods else None
