"""Settings of the gunicorn that the multi-process tests start (see :mod:`tests.server`).

The test settings, with two changes passed in environment variables by the
test process, so that the server and the test see the same records and rows:

* ``IDEMPOTENCY_SERVER_SETTINGS``: the ``IDEMPOTENCY`` dict the test
  installed (its backend case and any extra keys such as ``LOCK_TTL``), as JSON.
* ``IDEMPOTENCY_SERVER_DATABASES``: ``{alias: NAME}`` of the test databases
  pytest-django created, as JSON.
* ``IDEMPOTENCY_SERVER_ATOMIC_REQUESTS``: ``1`` to run every view in a
  transaction (``ATOMIC_REQUESTS`` on every database).

The app's warnings go to the server's log, and :mod:`tests.serverapp` keeps
its ``lease_lost`` and ``interrupted`` signals as rows, for the fault tests.

CSRF protection is removed: a real HTTP client sends no token, and Django's
test client, which the other tests use, skips the check anyway.
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS, MIDDLEWARE

SETTINGS_VARIABLE = "IDEMPOTENCY_SERVER_SETTINGS"  # the names tests.server sets
DATABASES_VARIABLE = "IDEMPOTENCY_SERVER_DATABASES"
ATOMIC_REQUESTS_VARIABLE = "IDEMPOTENCY_SERVER_ATOMIC_REQUESTS"

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
    DATABASES[_alias]["ATOMIC_REQUESTS"] = os.environ.get(ATOMIC_REQUESTS_VARIABLE) == "1"

INSTALLED_APPS = [*INSTALLED_APPS, "tests.serverapp"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django_idempotency": {"handlers": ["stderr"], "level": "INFO"}},
}

MIDDLEWARE = [name for name in MIDDLEWARE if name != "django.middleware.csrf.CsrfViewMiddleware"]
