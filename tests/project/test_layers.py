"""The layers hold when importing, not only in the source: what importing one layer loads (in a fresh
interpreter), and that the package face is lazy yet complete. The import contracts themselves (which layer may
import which) are import-linter's, run by ./scripts/test (`lint-imports`, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import actors
from harness.imports import loaded_after


@pytest.mark.parametrize("statement", ["import actors.xs.wire", "import actors", "import actors.xs.errors"])
def test_wire_loads_neither_trio_nor_loguru(statement: str) -> None:
    loaded = loaded_after(statement)
    assert not {"trio", "loguru", "trio_util"} & loaded
    assert not {m for m in loaded if m.startswith(("actors.runtime", "actors.xenstored", "actors.agent"))}


def test_client_loads_no_runtime_agent_or_server() -> None:
    loaded = loaded_after("import actors.xs.client")
    assert "trio" in loaded
    assert not {m for m in loaded if m.startswith(("actors.runtime", "actors.xenstored", "actors.agent"))}
    assert "loguru" not in loaded


def test_runtime_loads_neither_agent_nor_server() -> None:
    loaded = loaded_after("import actors.runtime")
    assert not {m for m in loaded if m.startswith(("actors.xenstored", "actors.agent"))}


def test_the_testing_kit_is_loaded_only_when_asked_for() -> None:
    assert not {m for m in loaded_after("import actors") if m.startswith("actors.testing")}
    # the pytest plugin is imported by every pytest run where mtwatch is installed: only the package faces
    plugin = loaded_after("import actors.testing.pytest_plugin")
    assert not {"trio", "loguru"} & plugin
    assert not {
        m for m in plugin if m.startswith(("actors.runtime", "actors.xenstored", "actors.testing.box"))
    }
    kit = loaded_after("import actors.testing; actors.testing.sandbox")
    assert {"actors.testing.box", "actors.xenstored.server", "actors.runtime.runtime"} <= kit
    assert not {m for m in kit if m.startswith(("actors.agent", "pytest", "_pytest"))}


def test_every_public_name_resolves() -> None:
    for name in actors.__all__:
        assert getattr(actors, name) is not None, name
    assert set(actors.__all__) <= set(dir(actors))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = actors.no_such_name  # type: ignore[attr-defined]


def test_an_application_enable_before_the_first_lazy_import_holds() -> None:
    # The logging packages disable the actors loggers when they are first imported; an application that
    # enabled them before that (import actors; logger.enable("actors"); actors.open_runtime) keeps them on.
    code = (
        "import sys\n"
        "from loguru import logger\n"
        "logger.remove(); logger.add(sys.stdout, format='{name} {message}')\n"
        "import actors\n"
        "logger.enable('actors')\n"
        "actors.open_runtime\n"
        "from actors.runtime import runtime\n"
        "exec(\"logger.info('hello')\", vars(runtime))  # a line logged from inside actors\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "actors.runtime.runtime hello"


def test_the_actors_loggers_are_off_by_default() -> None:
    code = (
        "import sys\n"
        "from loguru import logger\n"
        "logger.remove(); logger.add(sys.stdout, format='{name} {message}')\n"
        "import actors.runtime.runtime as runtime\n"
        "exec(\"logger.info('hidden')\", vars(runtime))\n"
        "logger.info('shown')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "__main__ shown"


def test_no_import_cycles() -> None:
    # TYPE_CHECKING imports count: a cycle hidden behind them is still one (paid for with Any or strings).
    import grimp

    graph = grimp.build_graph("actors", exclude_type_checking_imports=False)
    cycles = _strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: object) -> list[set[str]]:
    """Tarjan's algorithm over the module graph; the components of more than one module are cycles."""
    modules = sorted(graph.modules)  # type: ignore[attr-defined]
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}  # type: ignore[attr-defined]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in edges.get(m, ()):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = set()
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.add(n)
                if n == m:
                    break
            if len(component) > 1:
                found.append(component)

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_toolstack_loads_only_what_it_uses() -> None:
    # The toolstack's side needs the client and one constant of the runtime (the mtwatch root): not the actors,
    # not the lifecycle sources, not loguru.
    loaded = loaded_after("import actors.toolstack")
    runtime = {m for m in loaded if m.startswith("actors.runtime")}
    assert runtime == {"actors.runtime", "actors.runtime.lifecycle", "actors.runtime.lifecycle.protocol"}
    assert "loguru" not in loaded


def test_the_runtime_loads_no_test_tools() -> None:
    # settle() imports trio.testing (which loads pytest's modules where pytest is installed) when first called
    loaded = loaded_after("import actors.runtime.runtime, actors.runtime.settling")
    assert not {m for m in loaded if m.startswith(("trio.testing", "_pytest", "pytest"))}
