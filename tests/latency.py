"""A TCP proxy on 127.0.0.1 that delays a real server's replies, to open race windows.

A client connected through :func:`slow_replies` talks to the real server,
but every byte the server sends back arrives ``delay`` seconds late: a
read-then-write sequence then acts on what it read long before, as over a
congested network, and a blocking call on an event loop stalls it for all
that time. Requests are not delayed, so a command still reaches the server
at once.

The proxy runs in a process of its own (``python -m tests.latency``), so its
threads never compete with the test for the GIL, and lives only while the
``with`` block runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

CHUNK = 65536
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 10.0


@contextmanager
def slow_replies(host: str, port: int, delay: float) -> Iterator[int]:
    """Proxy ``host:port``, delaying the server's replies; yields the proxy's port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.latency", host, str(port), str(delay)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = _read_line(process, START_TIMEOUT)
        yield int(line)
    finally:
        process.kill()
        process.wait(10)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The port the proxy printed, within ``timeout`` seconds."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0].strip():
        raise RuntimeError("the latency proxy did not start")
    return lines[0]


def serve(host: str, port: int, delay: float) -> None:
    """Accept connections forever, pumping both ways, the server's side ``delay`` late."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)  # noqa: T201 - the parent reads the port
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, port), timeout=5)
        _pump_in_thread(client, upstream, 0.0)
        _pump_in_thread(upstream, client, delay)


def _pump_in_thread(source: socket.socket, target: socket.socket, delay: float) -> None:
    def pump() -> None:
        with suppress(OSError):
            while chunk := source.recv(CHUNK):
                deliver_at = time.monotonic() + delay
                time.sleep(max(0.0, deliver_at - time.monotonic()))
                target.sendall(chunk)
        with suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    threading.Thread(target=pump, daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
