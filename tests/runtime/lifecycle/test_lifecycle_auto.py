"""``lifecycle = "auto"``, the default: the mtwatch tree whenever its root exists, the host's domains
otherwise, switching as the root appears and goes; the choice is logged and named by ``source.current``."""

from __future__ import annotations

import trio
from loguru import logger

import actors
from actors import State
from actors.runtime.lifecycle.auto import AutoSource
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT
from harness.servers import Server
from harness.stockhost import create_domain, destroy_domain


async def test_auto_follows_the_root_when_it_exists_and_the_domains_otherwise(server: Server) -> None:
    infos: list[str] = []
    sink = logger.add(lambda m: infos.append(m.record["message"]), level="INFO")
    logger.enable("actors")
    try:
        async with actors.connect(server.socket_path) as xs:
            await create_domain(xs, 5, "aaaa")
            with trio.fail_after(30):
                async with actors.open_runtime(xs) as rt:
                    source = rt.source
                    assert isinstance(source, AutoSource)
                    await rt.wait_domain(5, State.RUNNING)
                    assert source.current == "domains"
                    assert rt.domains[5].identity == b"/vm/aaaa"
                    await actors.announce_domain(xs, 9, identity="uuid-9")  # the root appears
                    await rt.wait_domain(5, None)
                    await rt.wait_domain(9, State.RUNNING)
                    assert source.current == "mtwatch"
                    await create_domain(xs, 6, "bbbb")  # a stock domain: not the tree's business now
                    await actors.announce_domain(xs, 10, identity="uuid-10")
                    await rt.wait_domain(10, State.RUNNING)
                    assert set(rt.domains) == {9, 10}
                    await xs.rm(MTWATCH_ROOT)  # the root goes: back to the host's domains
                    await rt.wait_domain(9, None)
                    await rt.wait_domain(6, State.RUNNING)
                    await rt.wait_domain(5, State.RUNNING)
                    assert source.current == "domains"
                    assert source.switches == 2
                    await destroy_domain(xs, 6)
                    await rt.wait_domain(6, None)
    finally:
        logger.disable("actors")
        logger.remove(sink)
    choices = [m for m in infos if m.startswith("lifecycle: following")]
    assert choices == [
        f"lifecycle: following domains ({MTWATCH_ROOT} does not exist)",
        f"lifecycle: following mtwatch ({MTWATCH_ROOT} exists)",
        f"lifecycle: following domains ({MTWATCH_ROOT} does not exist)",
    ]


async def test_auto_starts_on_the_tree_when_the_root_exists(xs: actors.XenStore) -> None:
    await actors.announce_domain(xs, 3, identity="uuid-3")
    await create_domain(xs, 4, "dddd")
    with trio.fail_after(30):
        async with actors.open_runtime(xs, lifecycle="auto") as rt:
            await rt.ready.wait()
            assert set(rt.domains) == {3}
            assert isinstance(rt.source, AutoSource)
            assert (rt.source.current, rt.source.switches) == ("mtwatch", 0)
