"""The real-daemon harness works, for C xenstored and oxenstored: the unix socket (dom0), guests through ring
pages, domain death, the process's life. Where the two daemons answer differently, the test says so and checks
each one's answer.

Raw frames built with actors.xs.wire. Without the daemon these skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from actors.xs.wire import HEADER, Frame, FrameDecoder, Op, join, split
from harness.cxenstored import (
    C_XENSTORED,
    CXenStored,
    CXenStoredUnavailable,
    Daemon,
    open_cxenstored,
    open_unix_stream,
    probe_cxenstored,
    skip_or_fail,
)
from harness.oxenstored import O_XENSTORED
from harness.servers import answer

DAEMONS = {"cxenstored": C_XENSTORED, "oxenstored": O_XENSTORED}

TIMEOUT = 5.0


class Conn:
    """A minimal XenStore client over any trio Stream: requests matched by req_id, events kept aside."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.events: list[tuple[bytes, bytes]] = []
        self.frames: list[Frame] = []  # replies that arrived while waiting for another
        self._next_id = 100

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _frames(self) -> list[Frame]:
        data = await self.stream.receive_some()
        if not data:
            raise EOFError("connection closed by xenstored")
        return self.decoder.feed(bytes(data))

    async def send(self, op: Op, payload: bytes, tx: int = 0) -> int:
        self._next_id += 1
        frame = Frame(op, self._next_id, tx, payload)
        await self.stream.send_all(frame.encode())
        return self._next_id

    async def reply(self, req_id: int) -> Frame:
        with trio.fail_after(TIMEOUT):
            while True:
                for i, frame in enumerate(self.frames):
                    if frame.req_id == req_id:
                        return self.frames.pop(i)
                for frame in await self._frames():
                    if frame.op == Op.WATCH_EVENT:
                        path, token = split(frame.payload)
                        self.events.append((path, token))
                    else:
                        self.frames.append(frame)

    async def request(self, op: Op, payload: bytes, tx: int = 0) -> Frame:
        return await self.reply(await self.send(op, payload, tx))

    async def ok(self, op: Op, payload: bytes, tx: int = 0) -> bytes:
        frame = await self.request(op, payload, tx)
        assert frame.op == op, f"{op.name} {payload[:60]!r}: {frame.payload!r}"
        return frame.payload

    async def error(self, op: Op, payload: bytes, tx: int = 0) -> str:
        frame = await self.request(op, payload, tx)
        assert frame.op == Op.ERROR, f"{op.name} {payload[:60]!r} succeeded: {frame.payload[:60]!r}"
        return frame.payload.rstrip(b"\0").decode()

    async def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        await self.ok(Op.WRITE, join(path, value, terminate=False), tx)

    async def read(self, path: str, tx: int = 0) -> bytes:
        return await self.ok(Op.READ, join(path), tx)

    async def event(self) -> tuple[bytes, bytes]:
        with trio.fail_after(TIMEOUT):
            while not self.events:
                for frame in await self._frames():
                    if frame.op == Op.WATCH_EVENT:
                        path, token = split(frame.payload)
                        self.events.append((path, token))
                    else:
                        self.frames.append(frame)
        return self.events.pop(0)


@contextlib.asynccontextmanager
async def dom0(server: CXenStored) -> AsyncIterator[Conn]:
    conn = Conn(await open_unix_stream(server.socket_path))
    try:
        yield conn
    finally:
        await conn.aclose()


@contextlib.asynccontextmanager
async def guest(server: CXenStored, domid: int) -> AsyncIterator[Conn]:
    async with server.guest(domid) as stream:
        yield Conn(stream)


