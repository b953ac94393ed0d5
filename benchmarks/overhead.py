"""Overhead of the middleware per request, as ratios measured in one run.

Three kinds of request go through Django's test client against the same
view (insert a row, answer 201 JSON) with the memory backend (``--backend
db``: the default backend, on the in-memory SQLite database), in a project
with the middleware of a new ``startproject`` (``--stack minimal``: sessions
and authentication only). The view never looks at ``request.user``, so the
user lookup that per-user scoping needs counts entirely as our overhead
(``--view user``: the view reads ``request.user``, as authenticated APIs do):

* ``unguarded``: the view exempted from the middleware (the baseline). It
  receives the same request as ``first``, key header included (a client
  sends its key whether or not the server guards the view), so the ratio is
  what the server does with the key, not the test client building one more
  header (about 0.01x);
* ``first``: guarded, a new key each time (claim, run, complete);
* ``replay``: guarded, a key already completed (the stored response).

Rounds interleave the three kinds (the order rotates each round), so
machine noise hits all of them alike. A round times ``--requests`` requests
of each kind; the µs/request shown is the median over rounds, and a ratio is
the median over rounds of that round's kind / unguarded (paired, so a slow
stretch of the machine cancels out within its round), with its quartiles.
Run: ``python benchmarks/overhead.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.bench_settings")

BODY = b'{"amount": "12.50", "currency": "EUR"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--requests", type=int, default=50, help="per kind per round")
    parser.add_argument(
        "--stack",
        choices=["default", "minimal"],
        default="default",
        help="middleware around ours: startproject's (default) or sessions+auth only",
    )
    parser.add_argument(
        "--view",
        choices=["plain", "user"],
        default="plain",
        help="plain: the view never looks at request.user (our user scope is then all "
        "extra work); user: it reads request.user, as an authenticated API does",
    )
    parser.add_argument(
        "--backend",
        choices=["memory", "db", "redis", "nats", "nats-read-on-claim"],
        default="memory",
        help="memory: the in-process store; db: DatabaseBackend on the in-memory SQLite; "
        "redis, nats: RedisBackend and NatsBackend on the test services (nats-read-on-claim: "
        "with READ_ON_CLAIM)",
    )
    args = parser.parse_args()
    os.environ["BENCH_STACK"] = args.stack
    os.environ["BENCH_BACKEND"] = args.backend

    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", run_syncdb=True, verbosity=0)
    client = Client()
    counter = itertools.count()

    def send(path: str, key: str) -> None:
        headers = {"Idempotency-Key": key}
        response = client.post(path, BODY, content_type="application/json", headers=headers)
        assert response.status_code == 201, response.content

    guarded, unguarded = f"/{args.view}/guarded/", f"/{args.view}/unguarded/"
    send(guarded, "replayed-key")
    kinds: dict[str, Callable[[], None]] = {
        "unguarded": lambda: send(unguarded, f"key-{next(counter)}"),
        "first": lambda: send(guarded, f"key-{next(counter)}"),
        "replay": lambda: send(guarded, "replayed-key"),
    }
    for run in kinds.values():  # warm up every path
        for _ in range(50):
            run()

    samples: dict[str, list[float]] = {name: [] for name in kinds}
    names = list(kinds)
    for round_index in range(args.rounds):
        order = names[round_index % 3 :] + names[: round_index % 3]
        for name in order:
            run = kinds[name]
            started = time.perf_counter()
            for _ in range(args.requests):
                run()
            elapsed = time.perf_counter() - started
            samples[name].append(elapsed / args.requests * 1e6)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"Django test client, {args.backend} backend, {args.stack} middleware stack, "
        f"{args.view} view, "
        f"{args.rounds} rounds x {args.requests} requests"
    )
    print(f"{'kind':<12}{'median µs/request':>20}{'ratio to unguarded':>22}{'quartiles':>16}")
    ratios = {}
    for name in names:
        per_round = [a / b for a, b in zip(samples[name], samples["unguarded"], strict=True)]
        low, ratios[name], high = statistics.quantiles(per_round, n=4)
        print(f"{name:<12}{medians[name]:>20.1f}{ratios[name]:>21.2f}x{low:>9.2f}-{high:.2f}")
    print(
        f"targets: first <= 1.15x, replay <= 0.90x -> "
        f"first {'OK' if ratios['first'] <= 1.15 else 'MISSED'}, "
        f"replay {'OK' if ratios['replay'] <= 0.90 else 'MISSED'}"
    )
    _forget_the_runs_records(args.backend)


def _forget_the_runs_records(backend: str) -> None:
    """Remove this run's records from a shared store (its Redis prefix, its NATS bucket)."""
    from benchmarks.bench_settings import BACKENDS
    from django_idempotency.backends.handler import get_backend

    options: dict[str, Any] = BACKENDS[backend].get("OPTIONS", {})
    get_backend().close()
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(options["URL"])
        for key in client.scan_iter(match=options["KEY_PREFIX"] + "*", count=1000):
            client.delete(key)
    elif backend.startswith("nats"):
        from tests.nats_buckets import delete_bucket

        delete_bucket(options["SERVERS"], options["BUCKET"])


if __name__ == "__main__":
    main()
