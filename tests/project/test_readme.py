"""The README's embedding example runs as written, against the embedded xenstored."""

from __future__ import annotations

import os
import re
import sys

import trio

from harness.build import PROJECT_ROOT
from harness.servers import Embedded

README = PROJECT_ROOT / "README.md"


def embedding_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its embedding example"
    return match.group(1)


async def test_readme_embedding_example_runs(xenstored: Embedded) -> None:
    code = embedding_example()
    assert 15 <= len(code.strip().splitlines()) <= 40
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket_path)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-c", code], env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "domain 7 is up, identity 0e5f2c1a" in out
    assert "running" in out
    handled = int(out.strip().splitlines()[-1].split()[-1])
    assert handled >= 2  # the watch's initial event and the write
    # logger.enable("actors") in the example: the handler's lines carry the domid.
    assert "INFO {'domid': 7} /local/domain/7/data/hello = b'world'" in result.stderr.decode()
