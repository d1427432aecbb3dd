"""The agent's watch rules in process, against the embedded xenstored: ``run`` handlers (a real process per
event: environment, argv, output logged with the domid, failures, process-group kills) and the rule set that
``SIGHUP`` applies (added and removed rules, untouched domains).

Tests that wait for real processes run on the real clock (an autojump clock would jump to the rule's timeout
while the process is still starting); the rest run on trio's autojump clock.
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.agent import rules
from actors.agent.config import parse_config
from actors.agent.rules import CommandFailed, RuleSet, RunHandler
from actors.agent.schema import WatchRule


class _Source:
    def __init__(self, xs: actors.XenStore) -> None:
        self.xs = xs


def make_ctx(xs: actors.XenStore, domid: int = 7, identity: bytes = b"uuid-7") -> DomainContext:
    return DomainContext(domid, identity, _Source(xs), logger.bind(domid=domid))


def script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is as good as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def poll(condition: Callable[[], Any]) -> Any:
    """Wait for another process to make ``condition()`` true; returns its value."""
    while True:
        if result := condition():
            return result
        await trio.sleep(0.01)


async def wait_for_file(path: Path, lines: int = 1) -> list[str]:
    found: list[str] = await poll(lambda: len(content := read_lines(path)) >= lines and content)
    return found


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record emitted during the test (the actors loggers enabled meanwhile)."""
    seen: list[dict[str, Any]] = []
    sink = logger.add(lambda message: seen.append(message.record), level="DEBUG", format="{message}")
    logger.enable("actors")
    try:
        yield seen
    finally:
        logger.disable("actors")
        logger.remove(sink)


# -- run handlers, on the real clock ------------------------------------------------------------------------


