"""The example project as a user runs it: uvicorn workers, the README's walkthrough.

``example_project/smoke.py`` does the work (it is also what the packaging test
runs against an installed wheel): migrate, create the demo users, serve with
``uvicorn --workers 2``, pay as alice twice and as bob once with one key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.settings import HAS_DRF

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_DRF, reason="the example project is a DRF API"),
]


def run_smoke_test(python: str, project: Path) -> subprocess.CompletedProcess[str]:
    """Run the smoke test with ``python`` on the example project at ``project``."""
    return subprocess.run(
        [python, str(project / "smoke.py")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )


def test_the_example_project_under_uvicorn_workers_keeps_two_users_apart() -> None:
    result = run_smoke_test(sys.executable, ROOT / "example_project")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "smoke test passed with 2 uvicorn workers" in result.stdout
