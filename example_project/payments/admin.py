"""The admin for payments, to check that a retry did not create a second row."""

from __future__ import annotations

from django.contrib import admin

from payments.models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    """Newest first, filterable by currency."""

    list_display = ("id", "amount", "currency", "description", "created_at")
    list_filter = ("currency",)
    search_fields = ("description",)
    date_hierarchy = "created_at"
    readonly_fields = ("created_at",)
