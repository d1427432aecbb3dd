"""The README's "Testing your handlers" example runs as written: as a test module of a project of its own,
under pytest with pytest-trio, mtwatch's plugin found through its entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    match = re.search(r"<!-- testing-example -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its testing example"
    return match.group(1)


def test_the_readme_testing_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\ntrio_mode = true\naddopts = --strict-markers -p no:cacheprovider\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_ping=readme_example())
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_ping_is_answered PASSED*", "*test_on_a_stock_host PASSED*"])


def test_the_example_fails_when_its_handler_is_wrong(pytester: pytest.Pytester) -> None:
    # the example can fail: a handler that answers nothing makes its assertion fail
    broken = readme_example().replace(
        'await ctx.xs.write(f"/local/domain/{ctx.domid}/data/pong", value)', "pass"
    )
    assert broken != readme_example()
    pytester.makeini("[pytest]\ntrio_mode = true\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(test_ping=broken)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
