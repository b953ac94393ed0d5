"""The ``Payment`` model: the side effect a retried request must not repeat."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models


class Payment(models.Model):
    """One payment; a duplicate row is exactly what idempotency keys prevent."""

    amount = models.DecimalField(
        max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
    currency = models.CharField(
        max_length=3,
        validators=[
            RegexValidator(r"^[A-Z]{3}\Z", "Use a 3-letter upper-case ISO 4217 code, e.g. EUR.")
        ],
        help_text="ISO 4217 code, e.g. EUR.",
    )
    description = models.CharField(max_length=200, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="payments",
        null=True,
        help_text="The API user who made the payment.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"
