"""The layers hold when importing, not only in the source: what importing one layer loads (in a fresh
interpreter), and that the package face is lazy yet complete. The import contracts themselves (which layer may
import which) are import-linter's, run by ./scripts/test (`lint-imports`, configured in pyproject.toml)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import actors


def loaded_after(statement: str) -> set[str]:
    """The top-level and actors.* modules a fresh interpreter has loaded after ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


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
