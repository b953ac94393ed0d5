"""The error a backend raises when the optional package it needs is not installed."""

from __future__ import annotations


def missing_extra(backend: str, package: str, extra: str, error: ImportError) -> ImportError:
    """An ImportError naming the pip command that installs ``extra``.

    A bare ``No module named 'nats'`` leaves a user to guess which package and
    which version; the extra pins what the backend was tested with. ``name``
    and ``path`` are kept so that code inspecting the original error still can.
    """
    return ImportError(
        f'{backend} needs {package}: pip install "django-idempotency[{extra}]"',
        name=error.name,
        path=error.path,
    )
