"""Custom SCOPE callables for the scoping tests."""

from __future__ import annotations

from django.http import HttpRequest


def by_tenant(request: HttpRequest) -> str:
    """Scope keys per tenant header: tenants never share keys."""
    return "tenant:" + request.headers.get("X-Tenant", "none")


def not_a_string(request: HttpRequest) -> object:
    """A broken scope callable: returns an int."""
    return 42


def too_long(request: HttpRequest) -> str:
    """A broken scope callable: longer than any store keeps."""
    return "t" * 256
