"""Run every benchmark, one after the other, and print their reports.

``make bench`` runs this. Each benchmark is its own script (and its own
Django setup), so they run as subprocesses; a failing one is reported and
the others still run.

* ``overhead.py``: µs per request and ratios, unguarded / first / replay;
* ``round_trips.py``: SQL queries and Redis commands per request per backend;
* ``purge.py``: purging 1,000,000 expired rows in PostgreSQL (about a minute;
  skip it with ``--quick``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1,000,000-row purge")
    args = parser.parse_args()
    scripts = ["overhead.py", "round_trips.py"] + ([] if args.quick else ["purge.py"])
    failed = []
    for script in scripts:
        print(f"\n=== {script}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(HERE / script)], check=False)
        print(f"=== {script}: exit {result.returncode} in {time.monotonic() - started:.0f}s")
        if result.returncode:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
