"""ASGI entry point (``uvicorn example_project.asgi:application``).

The idempotency middleware runs natively on the async stack too.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

application = get_asgi_application()
