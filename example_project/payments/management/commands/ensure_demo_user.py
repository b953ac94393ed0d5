"""``manage.py ensure_demo_user``: a ``demo``/``demo`` superuser for the local demo.

Idempotent like the rest of the demo: it creates the user only when missing
and never changes an existing one. It refuses to run unless DEBUG is True, so
a weak superuser can never be created on a production deployment.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "demo"
PASSWORD = "demo"  # local demo only: handle() refuses without DEBUG
ADMIN_URL = "http://127.0.0.1:8000/admin/"


class Command(BaseCommand):
    """Create the demo superuser if it does not exist yet."""

    help = "Create the superuser demo/demo for local use (only when DEBUG is True)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "Refusing to create a superuser with a well-known password: DEBUG is off. "
                "Use `manage.py createsuperuser` on real deployments."
            )
        user_model = get_user_model()
        lookup = {user_model.USERNAME_FIELD: USERNAME}
        if user_model.objects.filter(**lookup).exists():
            self.stdout.write(f"Superuser {USERNAME!r} already exists; left unchanged.")
        else:
            user_model.objects.create_superuser(**lookup, password=PASSWORD)
            self.stdout.write(self.style.SUCCESS(f"Created superuser {USERNAME!r}."))
        self.stdout.write(f"Admin: {ADMIN_URL}  (username {USERNAME}, password {PASSWORD})")
        self.stdout.write(
            self.style.WARNING("For local use only: never run the demo user on a public server.")
        )
