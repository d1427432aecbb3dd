"""The pytest plugin, in pytest runs of small example projects (pytester): found through its entry point,
its fixtures under pytest-trio, their options from the marker and from indirect parameters, and harmless in a
run that uses none of it."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = """
import pytest
import trio

import actors


async def test_sandbox_and_runtime(mtwatch_sandbox, mtwatch_runtime):
    seen = []

    async def handler(ctx, event):
        if await ctx.xs.exists(event.path):
            seen.append(await ctx.xs.read(event.path))

    mtwatch_runtime.watch("/local/domain/{domid}/data/ping", handler)
    await mtwatch_sandbox.create_domain(5)
    async with mtwatch_sandbox.guest(5) as guest:
        await guest.write("data/ping", "hello")
        with pytest.raises(actors.PermissionDenied):
            await guest.write("/local/domain/0/data", "x")
    await mtwatch_runtime.settle()
    assert seen == [b"hello"]
    assert mtwatch_sandbox.compat == "4.22"
    assert mtwatch_runtime.lifecycle_name == "mtwatch"


@pytest.mark.mtwatch(compat="4.17", lifecycle="domains", stop_deadline=2.5)
async def test_marker(mtwatch_sandbox, mtwatch_runtime):
    assert mtwatch_sandbox.compat == "4.17"
    assert mtwatch_runtime.lifecycle_name == "domains"
    assert mtwatch_runtime.options.stop_deadline == 2.5
    domain = await mtwatch_sandbox.create_domain(7)
    assert domain.lifecycle == "domains"
    assert 7 in mtwatch_runtime.domains


@pytest.mark.parametrize("mtwatch_sandbox", ["4.22", "4.17"], indirect=True)
async def test_compat_parameter(mtwatch_sandbox):
    assert mtwatch_sandbox.compat in ("4.22", "4.17")


@pytest.mark.mtwatch(stop_deadline=9)
@pytest.mark.parametrize("mtwatch_runtime", [{"stop_deadline": 1.5, "mailbox_size": 8}], indirect=True)
async def test_runtime_parameter_wins(mtwatch_runtime):
    assert mtwatch_runtime.options.stop_deadline == 1.5
    assert mtwatch_runtime.options.mailbox_size == 8


async def test_settle_on_the_autojump_clock(mtwatch_sandbox, mtwatch_runtime, autojump_clock):
    async def slow(ctx, event):
        await trio.sleep(60)

    mtwatch_runtime.watch("/local/domain/{domid}/data/ping", slow)
    await mtwatch_sandbox.create_domain(5)
    await mtwatch_runtime.settle(timeout=120)
    assert trio.current_time() >= 60
"""

INI = """
[pytest]
trio_mode = true
addopts = --strict-markers --strict-config -p no:cacheprovider
filterwarnings = error
"""


def test_the_fixtures_in_an_example_project(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_example=EXAMPLE)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=6)


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.mtwatch(compat='4.22', lifecycle='mtwatch', **runtime_options)*"]
    )
    assert result.ret == 0


def test_a_run_that_uses_none_of_it_is_untouched(pytester: pytest.Pytester) -> None:
    # No trio, no marker of ours, warnings as errors: the plugin is loaded (its entry point) and costs nothing.
    pytester.makeini("[pytest]\naddopts = --strict-markers -W error -p no:trio -p no:cacheprovider\n")
    pytester.makepyfile(
        test_plain="import sys\n\ndef test_plain():\n    assert 'actors.testing.pytest_plugin' in sys.modules\n"
        "    assert not [m for m in sys.modules if m.startswith(('actors.runtime', 'actors.xenstored', 'trio'))]\n"
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_a_bad_marker_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_bad="import pytest\n\n@pytest.mark.mtwatch('4.17')\nasync def test_bad(mtwatch_sandbox):\n    pass\n"
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)  # pytest-trio reports a fixture's error as the test's failure
    result.stdout.fnmatch_lines(["*keyword arguments only*"])
