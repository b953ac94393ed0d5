"""A real server serving the test project, for the multi-process tests.

:func:`serve` starts ``python -m gunicorn`` (sync workers, WSGI) or ``python -m
uvicorn`` (ASGI, ``server="uvicorn"``) on a free port of 127.0.0.1 with
:mod:`tests.server_settings`, configured like the calling test:
the ``IDEMPOTENCY`` setting it installed (the ``backend_case`` fixture and the
``idempotency`` marker) and the test databases pytest-django created, so that
the server's workers and the test read and write the same records and rows.
Use it from a test marked ``django_db(transaction=True, databases="__all__")``:
only committed tables and rows are visible to another process.

Everything is bounded: the start (the server is ready when gunicorn says it
listens on our port, every worker has booted and a GET answers 200), each
HTTP call (a socket timeout), and the stop (SIGTERM to the server's process
group, then SIGKILL). The server runs in a session of its own, so stopping it
ends its workers too, on success, failure or interrupt alike.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings
from django.db import connections

from tests.backends import CASES
from tests.http import BODY

SETTINGS_VARIABLE = "IDEMPOTENCY_SERVER_SETTINGS"
DATABASES_VARIABLE = "IDEMPOTENCY_SERVER_DATABASES"
ATOMIC_REQUESTS_VARIABLE = "IDEMPOTENCY_SERVER_ATOMIC_REQUESTS"
"""What :mod:`tests.server_settings` reads (it cannot import this module: the
app registry is not ready while settings load)."""
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
WSGI_APP = "django.core.wsgi:get_wsgi_application()"
ASGI_APP_FACTORY = "django.core.asgi:get_asgi_application"
SERVERS = ("gunicorn", "uvicorn")
REQUEST_TIMEOUT = 30.0
"""Seconds a request may take before the client gives up (socket timeout)."""
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3
"""Starts tried on fresh ports when another process took the chosen one first."""
LOG_TAIL = 3000

CROSS_PROCESS_CASES = [pytest.param(case, id=case.id) for case in CASES if case.cross_process]
"""The backend cases whose records worker processes share, for
``@pytest.mark.parametrize("backend_case", CROSS_PROCESS_CASES, indirect=True)``."""

_T = TypeVar("_T")


class ServerError(RuntimeError):
    """The server did not start; the message ends with its log."""


@dataclass(frozen=True)
class Reply:
    """One HTTP response as the client saw it; header names are lower-cased."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def replayed(self) -> bool:
        """Whether it is a stored response replayed by the middleware."""
        return self.headers.get("idempotent-replayed") == "true"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Server:
    """A running server; send it requests with :meth:`request` or :meth:`post`."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    kind: str = "gunicorn"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Reply:
        """Send one request on a new connection and read the whole response."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            content = response.read()
            names = {name.lower(): value for name, value in response.getheaders()}
            return Reply(status=response.status, headers=names, body=content)
        finally:
            connection.close()

    def post(
        self,
        path: str = "/create/",
        key: str | None = "key-1",
        body: bytes = BODY,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Reply:
        """POST a JSON body with an optional ``Idempotency-Key``."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.request("POST", path, body, headers, timeout)

    def log(self) -> str:
        """What the server and Django wrote so far (error and access logs)."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        """The end of the log, for assertion messages."""
        return f"--- {self.kind} log (tail) ---\n" + self.log()[-LOG_TAIL:]


@contextmanager
def serve(
    idempotency: Mapping[str, Any] | None = None,
    *,
    workers: int = 4,
    timeout: int = 30,
    ready_path: str = "/create/",
    server: str = "gunicorn",
    atomic_requests: bool = False,
    threads: int = 1,
) -> Iterator[Server]:
    """Run the server for the duration of the block, configured like the calling test.

    ``idempotency`` defaults to the ``IDEMPOTENCY`` setting in force (what
    ``backend_case`` installed); it must be JSON-serializable. ``timeout`` is
    gunicorn's: a worker silent for longer, such as one stuck in a view, is
    killed (uvicorn has no such timeout). ``ready_path`` must answer a GET
    with 200 once the server is up. ``atomic_requests`` runs every view in a
    transaction on every database. ``threads`` above 1 gives each gunicorn
    worker that many threads (the ``gthread`` worker class).
    """
    if server not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}; got {server!r}")
    environment = _environment(settings.IDEMPOTENCY if idempotency is None else idempotency)
    environment[ATOMIC_REQUESTS_VARIABLE] = "1" if atomic_requests else "0"
    for attempt in range(1, START_ATTEMPTS + 1):
        running = _spawn(environment, workers, timeout, server, threads)
        try:
            _wait_until_ready(running, workers, ready_path)
        except _PortTaken:
            _stop(running)
            if attempt == START_ATTEMPTS:
                raise ServerError(f"no free port after {attempt} attempts") from None
            continue
        except BaseException:
            _stop(running)
            raise
        try:
            yield running
        finally:
            _stop(running)
        return


def send_together(
    count: int, send: Callable[[int], _T], timeout: float = 2 * REQUEST_TIMEOUT
) -> list[_T | BaseException]:
    """Call ``send(i)`` in ``count`` threads released at once by a barrier.

    Returns each call's result or the exception it raised, in order; fails
    when a thread is still running after ``timeout`` seconds (``send`` must
    bound its own calls, as :meth:`Server.request` does).
    """
    barrier = threading.Barrier(count)
    results: list[_T | BaseException] = [RuntimeError("did not finish")] * count

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout)
            results[index] = send(index)
        except BaseException as error:  # returned to the caller, who asserts on it
            results[index] = error

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert not hung, f"{hung} of {count} request threads still running after {timeout}s"
    return results


def in_background(work: Callable[[], _T]) -> Callable[[float], _T]:
    """Start ``work`` in a thread; the returned function waits for its result."""
    results: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as error:  # handed to the caller
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout: float) -> _T:
        thread.join(timeout)
        assert not thread.is_alive(), f"still running after {timeout}s"
        if errors:
            raise errors[0]
        return results[0]

    return result


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def failures(results: Sequence[object]) -> list[BaseException]:
    """The exceptions among :func:`send_together`'s results."""
    return [result for result in results if isinstance(result, BaseException)]


# -- internals ---------------------------------------------------------------


class _PortTaken(Exception):
    """Another process bound the port between our choice and gunicorn's bind."""


def _environment(idempotency: Mapping[str, Any]) -> dict[str, str]:
    """The server's environment: ours, plus its settings module and what it must share."""
    databases = {alias: connections[alias].settings_dict["NAME"] for alias in settings.DATABASES}
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        SETTINGS_VARIABLE: json.dumps(dict(idempotency)),
        DATABASES_VARIABLE: json.dumps({alias: str(name) for alias, name in databases.items()}),
        "PYTHONPATH": python_path,
        "PYTHONUNBUFFERED": "1",
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _spawn(
    environment: Mapping[str, str], workers: int, timeout: int, server: str, threads: int = 1
) -> Server:
    port = _free_port()
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, removed by _stop)
        prefix=f"idempotency-{server}-", suffix=".log", delete=False
    )
    worker_class = ["--worker-class", "gthread", "--threads", str(threads)]
    if threads == 1:
        worker_class = ["--worker-class", "sync"]
    if server == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", ASGI_APP_FACTORY, "--factory",
            "--host", HOST,
            "--port", str(port),
            "--workers", str(workers),
            "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "gunicorn", WSGI_APP,
            "--bind", f"{HOST}:{port}",
            "--workers", str(workers),
            *worker_class,
            "--timeout", str(timeout),
            "--graceful-timeout", "3",
            "--preload",  # import Django once, in the master, before forking the workers
            "--no-control-socket",  # its default path is shared by every gunicorn of the user
            "--error-logfile", "-",
            "--access-logfile", "-",
        ]  # fmt: skip
    log_path = Path(log_file.name)
    try:
        with log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(environment),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its workers
            )
    except BaseException:
        log_path.unlink()
        raise
    return Server(port=port, process=process, log_path=log_path, kind=server)


