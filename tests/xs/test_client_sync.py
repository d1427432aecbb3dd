"""``SyncXenStore``, the blocking client of worker processes, against the embedded xenstored over a real socket
(run in a thread: the daemon answers from this test's trio loop)."""

from __future__ import annotations

import os
import socket

import pytest
import trio

import actors
from actors.xs.sync import SyncXenStore
from harness.servers import Embedded


async def test_the_node_operations(xenstored: Embedded) -> None:
    def work() -> dict[str, object]:
        with SyncXenStore(xenstored.socket_path) as xs:
            xs.write("/local/domain/3/data/a", "1")
            xs.write("/local/domain/3/data/b", b"\x00two")
            xs.mkdir("/local/domain/3/empty")
            names = sorted(f"n{i:04}-{'x' * 16}" for i in range(300))  # a listing past 4096 bytes
            for name in names:
                xs.write(f"/local/domain/3/many/{name}", "")
            xs.set_perms("/local/domain/3/data/a", ["n0", "r3"])
            out: dict[str, object] = {
                "a": xs.read("/local/domain/3/data/a"),
                "b": xs.read("/local/domain/3/data/b"),
                "ls": xs.ls("/local/domain/3/data"),
                "empty": xs.read("/local/domain/3/empty"),
                "many": sorted(xs.ls("/local/domain/3/many")) == names,
                "perms": xs.get_perms("/local/domain/3/data/a"),
            }
            xs.rm("/local/domain/3/data")
            out["gone"] = not xs.exists("/local/domain/3/data/a")
            with pytest.raises(actors.NotFound):
                xs.read("/local/domain/3/data/a")
            return out

    with trio.fail_after(30):
        got = await trio.to_thread.run_sync(work)
    assert got == {
        "a": b"1",
        "b": b"\x00two",
        "ls": ["a", "b"],
        "empty": b"",
        "many": True,
        "perms": ["n0", "r3"],
        "gone": True,
    }


async def test_a_daemon_that_never_answers_is_a_request_timeout(workdir: str) -> None:
    path = os.path.join(workdir, "silent")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def ask() -> None:
        with SyncXenStore(path, timeout=0.2) as xs:
            try:
                xs.read("/x")
            finally:
                assert xs.closed  # a late reply could not be told apart: the connection is closed

    try:
        with trio.fail_after(30), pytest.raises(actors.RequestTimeout):
            await trio.to_thread.run_sync(ask)
    finally:
        listener.close()


def test_no_daemon_is_xenstore_unavailable(workdir: str) -> None:
    with pytest.raises(actors.XenStoreUnavailable):
        SyncXenStore(os.path.join(workdir, "nothing"))
