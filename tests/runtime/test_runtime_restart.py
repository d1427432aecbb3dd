"""xenstored killed (SIGKILL) and started again with an empty store, three times, while a runtime with
``connect=`` serves: the toolstack announces the domains again, and the runtime follows what the new tree says
(a domain not announced again stops), handles every domain's last value, and charges no domain anything."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from test_runtime_faults import LastValues

import actors
from actors import ReconnectPolicy, State
from actors.xenstored.sockets import daemon_answers


@asynccontextmanager
async def daemon(path: str) -> AsyncIterator[trio.Process]:
    """The embedded xenstored in a process of its own (an empty store each time)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.xenstored", "--socket", path, "--log-level", "WARNING"]
    )
    try:
        with trio.fail_after(30):
            while not await trio.to_thread.run_sync(daemon_answers, path):  # noqa: ASYNC110
                await trio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_killed_daemon_restarted_and_the_toolstack_announcing_again(workdir: str) -> None:
    path = os.path.join(workdir, "socket")
    handler = LastValues()
    fast = ReconnectPolicy(backoff_initial=0.05, backoff_max=0.2)
    async with actors.open_runtime(connect=lambda: actors.connect(path), reconnect=fast) as rt:
        rt.watch("/local/domain/{domid}/data", handler, timeout=5)
        for cycle, live in enumerate([{1, 2, 3}, {2, 3}, {1, 3, 4}]):
            value = f"cycle-{cycle}".encode()
            async with daemon(path) as process:
                async with actors.connect(path) as toolstack:
                    for domid in sorted(live):
                        await actors.announce_domain(toolstack, domid, identity=f"uuid-{domid}")
                        await toolstack.write(f"/local/domain/{domid}/data", value)
                with trio.fail_after(60):
                    # Either the registry or a handler moves: poll both.
                    while set(rt.domains) != live or any(handler.last.get(d) != value for d in live):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    for domid in live:
                        await rt.wait_domain(domid, State.RUNNING)
                process.send_signal(signal.SIGKILL)
                await process.wait()
            os.unlink(path)  # what the killed daemon left behind
            with trio.fail_after(30):
                await rt.connected.wait_value(False)
        assert rt.reconnects >= 2
        for domid, snap in rt.domains.items():
            assert (snap.failures, snap.restarts) == (0, 0), (domid, snap)