def _wait_until_ready(server: Server, workers: int, ready_path: str) -> None:
    """Return once our server listens, all its workers started and ``ready_path`` answers."""
    deadline = time.monotonic() + START_TIMEOUT
    if server.kind == "uvicorn":
        listening = f"Uvicorn running on http://{HOST}:{server.port}"
        started = "Application startup complete."
    else:
        listening = f"Listening at: http://{HOST}:{server.port}"
        started = "Booting worker with pid"
    while True:
        log = server.log()
        if "Connection in use" in log or "error while attempting to bind" in log:
            raise _PortTaken
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.kind} exited with status {server.process.returncode} while starting\n"
                + server.log_tail()
            )
        # The log proves the port is ours before anything is sent to it.
        if listening in log and log.count(started) >= workers:
            with suppress(OSError, http.client.HTTPException):
                reply = server.request("GET", ready_path, timeout=2)
                if reply.status == 200:
                    return
        if time.monotonic() > deadline:
            raise ServerError(
                f"{server.kind} was not ready within {START_TIMEOUT}s\n" + server.log_tail()
            )
        time.sleep(0.1)


def _stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers; remove the log."""
    process = server.process
    try:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The master is alive (not reaped), so the group id is still ours.
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
    finally:
        with suppress(OSError):
            server.log_path.unlink()
