"""The ``domains`` lifecycle asks again, after a backoff, about what the daemon would not tell: a new domain
whose IS_DOMAIN_INTRODUCED or ``vm`` it refused (not an empty identity: no identity until it says), and a
listing of ``/local/domain`` it refused at an introduction; a refused WATCH is registered again. No further
event is needed. Through a scripted proxy
on a real unix socket in front of each daemon, on the autojump clock."""

from __future__ import annotations

import functools

import trio
import trio.testing

import actors
from actors import State
from actors.xs.wire import Frame, Op
from harness.faultproxy import fault_proxy, path_of
from harness.servers import Server
from harness.stockhost import create_domain, warnings_logged


async def test_refused_introductions_are_asked_about_again(
    autojump_clock: trio.testing.MockClock, server: Server
) -> None:
    failures: dict[tuple[Op, str], list[str]] = {}  # (op, first argument) -> errors to answer, in turn

    async with actors.connect(server.socket_path) as xs:
        for domid in (1, 2):
            await create_domain(xs, domid, f"uuid-{domid}")
        async with fault_proxy(server.socket_path) as proxy, actors.connect(proxy.path) as proxied:
            proxy.rule = functools.partial(refused, failures)
            # No deadline here or on requests: the autojump clock jumps to the next one while a real daemon
            # answers (pytest-timeout is the way out of a hang).
            with warnings_logged() as warnings:
                async with actors.open_runtime(
                    proxied, lifecycle="domains", request_timeout=None, stall_limit=None
                ) as rt:
                    await rt.wait_domain(1, State.RUNNING)
                    await rt.wait_domain(2, State.RUNNING)
                    # Refused through the request's own retries (4 attempts), twice: two later looks.
                    failures[(Op.READ, "/local/domain/9/vm")] = ["EIO"] * 8
                    failures[(Op.IS_DOMAIN_INTRODUCED, "10")] = ["EACCES"] * 8
                    await create_domain(xs, 9, "nine")
                    await create_domain(xs, 10, "ten")
                    await rt.wait_domain(9, State.RUNNING)
                    await rt.wait_domain(10, State.RUNNING)
                    assert rt.domains[9].identity == b"/vm/nine"  # never the empty identity
                    assert rt.domains[10].identity == b"/vm/ten"
                    assert not failures[(Op.READ, "/local/domain/9/vm")]
                    assert not failures[(Op.IS_DOMAIN_INTRODUCED, "10")]
                    assert any("READ /local/domain/9/vm" in w and "EIO" in w for w in warnings), warnings
                    depth = (await proxied.capabilities()).features & actors.Feature.WATCHDEPTH
                    if depth:
                        return  # events name the domain: no listing to refuse
                    for op in (Op.DIRECTORY, Op.DIRECTORY_PART):  # whichever the client lists with
                        failures[(op, "/local/domain")] = ["EIO"] * 4
                    await create_domain(xs, 11, "eleven")
                    await rt.wait_domain(11, State.RUNNING)
                    assert rt.domains[11].identity == b"/vm/eleven"
                    assert any("DIRECTORY" in w and "/local/domain" in w for w in warnings), warnings


async def test_refused_watches_are_registered_again(
    autojump_clock: trio.testing.MockClock, server: Server
) -> None:
    """The mtwatch root's WATCH (``mtwatch`` and ``auto``) refused a few times: registered after a backoff.
    A domain's ``vm`` WATCH refused (without watch depth): its destruction is still found, by the round."""
    for lifecycle in ("mtwatch", "auto"):
        refusals = {(Op.WATCH, actors.MTWATCH_ROOT): ["EACCES"] * 3}
        async with actors.connect(server.socket_path) as xs:
            await actors.announce_domain(xs, 3, identity="uuid-3")
            async with fault_proxy(server.socket_path) as proxy, actors.connect(proxy.path) as proxied:
                proxy.rule = functools.partial(refused, refusals)
                with warnings_logged() as warnings:
                    async with actors.open_runtime(
                        proxied, lifecycle=lifecycle, request_timeout=None, stall_limit=None
                    ) as rt:
                        await rt.wait_domain(3, State.RUNNING)
                assert not refusals[(Op.WATCH, actors.MTWATCH_ROOT)]
                assert sum(f"cannot watch {actors.MTWATCH_ROOT}" in w for w in warnings) >= 3, warnings
            await actors.retire_domain(xs, 3)
    refusals = {(Op.WATCH, "/local/domain/4/vm"): ["EACCES"] * 100}
    async with actors.connect(server.socket_path) as xs:
        await create_domain(xs, 4, "four")
        await create_domain(xs, 5, "five")
        async with fault_proxy(server.socket_path) as proxy, actors.connect(proxy.path) as proxied:
            proxy.rule = functools.partial(refused, refusals)
            async with actors.open_runtime(
                proxied, lifecycle="domains", request_timeout=None, stall_limit=None
            ) as rt:
                await rt.wait_domain(4, State.RUNNING)
                await rt.wait_domain(5, State.RUNNING)
                await xs.rm("/local/domain/4")  # as libxl destroys a domain
                await xs.release(4)
                await rt.wait_domain(4, None)
                assert rt.domains[5].state is State.RUNNING


def refused(refusals: dict[tuple[Op, str], list[str]], frame: Frame) -> str | None:
    """The proxy's rule: the next error listed for the request's op and first argument, if any."""
    answers = refusals.get((Op(frame.op), path_of(frame)))
    return answers.pop(0) if answers else None
