"""Validation of the API's input, reusing the model's own validators."""

from __future__ import annotations

from django import forms

from payments.models import Payment


class PaymentForm(forms.ModelForm):
    """The fields a client may set; ``created_at`` is the server's."""

    class Meta:
        model = Payment
        fields = ("amount", "currency", "description")
