"""The pytest plugin of mtwatch (an entry point in ``pytest11``: loaded by every pytest run where mtwatch is
installed). Its fixtures need an async test runner: pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio``).

- ``mtwatch_sandbox``: an :func:`actors.testing.sandbox` for the test.
- ``mtwatch_runtime``: ``box.runtime()`` on that sandbox (its domains listed, ready for ``rt.watch``).

Their options come from the ``mtwatch`` marker and from fixture parameters (indirect parametrization), the
parameter winning::

    @pytest.mark.mtwatch(compat="4.17", lifecycle="domains", stop_deadline=2)
    async def test_x(mtwatch_sandbox, mtwatch_runtime): ...

    @pytest.mark.parametrize("mtwatch_sandbox", ["4.22", "4.17"], indirect=True)  # a compat, or a dict
    async def test_y(mtwatch_sandbox): ...

``compat`` and ``quotas`` are the sandbox's; ``lifecycle`` is both the sandbox's (how ``create_domain`` makes
domains: ``"mtwatch"`` or ``"domains"``) and the runtime's; every other keyword is an
:func:`actors.open_runtime` option. Importing this module loads nothing of mtwatch's but its package face.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from actors.runtime.runtime import Runtime
    from actors.testing.box import Sandbox

__all__ = ["mtwatch_runtime", "mtwatch_sandbox", "pytest_configure"]

MARKER = "mtwatch"
_SANDBOX_KEYS = ("compat", "quotas")
_SANDBOX_OPTIONS = pytest.StashKey[dict[str, Any]]()  # the test's options, as the sandbox fixture found them


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(compat='4.22', lifecycle='mtwatch', **runtime_options): options of the mtwatch_sandbox and"
        " mtwatch_runtime fixtures (actors.testing)",
    )


def _param(request: pytest.FixtureRequest, fixture: str) -> dict[str, Any]:
    """The fixture's indirect parameter, as options: a dict, or (the sandbox's) a compat string."""
    param = getattr(request, "param", None)
    if param is None:
        return {}
    if isinstance(param, str) and fixture == "mtwatch_sandbox":
        return {"compat": param}
    if not isinstance(param, dict):
        raise TypeError(f"{fixture}: an indirect parameter is a dict of options, not {param!r}")
    return dict(param)


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The marker's keywords (the closest marker wins, key by key), then the fixtures' parameters."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            raise TypeError(f"@pytest.mark.{MARKER} takes keyword arguments only, not {marker.args!r}")
        options.update(marker.kwargs)
    return options


def _sandbox_options(options: dict[str, Any]) -> dict[str, Any]:
    chosen = {key: options[key] for key in _SANDBOX_KEYS if key in options}
    if options.get("lifecycle") in ("mtwatch", "domains"):
        chosen["lifecycle"] = options["lifecycle"]
    return chosen


@pytest.fixture
async def mtwatch_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """An :func:`actors.testing.sandbox` (the ``mtwatch`` marker's ``compat``, ``lifecycle``, ``quotas``)."""
    from actors.testing.box import sandbox

    options = {**_options(request), **_param(request, "mtwatch_sandbox")}
    async with sandbox(**_sandbox_options(options)) as box:
        request.node.stash[_SANDBOX_OPTIONS] = options
        yield box


@pytest.fixture
async def mtwatch_runtime(request: pytest.FixtureRequest, mtwatch_sandbox: Sandbox) -> AsyncIterator[Runtime]:
    """``mtwatch_sandbox.runtime(**options)``: the ``mtwatch`` marker's runtime options (and ``lifecycle``),
    then this fixture's parameter."""
    options = dict(request.node.stash.get(_SANDBOX_OPTIONS, {}))
    for key in _SANDBOX_KEYS:
        options.pop(key, None)
    options.update(_param(request, "mtwatch_runtime"))
    async with mtwatch_sandbox.runtime(**options) as rt:
        yield rt