async def test_run_gives_the_command_its_event(
    xs: actors.XenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    command = script(
        tmp_path, "record", f'{{ echo "argv=$*"; env | grep -E "^(XS_|MTW_MARK)" | sort; }} > {out}\n'
    )
    monkeypatch.setenv("MTW_MARK", "from-the-agent")
    monkeypatch.setenv("XS_VALUE", "stale")  # the agent's own, never passed on as the node's value
    handler = RunHandler((command, "dom={domid}", "{path}", "{other}"), "record")
    await xs.write("/local/domain/7/data/ping", b"pong")
    with trio.fail_after(10):
        await handler(make_ctx(xs), WatchEvent("/local/domain/7/data/ping", "mtw/7/1/3"))
    lines = out.read_text().splitlines()
    assert lines[0] == "argv=dom=7 /local/domain/7/data/ping {other}"
    assert sorted(lines[1:]) == [
        "MTW_MARK=from-the-agent",
        "XS_DOMID=7",
        "XS_IDENTITY=uuid-7",
        "XS_PATH=/local/domain/7/data/ping",
        "XS_TOKEN=mtw/7/1/3",
        "XS_VALUE=pong",
    ]
    # The node gone: XS_VALUE is unset.
    await xs.rm("/local/domain/7/data/ping")
    with trio.fail_after(10):
        await handler(make_ctx(xs), WatchEvent("/local/domain/7/data/ping", "mtw/7/1/3"))
    assert not any(line.startswith("XS_VALUE=") for line in out.read_text().splitlines())


async def test_run_logs_output_lines_with_the_domid(
    xs: actors.XenStore, tmp_path: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "MAX_LINE", 64)
    command = script(
        tmp_path,
        "talk",
        "echo 'line one {not a field}'\necho oops >&2\nprintf 'x%.0s' $(seq 1 100)\necho\nprintf 'no newline'\n",
    )
    with trio.fail_after(10):
        await RunHandler((command,), "talk")(make_ctx(xs, 9), WatchEvent("/local/domain/9/x", "t"))
    output = [r for r in records if r["extra"].get("stream")]
    assert {r["extra"]["domid"] for r in output} == {9}
    stdout = [r["message"].split(": ", 1)[1] for r in output if r["extra"]["stream"] == "stdout"]
    stderr = [r["message"].split(": ", 1)[1] for r in output if r["extra"]["stream"] == "stderr"]
    assert stdout == ["line one {not a field}", "x" * 64, "x" * 36, "no newline"]
    assert stderr == ["oops"]
    assert output[0]["message"].startswith("talk[")


async def test_run_failures_raise(xs: actors.XenStore, tmp_path: Path) -> None:
    ctx, event = make_ctx(xs), WatchEvent("/local/domain/7/x", "t")
    with trio.fail_after(10):
        with pytest.raises(CommandFailed, match=r"exited with status 3"):
            await RunHandler((script(tmp_path, "three", "exit 3\n"),), "three")(ctx, event)
        with pytest.raises(CommandFailed, match=r"was killed by SIGTERM"):
            await RunHandler((script(tmp_path, "term", "kill -TERM $$\nsleep 5\n"),), "term")(ctx, event)
        with pytest.raises(CommandFailed, match=r"cannot run '/nonexistent/cmd': No such file"):
            await RunHandler(("/nonexistent/cmd",), "missing")(ctx, event)
        plain = tmp_path / "plain"
        plain.write_text("not executable")
        with pytest.raises(CommandFailed, match=r"cannot run .*: Permission denied"):
            await RunHandler((str(plain),), "plain")(ctx, event)


async def test_cancelling_a_run_kills_its_whole_process_group(xs: actors.XenStore, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = script(tmp_path, "hang", f"sleep 300 &\necho $$ >> {pids}\necho $! >> {pids}\nwait\n")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                RunHandler((command,), "hang"), make_ctx(xs), WatchEvent("/local/domain/7/x", "t")
            )
            shell, sleeper = (int(p) for p in await wait_for_file(pids, 2))
            assert alive(shell) and alive(sleeper)
            nursery.cancel_scope.cancel()
        assert not alive(shell)
        await poll(lambda: not alive(sleeper))  # SIGKILLed with its group, gone once the kernel is done


async def test_leftover_background_output_is_not_waited_for(
    xs: actors.XenStore, tmp_path: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "_DRAIN_GRACE", 0.2)
    pids = tmp_path / "pids"
    command = script(tmp_path, "leave", f"sleep 300 &\necho $! > {pids}\nexit 0\n")
    with trio.fail_after(10):
        await RunHandler((command,), "leave")(make_ctx(xs), WatchEvent("/local/domain/7/x", "t"))
        (sleeper,) = (int(p) for p in await wait_for_file(pids))
        await poll(lambda: not alive(sleeper))
    assert any("left behind" in r["message"] for r in records)


# -- rules on a runtime ---------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self.changed = trio.Event()

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        self.seen.append((ctx.domid, event.path))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, domid: int, path: str) -> None:
        while (domid, path) not in self.seen:
            await self.changed.wait()


RECORDERS: dict[str, Recorder] = {}


async def recorded_a(ctx: DomainContext, event: WatchEvent) -> None:
    await RECORDERS["a"](ctx, event)


async def recorded_b(ctx: DomainContext, event: WatchEvent) -> None:
    await RECORDERS["b"](ctx, event)


def rules_of(text: str) -> tuple[WatchRule, ...]:
    return parse_config(tomllib.loads(text)).watches


RULE_A = f"""
[[watch]]
name = "a"
path = "/local/domain/{{domid}}/data/a"
call = "{__name__}:recorded_a"
"""
RULE_B = f"""
[[watch]]
name = "b"
path = "/local/domain/{{domid}}/data/b"
call = "{__name__}:recorded_b"
"""


@pytest.fixture
async def rt(xs: actors.XenStore) -> AsyncIterator[actors.Runtime]:
    RECORDERS.update(a=Recorder(), b=Recorder())
    policy = RestartPolicy(max_restarts=3, period=60, backoff_initial=1, backoff_max=4)
    async with actors.open_runtime(xs, restart=policy, stop_deadline=5) as runtime:
        yield runtime
    RECORDERS.clear()


