"""The payments API: ``POST /payments/`` creates a payment at most once per key.

The middleware guards every POST; ``payment_collection`` is additionally
decorated with ``@idempotent(required=True)`` so that a POST without an
``Idempotency-Key`` is refused with 400 instead of running unguarded. The
decorator goes on the view the URL resolves to: the middleware then leaves
that view to the decorator, so the key is claimed exactly once.
"""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from django_idempotency import idempotent
from payments.forms import PaymentForm
from payments.models import Payment

MAX_SLOW_SECONDS = 10.0
LIST_LIMIT = 100
CENTS = Decimal("0.01")


def problem(status: int, title: str, detail: str, **extra: Any) -> JsonResponse:
    """An RFC 9457 problem+json response, the same shape the app's own errors use."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JsonResponse(body, status=status, content_type="application/problem+json")


def payment_data(payment: Payment) -> dict[str, Any]:
    """The JSON representation of a payment; the amount as a string keeps it exact."""
    return {
        "id": payment.pk,
        "amount": str(payment.amount.quantize(CENTS)),
        "currency": payment.currency,
        "description": payment.description,
        "created_at": payment.created_at,
    }


# CSRF protection is for cookie-authenticated browser forms. This is a JSON API for
# non-browser clients, which have no CSRF token to send; it trusts no cookie, and the
# Idempotency-Key header it requires is one a cross-site HTML form cannot set anyway.
@require_http_methods(["GET", "HEAD", "POST"])
@csrf_exempt
@idempotent(required=True)
def payment_collection(request: HttpRequest) -> HttpResponse:
    """``GET``: the HTML list of payments; ``POST``: create one (the JSON API)."""
    if request.method == "POST":
        return create_payment(request)
    return payment_list(request)


def payment_list(request: HttpRequest) -> HttpResponse:
    """The latest payments, newest first, for a human checking for duplicates."""
    payments = Payment.objects.all()[:LIST_LIMIT]
    return render(request, "payments/payment_list.html", {"payments": payments})


def create_payment(request: HttpRequest) -> HttpResponse:
    """Create a payment from a JSON body; bad input answers 400, never 500.

    ``?slow=<seconds>`` (at most 10) sleeps after the payment is created, so
    a retry sent meanwhile shows the 409 of a request still in progress.
    """
    slow = slow_seconds(request.GET.get("slow"))
    if slow is None:
        return problem(400, "Invalid slow parameter", "slow must be a number of seconds.")
    try:
        payload = json.loads(request.body)
    except ValueError:
        return problem(400, "Malformed JSON", "The request body must be a JSON object.")
    if not isinstance(payload, dict):
        return problem(400, "Malformed JSON", "The request body must be a JSON object.")
    form = PaymentForm(data=payload)
    if not form.is_valid():
        errors = {
            field: [error["message"] for error in field_errors]
            for field, field_errors in form.errors.get_json_data().items()
        }
        return problem(400, "Invalid payment", "Some fields are invalid.", errors=errors)
    payment = form.save()
    time.sleep(slow)
    response = JsonResponse(payment_data(payment), status=201)
    response["Location"] = reverse("payments:detail", args=[payment.pk])
    return response


def slow_seconds(raw: str | None) -> float | None:
    """The requested delay capped at ``MAX_SLOW_SECONDS``; None if it is not a number."""
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_SLOW_SECONDS)


@require_safe
def payment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One payment as JSON (where ``Location`` points after a create)."""
    payment = Payment.objects.filter(pk=pk).first()
    if payment is None:
        return problem(404, "Not found", f"There is no payment {pk}.")
    return JsonResponse(payment_data(payment))
