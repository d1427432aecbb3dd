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


def process_example() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- process-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its process handler example"
    return match.group(1)


async def test_readme_process_example_runs_as_a_script(xenstored: Embedded, workdir: str) -> None:
    """A script, as a user runs it: the workers import it (as ``__mp_main__``) to find its handler."""
    script = os.path.join(workdir, "parse_blobs.py")
    await trio.Path(script).write_text(process_example())
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket_path)
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, script],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=workdir,
        )
    assert result.returncode == 0, result.stderr.decode()
    error, last = result.stdout.decode().strip().splitlines()[-2:]
    assert "WorkerDied" in error and "SIGSEGV" in error
    assert last == "b'5' 1"  # parsed "hello" in a fresh worker; one worker replaced
