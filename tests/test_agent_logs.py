"""The agent's log formats: text lines show the domid of a domain's scope, JSON lines carry it."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import trio
from loguru import logger

from actors.agent.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)
    logger.disable("actors")


@pytest.mark.usefixtures("restore_logging")
async def test_text_lines_show_the_domid() -> None:
    out = io.StringIO()
    configure_logging("text", "INFO", sink=out)
    logger.info("outside any domain")
    logger.bind(domid=5).info("bound {braces}")

    async def in_scope() -> None:
        logger.info("contextualized")

    with logger.contextualize(domid=7):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_scope)  # trio copies the context into the task
    logger.debug("below the level")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "[dom" not in lines[0] and lines[0].endswith("INFO    outside any domain")
    assert lines[1].endswith("[dom5] bound {braces}")
    assert lines[2].endswith("[dom7] contextualized")


@pytest.mark.usefixtures("restore_logging")
def test_json_is_one_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("json", "DEBUG", sink=out)
    logger.bind(domid=3).debug("one\ntwo")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.opt(exception=True).error("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line)["record"] for line in lines)
    assert first["extra"] == {"domid": 3} and first["message"] == "one\ntwo"
    assert second["exception"]["type"] == "ValueError"
