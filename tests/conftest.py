"""Shared fixtures: the embedded xenstored on a real unix socket, a client connected to it, and the
``server`` fixture that runs a test against the embedded server, Debian's real C xenstored and its oxenstored.

The real daemons' runs carry the markers ``cxenstored`` and ``oxenstored``; they skip with the reason when the
daemon cannot run here, and fail instead under CI (CI=true)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

import actors
from actors.xenstored import XenStored, open_xenstored
from actors.xenstored.testing import RawClient, serving
from harness.servers import Embedded, Server

if TYPE_CHECKING:
    from harness.cxenstored import Daemon


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short folder under /tmp (unix socket paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="mtw", dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def xenstored(workdir: str) -> AsyncIterator[Embedded]:
    path = os.path.join(workdir, "socket")
    async with open_xenstored(path) as server:
        yield Embedded(server, path)


@pytest.fixture
async def xs(xenstored: Embedded) -> AsyncIterator[actors.XenStore]:
    async with actors.connect(xenstored.socket_path) as conn:
        yield conn


@pytest.fixture(scope="session")
def cxenstored_ready() -> None:
    """Skip (or, under CI, fail) with the reason when Debian's C xenstored cannot run here. A sync fixture:
    pytest-trio drops the message of a skip raised in async code."""
    from harness.cxenstored import C_XENSTORED

    _ready(C_XENSTORED)


@pytest.fixture(scope="session")
def oxenstored_ready() -> None:
    """Like ``cxenstored_ready``, for Debian's oxenstored."""
    from harness.oxenstored import O_XENSTORED

    _ready(O_XENSTORED)


def _ready(daemon: Daemon) -> None:
    from harness.cxenstored import CXenStoredUnavailable, probe_cxenstored, skip_or_fail

    try:
        probe_cxenstored(daemon)
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("cxenstored", marks=pytest.mark.cxenstored),
        pytest.param("oxenstored", marks=pytest.mark.oxenstored),
    ]
)
async def server(request: pytest.FixtureRequest, workdir: str) -> AsyncIterator[Server]:
    """Each daemon in turn, its socket at ``workdir/socket``: ``server.name`` says which."""
    if request.param == "embedded":
        path = os.path.join(workdir, "socket")
        async with open_xenstored(path) as embedded:
            yield Embedded(embedded, path)
        return
    request.getfixturevalue(f"{request.param}_ready")
    from harness.cxenstored import C_XENSTORED, open_cxenstored
    from harness.oxenstored import O_XENSTORED

    daemon = C_XENSTORED if request.param == "cxenstored" else O_XENSTORED
    async with open_cxenstored(workdir, daemon=daemon) as real:
        yield real


@pytest.fixture
async def raw_pair() -> AsyncIterator[tuple[XenStored, RawClient, RawClient]]:
    """The embedded xenstored and two raw-frame dom0 connections to it."""
    async with (
        serving() as (server, path),
        await RawClient.connect(path) as a,
        await RawClient.connect(path) as b,
    ):
        yield server, a, b


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """The messages of the actors loggers at WARNING and above, while the test runs."""
    from loguru import logger

    seen: list[str] = []
    logger.enable("actors")
    sink = logger.add(lambda message: seen.append(str(message)), level="WARNING", format="{message}")
    try:
        yield seen
    finally:
        logger.remove(sink)
        logger.disable("actors")
