"""``mtwatch demo``: its pieces, then whole runs (real xenstored and agent processes) whose numbers must show
the isolation, and its cleanup on Ctrl-C and SIGTERM."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from actors.agent.config import parse_config
from actors.demo.play import Cast, Show
from actors.demo.show import DemoError, _supervise, agent_config
from actors.demo.summary import percentile, read_records, render_summary, summarize
from harness.build import PROJECT_ROOT

ROOT = PROJECT_ROOT
DEMO = [sys.executable, "-m", "actors.cli", "demo"]
needs_agent = pytest.mark.skipif(
    not (ROOT / "actors" / "agent" / "daemon.py").exists(),
    reason="mtwatch agent (actors/agent/daemon.py) not there yet",
)


def test_agent_config_is_valid_for_the_agent() -> None:
    config = parse_config(tomllib.loads(agent_config("/tmp/x/socket", "/tmp/x/control")))
    assert [w.name for w in config.watches] == ["ping", "hang", "crash", "flood", "native"]
    assert config.watches[-1].isolation == "process"
    assert all(w.call and w.call.startswith("actors.demo.handlers:") for w in config.watches)
    hang = config.watches[1]
    assert hang.timeout > 600  # the hung handler must outlast any demo run
    assert config.xenstore_socket == "/tmp/x/socket" and config.control == "/tmp/x/control"


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0


def test_read_records_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "latency.txt"
    path.write_text("1 0.001 0.0001\n2 0.002 0.0002\n1 0.003 0.0003\n3 0.0")
    assert read_records(str(path)) == {1: [(0.001, 0.0001), (0.003, 0.0003)], 2: [(0.002, 0.0002)]}
    assert read_records(str(tmp_path / "missing")) == {}


def domain(domid: int, state: str = "running", **counts: int) -> dict[str, object]:
    base = {"mailbox": 0, "handled": 0, "coalesced": 0, "dropped": 0, "failures": 0, "restarts": 0}
    return {"domid": domid, "state": state, **base, **counts}


def test_summary_from_a_status() -> None:
    status = {
        "connection": {"reconnects": 0},
        "latency": {"count": 3, "p50": 0.001, "p99": 0.002},
        "domains": [
            domain(1),
            domain(4, handled=1, coalesced=80, mailbox=65),
            domain(5, "failed", failures=6, restarts=5),
            domain(6, handled=200, coalesced=4000),
            domain(21),
        ],
    }
    show = Show(Cast(), announced=12, retired=5, flood_writes=5000, hang_at=0.0, crash_at=0.0)
    records = {
        1: [(0.001, 0.0001)] * 99 + [(0.004, 0.0002)],
        21: [(0.002, 0.0001)],
        6: [(1.5, 1.4)],
        5: [(9.0, 9.0)],
    }
    summary = summarize(show, status, records, 5.0)
    assert summary["healthy"]["domids"] == [1, 21]
    assert summary["healthy"]["samples"] == 101  # domain 5 and the flood's pings are not healthy
    assert summary["healthy"]["p99_ms"] == pytest.approx(2.0)
    assert summary["hung"]["mailbox_depth"] == 65 and summary["hung"]["coalesced"] == 80
    assert summary["hung"]["handler_waiting_s"] > 0
    assert summary["crashing"]["state"] == "failed" and summary["crashing"]["restarts"] == 5
    assert summary["flood"]["coalesced"] == 4000 and summary["flood"]["own_pings"]["p99_ms"] == 1500.0
    assert summary["churn"] == {"announced": 12, "retired": 5, "live_at_end": 0}
    text_lines = "\n".join(render_summary(summary))
    assert "crashing domain 5: state failed after 6 failures and 5 restarts" in text_lines
    assert "isolation:" in text_lines
    assert summary["agent"]["latency_histogram_p99_ms"] == 2.0
    assert summary["agent"]["totals"]["states"] == {"running": 4, "failed": 1}
    json.dumps(summary)  # JSON-ready


# -- whole runs -----------------------------------------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``, with their command lines."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(entry)] = cmdline
    return out


def _folder_of(pid: int) -> str:
    """The demo's temporary folder, from its children's command lines (its xenstored's socket is in it)."""
    for cmdline in _children(pid).values():
        match = re.search(r"(/tmp/mtwdemo[^/ ]+)/", cmdline)
        if match:
            return match.group(1)
    raise AssertionError(f"no demo folder in the command lines of {pid}'s children")


@asynccontextmanager
async def _demo_process(argv: list[str]) -> AsyncIterator[trio.Process]:
    """The demo as a child process with its stdout piped; killed if the test leaves it running."""
    process = await trio.lowlevel.open_process(
        [*DEMO, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    assert process.stdout is not None
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()


async def _read_until(process: trio.Process, until: bytes | None) -> bytes:
    """Its stdout up to ``until`` (None: to the end)."""
    assert process.stdout is not None
    seen = b""
    while until is None or until not in seen:
        chunk = await process.stdout.receive_some(65536)
        if not chunk:
            assert until is None, f"the demo ended before showing {until!r}"
            break
        seen += chunk
    return seen


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


@needs_agent
@pytest.mark.slow
async def test_demo_json_numbers_show_isolation() -> None:
    with trio.fail_after(120):
        result = await trio.run_process(
            [*DEMO, "--seconds", "5", "--json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    healthy, hung, crash, flood = summary["healthy"], summary["hung"], summary["crashing"], summary["flood"]
    # healthy domains were served, fast, all along
    assert healthy["samples"] > 100 and healthy["samples"] > healthy["pings_written"] * 0.8
    assert len(healthy["domids"]) >= 4  # the steady ones and some of the churn
    assert healthy["p99_ms"] is not None and healthy["p99_ms"] < 500
    # ... while one handler hung the whole time: far longer than any healthy event waited
    assert hung["handler_waiting_s"] > 3
    assert healthy["p99_ms"] < hung["handler_waiting_s"] * 1000 / 10
    # its mailbox holds what its guest wrote since (bounded: coalescing starts once it holds every ping slot)
    assert hung["state"] == "running" and hung["mailbox_depth"] > 20
    assert hung["events"] < hung["pings_written"] / 4
    # the crashing domain restarted, or gave up
    assert crash["restarts"] >= 1 or crash["state"] == "failed"
    assert crash["failures"] >= 2
    # the flood coalesced instead of growing without bound
    assert flood["writes"] > 1000
    assert flood["coalesced"] > 0
    assert flood["mailbox_depth"] <= 64 + 1024
    assert summary["churn"]["retired"] >= 2 and summary["churn"]["announced"] > 6
    # the native-code guest's worker segfaulted (and spun past its timeout): only its domain was charged
    native = summary["native"]
    assert native["failures"] >= 1 and native["worker_deaths"].get("SIGSEGV", 0) >= 1, native


@needs_agent
@pytest.mark.slow
async def test_demo_text_summary_and_cleanup() -> None:
    with trio.fail_after(120):
        async with _demo_process(["--seconds", "3", "--interval", "1"]) as process:
            head = await _read_until(process, b"mtwatch demo - ")
            folder, children = _folder_of(process.pid), sorted(_children(process.pid))
            assert len(children) == 2  # xenstored and the agent
            out = (head + await _read_until(process, None)).decode()
            await process.wait()
    assert process.returncode == 0
    assert "\x1b[" not in out  # not a terminal: plain lines
    assert out.count("mtwatch demo - ") >= 2  # the live table, refreshed
    assert " DOMID NAME" in out
    assert "HUNG (the demo)" in out and "CRASHING (the demo)" in out and "FLOODING (the demo)" in out
    assert "healthy domains" in out and "hung domain 4" in out and "crashing domain 5" in out
    assert "flooding domain 6" in out and "isolation:" in out
    assert not any(_alive(pid) for pid in children)
    assert not await trio.Path(folder).exists()


@needs_agent
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_demo_cleans_up_when_interrupted(signum: signal.Signals) -> None:
    with trio.fail_after(120):  # a bound, not a timing: a loaded 2-core machine needs room
        async with _demo_process(["--seconds", "60", "--interval", "0.5"]) as process:
            await _read_until(process, b"mtwatch demo - ")
            folder, children = _folder_of(process.pid), sorted(_children(process.pid))
            assert len(children) == 2
            process.send_signal(signum)
            await _read_until(process, None)
            await process.wait()
    assert process.returncode == 130
    assert not any(_alive(pid) for pid in children)
    assert not await trio.Path(folder).exists()


async def test_supervise_reports_a_process_that_dies(tmp_path: Path) -> None:
    log = str(tmp_path / "child.log")
    argv = [sys.executable, "-c", "import sys; print('cannot start: boom', flush=True); sys.exit(3)"]
    with trio.fail_after(30), pytest.RaisesGroup(pytest.RaisesExc(DemoError, match=r"(?s)code 3.*boom")):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(_supervise, "child", argv, log, dict(os.environ)))


async def test_supervise_stops_in_order_when_cancelled(tmp_path: Path) -> None:
    first_gone = trio.Event()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            second: trio.Process = await nursery.start(
                functools.partial(
                    _supervise,
                    "second",
                    sleeper,
                    str(tmp_path / "2.log"),
                    dict(os.environ),
                    stop_after=first_gone,
                )
            )
            first: trio.Process = await nursery.start(
                functools.partial(_supervise, "first", sleeper, str(tmp_path / "1.log"), dict(os.environ))
            )

            async def mark_first_gone() -> None:
                with trio.CancelScope(shield=True):  # what the demo's agent nursery exiting does
                    await first.wait()
                    await trio.sleep(0.2)
                    assert second.returncode is None  # still there: it waits for the first one
                    first_gone.set()

            nursery.start_soon(mark_first_gone)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    assert first.returncode == -signal.SIGTERM and second.returncode == -signal.SIGTERM
