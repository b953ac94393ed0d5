"""A side-effect table: its rows prove how many times a view ran."""

from __future__ import annotations

from django.db import models


class SideEffect(models.Model):
    """One row per execution of a test view."""

    label = models.CharField(max_length=100)
    payload = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.label} #{self.pk}"
