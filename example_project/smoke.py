"""Smoke test of the example project under uvicorn workers: run it as a user would.

``python example_project/smoke.py`` migrates a fresh SQLite file, creates the
demo users, serves the project with ``uvicorn --workers 2`` on a free
loopback port, and checks the walkthrough: alice's payment, its replay, bob
with the same key getting a payment of his own, and a missing key refused.
It exits 0 when every check holds and says which ``django_idempotency`` it
ran (the checkout's, or an installed wheel's when the project is copied out
of the repository). Everything is bounded in time, and the server is
stopped whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent
WORKERS = 2
START_TIMEOUT = 60.0
BODY = b'{"amount": "12.50", "currency": "EUR", "description": "Coffee"}'


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="idempotency-smoke-") as directory:
        environment = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{Path(directory) / 'smoke.sqlite3'}",
            "DJANGO_DEBUG": "true",
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "PYTHONPATH": str(PROJECT),
        }
        manage = [sys.executable, str(PROJECT / "manage.py")]
        for command in (["migrate", "--noinput", "-v", "0"], ["ensure_demo_user"]):
            subprocess.run(
                [*manage, *command], cwd=PROJECT, env=environment, check=True, timeout=120
            )
        where = subprocess.run(
            [sys.executable, "-c", "import django_idempotency; print(django_idempotency.__file__)"],
            cwd=PROJECT,
            env=environment,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "example_project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(WORKERS),
            ],
            cwd=PROJECT,
            env=environment,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(base + "/admin/login/", server)
            _walkthrough(base)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(15)
    print(f"smoke test passed with {WORKERS} uvicorn workers, django_idempotency from {where}")
    return 0


def _walkthrough(base: str) -> None:
    alice = _pay(base, "demo-token-alice", "pay-1")
    retry = _pay(base, "demo-token-alice", "pay-1")
    bob = _pay(base, "demo-token-bob", "pay-1")
    missing = _pay(base, "demo-token-bob", None)

    _check(alice[0] == 201, f"alice's payment: {alice}")
    _check(retry[0] == 201 and retry[1].get("Idempotent-Replayed") == "true", f"replay: {retry}")
    _check(retry[2] == alice[2], "the replay is byte for byte the first response")
    _check(bob[0] == 201 and "Idempotent-Replayed" not in bob[1], f"bob's payment: {bob}")
    alice_body, bob_body = json.loads(alice[2]), json.loads(bob[2])
    _check(alice_body["owner"] == "alice" and bob_body["owner"] == "bob", "each their own")
    _check(alice_body["id"] != bob_body["id"], "two payments, not one")
    _check(missing[0] == 400, f"a missing key is refused: {missing}")
    _check(
        missing[1].get("Content-Type") == "application/problem+json", "refusals are problem+json"
    )


def _pay(base: str, token: str, key: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(base + "/payments/", BODY, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _wait_until_up(url: str, server: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the example project did not answer {url} within {START_TIMEOUT}s")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test failed: {what}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
