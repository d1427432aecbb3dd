"""The testing kit used as a handler's author uses it: a sandbox, a runtime on it, domains made and destroyed as
libxl does, guests writing with their own permissions, ``rt.settle()``; on both daemon versions."""

from __future__ import annotations

import pytest
import trio

import actors
from actors.testing import NotSettled, Sandbox, sandbox

pytestmark = pytest.mark.parametrize("compat", ["4.22", "4.17"])


def recorder(seen: list[tuple[int, str, bytes | None]]) -> actors.runtime.watches.Handler:
    async def handler(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
        value = await ctx.xs.read(event.path) if await ctx.xs.exists(event.path) else None
        seen.append((ctx.domid, event.path, value))

    return handler


async def test_a_handler_under_create_guest_writes_destroy_and_domid_reuse(compat: str) -> None:
    seen: list[tuple[int, str, bytes | None]] = []
    identities: list[bytes] = []
    async with sandbox(compat=compat) as box, box.runtime() as rt:
        assert box.compat == compat
        rt.watch("/local/domain/{domid}/data/x", recorder(seen))
        rt.on_start(lambda ctx: _note(identities, ctx.identity))
        first = await box.create_domain(5, name="guest-5")
        assert rt.domains[5].state is actors.State.RUNNING  # create_domain waited for the runtime
        await rt.settle()
        assert seen == [(5, "/local/domain/5/data/x", None)]  # the registration's event: nothing there yet
        async with box.guest(5) as g:
            await g.write("/local/domain/5/data/x", "1")
            await rt.settle()
            assert seen[-1] == (5, "/local/domain/5/data/x", b"1")
            await g.write("data/x", "2")  # relative: under the guest's own directory
            await rt.settle()
        assert seen[1:] == [(5, "/local/domain/5/data/x", b"1"), (5, "/local/domain/5/data/x", b"2")]
        await box.destroy_domain(5)
        assert 5 not in rt.domains
        assert not await box.xs.exists("/local/domain/5")
        seen.clear()
        second = await box.create_domain(5)  # the domid reused: a new domain, a new identity
        await rt.settle()
        assert second.uuid != first.uuid
        assert identities == [first.uuid.encode(), second.uuid.encode()]
        assert rt.domains[5].identity == second.uuid.encode()
        assert seen == [(5, "/local/domain/5/data/x", None)]  # the old value went with the old domain


async def _note(identities: list[bytes], identity: bytes) -> None:
    identities.append(identity)


async def test_a_guest_is_refused_what_the_daemon_refuses_a_guest(compat: str) -> None:
    async with sandbox(compat=compat) as box:
        await box.create_domain(5)
        await box.create_domain(6)
        async with box.guest(5) as g:
            with pytest.raises(actors.PermissionDenied):
                await g.write("/local/domain/6/data/x", "1")  # another domain's nodes
            with pytest.raises(actors.PermissionDenied):
                await g.read("/local/domain/6/name")
            with pytest.raises(actors.PermissionDenied):
                await g.write("/local/domain/5/name", "renamed")  # its own, but read-only to it (n0 r5)
            with pytest.raises(actors.PermissionDenied):
                await g.write(f"{actors.MTWATCH_ROOT}/5", "forged")
            assert await g.read("/local/domain/5/name") == b"guest-5"
            await g.write("/local/domain/5/data/x", "1")
        assert await box.xs.get_perms("/local/domain/5") == ["n0", "r5"]
        assert await box.xs.get_perms("/local/domain/5/data") == ["n5"]
        assert await box.xs.get_perms(f"{actors.MTWATCH_ROOT}/5") == ["n0"]
        with pytest.raises(ValueError, match="create_domain"):
            async with box.guest(7):
                pass


async def test_a_stock_host_domain_has_no_mtwatch_node(compat: str) -> None:
    seen: list[tuple[int, str, bytes | None]] = []
    async with sandbox(compat=compat, lifecycle="domains") as box, box.runtime(lifecycle="domains") as rt:
        rt.watch("/local/domain/{domid}/data/x", recorder(seen))
        domain = await box.create_domain(9, name="web")
        assert domain.lifecycle == "domains"
        assert not await box.xs.exists(f"{actors.MTWATCH_ROOT}/9")
        assert await box.xs.read("/local/domain/9/vm") == f"/vm/{domain.uuid}".encode()
        assert await box.xs.is_domain_introduced(9)
        assert rt.domains[9].name == "web"
        async with box.guest(9) as g:
            await g.write("data/x", "up")
        await rt.settle()
        assert seen[-1] == (9, "/local/domain/9/data/x", b"up")
        await box.destroy_domain(9)
        assert 9 not in rt.domains
        assert not await box.xs.is_domain_introduced(9)


async def test_settle_waits_for_what_handlers_cause(
    compat: str, autojump_clock: trio.testing.MockClock
) -> None:
    done: list[str] = []
    async with sandbox(compat=compat) as box, box.runtime() as rt:

        async def step(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            if await ctx.xs.exists(event.path):
                await trio.sleep(1)  # slow work, on the test's clock
                await ctx.xs.write(f"/local/domain/{ctx.domid}/data/y", "next")

        async def last(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            if await ctx.xs.exists(event.path):
                done.append(event.path)

        rt.watch("/local/domain/{domid}/data/x", step)
        rt.watch("/local/domain/{domid}/data/y", last)
        await box.create_domain(5)
        async with box.guest(5) as g:
            await g.write("data/x", "go")
        await rt.settle()
        assert done == ["/local/domain/5/data/y"]
        assert rt.domains[5].mailbox_depth == 0 and rt.domains[5].busy_since is None


async def test_settle_names_a_hung_handler(compat: str, autojump_clock: trio.testing.MockClock) -> None:
    async with sandbox(compat=compat) as box, box.runtime() as rt:

        async def hangs(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            if await ctx.xs.exists(event.path):
                await trio.sleep_forever()

        rt.watch("/local/domain/{domid}/data/x", hangs)
        await box.create_domain(5)
        await box.create_domain(6)
        async with box.guest(5) as g:
            await g.write("data/x", "hang")
        with pytest.raises(NotSettled) as caught:
            await rt.settle(timeout=3)
        assert list(caught.value.busy) == [5]
        assert "domain 5: handler on /local/domain/5/data/x for 3 s" in str(caught.value)
        assert isinstance(caught.value, TimeoutError)
        await box.xs.rm("/local/domain/5/data/x")
        rt.reload(5)  # the way out: the hung handler is cancelled; the new incarnation finds nothing to do
        await rt.wait_domain(5, actors.State.STOPPING)  # (the handler has the stop deadline, 10 s, to end)
        await rt.wait_domain(5, actors.State.RUNNING)
        await rt.settle()


async def test_create_domain_refuses_a_domid_in_use_and_bad_input(compat: str) -> None:
    async with sandbox(compat=compat) as box:
        assert isinstance(box, Sandbox)
        await box.create_domain(5)
        with pytest.raises(ValueError, match="destroy_domain"):
            await box.create_domain(5)
        with pytest.raises(ValueError, match="32751"):
            await box.create_domain(0)
        with pytest.raises(ValueError, match="lifecycle"):
            await box.create_domain(6, lifecycle="xl")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="no domain 8"):
            await box.destroy_domain(8)


async def test_a_program_that_connects_by_itself(compat: str) -> None:
    async with sandbox(compat=compat) as box:
        await box.create_domain(5)
        async with actors.connect(box.socket) as xs:
            assert await xs.read("/local/domain/5/name") == b"guest-5"


async def test_what_a_guest_block_raises_comes_out(compat: str) -> None:
    # (XenStored.guest() swallowed it: every assertion in such a block passed unseen)
    async with sandbox(compat=compat) as box:
        await box.create_domain(5)
        with pytest.raises(actors.PermissionDenied):
            async with box.guest(5) as g:
                await g.write("/local/domain/5/name", "renamed")
        with pytest.raises(AssertionError, match="seen"):
            async with box.guest(5):
                raise AssertionError("seen")
        with pytest.raises(KeyError):
            async with box.xenstored.guest(5):
                raise KeyError("the daemon's own guest() too")
