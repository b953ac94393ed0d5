"""The package's shape: no import cycle, no question about a backend's class outside backends.

These read the source, so that a change that breaks the structure fails the
suite the day it is made rather than when the next feature trips over it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

PACKAGE = Path(__file__).resolve().parent.parent / "django_idempotency"
NAME = "django_idempotency"


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules this one imports anywhere (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(NAME)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(NAME):
            module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names}
            found |= (submodules & known) or {module}
    return found & known


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])

    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_outside_backends_asks_which_class_a_backend_is() -> None:
    offenders = []
    for name, tree in _modules().items():
        if name.startswith(f"{NAME}.backends"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"isinstance", "issubclass"}
                and len(node.args) == 2
                and "Backend" in ast.unparse(node.args[1])
                and ast.unparse(node.args[1]) != "BaseBackend"  # is it a backend at all
            ):
                offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)}")

    assert not offenders, "ask the backend's capabilities instead: " + "; ".join(offenders)


def test_every_module_says_what_it_holds() -> None:
    missing = [
        name for name, tree in _modules().items() if tree.body and not ast.get_docstring(tree)
    ]

    assert not missing, f"modules without a docstring: {missing}"
