"""Quota telemetry on every daemon: a guest fills its quotas (watches, transactions, nodes) through its own
connection (a ring page on the real daemons, a guest socket on the embedded one), and ``rt.quotas`` tells
each domain's use and limit, the domains above the threshold, and the log says when one crosses it and when it
falls back. oxenstored tells nodes only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger

import actors
from actors.xenstored import open_xenstored
from actors.xenstored.testing import RawClient, XsError
from actors.xs.wire import Op, join
from harness.servers import Embedded, Server

GUEST = 5


@pytest.fixture(
    params=[
        "embedded",
        "embedded-4.17",
        pytest.param("cxenstored", marks=pytest.mark.cxenstored),
        pytest.param("oxenstored", marks=pytest.mark.oxenstored),
    ]
)
async def daemon(request: pytest.FixtureRequest, workdir: str) -> AsyncIterator[Server]:
    """Each daemon in turn: the embedded one as 4.22 and as 4.17, C xenstored 4.17, oxenstored."""
    if request.param.startswith("embedded"):
        path = os.path.join(workdir, "socket")
        compat = "4.17" if request.param.endswith("4.17") else "4.22"
        async with open_xenstored(path, compat=compat) as embedded:
            yield Embedded(embedded, path)
        return
    request.getfixturevalue(f"{request.param}_ready")
    from harness.cxenstored import C_XENSTORED, open_cxenstored
    from harness.oxenstored import O_XENSTORED

    real = C_XENSTORED if request.param == "cxenstored" else O_XENSTORED
    async with open_cxenstored(workdir, daemon=real) as server:
        yield server


class Lines:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: Any) -> None:
        self.messages.append(str(message.record["message"]))

    def having(self, text: str) -> list[str]:
        return [m for m in self.messages if text in m]


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    lines = Lines()
    sink = logger.add(lines, level="DEBUG")
    logger.enable("actors")
    try:
        yield lines
    finally:
        logger.disable("actors")
        logger.remove(sink)


async def home(xs: actors.XenStore, domid: int) -> None:
    await xs.mkdir(f"/local/domain/{domid}")
    await xs.set_perms(f"/local/domain/{domid}", [f"n{domid}"])


async def test_a_guest_filling_its_quotas_is_seen_on_every_daemon(daemon: Server, log_lines: Lines) -> None:
    async with (
        actors.connect(daemon.socket_path) as xs,
        actors.open_runtime(xs, lifecycle="mtwatch", quota_interval=None, quota_threshold=0.9) as rt,
    ):
        await home(xs, GUEST)
        await actors.announce_domain(xs, GUEST, identity="g")
        await rt.wait_domain(GUEST, actors.State.RUNNING)
        async with daemon.guest(GUEST) as stream:
            guest = RawClient(stream)
            await guest.write(f"/local/domain/{GUEST}/a", "1")
            first = await rt.read_quotas()
            quota = first.domains[GUEST]
            assert first.state == ("oxenstored" if daemon.name == "oxenstored" else "cxenstored")
            if daemon.name == "oxenstored":
                await _oxenstored_nodes(guest, rt, quota.used["nodes"], quota.limit["nodes"])
                return
            assert set(quota.used) == {"nodes", "watches", "transactions", "outstanding", "memory"}
            assert quota.limit["watches"] == 128 and quota.limit["transactions"] == 10
            assert quota.limit["nodes"] == 1000 and quota.limit["outstanding"] == 20
            assert quota.used["nodes"] == 2  # its home and /a
            assert quota.used["watches"] == quota.used["transactions"] == 0
            assert first.above == {}

            # Watches: C counts ``count > quota``, so the guest gets 129; the 130th is E2BIG.
            for i in range(129):
                await guest.watch(f"/local/domain/{GUEST}/w{i}", f"t{i}")
            assert await guest.error(Op.WATCH, join(f"/local/domain/{GUEST}/x", "tx")) == "E2BIG"
            report = await rt.read_quotas()
            assert report.domains[GUEST].used["watches"] == 129
            assert report.above[GUEST][0] == "watches" and report.above[GUEST][1] > 1.0
            assert log_lines.having(f"domain {GUEST} uses 101% of its XenStore watches quota (129/128")

            # Transactions: 11 open, the 12th ENOSPC.
            for _ in range(11):
                await guest.start()
            assert await guest.error(Op.TRANSACTION_START, b"\0") == "ENOSPC"
            report = await rt.read_quotas()
            assert report.domains[GUEST].used["transactions"] == 11

            # Nodes: the limit lowered from dom0 (4.22: the domain's own, SET_QUOTA; 4.17: CONTROL quota set,
            # the global one), then filled.
            if (await xs.capabilities()).feature_ops:
                await xs.set_quota("nodes", 20, domid=GUEST)
            else:
                await xs.control("quota", "set", "nodes", "20")
            written = 0
            while True:
                try:
                    await guest.write(f"/local/domain/{GUEST}/n{written}", "")
                except XsError as exc:
                    assert exc.name == "ENOSPC"
                    break
                written += 1
            report = await rt.read_quotas()
            nodes = report.domains[GUEST]
            assert nodes.limit["nodes"] == 20 and nodes.used["nodes"] >= 20
            assert 0 < written <= 19

        # The guest's connection is reset (a fresh stream): watches and transactions go; back under, said once.
        async with daemon.guest(GUEST) as stream:
            guest = RawClient(stream)
            for i in range(written + 1):
                await guest.rm(f"/local/domain/{GUEST}/n{i}")
            report = await rt.read_quotas()
            assert report.domains[GUEST].used["watches"] == 0
            assert report.domains[GUEST].used["transactions"] == 0
            assert GUEST not in report.above
            assert len(log_lines.having(f"domain {GUEST} is back under 90% of every XenStore quota")) == 1


async def _oxenstored_nodes(guest: RawClient, rt: Any, used: int, limit: int) -> None:
    """oxenstored's CONTROL quota tells nodes only: fill them until it answers EQUOTA."""
    assert limit == 1000 and used >= 1
    written = 0
    while True:
        try:
            await guest.write(f"/local/domain/{GUEST}/n{written}", "")
        except XsError as exc:
            assert exc.name == "EQUOTA"
            break
        written += 1
    report = await rt.read_quotas()
    quota = report.domains[GUEST]
    assert set(quota.used) == {"nodes"} and quota.used["nodes"] == limit
    assert report.above[GUEST] == ("nodes", 1.0)


