"""The agent's log formats: text lines show the domid of a domain's scope, JSON lines carry it."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

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
def test_json_is_one_flat_compact_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("json", "DEBUG", sink=out)
    logger.bind(domid=3, rule="ping").debug("one\ntwo")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.opt(exception=True).error("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"time", "level", "message", "domid", "rule"}
    assert (first["level"], first["message"], first["domid"], first["rule"]) == (
        "DEBUG",
        "one\ntwo",
        3,
        "ping",
    )
    assert first["time"].startswith("20") and first["time"][10] == "T"
    assert second["exception"].startswith("Traceback") and second["exception"].endswith("ValueError: boom")
    assert len(lines[0]) < 150 and ": " not in lines[0]  # compact: no padding


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("format", ["text", "json"])
def test_journal_lines_carry_syslog_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: Literal["text", "json"]
) -> None:
    with (tmp_path / "journal").open("w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(format, "INFO", sink=journal)
        logger.info("up")
        logger.bind(domid=4).error("broken")
        journal.seek(0)
        lines = journal.read().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<3>"]
    if format == "text":
        assert lines[1] == "<3>ERROR   [dom4] broken"  # the journal keeps the time itself
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # another stream: no prefixes
    out = io.StringIO()
    configure_logging(format, "INFO", sink=out)
    logger.info("plain")
    assert not out.getvalue().startswith("<")
