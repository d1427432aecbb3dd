"""Lifecycle sources on both servers: a stock host's domains (INTRODUCE/RELEASE as the toolstack does them),
the bridge that turns them into mtwatch nodes, a large mtwatch tree, and the ``mtwatch domain`` commands."""

from __future__ import annotations

import os
import sys

import pytest
import trio

import actors
from actors import State
from actors.bridge import run_bridge
from actors.runtime.lifecycle.mtwatch import MtwatchSource
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from harness.servers import Embedded, Server
from harness.stockhost import create_domain, destroy_domain


async def test_domains_lifecycle_follows_introduce_and_release(server: Server) -> None:
    async with actors.connect(server.socket_path) as xs:
        await create_domain(xs, 21, "aaaa")
        async with actors.open_runtime(xs, lifecycle="domains") as rt:
            await rt.ready.wait()
            with trio.fail_after(10):
                await rt.wait_domain(21, State.RUNNING)
                assert rt.domains[21].identity == b"/vm/aaaa"
                await create_domain(xs, 22, "bbbb")
                await rt.wait_domain(22, State.RUNNING)
                await destroy_domain(xs, 21)
                await rt.wait_domain(21, None)
                assert set(rt.domains) == {22}


async def test_bridge_announces_and_retires_for_a_stock_toolstack(server: Server) -> None:
    async with actors.connect(server.socket_path) as xs:
        await create_domain(xs, 31, "cccc")
        await actors.announce_domain(xs, 39, identity="stale")  # left over from an earlier life
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bridge, xs)
            source = MtwatchSource()

            async def wait_listing(expected: dict[int, bytes]) -> None:
                with trio.fail_after(10):
                    async with xs.watch(MTWATCH_ROOT) as events:
                        async for _ in events:
                            if await source.listing(xs) == expected:
                                return

            await wait_listing({31: b"/vm/cccc"})
            assert await xs.get_perms(f"{MTWATCH_ROOT}/31") == ["n0"]
            await create_domain(xs, 32, "dddd")
            await wait_listing({31: b"/vm/cccc", 32: b"/vm/dddd"})
            await destroy_domain(xs, 31)
            await wait_listing({32: b"/vm/dddd"})
            nursery.cancel_scope.cancel()


async def test_large_tree_reconciles_with_directory_part(xs: actors.XenStore, autojump_clock: object) -> None:
    domids = list(range(1, 801))
    async with xs.transaction() as tx:
        for domid in domids:
            await actors.announce_domain(tx, domid)
    assert len(await xs.ls(MTWATCH_ROOT)) == 800  # 800 names overflow one 4096-byte DIRECTORY reply
    async with actors.open_runtime(xs) as rt:
        await rt.ready.wait()
        assert set(rt.domains) == set(domids)
        for domid in domids:
            await rt.wait_domain(domid, State.RUNNING)


async def test_announce_inside_the_callers_transaction(xs: actors.XenStore) -> None:
    async with xs.transaction() as tx:
        await tx.write("/local/domain/44/vm", "/vm/x")
        await actors.announce_domain(tx, 44, identity="x")
        assert not await xs.exists(f"{MTWATCH_ROOT}/44")  # nothing visible before the commit
    assert await xs.read(f"{MTWATCH_ROOT}/44") == b"x"
    assert await xs.get_perms(f"{MTWATCH_ROOT}/44") == ["n0"]
    await actors.retire_domain(xs, 44)
    await actors.retire_domain(xs, 44)  # gone already: fine
    assert not await xs.exists(f"{MTWATCH_ROOT}/44")
    with pytest.raises(actors.InvalidDomid):
        await actors.announce_domain(xs, 0)
    with pytest.raises(actors.InvalidDomid):
        await actors.announce_domain(xs, 32752)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "actors.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_domain_commands(xenstored: Embedded, xs: actors.XenStore) -> None:
    path = xenstored.socket_path
    code, _, err = await run_cli("domain", "announce", "7", "--identity", "uuid-7", "--xenstore", path)
    assert code == 0, err
    assert await xs.read(f"{MTWATCH_ROOT}/7") == b"uuid-7"
    env = dict(os.environ, XENSTORED_PATH=path)
    await run_cli("domain", "announce", "8", env=env)
    code, out, _ = await run_cli("domain", "list", "--xenstore", path)
    assert code == 0
    assert out.splitlines() == ["7\tuuid-7", "8\t"]
    code, _, _ = await run_cli("domain", "retire", "7", "--xenstore", path)
    assert code == 0
    assert not await xs.exists(f"{MTWATCH_ROOT}/7")
    code, _, err = await run_cli("domain", "announce", "007", "--xenstore", path)
    assert code == 2
    assert "canonical decimal" in err
    code, _, err = await run_cli("domain", "list", "--xenstore", "/tmp/no/such/socket")
    assert code == 3
    assert "no xenstored socket at /tmp/no/such/socket" in err
    assert "Traceback" not in err
