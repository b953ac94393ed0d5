"""The package as users get it: the built sdist and wheel, installed into a fresh venv.

``python -m build`` makes both; ``twine check`` passes them; the wheel holds
the migrations, templates, ``py.typed`` and the licence, and its metadata
lists every supported Python and Django. A new virtualenv gets the wheel (with
its ``drf`` extra) and uvicorn from the package index, and runs the example
project's smoke test against it, from a copy of the project outside the
checkout so that nothing of the checkout can be imported by mistake.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.services import IN_CI
from tests.test_example_project import run_smoke_test

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
DJANGOS = ("5.2", "6.0", "6.1")

# One worker builds the wheel (a module-scoped fixture) and runs every test that uses it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]


def _run(*command: str | Path, timeout: int = 600) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from the checkout."""
    if shutil.which("git") is None and not IN_CI:
        pytest.skip("git is needed to build from the checkout")
    try:
        import build  # noqa: F401
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("the build package is not installed (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("dist")
    source = _snapshot_of_the_checkout(tmp_path_factory.mktemp("source"))
    _run(sys.executable, "-m", "build", "--outdir", out, source)
    return out


def _snapshot_of_the_checkout(into: Path) -> Path:
    """A copy of the checkout's files that git tracks or would track.

    The release is built from the copy, not the checkout, because tests in the
    other workers write into the checkout meanwhile (bytecode, databases,
    coverage data): ``setuptools`` lists a file, it vanishes, the sdist fails.
    """
    listed = _run("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_twine_check_passes_the_sdist_and_the_wheel(dist: Path) -> None:
    output = _run(sys.executable, "-m", "twine", "check", *sorted(dist.iterdir()))

    assert output.count("PASSED") == 2, output


def test_the_wheel_holds_migrations_templates_types_and_licence(dist: Path) -> None:
    names = zipfile.ZipFile(_wheel(dist)).namelist()

    for required in (
        "django_idempotency/py.typed",
        "django_idempotency/migrations/0001_initial.py",
        "django_idempotency/migrations/0002_response_reason_and_unkept_body.py",
        "django_idempotency/templates/admin/django_idempotency/store_list.html",
        "django_idempotency/templates/admin/django_idempotency/includes/stored_response.html",
    ):
        assert required in names, required
    assert any(name.endswith("/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)


def test_the_metadata_lists_every_supported_python_and_django(dist: Path) -> None:
    wheel = zipfile.ZipFile(_wheel(dist))
    (metadata_name,) = [name for name in wheel.namelist() if name.endswith("/METADATA")]
    metadata = wheel.read(metadata_name).decode()

    for python in PYTHONS:
        assert f"Classifier: Programming Language :: Python :: {python}" in metadata
    for django in DJANGOS:
        assert f"Classifier: Framework :: Django :: {django}" in metadata
    assert "Provides-Extra: drf" in metadata
    assert "License-Expression: MIT" in metadata


def test_the_wheel_installed_in_a_fresh_venv_runs_the_example_project(
    dist: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", f"{_wheel(dist)}[drf]", "uvicorn")
    project = tmp_path / "example_project"
    shutil.copytree(ROOT / "example_project", project, ignore=shutil.ignore_patterns("*.sqlite3"))

    result = run_smoke_test(str(python), project)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "smoke test passed" in result.stdout
    assert str(venv) in result.stdout  # the installed wheel, not the checkout
