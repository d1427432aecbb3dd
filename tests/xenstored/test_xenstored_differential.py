"""Differential tests: the same requests to Debian's real C xenstored 4.17 and to the embedded one must get
the same replies and the same watch events (generation numbers aside).

Random request sequences (fixed seeds) from two dom0 connections and two guests, plus a scenario with guest
quotas, SET_TARGET and domain death. Requests where C answers with a stale ``errno`` (a single-argument op
whose payload is not exactly one NUL-terminated string; SET_PERMS of an unknown special path or from a guest)
are left out: the embedded daemon answers EINVAL / EACCES there.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import pytest
import trio

from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import PAYLOAD_MAX, Op
from harness.cxenstored import CXenStoredUnavailable, open_cxenstored, probe_cxenstored, skip_or_fail

pytestmark = pytest.mark.cxenstored

Request = tuple[int, int, bytes, int]  # (client, op, payload, tx_id)
ONEARG = {Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM, Op.TRANSACTION_END, Op.GET_DOMAIN_PATH}
ONEARG |= {Op.IS_DOMAIN_INTRODUCED, Op.RELEASE, Op.RESUME}


class Daemon(Protocol):
    socket_path: str

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]: ...

    def domain_died(self, domid: int) -> None: ...


class Embedded:
    def __init__(self, server: Any, socket_path: str) -> None:
        self.server = server
        self.socket_path = socket_path

    def guest(self, domid: int) -> AbstractAsyncContextManager[trio.abc.Stream]:
        result: AbstractAsyncContextManager[trio.abc.Stream] = self.server.guest(domid)
        return result

    def domain_died(self, domid: int) -> None:
        self.server.domain_died(domid)


@pytest.fixture(scope="module")
def cxenstored() -> None:
    try:
        probe_cxenstored()
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)


@asynccontextmanager
async def real() -> AsyncIterator[Daemon]:
    directory = tempfile.mkdtemp(prefix="cxd", dir="/tmp")
    try:
        async with open_cxenstored(directory) as daemon:
            yield daemon
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def embedded() -> AsyncIterator[Daemon]:
    async with serving(compat="4.17") as (server, path):
        yield Embedded(server, path)


Transcript = list[tuple[Any, ...]]
Scenario = Callable[[Daemon, Transcript], Awaitable[None]]


async def both(scenario: Scenario) -> tuple[Transcript, Transcript]:
    with trio.fail_after(60):
        theirs: Transcript = []
        async with real() as daemon:
            await scenario(daemon, theirs)
        ours: Transcript = []
        async with embedded() as daemon:
            await scenario(daemon, ours)
    return theirs, ours


def assert_same(theirs: Transcript, ours: Transcript, what: str) -> None:
    for entry_c, entry_ours in zip(theirs, ours, strict=True):
        assert entry_ours == entry_c, f"{what}: C xenstored {entry_c!r}, embedded {entry_ours!r}"


def _normalized(frame_op: int, payload: bytes) -> bytes:
    return re.sub(rb"^\d+", b"G", payload) if frame_op == Op.DIRECTORY_PART else payload


async def _replay(daemon: Daemon, requests: list[Request], log: Transcript) -> None:
    """Two dom0 connections and guests 1 and 2 (each owning its home) run ``requests``; then every client's
    pending watch events are collected in order (repeats once), up to the reply to one last request."""
    first = await RawClient.connect(daemon.socket_path)
    second = await RawClient.connect(daemon.socket_path)
    for domid in (1, 2):
        await first.request(Op.WRITE, b"/local/domain/%d/home\0" % domid)
        await first.request(Op.SET_PERMS, b"/local/domain/%d\0n%d\0" % (domid, domid))
    await first.request(Op.WRITE, b"/a/b\0")
    await first.request(Op.SET_PERMS, b"/a\0n0\0b1\0")
    async with daemon.guest(1) as stream1, daemon.guest(2) as stream2:
        clients = [first, second, RawClient(stream1), RawClient(stream2)]
        for client in clients:
            client.events.clear()
        for who, op, payload, tx in requests:
            frame = await clients[who].request(op, payload, tx)
            log.append((who, op, payload[:100], tx, frame.op, _normalized(frame.op, frame.payload)))
            if op in (Op.INTRODUCE, Op.RELEASE):
                await trio.sleep(0.01)  # let the real daemon notice the ring
        for i, client in enumerate(clients):
            await client.request(Op.GET_DOMAIN_PATH, b"0\0")
            # Repeats are compared once: a daemon drops an event identical to one still queued, and how
            # long one stays queued depends on the transport (C's guest ring holds 1 KiB).
            log.append(("events", i, list(dict.fromkeys(client.events))))
    await first.aclose()
    await second.aclose()


_PATHS = [b"/a", b"/a/b", b"/a/b/c", b"/e", b"a", b"a/x", b"x/y/z", b"/local/domain/1/z", b"/local/domain/1",
          b"/local/domain/2/q", b"/local/domain/2", b"/local/domain/3", b"/local/domain/3/d", b"/", b"z", b"/tool",
          b"@releaseDomain", b"@introduceDomain"]  # fmt: skip
_PERMS = [[b"n0"], [b"n1"], [b"n2"], [b"b0", b"r1"], [b"n1", b"b0"], [b"r0"], [b"w1", b"n0"], [b"n0", b"w1", b"r2"],
          [b"b1", b"r2", b"n0"], [b"n3", b"b1"], [b"n2", b"b1", b"r3"]]  # fmt: skip


def structured(seed: int, count: int = 50) -> list[Request]:
    """Well-formed requests on a small set of paths, domains 3 and 4 coming and going."""
    rng = random.Random(seed)
    out: list[Request] = []
    while len(out) < count:
        who, path, tx = rng.choice([0, 0, 1, 2, 3]), rng.choice(_PATHS), rng.choice([0, 0, 0, 1, 2])
        op, payload = rng.choice(
            [
                (Op.WRITE, path + b"\0" + rng.choice([b"", b"v", b"w" * 30])),
                (Op.MKDIR, path + b"\0"),
                (Op.RM, path + b"\0"),
                (Op.READ, path + b"\0"),
                (Op.DIRECTORY, path + b"\0"),
                (Op.SET_PERMS, path + b"\0" + b"\0".join(rng.choice(_PERMS)) + b"\0"),
                (Op.GET_PERMS, path + b"\0"),
                (Op.WATCH, path + b"\0" + rng.choice([b"t1", b"t2"]) + b"\0"),
                (Op.UNWATCH, path + b"\0" + rng.choice([b"t1", b"t2"]) + b"\0"),
                (Op.TRANSACTION_START, b"\0"),
                (Op.TRANSACTION_END, rng.choice([b"T\0", b"F\0"])),
                (Op.DIRECTORY_PART, path + b"\0" + rng.choice([b"0", b"1", b"3", b"100"]) + b"\0"),
                (Op.INTRODUCE, rng.choice([b"3", b"4"]) + b"\x000\x001\0"),
                (Op.RELEASE, rng.choice([b"3", b"4"]) + b"\0"),
                (
                    Op.SET_TARGET,
                    rng.choice([b"1", b"2", b"3"]) + b"\0" + rng.choice([b"1", b"2", b"3"]) + b"\0",
                ),
                (Op.IS_DOMAIN_INTRODUCED, rng.choice([b"1", b"3", b"4"]) + b"\0"),
                (Op.RESET_WATCHES, b""),
            ]
        )
        if op == Op.SET_PERMS and path.startswith(b"@") and who >= 2:
            continue  # C: stale errno
        out.append((who, op, payload, tx))
    return out


_ATOMS = [b"/", b"a", b"b", b"local", b"domain", b"1", b"2", b"0", b"@", b"-", b"_", b"x" * 40, b".", b" ", b"\xff",
          b"", b"tool", b"xenstored", b"@releaseDomain", b"@introduceDomain"]  # fmt: skip


def fuzzed(seed: int, count: int = 60) -> list[Request]:
    """Paths, permissions, numbers and tokens built from odd pieces (bad characters, limits, signs)."""
    rng = random.Random(seed)

    def path() -> bytes:
        raw = b"".join(rng.choice(_ATOMS) for _ in range(rng.randrange(7)))
        raw = b"/" + raw if rng.random() < 0.5 else raw
        if rng.random() < 0.05:
            raw = b"/" + b"y" * rng.choice([2046, 2047, 2048, 2049, 3071, 3072, 3073])
        if rng.random() < 0.05:
            raw = b"/local/domain/1/" + b"y" * rng.choice([2047, 2048, 2049])
        return raw

    def perm() -> bytes:
        return rng.choice([b"n", b"r", b"w", b"b", b"x", b""]) + rng.choice(
            [
                b"0",
                b"1",
                b"2",
                b"7",
                b"0x1",
                b"01",
                b" 1",
                b"-1",
                b"",
                b"1a",
                b"99999",
                b"4294967297",
                b"32752",
            ]
        )

    out: list[Request] = []
    while len(out) < count:
        who, tx = rng.choice([0, 0, 2, 3]), rng.choice([0, 0, 0, 1])
        op = rng.choice(
            [Op.WRITE, Op.WRITE, Op.MKDIR, Op.RM, Op.READ, Op.DIRECTORY, Op.SET_PERMS, Op.SET_PERMS, Op.GET_PERMS,
             Op.WATCH, Op.UNWATCH, Op.DIRECTORY_PART, Op.GET_DOMAIN_PATH, Op.TRANSACTION_START, Op.TRANSACTION_END]
        )  # fmt: skip
        if op == Op.WRITE:
            payload = path() + b"\0" + rng.choice([b"", b"v", b"\0\0x", b"z" * 3000])
        elif op == Op.SET_PERMS:
            payload = path() + b"\0" + b"".join(perm() + b"\0" for _ in range(rng.randrange(7)))
        elif op in (Op.WATCH, Op.UNWATCH):
            token = rng.choice([b"t", b"", b"\xfe\xff", b"tok" * 30])
            payload = path() + b"\0" + token + b"\0" + rng.choice([b"", b"", b"", b"x\0"])
        elif op == Op.DIRECTORY_PART:
            payload = path() + b"\0" + rng.choice([b"0", b"1", b"2", b"5", b"-1", b"abc", b"", b"99"]) + b"\0"
        elif op == Op.GET_DOMAIN_PATH:
            payload = rng.choice([b"1", b"abc", b"-1", b"4294967296", b" 7", b"7x", b"65535"]) + b"\0"
        elif op == Op.TRANSACTION_START:
            payload = rng.choice([b"\0", b"", b"junk"])
        elif op == Op.TRANSACTION_END:
            payload = rng.choice([b"T\0", b"F\0", b"X\0", b"TT\0"])
        else:
            payload = path() + b"\0"
        if len(payload) > PAYLOAD_MAX or (op in ONEARG and payload.find(b"\0") != len(payload) - 1):
            continue  # too big to send; or C answers a stale errno
        if op == Op.SET_PERMS and payload.startswith(b"@"):
            name = payload.split(b"\0")[0]
            if who >= 2 or name not in (b"@releaseDomain", b"@introduceDomain"):
                continue  # C answers a stale errno when set_perms_special() fails
        out.append((who, op, payload, tx))
    return out


@pytest.mark.parametrize("seed", range(16))
async def test_structured_sequences(cxenstored: None, seed: int) -> None:
    requests = structured(seed)
    theirs, ours = await both(lambda daemon, log: _replay(daemon, requests, log))
    assert_same(theirs, ours, f"seed {seed}")


@pytest.mark.parametrize("seed", range(16))
async def test_fuzzed_sequences(cxenstored: None, seed: int) -> None:
    requests = fuzzed(seed)
    theirs, ours = await both(lambda daemon, log: _replay(daemon, requests, log))
    assert_same(theirs, ours, f"seed {seed}")


async def _guest_life(daemon: Daemon, log: Transcript) -> None:
    c = await RawClient.connect(daemon.socket_path)

    async def req(op: int, payload: bytes, tx: int = 0, who: RawClient | None = None) -> bytes:
        frame = await (who or c).request(op, payload, tx)
        log.append((op, payload[:60], tx, frame.op, _normalized(frame.op, frame.payload)))
        return frame.payload

    await req(Op.WATCH, b"/\0all\0")
    await req(Op.WATCH, b"@releaseDomain\0rel\0")
    for d in (5, 6):
        await req(Op.WRITE, b"/local/domain/%d/name\0g" % d)
        await req(Op.SET_PERMS, b"/local/domain/%d\0n%d\0r0\0" % (d, d))
    await req(Op.WRITE, b"/backend/vif/5/0/state\x001")
    await req(Op.SET_PERMS, b"/backend/vif/5\0n0\0r5\0")
    await req(Op.SET_PERMS, b"/backend/vif/5/0\0n5\0")
    await req(Op.SET_PERMS, b"@releaseDomain\0n0\0r5\0")
    async with daemon.guest(5) as stream5, daemon.guest(6) as stream6:
        g5, g6 = RawClient(stream5), RawClient(stream6)
        await req(Op.WATCH, b"@releaseDomain\0g5\0", who=g5)
        await req(Op.WATCH, b"dev\0rel\0", who=g5)
        await req(Op.WATCH, b"/local/domain/6\0other\0", who=g5)
        for i in range(30):  # node size: the values grow, then the children list of dev
            await req(Op.WRITE, b"dev/n%d\0%s" % (i, b"x" * (i * 70)), who=g5)
        for offset in (b"0", b"3", b"5"):
            await req(Op.DIRECTORY_PART, b"dev\0" + offset + b"\0", who=g5)
        await req(Op.DEBUG, b"quota\0set\0nodes\x0045\0")
        for i in range(20):  # node count quota
            await req(Op.MKDIR, b"dev/many%d\0" % i, who=g5)
        tx = int((await req(Op.TRANSACTION_START, b"\0", who=g5))[:-1])
        await req(Op.WRITE, b"dev/t1\0" + b"y" * 2100, tx, who=g5)
        await req(Op.TRANSACTION_END, b"T\0", tx, who=g5)
        await req(Op.RM, b"dev/many0\0", who=g5)
        await req(Op.RM, b"dev/many1\0", who=g5)
        for _ in range(3):  # the node quota at commit: "count + created >= quota" fails
            tx = int((await req(Op.TRANSACTION_START, b"\0", who=g5))[:-1])
            await req(Op.MKDIR, b"dev/tx%d\0" % tx, tx, who=g5)
            await req(Op.TRANSACTION_END, b"T\0", tx, who=g5)
        tx = int((await req(Op.TRANSACTION_START, b"\0", who=g5))[:-1])
        for i in range(3):  # the transaction's own node count
            await req(Op.MKDIR, b"dev/more%d\0" % i, tx, who=g5)
        await req(Op.TRANSACTION_END, b"T\0", tx, who=g5)
        await req(Op.SET_TARGET, b"6\x005\0")
        await req(Op.READ, b"/local/domain/5/name\0", who=g6)
        await req(Op.WRITE, b"/local/domain/5/dm\0x", who=g6)
        await req(Op.GET_PERMS, b"/local/domain/5/dm\0")
        await req(Op.DEBUG, b"quota\x005\0")
        await c.request(Op.GET_DOMAIN_PATH, b"0\0")
        await g5.request(Op.GET_DOMAIN_PATH, b"0\0")
        log.append(("events", list(c.events), list(g5.events)))
        c.events.clear()
        g5.events.clear()
        daemon.domain_died(6)
        with trio.fail_after(10):
            while (await c.request(Op.IS_DOMAIN_INTRODUCED, b"6\0")).payload != b"F\0":  # noqa: ASYNC110
                await trio.sleep(0.01)
        await c.request(Op.GET_DOMAIN_PATH, b"0\0")
        await g5.request(Op.GET_DOMAIN_PATH, b"0\0")
        log.append(("events", list(c.events), list(g5.events)))
        await req(Op.DIRECTORY, b"/local/domain\0")
        await req(Op.READ, b"/local/domain/5/dm\0")
    await c.aclose()


async def test_guest_quotas_target_and_death(cxenstored: None) -> None:
    theirs, ours = await both(_guest_life)
    assert_same(theirs, ours, "guest life")


_QPATHS = [b"a", b"a/b", b"a/b/c", b"d", b"d/e", b"/local/domain/1/x", b"/local/domain/2/y", b"/pub", b"/pub/q",
           b"/pub/q/r"]  # fmt: skip
_QPERMS = [[b"n1"], [b"n2"], [b"n1", b"r2"], [b"n2", b"b1"], [b"n1", b"r2", b"b0"], [b"b0"]]


def quota_bound(seed: int, count: int = 60) -> list[Request]:
    """Mostly guests, mostly in transactions, against small quotas (set through CONTROL)."""
    rng = random.Random(seed)
    out: list[Request] = []
    for _ in range(count):
        who, path, tx = rng.choice([0, 2, 2, 3, 3]), rng.choice(_QPATHS), rng.choice([0, 0, 1, 2, 3])
        op, payload = rng.choice(
            [
                (Op.WRITE, path + b"\0" + rng.choice([b"", b"v", b"w" * rng.choice([50, 150, 170, 200])])),
                (Op.MKDIR, path + b"\0"),
                (Op.RM, path + b"\0"),
                (Op.READ, path + b"\0"),
                (Op.SET_PERMS, path + b"\0" + b"\0".join(rng.choice(_QPERMS)) + b"\0"),
                (Op.WATCH, path + b"\0" + rng.choice([b"t1", b"t2", b"t3"]) + b"\0"),
                (Op.UNWATCH, path + b"\0" + rng.choice([b"t1", b"t2", b"t3"]) + b"\0"),
                (Op.TRANSACTION_START, b"\0"),
                (Op.TRANSACTION_END, rng.choice([b"T\0", b"T\0", b"F\0"])),
                (Op.DIRECTORY, path + b"\0"),
            ]
        )
        out.append((who, op, payload, tx))
    return out


async def _replay_with_quotas(daemon: Daemon, requests: list[Request], log: Transcript) -> None:
    c = await RawClient.connect(daemon.socket_path)
    for quota in (b"nodes\x0012", b"watches\x003", b"transactions\x002", b"transaction-nodes\x006",
                  b"permissions\x002", b"node-size\x00200"):  # fmt: skip
        assert await c.call(Op.DEBUG, b"quota\0set\0" + quota + b"\0") == b"OK\0"
    await c.call(Op.MKDIR, b"/pub\0")
    await c.call(Op.SET_PERMS, b"/pub\0n0\0b1\0b2\0")
    await c.aclose()
    await _replay(daemon, requests, log)
    async with await RawClient.connect(daemon.socket_path) as c:
        for domid in (1, 2):  # the counts (C's memory figure counts more than this daemon does)
            report = await c.call(Op.DEBUG, b"quota\0%d\0" % domid)
            log.append(re.sub(rb"memory *: *\d+", b"", report))


@pytest.mark.parametrize("seed", range(8))
async def test_quota_bound_sequences(cxenstored: None, seed: int) -> None:
    requests = quota_bound(seed)
    theirs, ours = await both(lambda daemon, log: _replay_with_quotas(daemon, requests, log))
    assert_same(theirs, ours, f"seed {seed}")
