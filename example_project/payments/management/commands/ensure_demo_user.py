"""``manage.py ensure_demo_user``: the demo's users and API tokens, printed for curl.

A ``demo``/``demo`` superuser for the admin, and two API users, ``alice`` and
``bob``, with fixed tokens so that the README's curl walkthrough works as
written. Idempotent like the rest of the demo: it creates what is missing and
never changes what exists. It refuses to run unless DEBUG is True, so weak
credentials can never be created on a production deployment.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

SUPERUSER = ("demo", "demo")  # local demo only: handle() refuses without DEBUG
API_USERS = {"alice": "demo-token-alice", "bob": "demo-token-bob"}
ADMIN_URL = "http://127.0.0.1:8000/admin/"


class Command(BaseCommand):
    """Create the demo superuser, the API users and their tokens if missing."""

    help = "Create the demo superuser and the API users alice and bob (only when DEBUG is True)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "Refusing to create users with well-known credentials: DEBUG is off. "
                "Use `manage.py createsuperuser` and real tokens on real deployments."
            )
        user_model = get_user_model()
        username, password = SUPERUSER
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(f"Superuser {username!r} already exists; left unchanged.")
        else:
            user_model.objects.create_superuser(username=username, password=password)
            self.stdout.write(self.style.SUCCESS(f"Created superuser {username!r}."))
        self.stdout.write(f"Admin: {ADMIN_URL}  (username {username}, password {password})")
        for name, key in API_USERS.items():
            user, _ = user_model.objects.get_or_create(username=name)
            token, _ = Token.objects.get_or_create(user=user, defaults={"key": key})
            self.stdout.write(f"API user {name}: Authorization: Token {token.key}")
        self.stdout.write(
            self.style.WARNING("For local use only: never run the demo users on a public server.")
        )
