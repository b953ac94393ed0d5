"""What a client sends and gets back for a payment, validated by the model's own rules."""

from __future__ import annotations

from rest_framework import serializers

from payments.models import Payment


class PaymentSerializer(serializers.ModelSerializer):
    """The fields a client may set; ``id``, ``owner`` and ``created_at`` are the server's."""

    owner = serializers.ReadOnlyField(source="owner.username")

    class Meta:
        model = Payment
        fields = ("id", "amount", "currency", "description", "owner", "created_at")
        read_only_fields = ("id", "owner", "created_at")
