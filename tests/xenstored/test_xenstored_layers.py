"""The embedded xenstored's structure holds: importing it loads neither the client nor the runtime, its modules
import each other without a cycle (``TYPE_CHECKING`` imports included), and none is past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import actors.xenstored
from harness.imports import loaded_after

PACKAGE = Path(actors.xenstored.__file__).resolve().parent
NAME = "actors.xenstored"


@pytest.mark.parametrize(
    "statement",
    ["import actors.xenstored", "import actors.xenstored.testing", "from actors.xenstored import main"],
)
def test_the_server_loads_neither_the_client_nor_the_runtime(statement: str) -> None:
    loaded = loaded_after(statement)
    assert "actors.xenstored.server" in loaded
    assert "actors.xs.wire" in loaded  # the one part it shares with the client (and actors.xs.errors)
    client = {"actors.xs.client", "actors.xs.transport", "actors.xs.subscription", "actors.xs.protocol"}
    assert not client & loaded
    assert not {m for m in loaded if m.startswith(("actors.runtime", "actors.agent", "actors.toolstack"))}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([NAME, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (TYPE_CHECKING blocks too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module or ""
            if node.level:
                target = f"{base}.{target}" if target else base
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # "from . import lifecycle"
    return {module for module in found if module in known and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_inside_the_server() -> None:
    modules = _modules()
    known = set(modules)
    # A package's __init__ runs before its modules whatever they import: only module-to-module edges count.
    graph = {
        name: {m for m in _imports(name, path, known) if modules[m].name != "__init__" or m == name}
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    graph = {name: {m for m in targets if m in graph} for name, targets in graph.items()}
    assert "actors.xenstored.core" in graph["actors.xenstored.handlers.tree"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_past_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: size for name, size in sizes.items() if size > 400} == {}
