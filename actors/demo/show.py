"""``mtwatch demo``: the isolation of xenwatch multithreading, shown on the embedded xenstored (no Xen, no root).

In a temporary folder it runs ``mtwatch xenstored`` and ``mtwatch agent`` (the rules of
:mod:`actors.demo.handlers`) as child processes, then plays the toolstack and the guests against them
(:mod:`actors.demo.play`): healthy guests ping, one hangs its handler, one crashes it, one floods, and one's
handler (``isolation = "process"``) segfaults and spins in a worker process. It shows the agent's live table,
then a summary (:mod:`actors.demo.summary`): the healthy domains' latency against how long the hung handler has
been stuck, the crashing domain's restarts, what coalescing did to the flood, the worker deaths. Every
process and the folder are cleaned up at the end, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any, BinaryIO, TextIO

import trio

from .. import XenStoreError, XenStoreUnavailable, connect
from ..agent.control import ControlUnavailable, ask
from ..agent.exits import Exit
from ..agent.status import COLUMNS, format_seconds, rates_between, rows
from .handlers import RECORD_ENV
from .play import Cast, Show
from .play import play as play_
from .summary import percentile, read_records, render_summary, summarize

__all__ = ["DemoError", "main", "run_demo"]

STOP_DEADLINE = 2.0
AGENT_GRACE = STOP_DEADLINE + 8  # SIGTERM -> exit: the stop deadline, and the runtime's own teardown
START_TIMEOUT = 20.0
_CLEAR = "\x1b[H\x1b[2J"


class DemoError(Exception):
    """The demo could not run (a process would not start or died); the message says which and why."""


def agent_config(socket_path: str, control: str) -> str:
    """The demo's agent configuration: every domain gets every rule; what a guest writes decides which one
    misbehaves for it."""
    return f"""\
# mtwatch demo: the agent's configuration
[xenstore]
socket = "{socket_path}"

[runtime]
mailbox_size = 64
stop_deadline = {STOP_DEADLINE}

[restart]
max_restarts = 5
period = 60.0
backoff_initial = 0.25
backoff_max = 1.0