async def test_rule_set_adds_and_removes_rules_without_touching_domains(
    autojump_clock: trio.testing.MockClock, xs: actors.XenStore, rt: actors.Runtime
) -> None:
    starts: list[int] = []

    @rt.on_start
    async def count(ctx: DomainContext) -> None:
        starts.append(ctx.domid)

    ruleset = RuleSet(rt)
    with trio.fail_after(30):
        added, removed = ruleset.apply(rules_of(RULE_A))
        assert [r.name for r in added] == ["a"] and removed == []
        for domid in (3, 4):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        await rt.ready.wait()
        for domid in (3, 4):
            await rt.wait_domain(domid, State.RUNNING)
            await xs.write(f"/local/domain/{domid}/data/a", b"1")
            await RECORDERS["a"].wait_for(domid, f"/local/domain/{domid}/data/a")
        watch_a = ruleset.active[0][1]

        added, removed = ruleset.apply(rules_of(RULE_A + RULE_B))  # SIGHUP with one rule more
        assert [r.name for r in added] == ["b"] and removed == []
        assert ruleset.active[0][1] is watch_a  # the unchanged rule keeps its watch
        await xs.write("/local/domain/4/data/b", b"1")
        await RECORDERS["b"].wait_for(4, "/local/domain/4/data/b")

        added, removed = ruleset.apply(rules_of(RULE_B))  # and one fewer
        assert added == [] and [r.name for r in removed] == ["a"]
        RECORDERS["a"].seen.clear()
        await xs.write("/local/domain/3/data/a", b"2")
        await xs.write("/local/domain/3/data/b", b"2")
        await RECORDERS["b"].wait_for(3, "/local/domain/3/data/b")
        assert RECORDERS["a"].seen == []

        assert sorted(starts) == [3, 4]  # no domain was restarted
        assert all(d.restarts == 0 and d.state is State.RUNNING for d in rt.domains.values())


async def test_a_run_rule_that_overruns_its_timeout_is_a_failure_and_is_killed(
    xs: actors.XenStore, rt: actors.Runtime, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    hang = script(tmp_path, "hang", f"echo $$ >> {pids}\nexec sleep 300\n")
    RuleSet(rt).apply(
        rules_of(f'[[watch]]\npath = "/local/domain/{{domid}}/data/x"\nrun = ["{hang}"]\ntimeout = 0.3\n')
    )
    with trio.fail_after(10):
        await actors.announce_domain(xs, 6, identity="uuid-6")
        (pid,) = (int(p) for p in await wait_for_file(pids))  # the registration's event runs it
        while rt.domains[6].failures == 0:
            await rt.changed.wait()
        assert "overran its timeout" in (rt.domains[6].last_error or "")
        assert not alive(pid)


async def test_the_registration_event_is_marked_and_initial_false_skips_it(
    xs: actors.XenStore, rt: actors.Runtime, tmp_path: Path
) -> None:
    out = tmp_path / "events"
    record = script(tmp_path, "record", f'echo "$1 ${{XS_INITIAL-0}} ${{XS_VALUE-<unset>}}" >> {out}\n')
    rules = "".join(
        f'[[watch]]\nname = "{name}"\npath = "/local/domain/{{domid}}/data/x"\nrun = ["{record}", "{name}"]\n'
        + ("initial = false\n" if name == "changes" else "")
        for name in ("every", "changes")
    )
    RuleSet(rt).apply(rules_of(rules))
    with trio.fail_after(10):
        await actors.announce_domain(xs, 6, identity="uuid-6")
        await wait_for_file(out)  # the registration's event: XS_INITIAL=1, the node not there yet
        await rt.wait_domain(6, State.RUNNING)
        await xs.write("/local/domain/6/data/x", b"v1")
        lines = await wait_for_file(out, lines=3)
    assert sorted(lines) == ["changes 0 v1", "every 0 v1", "every 1 <unset>"]
