"""The README's second embedding example (per-domain tasks, messages, a plain def handler) runs as written."""

from __future__ import annotations

import os
import re
import sys

import trio

import actors
from harness.build import PROJECT_ROOT
from harness.servers import Embedded


def scope_example() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- embedding-scope-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its per-domain scope example"
    return match.group(1)


async def test_readme_scope_example_runs(xenstored: Embedded) -> None:
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket_path)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-c", scope_example()],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip().splitlines()[-1] == "domain 7 did status"
    async with actors.connect(xenstored.socket_path) as xs:
        assert await xs.exists("/local/domain/7/alive")  # the per-domain task ran