async def make_home(conn: Conn, domid: int) -> str:
    """What a toolstack does: /local/domain/N owned by N."""
    home = f"/local/domain/{domid}"
    await conn.ok(Op.MKDIR, join(home))
    await conn.ok(Op.SET_PERMS, join(home, f"n{domid}"))
    return home


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short folder under /tmp: AF_UNIX socket paths must stay under 107 bytes."""
    path = tempfile.mkdtemp(prefix="cxs", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ready(daemon: Daemon) -> None:
    """Skip (or under CI=true fail) with the reason when the daemon cannot run here."""
    try:
        probe_cxenstored(daemon)
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)


@pytest.fixture(
    params=[
        pytest.param("cxenstored", marks=pytest.mark.cxenstored),
        pytest.param("oxenstored", marks=pytest.mark.oxenstored),
    ]
)
def daemon_ready(request: pytest.FixtureRequest) -> Daemon:
    """Each real daemon in turn, checked to run here (a sync fixture: a skip keeps its message)."""
    daemon = DAEMONS[request.param]
    ready(daemon)
    return daemon


@pytest.fixture
async def cxs(daemon_ready: Daemon, workdir: str) -> AsyncIterator[CXenStored]:
    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(open_cxenstored(workdir, daemon=daemon_ready))
        except CXenStoredUnavailable as exc:
            skip_or_fail(exc)
        yield server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- dom0 over the unix socket ---------------------------------------------------------------------


async def test_write_read_ls_mkdir_rm(cxs: CXenStored) -> None:
    assert cxs.name in DAEMONS
    async with dom0(cxs) as c:
        await c.write("/t/a", "hello")
        await c.write("/t/empty", b"")
        assert await c.read("/t/a") == b"hello"
        assert await c.read("/t/empty") == b""
        await c.ok(Op.MKDIR, join("/t/dir"))
        await c.ok(Op.MKDIR, join("/t/dir"))  # existing: OK
        assert sorted(split(await c.ok(Op.DIRECTORY, join("/t")))) == [b"a", b"dir", b"empty"]
        assert split(await c.ok(Op.GET_PERMS, join("/t/a"))) == [b"n0"]
        await c.ok(Op.RM, join("/t/a"))
        await c.ok(Op.RM, join("/t/a"))  # missing, parent exists: OK
        assert await c.error(Op.READ, join("/t/a")) == "ENOENT"
        assert await c.error(Op.RM, join("/nope/x")) == "ENOENT"
        assert await c.ok(Op.GET_DOMAIN_PATH, join("7")) == b"/local/domain/7\0"


async def test_watch_fires_initial_event_then_changes(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        await c.ok(Op.WATCH, join("/w", "tok"))
        assert await c.event() == (b"/w", b"tok")
        assert await c.error(Op.WATCH, join("/w", "tok")) == "EEXIST"
        await c.write("/w/x", "1")
        assert await c.event() == (b"/w/x", b"tok")
        await c.ok(Op.UNWATCH, join("/w", "tok"))
        assert await c.error(Op.UNWATCH, join("/w", "tok")) == "ENOENT"


async def test_transaction_conflict_is_eagain(cxs: CXenStored) -> None:
    async with dom0(cxs) as a, dom0(cxs) as b:
        await a.write("/tx/x", "0")
        tx = int(split(await a.ok(Op.TRANSACTION_START, join("")))[0])
        assert await a.read("/tx/x", tx) == b"0"
        await b.write("/tx/x", "other")
        await a.write("/tx/x", "mine", tx)
        assert await a.error(Op.TRANSACTION_END, join("T"), tx) == "EAGAIN"
        assert await a.read("/tx/x") == b"other"
        # gone: an unknown transaction is ENOENT for C xenstored, EIO for oxenstored
        assert await a.error(Op.TRANSACTION_END, join("T"), tx) == answer(cxs, "ENOENT", oxenstored="EIO")


async def test_introduce_and_release_fire_special_watches(cxs: CXenStored) -> None:
    async with dom0(cxs) as w, dom0(cxs) as c:
        await w.ok(Op.WATCH, join("@introduceDomain", "in"))
        await w.ok(Op.WATCH, join("@releaseDomain", "out"))
        assert sorted([await w.event(), await w.event()]) == [
            (b"@introduceDomain", b"in"),
            (b"@releaseDomain", b"out"),
        ]
        assert await c.ok(Op.IS_DOMAIN_INTRODUCED, join("7")) == b"F\0"
        await c.ok(Op.INTRODUCE, join("7", "0", "1"))
        assert await w.event() == (b"@introduceDomain", b"in")
        assert await c.ok(Op.IS_DOMAIN_INTRODUCED, join("7")) == b"T\0"
        await c.ok(Op.RELEASE, join("7"))
        assert await w.event() == (b"@releaseDomain", b"out")
        assert await c.ok(Op.IS_DOMAIN_INTRODUCED, join("7")) == b"F\0"
        # Releasing a domain that is not introduced: ENOENT for C xenstored, EINVAL for oxenstored.
        assert await c.error(Op.RELEASE, join("7")) == answer(cxs, "ENOENT", oxenstored="EINVAL")


async def test_domain_died_fires_release_domain(cxs: CXenStored) -> None:
    async with dom0(cxs) as w:
        await w.ok(Op.WATCH, join("@releaseDomain", "out"))
        assert await w.event() == (b"@releaseDomain", b"out")
        home = await make_home(w, 6)
        async with guest(cxs, 6) as g:
            await g.write(f"{home}/data", "x")
            await g.write("data2", "relative")
        assert await w.read(f"{home}/data2") == b"relative"
        cxs.domain_died(6)
        assert await w.event() == (b"@releaseDomain", b"out")
        assert await w.ok(Op.IS_DOMAIN_INTRODUCED, join("6")) == b"F\0"
        # The daemon removes the dead domain's nodes.
        assert await w.error(Op.READ, join(f"{home}/data")) == "ENOENT"
        # The same domid can be a guest again afterwards.
        async with guest(cxs, 6) as g:
            assert await g.ok(Op.GET_DOMAIN_PATH, join("6")) == b"/local/domain/6\0"
        assert await w.ok(Op.IS_DOMAIN_INTRODUCED, join("6")) == b"T\0"


async def test_directory_part(cxs: CXenStored) -> None:
    names = {f"child-with-a-rather-long-name-{i:04d}" for i in range(200)}
    async with dom0(cxs) as c:
        for name in names:
            await c.write(f"/big/{name}", "")
        if cxs.name == "oxenstored":
            # oxenstored 4.17 has no DIRECTORY_PART; its DIRECTORY answers with every name (see
            # test_conformance for a reply longer than 4096 bytes).
            assert await c.error(Op.DIRECTORY_PART, join("/big", "0")) == "ENOSYS"
            return
        seen: list[bytes] = []
        offset = 0
        generation = None
        while True:
            payload = await c.ok(Op.DIRECTORY_PART, join("/big", str(offset)))
            gen, _, rest = payload.partition(b"\0")
            assert generation in (None, gen)
            generation = gen
            assert len(payload) <= 4096
            chunk = rest.split(b"\0")
            if rest.endswith(b"\0\0") or rest == b"\0":  # an extra NUL ends the last chunk
                seen += [n for n in chunk if n]
                break
            seen += [n for n in chunk if n]
            offset += len(rest)
        assert offset > 0, "the listing should need more than one chunk"
        assert {n.decode() for n in seen} == names
        assert len(seen) == len(names)


async def test_reset_watches_drops_watches_and_transactions(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        await c.ok(Op.WATCH, join("/r", "tok"))
        assert await c.event() == (b"/r", b"tok")
        tx = int(split(await c.ok(Op.TRANSACTION_START, join("")))[0])
        await c.ok(Op.RESET_WATCHES, b"\0")  # what libxenstore sends: one empty string
        await c.write("/r/x", "1")
        await c.read("/r/x")  # any event caused by the write would be queued before this reply
        assert c.events == []
        assert await c.error(Op.TRANSACTION_END, join("T"), tx) == answer(cxs, "ENOENT", oxenstored="EIO")
        await c.ok(Op.WATCH, join("/r", "tok"))  # no EEXIST: it was dropped


async def test_a_frame_with_no_payload(cxs: CXenStored) -> None:
    """C xenstored answers a frame with an empty payload at once. oxenstored 4.17 leaves it unread until more
    bytes arrive on that connection, then answers it: a bare RESET_WATCHES (or any other op) with no payload
    seems never answered. (libxenstore sends one NUL for RESET_WATCHES, which both answer.)"""
    async with dom0(cxs) as a, dom0(cxs) as b:
        await a.ok(Op.WATCH, join("/r", "tok"))
        assert await a.event() == (b"/r", b"tok")
        reset = await a.send(Op.RESET_WATCHES, b"")
        if cxs.name == "oxenstored":
            # Two round trips on another connection: the daemon's loop has read and handled a's bytes by then.
            await b.read("/")
            await b.read("/")
            assert isinstance(a.stream, trio.SocketStream)
            with pytest.raises(BlockingIOError):
                os.read(a.stream.socket.fileno(), 1)  # nothing to read: no reply yet
        assert await a.ok(Op.WATCH, join("/r", "tok")) == b"OK\0"  # no EEXIST: reset
        assert (await a.reply(reset)).payload == b"OK\0"


async def test_xenstore_ls_against_it(cxs: CXenStored) -> None:
    tool = shutil.which("xenstore-ls")
    if tool is None:
        skip_or_fail(CXenStoredUnavailable("xenstore-ls not found (run scripts/install-xen-deps)"))
    async with dom0(cxs) as c:
        await c.write("/ls/a", "one")
        await c.write("/ls/b/c", "two")
    env = {**os.environ, "XENSTORED_PATH": cxs.socket_path}
    result = await trio.run_process([tool, "-f", "/ls"], env=env, capture_stdout=True, capture_stderr=True)
    lines = result.stdout.decode().splitlines()
    assert '/ls/a = "one"' in lines
    assert '/ls/b/c = "two"' in lines


# -- as an unprivileged guest, through the ring page -----------------------------------------------


async def test_guest_eacces_on_other_domains_node(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        await make_home(c, 5)
        other = await make_home(c, 9)
        await c.write(f"{other}/secret", "s")
        async with guest(cxs, 5) as g:
            assert await g.ok(Op.GET_DOMAIN_PATH, join("5")) == b"/local/domain/5\0"
            await g.write("mine", "ok")  # relative to its home
            assert await g.read("/local/domain/5/mine") == b"ok"
            assert await g.error(Op.READ, join(f"{other}/secret")) == "EACCES"
            assert await g.error(Op.WRITE, join(f"{other}/secret", "x", terminate=False)) == "EACCES"
            assert await g.error(Op.INTRODUCE, join("8", "0", "1")) == "EACCES"


async def test_guest_enospc_for_value_over_2048_bytes(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        home = await make_home(c, 5)
        if cxs.name == "oxenstored":
            # oxenstored's quota-maxsize counts the value alone, and holds for dom0 too: E2BIG past 2048.
            async with guest(cxs, 5) as g:
                assert await g.error(Op.WRITE, join(f"{home}/big", b"v" * 2049, terminate=False)) == "E2BIG"
                await g.write(f"{home}/big", b"v" * 2048)
                assert await g.read(f"{home}/big") == b"v" * 2048
            assert await c.error(Op.WRITE, join(f"{home}/dom0big", b"v" * 2049, terminate=False)) == "E2BIG"
            return
        async with guest(cxs, 5) as g:
            # Both frames are larger than the 1024-byte rings: send_all and receive_some wrap and wait.
            assert await g.error(Op.WRITE, join(f"{home}/big", b"v" * 2049, terminate=False)) == "ENOSPC"
            # The 2048-byte quota covers the whole node record: with one permission entry and no
            # children, 2015 value bytes fit and 2016 do not (4.17.7; each further permission costs 8).
            assert await g.error(Op.WRITE, join(f"{home}/big", b"v" * 2016, terminate=False)) == "ENOSPC"
            await g.write(f"{home}/big", b"v" * 2015)
            value = bytes(range(256)) * 7
            await g.write(f"{home}/fits", value)
            assert await g.read(f"{home}/fits") == value
        assert await c.read(f"{home}/fits") == value
        await c.write(f"{home}/dom0big", b"v" * 3000)  # dom0 is exempt


# The quota checks of C xenstored 4.17 are "count > quota" before adding: with the default quotas of 128
# watches and 10 transactions, a guest gets 129 watches (the 130th is E2BIG) and 11 transactions (the
# 12th is ENOSPC). oxenstored checks the same way against its own defaults (100 watches, 10 transactions)
# and answers EQUOTA: 101 watches, 11 transactions.


async def test_guest_e2big_on_watch_over_quota(cxs: CXenStored) -> None:
    watches = answer(cxs, 129, oxenstored=101)
    async with dom0(cxs) as c:
        home = await make_home(c, 5)
        async with guest(cxs, 5) as g:
            for i in range(watches):
                await g.ok(Op.WATCH, join(f"{home}/w{i}", f"t{i}"))
            refused = await g.error(Op.WATCH, join(f"{home}/w{watches}", "t"))
            assert refused == answer(cxs, "E2BIG", oxenstored="EQUOTA")
            assert len(g.events) == watches  # every watch's initial event came through the ring
        async with dom0(cxs) as d:  # dom0 has no such quota
            for i in range(200):
                await d.ok(Op.WATCH, join(f"/d/w{i}", f"t{i}"))


async def test_guest_enospc_on_transaction_over_quota(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        await make_home(c, 5)
        async with guest(cxs, 5) as g:
            ids = {await g.ok(Op.TRANSACTION_START, join("")) for _ in range(11)}
            assert len(ids) == 11
            refused = await g.error(Op.TRANSACTION_START, join(""))
            assert refused == answer(cxs, "ENOSPC", oxenstored="EQUOTA")
            first = int(split(min(ids))[0])
            await g.ok(Op.TRANSACTION_END, join("F"), first)
            await g.ok(Op.TRANSACTION_START, join(""))  # room again


async def test_guest_oversized_frame(cxs: CXenStored) -> None:
    """C xenstored stops serving a ring whose frame announces more than 4096 payload bytes. oxenstored takes the
    first 4096 payload bytes as the whole request (here a 4093-byte value: E2BIG by its node-size quota) and
    reads what follows as the next frame: the framing is lost, but the ring is kept."""
    async with dom0(cxs) as w:
        if cxs.name == "oxenstored":
            home = await make_home(w, 5)
            await w.write(f"{home}/v", "value")
            async with guest(cxs, 5) as g:
                tail = Frame(Op.READ, 77, 0, join(f"{home}/v")).encode()
                payload = join("/x", b"a" * 4093, terminate=False) + tail
                assert len(payload) == 4096 + len(tail)
                await g.stream.send_all(HEADER.pack(Op.WRITE, 1, 0, len(payload)) + payload)
                assert (await g.reply(1)).payload == b"E2BIG\0"
                assert (await g.reply(77)).payload == b"value"
            return
        await w.ok(Op.WATCH, join("@releaseDomain", "out"))
        assert await w.event() == (b"@releaseDomain", b"out")
        async with cxs.guest(5) as stream:
            await stream.send_all(HEADER.pack(Op.WRITE, 1, 0, 4097))
            with trio.fail_after(TIMEOUT):
                assert await stream.receive_some() == b""  # the daemon stopped serving the ring
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"more")
        # A new stream for the same domid works again (the harness released and re-introduced it).
        async with guest(cxs, 5) as g:
            assert await g.ok(Op.GET_DOMAIN_PATH, join("5")) == b"/local/domain/5\0"
        assert await w.event() == (b"@releaseDomain", b"out")


async def test_guest_watch_events_and_pipelining(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        home = await make_home(c, 5)
        async with guest(cxs, 5) as g:
            await g.ok(Op.WATCH, join("data", "tok"))
            assert await g.event() == (b"data", b"tok")
            await c.write(f"{home}/data", "from dom0")
            assert await g.event() == (b"data", b"tok")

            # One task sends while another receives: both wait on the daemon's notifications.
            count = 200
            replies: list[Frame] = []

            async def sender() -> None:
                for _ in range(count):
                    await g.send(Op.READ, join(f"{home}/data"))

            async def receiver() -> None:
                while len(replies) < count:
                    replies.extend(f for f in await g._frames() if f.op != Op.WATCH_EVENT)

            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    nursery.start_soon(receiver)
            assert [f.payload for f in replies] == [b"from dom0"] * count
            assert sorted(f.req_id for f in replies) == [f.req_id for f in replies]


async def test_guest_reentry_starts_clean(cxs: CXenStored) -> None:
    async with dom0(cxs) as c:
        home = await make_home(c, 5)
        async with guest(cxs, 5) as g:
            await g.ok(Op.WATCH, join("data", "tok"))
            assert await g.event() == (b"data", b"tok")
            await g.send(Op.READ, join("data"))  # reply left unread
        async with guest(cxs, 5) as g:
            await c.write(f"{home}/data", "x")
            assert await g.read("data") == b"x"
            assert g.events == []
            assert g.frames == []
            await g.ok(Op.WATCH, join("data", "tok"))  # the old watch is gone: no EEXIST
        with pytest.raises(trio.BusyResourceError):
            async with cxs.guest(5), cxs.guest(5):
                pass


async def test_guest_stream_closed_after_exit(cxs: CXenStored) -> None:
    async with cxs.guest(5) as stream:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()


async def test_guest_receive_is_cancellable(cxs: CXenStored) -> None:
    async with cxs.guest(5) as stream:
        with trio.move_on_after(0.05) as scope:
            await stream.receive_some()
        assert scope.cancelled_caught


# -- process lifecycle -----------------------------------------------------------------------------


async def test_start_is_fast_and_stop_reaps(daemon_ready: Daemon, workdir: str) -> None:
    start = time.monotonic()
    try:
        async with open_cxenstored(workdir, daemon=daemon_ready) as server:
            elapsed = time.monotonic() - start
            pid = server.pid
            assert pid_alive(pid)
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)
    assert elapsed < 1.0, f"daemon took {elapsed:.2f} s to start"
    assert not pid_alive(pid)
    assert await trio.Path(workdir, "xenstored.log").exists()


async def test_no_process_left_when_body_fails_or_is_cancelled(daemon_ready: Daemon, workdir: str) -> None:
    pids: list[int] = []
    try:
        with pytest.raises(KeyError):
            async with open_cxenstored(workdir, daemon=daemon_ready) as server:
                pids.append(server.pid)
                raise KeyError("boom")
        with trio.CancelScope() as scope:
            async with open_cxenstored(workdir, daemon=daemon_ready) as server, server.guest(3) as stream:
                pids.append(server.pid)
                scope.deadline = trio.current_time() + 0.05
                await stream.receive_some()  # never answered: cancelled
        assert scope.cancelled_caught
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)
    assert len(pids) == 2
    assert not any(pid_alive(p) for p in pids)


async def test_daemon_death_during_body_is_reported(daemon_ready: Daemon, workdir: str) -> None:
    try:
        with pytest.raises(RuntimeError, match="exited with status"):
            async with open_cxenstored(workdir, daemon=daemon_ready) as server, server.guest(4) as stream:
                os.kill(server.pid, 9)
                await server.process.wait()
                with trio.fail_after(TIMEOUT):
                    assert await stream.receive_some() == b""  # end of stream
                with pytest.raises(trio.BrokenResourceError):
                    await stream.send_all(b"x" * 2000)
    except CXenStoredUnavailable as exc:
        skip_or_fail(exc)


@pytest.mark.parametrize("daemon", DAEMONS.values(), ids=DAEMONS.keys())
async def test_unavailable_binary_is_reported(
    daemon: Daemon, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(daemon.override, "/nonexistent/xenstored")
    with pytest.raises(CXenStoredUnavailable, match=f"{daemon.name} binary not found"):
        async with open_cxenstored(workdir, daemon=daemon):
            pass
