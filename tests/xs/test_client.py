"""The client over a real unix socket against the embedded xenstored: every operation, and load."""

from __future__ import annotations

import os

import pytest
import trio

import actors
from actors.xenstored import XenStored
from harness.servers import Embedded


async def test_every_operation(xs: actors.XenStore) -> None:
    await xs.write("/vm/a/b", "value")
    assert await xs.read("/vm/a/b") == b"value"
    await xs.write("/vm/a/empty", b"")
    assert await xs.read("/vm/a/empty") == b""
    assert sorted(await xs.ls("/vm/a")) == ["b", "empty"]
    assert await xs.exists("/vm/a/b")
    assert not await xs.exists("/vm/a/nope")
    await xs.mkdir("/vm/dir")
    await xs.mkdir("/vm/dir")  # existing: fine
    assert await xs.read("/vm/dir") == b""
    await xs.set_perms("/vm/a/b", ["n0", "r5", "b7"])
    assert await xs.get_perms("/vm/a/b") == ["n0", "r5", "b7"]
    await xs.rm("/vm/a")
    assert not await xs.exists("/vm/a/b")
    await xs.rm("/vm/a")  # missing, parent exists: fine
    with pytest.raises(actors.NotFound) as info:
        await xs.rm("/vm/a/b/c")
    assert info.value.errno_name == "ENOENT"
    assert info.value.op == "RM"
    assert info.value.path == "/vm/a/b/c"
    with pytest.raises(actors.NotFound):
        await xs.read("/vm/nothing")
    assert await xs.get_domain_path(3) == "/local/domain/3"
    assert not await xs.is_domain_introduced(3)
    await xs.introduce(3, 0, 1)
    assert await xs.is_domain_introduced(3)
    await xs.set_target(3, 0)
    await xs.resume(3)
    await xs.release(3)
    assert not await xs.is_domain_introduced(3)
    assert b"check" in await xs.control("help")
    await xs.control("check")
    async with xs.watch("/vm") as events:
        assert (await events.receive()).path == "/vm"
        await xs.reset_watches()
        with pytest.raises(trio.EndOfChannel):
            await events.receive()


async def test_transactions_commit_abort_and_conflict(xs: actors.XenStore) -> None:
    async with xs.transaction() as tx:
        await tx.write("/tx/a", "1")
        assert await tx.read("/tx/a") == b"1"
        assert not await xs.exists("/tx/a")  # not visible outside before commit
    assert await xs.read("/tx/a") == b"1"

    with pytest.raises(RuntimeError):
        async with xs.transaction() as tx:
            await tx.write("/tx/a", "2")
            raise RuntimeError("abort")
    assert await xs.read("/tx/a") == b"1"

    with pytest.raises(actors.TransactionConflict):
        async with xs.transaction() as tx:
            await tx.read("/tx/a")
            await xs.write("/tx/a", "3")  # a concurrent change
            await tx.write("/tx/a", "4")
    assert await xs.read("/tx/a") == b"3"


async def test_run_transaction_retries_conflicts(xs: actors.XenStore) -> None:
    await xs.write("/counter", "0")
    attempts = 0

    async def bump(tx: actors.Transaction) -> int:
        nonlocal attempts
        attempts += 1
        value = int(await tx.read("/counter"))
        if attempts == 1:
            await xs.write("/counter", "10")  # make the first attempt conflict
        await tx.write("/counter", str(value + 1))
        return value + 1

    assert await xs.run_transaction(bump) == 11
    assert attempts == 2
    assert await xs.read("/counter") == b"11"


async def test_fifteen_hundred_children_list_completely(xs: actors.XenStore) -> None:
    names = {f"child-with-a-longish-name-{i:04d}" for i in range(1500)}
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(xs.write, f"/big/{name}", "x")
    listed = await xs.ls("/big")
    assert len(listed) == 1500
    assert set(listed) == names


async def test_thousand_requests_from_a_hundred_tasks(xs: actors.XenStore) -> None:
    results: dict[str, bytes] = {}

    async def worker(n: int) -> None:
        for i in range(10):
            path = f"/load/{n}/{i}"
            await xs.write(path, f"{n}-{i}")
            results[path] = await xs.read(path)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(worker, n)
    assert len(results) == 1000
    assert all(value == path.split("/", 2)[2].replace("/", "-").encode() for path, value in results.items())


async def test_a_watch_nobody_reads_does_not_stall_other_calls(xs: actors.XenStore) -> None:
    async with xs.watch("/noisy", capacity=16) as ignored:
        with trio.fail_after(30):
            for i in range(2000):
                await xs.write(f"/noisy/{i % 100}", str(i))
        assert len(ignored) <= 16
        assert ignored.coalesced > 0
        # The latest state is still represented: a consumer that finally reads gets a hint for it.
        paths = set()
        while len(ignored):
            paths.add((await ignored.receive()).path)
        assert paths & {"/noisy", "/noisy/99"}


async def test_cancelling_a_call_mid_flight_leaves_the_connection_usable(xs: actors.XenStore) -> None:
    for _ in range(50):
        with trio.move_on_after(0):
            await xs.write("/cancel/me", "x")
        with trio.CancelScope() as scope:
            scope.cancel()
            await xs.read("/cancel")
    await xs.write("/cancel/ok", "fine")
    assert await xs.read("/cancel/ok") == b"fine"


async def test_server_killed_mid_call_and_mid_watch(workdir: str) -> None:
    path = os.path.join(workdir, "socket")
    daemon = XenStored()
    async with trio.open_nursery() as nursery:
        serving = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            with serving:
                await daemon.serve(path, task_status=task_status)

        await nursery.start(serve)
        async with actors.connect(path) as xs, xs.watch("/w") as events:
            assert (await events.receive()).path == "/w"
            failures: list[BaseException] = []

            async def hammer() -> None:
                try:
                    while True:
                        await xs.write("/w/x", "y")
                except actors.ConnectionLost as exc:
                    failures.append(exc)

            with trio.fail_after(10):
                async with trio.open_nursery() as callers:
                    for _ in range(5):
                        callers.start_soon(hammer)
                    await trio.sleep(0.05)
                    serving.cancel()
                assert len(failures) == 5
                with pytest.raises(actors.ConnectionLost):
                    while True:
                        await events.receive()
                with pytest.raises(actors.ConnectionLost):
                    await xs.read("/w")


async def test_guest_connection_is_unprivileged(xenstored: Embedded, xs: actors.XenStore) -> None:
    await xs.write("/local/domain/0/secret", "s")
    await xs.mkdir("/local/domain/6")
    await xs.set_perms("/local/domain/6", ["b6"])  # its home, as the toolstack makes it
    async with xenstored.guest(6) as stream, actors.open_xenstore(stream) as guest:
        with pytest.raises(actors.PermissionDenied):
            await guest.read("/local/domain/0/secret")
        with pytest.raises(actors.PermissionDenied):
            await guest.write("/local/domain/7/data", "not mine")
        await guest.write("data/mine", "hello")  # relative to /local/domain/6
    assert await xs.read("/local/domain/6/data/mine") == b"hello"
