"""django-idempotency: make unsafe HTTP requests safe to retry.

A view guarded by ``IdempotencyMiddleware`` or ``@idempotent`` runs at most
once per ``Idempotency-Key``; retries get the stored response replayed.
"""

from __future__ import annotations

from django_idempotency.decorators import idempotent, idempotent_exempt

__all__ = ["idempotent", "idempotent_exempt"]
