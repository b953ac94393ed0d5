"""Settings of the gunicorn that the multi-process tests start (see :mod:`tests.server`).

The test settings, with two changes passed in environment variables by the
test process, so that the server and the test see the same records and rows:

* ``IDEMPOTENCY_SERVER_SETTINGS``: the ``IDEMPOTENCY`` dict the test
  installed (its backend case and any extra keys such as ``LOCK_TTL``), as JSON.
* ``IDEMPOTENCY_SERVER_DATABASES``: ``{alias: NAME}`` of the test databases
  pytest-django created, as JSON.

CSRF protection is removed: a real HTTP client sends no token, and Django's
test client, which the other tests use, skips the check anyway.
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, MIDDLEWARE

SETTINGS_VARIABLE = "IDEMPOTENCY_SERVER_SETTINGS"  # the names tests.server sets
DATABASES_VARIABLE = "IDEMPOTENCY_SERVER_DATABASES"

try:
    IDEMPOTENCY = json.loads(os.environ[SETTINGS_VARIABLE])
except KeyError:
    raise ImproperlyConfigured(
        f"{SETTINGS_VARIABLE} is not set: start this server through tests.server.serve()."
    ) from None

for _alias, _name in json.loads(os.environ.get(DATABASES_VARIABLE, "{}")).items():
    if _alias not in DATABASES:
        raise ImproperlyConfigured(
            f"{DATABASES_VARIABLE} names database {_alias!r}, which the server's settings "
            f"do not configure (they have {sorted(DATABASES)}): is its service down?"
        )
    DATABASES[_alias]["NAME"] = _name

MIDDLEWARE = [name for name in MIDDLEWARE if name != "django.middleware.csrf.CsrfViewMiddleware"]