[control]
socket = "{control}"
""" + "".join(
        f'\n[[watch]]\nname = "{name}"\npath = "/local/domain/{{domid}}/data/{name}"\n'
        f'call = "actors.demo.handlers:{call}"\ntimeout = {timeout}\n{extra}'
        for name, call, timeout, extra in _RULES
    )


_PROCESS = 'isolation = "process"\ninitial = false\n'
_RULES = [
    ("ping", "ping", 5.0, ""),
    ("hang", "hang", 3600.0, ""),
    ("crash", "crash", 5.0, ""),
    ("flood", "slow", 5.0, ""),
    ("native", "native", 1.0, _PROCESS),
]


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


# -- the two processes ----------------------------------------------------------------------------------------


def _open_log(path: str) -> BinaryIO:
    return open(path, "wb")  # the child gets its own copy of the descriptor; ours closes once it started


async def _supervise(
    name: str,
    argv: list[str],
    log_path: str,
    env: dict[str, str],
    *,
    grace: float = 5.0,
    stop_after: trio.Event | None = None,
    task_status: trio.TaskStatus[trio.Process],
) -> None:
    """Run a child process until cancelled, then SIGTERM it (SIGKILL after ``grace`` seconds); DemoError if it
    ends by itself. ``stop_after``: when cancelled, first wait (a while) for that event, so that processes stop
    in order even when everything is cancelled at once (SIGTERM)."""
    with _open_log(log_path) as log:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C at the terminal reaches the demo only; it stops them in order
        )
    try:
        task_status.started(process)
        await process.wait()
        raise DemoError(
            f"{name} exited with code {process.returncode}; the end of its log:\n{_tail(log_path)}"
        )
    finally:
        with trio.CancelScope(shield=True):
            if stop_after is not None:
                with trio.move_on_after(grace + STOP_DEADLINE + 10):
                    await stop_after.wait()
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(grace):
                    await process.wait()
                if process.returncode is None:
                    print(
                        f"mtwatch demo: {name} did not stop within {grace:g} s of SIGTERM: killed",
                        file=sys.stderr,
                    )
                    process.kill()
                    await process.wait()


async def _wait_until(
    answers: Callable[[], Awaitable[object]], errors: type[Exception], name: str, log: str
) -> None:
    """Until ``answers()`` returns without one of ``errors``; after START_TIMEOUT, DemoError with ``name``
    (what did not answer) and the end of its ``log``."""
    with trio.move_on_after(START_TIMEOUT):
        while True:
            with suppress(errors):
                await answers()
                return
            await trio.sleep(0.05)
    raise DemoError(f"{name} did not answer; the end of its log:\n{_tail(log)}")


async def _xenstored_answers(socket_path: str) -> None:
    async with connect(socket_path):
        pass


async def _status(control: str) -> dict[str, Any]:
    return await trio.to_thread.run_sync(
        ask, control, {"op": "status", "limit": None}, abandon_on_cancel=True
    )


async def _wait_running(control: str, domids: Iterable[int]) -> None:
    """Until the agent shows every one of ``domids`` running (at most a few seconds: the demo goes on anyway)."""
    with trio.move_on_after(5):
        while True:
            with suppress(ControlUnavailable):
                doc = await _status(control)
                running = {d["domid"] for d in doc["domains"] if d["state"] == "running"}
                if running >= set(domids):
                    return
            await trio.sleep(0.05)


# -- the live view --------------------------------------------------------------------------------------------


def _labels(cast: Cast) -> dict[int, str]:
    return {
        cast.hung: "HUNG (the demo)",
        cast.crashing: "CRASHING (the demo)",
        cast.flooding: "FLOODING (the demo)",
        cast.native: "SEGFAULTS/SPINS in a worker process (the demo)",
    }


async def _live_view(
    control: str, show: Show, seconds: float, out: TextIO, interval: float, record_path: str
) -> None:
    tty = out.isatty()
    previous: dict[str, Any] | None = None
    end = show.started_at + seconds
    while True:
        try:
            doc = await _status(control)
        except ControlUnavailable as exc:
            out.write(f"(agent: {exc})\n")
        else:
            elapsed = time.monotonic() - show.started_at
            healthy = [
                s[0]
                for domid, samples in read_records(record_path).items()
                if domid in show.cast.healthy or domid in show.cast.churn
                for s in samples
            ]
            p99 = percentile(healthy, 0.99)
            header = (
                f"mtwatch demo - {elapsed:4.1f}/{seconds:g} s - churn {show.announced} announced,"
                f" {show.retired} retired - flood {show.flood_writes} writes - healthy p99 {format_seconds(p99)}"
            )
            rates = rates_between(previous, doc, interval) if previous is not None else None
            table = [line for _, line in rows(doc, rates, _labels(show.cast))]
            lines = [header, COLUMNS, *table]
            out.write((_CLEAR if tty else "") + "\n".join(lines) + "\n" + ("" if tty else "\n"))
            out.flush()
            previous = doc
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        await trio.sleep(min(interval, remaining))


# -- the whole demo -------------------------------------------------------------------------------------------


async def run_demo(
    folder: str, seconds: float, *, out: TextIO | None, interval: float, seed: int | None = None
) -> dict[str, Any]:
    """Run the demo in ``folder`` for ``seconds`` and return its summary; ``out`` gets the live view (None:
    no live view)."""
    socket_path = os.path.join(folder, "xenstored.socket")
    record_path = os.path.join(folder, "latency.txt")
    config_path = os.path.join(folder, "agent.toml")
    control = os.path.join(folder, "control")
    await trio.Path(config_path).write_text(agent_config(socket_path, control), encoding="utf-8")
    env = dict(os.environ, **{RECORD_ENV: record_path})
    env.pop("XENSTORED_PATH", None)
    python = sys.executable
    show = Show(Cast())
    rng = random.Random(seed)
    xenstored_log, agent_log = os.path.join(folder, "xenstored.log"), os.path.join(folder, "agent.log")

    agent_ended = trio.Event()
    async with trio.open_nursery() as processes:
        await processes.start(
            functools.partial(
                _supervise,
                "xenstored",
                [python, "-m", "actors.cli", "xenstored", "--socket", socket_path, "--log-level", "WARNING"],
                xenstored_log,
                env,
                stop_after=agent_ended,  # the agent goes first, or it sees xenstored vanish under it
            )
        )
        try:
            where = f"xenstored on {socket_path}"
            await _wait_until(
                lambda: _xenstored_answers(socket_path), XenStoreUnavailable, where, xenstored_log
            )
            async with trio.open_nursery() as agent:
                await agent.start(
                    functools.partial(
                        _supervise,
                        "the agent",
                        [python, "-m", "actors.cli", "agent", "--config", config_path],
                        agent_log,
                        env,
                        grace=AGENT_GRACE,
                    )
                )
                where = f"the agent on {control}"
                await _wait_until(lambda: _status(control), ControlUnavailable, where, agent_log)
                summary = await _show(control, socket_path, show, rng, seconds, out, interval, record_path)
                agent.cancel_scope.cancel()
        finally:
            agent_ended.set()  # the agent's nursery is done: its process is gone
        processes.cancel_scope.cancel()
    return summary


async def _show(
    control: str,
    socket_path: str,
    show: Show,
    rng: random.Random,
    seconds: float,
    out: TextIO | None,
    interval: float,
    record_path: str,
) -> dict[str, Any]:
    """The toolstack and the guests against the running agent for ``seconds``; the summary."""
    async with trio.open_nursery() as play:
        await play.start(play_, socket_path, show, rng)
        await _wait_running(control, show.live)
        show.started_at = time.monotonic()
        show.go.set()
        if out is not None:
            await _live_view(control, show, seconds, out, interval, record_path)
        else:
            await trio.sleep(seconds)
        play.cancel_scope.cancel()
    final = await _status(control)
    return summarize(show, final, read_records(record_path), seconds)


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


async def _until_signal(fn: Callable[[], Any]) -> Any:
    """Run ``fn()``; SIGINT, SIGTERM or SIGHUP cancels it (and so cleans up). SIGINT is received here too
    rather than left to trio's KeyboardInterrupt, which lands in whichever task runs and may be taken for
    that task's failure."""
    result: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for _ in signals:
                    raise KeyboardInterrupt

        nursery.start_soon(watch_signals)
        result.append(await fn())
        nursery.cancel_scope.cancel()
    return result[0]


def main(args: argparse.Namespace) -> int:
    """``mtwatch demo [--seconds N] [--json] [--interval S] [--seed N] [--keep]``."""
    if args.seconds <= 0:
        print("mtwatch demo: --seconds must be positive", file=sys.stderr)
        return Exit.USAGE
    out = None if args.json else sys.stdout
    interval = args.interval or (1.0 if sys.stdout.isatty() else 5.0)
    folder = tempfile.mkdtemp(prefix="mtwdemo", dir="/tmp")
    try:
        summary = trio.run(
            _until_signal, lambda: run_demo(folder, args.seconds, out=out, interval=interval, seed=args.seed)
        )
    except BaseException as exc:  # a group (from the nurseries) or one
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("mtwatch demo: interrupted; every process stopped", file=sys.stderr)
            return Exit.INTERRUPTED
        known = [e for e in leaves if isinstance(e, DemoError | XenStoreError)]
        if not known:
            raise
        for error in known:
            print(f"mtwatch demo: {error}", file=sys.stderr)
        return Exit.DEGRADED
    finally:
        if args.keep:
            print(f"mtwatch demo: logs and config kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(render_summary(summary)))
    return Exit.OK
