"""Shared fixtures: the embedded xenstored on a real unix socket, a client connected to it, and the
``server`` fixture that runs a test against both the embedded server and Debian's real C xenstored."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import pytest
import trio

import actors
from actors.xenstored import XenStored, open_xenstored
from actors.xenstored.testing import RawClient, serving


class Server(Protocol):
    """What the conformance suite needs of a daemon, embedded or real."""

    name: str
    socket_path: str

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]: ...

    def domain_died(self, domid: int) -> None: ...


class Embedded:
    """The embedded xenstored with the face the conformance suite expects."""

    name = "embedded"

    def __init__(self, server: XenStored, socket_path: str) -> None:
        self.server = server
        self.socket_path = socket_path

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]:
        return self.server.guest(domid)

    def domain_died(self, domid: int) -> None:
        self.server.domain_died(domid)


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
    from harness.cxenstored import CXenStoredUnavailable, probe_cxenstored, skip_or_fail

    try:
        probe_cxenstored()
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)


@pytest.fixture(params=["embedded", "cxenstored"])
async def server(request: pytest.FixtureRequest, workdir: str) -> AsyncIterator[Server]:
    if request.param == "embedded":
        path = os.path.join(workdir, "socket")
        async with open_xenstored(path) as embedded:
            yield Embedded(embedded, path)
        return
    request.getfixturevalue("cxenstored_ready")
    from harness.cxenstored import open_cxenstored

    async with open_cxenstored(workdir) as real:
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