async def test_rounds_run_in_the_background_and_leave_unknown_domains_out(xenstored: Embedded) -> None:
    async with (
        actors.connect(xenstored.socket_path) as xs,
        actors.open_runtime(xs, lifecycle="mtwatch", quota_interval=0.05) as rt,
    ):
        await home(xs, 6)
        await actors.announce_domain(xs, 6)
        await actors.announce_domain(xs, 7)  # announced, but xenstored never heard of domain 7
        await rt.wait_domain(7, actors.State.RUNNING)
        assert rt.quotas.state == "unknown"
        for _ in range(1000):  # real time: rounds every 0.05 s
            if rt.quotas.rounds >= 2:
                break
            await trio.sleep(0.01)
        report = rt.quotas
        assert 6 in report.domains and 7 not in report.domains
        assert report.last_round_seconds is not None


async def test_off_and_validation() -> None:
    assert actors.RuntimeOptions(quota_interval=None).quota_interval is None
    with pytest.raises(ValueError, match="quota_threshold"):
        actors.RuntimeOptions(quota_threshold=0)
    with pytest.raises(ValueError, match="quota_interval"):
        actors.RuntimeOptions(quota_interval=-1)


async def test_a_daemon_without_quotas_is_said_once_and_left_alone(
    log_lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    """A daemon that answers CONTROL with ENOSYS (the scripted one, as C 4.17 does an unknown op): the state
    ``unsupported``, one line in the log, no warning, however many rounds."""
    from harness.scripted import Peer, answer_as, scripted

    async def daemon(peer: Peer) -> None:
        await answer_as(peer, "c417")

    async with (
        scripted(daemon) as path,
        actors.connect(path) as xs,
        actors.open_runtime(xs, lifecycle="mtwatch", quota_interval=1) as rt,
    ):
        await trio.sleep(10.5)
        report = rt.quotas
        assert (report.state, report.why, report.rounds) == (
            "unsupported",
            "CONTROL quota answered ENOSYS",
            10,
        )
        assert report.domains == {} and report.above == {}
    assert len(log_lines.having("xenstored reports no quotas (CONTROL quota answered ENOSYS)")) == 1
    assert not log_lines.having("quota telemetry: a round failed")
