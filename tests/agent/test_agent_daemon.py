"""``mtwatch agent`` end to end: the agent as a real process (``python -m actors.cli agent``) against the embedded
xenstored running in the test's trio loop, with a real AF_UNIX datagram socket as ``$NOTIFY_SOCKET``, its metrics
scraped over HTTP, and rules whose commands are small shell scripts that append what they got to a file."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

import actors
from actors.agent import daemon
from actors.agent.config import Overrides, parse_config
from actors.agent.exits import Exit
from actors.xenstored import open_xenstored
from harness.build import PROJECT_ROOT
from harness.servers import Embedded

REPO = PROJECT_ROOT
AGENT = [sys.executable, "-m", "actors.cli", "agent"]


# -- the harness ----------------------------------------------------------------------------------------------


def script(folder: str, name: str, body: str) -> str:
    path = Path(folder) / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XENSTORED_", "NOTIFY_", "WATCHDOG_"))}
    env.update(extra)
    return env


async def poll(condition: Callable[[], Any], interval: float = 0.02) -> Any:
    """Wait for another process to make ``condition()`` true; returns its value."""
    while True:
        if result := condition():
            return result
        await trio.sleep(interval)


class Agent:
    def __init__(self, proc: trio.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def records(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines (``record``), or ``{"message": line}`` for a plain one."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                flat = json.loads(line)
                out.append({"message": flat.pop("message"), "level": flat.pop("level"), "extra": flat})
            except (ValueError, KeyError, TypeError):
                out.append({"message": line, "extra": {}})
        return out

    def find(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if text in r["message"]]

    async def wait_log(self, text: str, count: int = 1) -> list[dict[str, Any]]:
        return await poll(lambda: (found := self.find(text)) and len(found) >= count and found)  # type: ignore[no-any-return]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self) -> int:
        return await self.proc.wait()

    def tail(self) -> str:
        return "\n".join(r["message"] for r in self.records()[-30:])


@asynccontextmanager
async def run_agent(workdir: str, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Agent]:
    log_path = Path(workdir) / "agent.log"
    with log_path.open("wb") as log:
        proc = await trio.lowlevel.open_process(
            [*AGENT, "--control", os.path.join(workdir, "control"), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env or clean_env(),
            cwd=REPO,
        )
    agent = Agent(proc, log_path)
    try:
        yield agent
    except BaseException:
        print(f"--- the agent's log:\n{agent.tail()}")
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


class Notifications:
    """What the agent sent to ``$NOTIFY_SOCKET``, one dict per datagram."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []

    def with_key(self, key: str, after: int = 0) -> list[int]:
        return [i for i, m in enumerate(self.messages) if i >= after and key in m]

    async def wait(self, key: str, after: int = 0) -> int:
        """The index of the first message at or after ``after`` that has ``key``."""
        found: list[int] = await poll(lambda: self.with_key(key, after))
        return found[0]


@asynccontextmanager
async def notify_socket(workdir: str) -> AsyncIterator[Notifications]:
    notes = Notifications(os.path.join(workdir, "notify"))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(notes.path)

        async def read() -> None:
            while True:
                data = await sock.recv(4096)
                notes.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            yield notes
            nursery.cancel_scope.cancel()


async def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def per_domain(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[int, float]:
    return {int(dict(labels)["domid"]): value for labels, value in samples[name].items()}


def metrics_port(agent: Agent) -> int:
    (record,) = agent.find("metrics on http://")
    return int(record["message"].rsplit(":", 1)[1].split("/", 1)[0])


def lines(path: Path) -> list[list[str]]:
    return [line.split(" ") for line in path.read_text().splitlines()] if path.exists() else []


def base_config(socket_path: str, stop_deadline: float = 3.0) -> str:
    return f"""
[xenstore]
socket = "{socket_path}"

[runtime]
stop_deadline = {stop_deadline}

[log]
format = "json"
level = "DEBUG"
"""


def rule(name: str, command: str, *, timeout: float = 5.0) -> str:
    return f"""
[[watch]]
name = "{name}"
path = "/local/domain/{{domid}}/data/{name}"
run = ["{command}", "{name}"]
timeout = {timeout}
"""


def recorder(workdir: str, out: Path) -> str:
    """A command that appends ``rule domid path value identity token`` for every event."""
    return script(
        workdir,
        "record",
        f'echo "$1 $XS_DOMID $XS_PATH ${{XS_VALUE-<unset>}} $XS_IDENTITY $XS_TOKEN" >> {out}\n',
    )


# -- the whole life of an agent ------------------------------------------------------------------------------


async def test_agent_end_to_end(xenstored: Embedded, xs: actors.XenStore, workdir: str) -> None:
    out = Path(workdir) / "events"
    record = recorder(workdir, out)
    config = Path(workdir) / "agent.toml"
    config.write_text(base_config(xenstored.socket_path) + rule("ping", record))
    await actors.announce_domain(
        xs, 3, identity="uuid-3"
    )  # there before the agent: the first reconcile finds it
    async with notify_socket(workdir) as notes:
        env = clean_env(NOTIFY_SOCKET=notes.path, WATCHDOG_USEC="200000")
        async with run_agent(workdir, "--config", str(config), "--metrics", "127.0.0.1:0", env=env) as agent:
            with trio.fail_after(15):
                ready = notes.messages[await notes.wait("READY")]
                assert "1 domain" in ready["STATUS"]  # READY=1 after the reconcile found domain 3
                port = metrics_port(agent)

                # The toolstack announces a domain; the rule's command runs for its events.
                await trio.run_process(
                    [
                        *actors_cli(),
                        "domain",
                        "announce",
                        "5",
                        "--identity",
                        "uuid-5",
                        "--xenstore",
                        xenstored.socket_path,
                    ]
                )
                await xs.write("/local/domain/5/data/ping", b"hello")
                got = await poll(lambda: [e for e in lines(out) if e[1] == "5" and e[3] == "hello"])
                name, _, path, _, identity, token = got[0]
                assert (name, path, identity) == ("ping", "/local/domain/5/data/ping", "uuid-5")
                assert token.startswith("mtw/5/")
                await poll(lambda: [e for e in lines(out) if e[1] == "3"])  # domain 3's registration event

                samples = await scrape(port)
                domains = {dict(k)["state"]: v for k, v in samples["mtwatch_domains"].items()}
                assert domains["running"] == 2 and sum(domains.values()) == 2
                assert per_domain(samples, "mtwatch_events_total")[5] >= 1
                assert per_domain(samples, "mtwatch_handler_failures_total") == {
                    0: 0,
                    3: 0,
                    5: 0,
                }  # 0: the default actor
                assert samples["mtwatch_event_latency_seconds_count"][()] >= 2

                # SIGHUP with one rule more: RELOADING=1 (MONOTONIC_USEC=), then READY=1; no domain restarts.
                config.write_text(
                    base_config(xenstored.socket_path) + rule("ping", record) + rule("pong", record)
                )
                mark = len(notes.messages)
                agent.signal(signal.SIGHUP)
                reloading = await notes.wait("RELOADING", mark)
                assert int(notes.messages[reloading]["MONOTONIC_USEC"]) > 0
                await notes.wait("READY", reloading)
                await xs.write("/local/domain/5/data/pong", b"p1")
                await poll(
                    lambda: [
                        e for e in lines(out) if e[:4] == ["pong", "5", "/local/domain/5/data/pong", "p1"]
                    ]
                )
                assert len(agent.find("domain actor starting")) == 2  # domains 3 and 5, once each
                assert per_domain(await scrape(port), "mtwatch_restarts_total") == {3: 0, 5: 0}

                # An invalid file on reload: the running configuration stays, and says why.
                config.write_text(base_config(xenstored.socket_path) + '[registry]\nlifecycle = "xl"\n')
                mark = len(notes.messages)
                agent.signal(signal.SIGHUP)
                (failed,) = await agent.wait_log("reload failed, keeping the running configuration")
                assert "registry.lifecycle" in failed["message"]
                await notes.wait("READY", mark)
                await xs.write("/local/domain/3/data/pong", b"still")
                await poll(lambda: [e for e in lines(out) if e[:2] == ["pong", "3"] and e[3] == "still"])

                # Lines inside a domain's scope carry its domid.
                assert {r["extra"].get("domid") for r in agent.find("domain actor starting")} == {3, 5}
                assert len(notes.with_key("WATCHDOG")) >= 2

            # SIGTERM: STOPPING=1, a graceful stop, exit status 0.
            mark = len(notes.messages)
            agent.signal(signal.SIGTERM)
            with trio.fail_after(3 + 2):  # the stop deadline is 3 s
                assert await agent.wait_exit() == 0
            await notes.wait("STOPPING", mark)
            assert agent.find("SIGTERM received: stopping")


def actors_cli() -> list[str]:
    return [sys.executable, "-m", "actors.cli"]


async def test_a_hung_command_does_not_delay_other_domains(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    out = Path(workdir) / "events"
    pidfile = Path(workdir) / "hung.pid"
    command = script(
        workdir,
        "maybe-hang",
        f'case "$XS_DOMID" in 6) echo $$ > {pidfile}; exec sleep 60;; esac\n'
        f'echo "$1 $XS_DOMID $XS_PATH ${{XS_VALUE-<unset>}}" >> {out}\n',
    )
    config = Path(workdir) / "agent.toml"
    config.write_text(base_config(xenstored.socket_path, stop_deadline=2) + rule("ping", command, timeout=60))
    async with run_agent(workdir, "--config", str(config)) as agent:
        with trio.fail_after(15):
            await agent.wait_log("ready: ")
            await actors.announce_domain(xs, 6, identity="uuid-6")
            hung = int(await poll(lambda: pidfile.exists() and pidfile.read_text().strip()))
            for domid in (7, 8):
                await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            for n in range(3):
                for domid in (7, 8):
                    await xs.write(f"/local/domain/{domid}/data/ping", str(n))
            for domid in (7, 8):
                await poll(lambda d=domid: [e for e in lines(out) if e[1] == str(d) and e[3] == "2"])  # type: ignore[misc]
            assert _alive(hung)  # domain 6 is still in its handler
        agent.signal(signal.SIGTERM)
        with trio.fail_after(2 + 2):  # the stop deadline is 2 s
            assert await agent.wait_exit() == 0
        assert not _alive(hung)  # cancelled at the stop deadline: its process group was killed


async def test_sigterm_stops_within_the_deadline(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    command = script(workdir, "hang", "exec sleep 60\n")
    config = Path(workdir) / "agent.toml"
    config.write_text(base_config(xenstored.socket_path, stop_deadline=1) + rule("ping", command, timeout=60))
    await actors.announce_domain(xs, 4, identity="uuid-4")
    async with run_agent(workdir, "--config", str(config)) as agent:
        with trio.fail_after(15):
            await agent.wait_log("ping: started")  # the command runs (and hangs)
            start = trio.current_time()
            agent.signal(signal.SIGTERM)
            assert await agent.wait_exit() == 0
            elapsed = trio.current_time() - start
        assert elapsed < 1 + 1.0, f"stopping took {elapsed:.2f} s with a stop deadline of 1 s"


async def test_unreachable_xenstored_is_retried_until_it_appears(workdir: str) -> None:
    socket_path = os.path.join(workdir, "later.sock")
    out = Path(workdir) / "events"
    config = Path(workdir) / "agent.toml"
    config.write_text(base_config("/nowhere") + rule("ping", recorder(workdir, out)))
    async with (
        notify_socket(workdir) as notes,
        run_agent(
            workdir,
            "--config",
            str(config),
            "--xenstore",
            socket_path,
            env=clean_env(NOTIFY_SOCKET=notes.path),
        ) as agent,
    ):
        with trio.fail_after(20):
            await agent.wait_log("xenstored unreachable", count=2)  # it says so, and keeps trying
            assert not notes.with_key("READY")
            assert not agent.find("Traceback")
            assert agent.proc.returncode is None
            async with open_xenstored(socket_path), actors.connect(socket_path) as xs:
                await notes.wait("READY")
                await actors.announce_domain(xs, 9, identity="uuid-9")
                await xs.write("/local/domain/9/data/ping", b"there")
                await poll(lambda: [e for e in lines(out) if e[1] == "9" and e[3] == "there"])
                agent.signal(signal.SIGTERM)
                assert await agent.wait_exit() == 0


# -- bad input and bad surroundings ----------------------------------------------------------------------------


async def run_to_exit(workdir: str, *args: str) -> tuple[int, str]:
    with trio.fail_after(15):
        result = await trio.run_process(
            [*AGENT, "--control", os.path.join(workdir, "control"), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env(),
            cwd=REPO,
        )
    return result.returncode, result.stderr.decode()


async def test_config_errors_name_the_key_and_exit_78(workdir: str) -> None:
    config = Path(workdir) / "agent.toml"
    config.write_text('[[watch]]\npath = "/local/domain/{domid}/x"\nrun = ["/bin/true"]\ntimeout = -1\n')
    code, stderr = await run_to_exit(workdir, "--config", str(config))
    assert code == Exit.CONFIG == 78
    assert stderr.strip().splitlines() == [
        f"mtwatch agent: configuration error: {config}: watch[0].timeout: must be a positive number, not -1"
    ]
    config.write_text("[runtime]\nmailbox = 3\n")
    code, stderr = await run_to_exit(workdir, "--config", str(config))
    assert code == 78 and "runtime.mailbox: unknown key" in stderr and len(stderr.splitlines()) == 1
    code, stderr = await run_to_exit(workdir, "--metrics", "everywhere")
    assert code == 78 and "--metrics: 'everywhere' is not HOST:PORT" in stderr
    code, stderr = await run_to_exit(workdir, "--bogus")
    assert code == Exit.USAGE


async def test_metrics_port_in_use_exits_75(workdir: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await run_to_exit(workdir, "--metrics", f"127.0.0.1:{port}", "--xenstore", "/nowhere")
    assert code == Exit.TEMPFAIL == 75
    (line,) = stderr.strip().splitlines()
    assert f"metrics address 127.0.0.1:{port} is already in use" in line
    assert "Traceback" not in stderr


async def test_permission_denied_on_the_xenstored_socket_exits_77(
    monkeypatch: pytest.MonkeyPatch, workdir: str
) -> None:
    # As root no socket refuses us: make the transport refuse the way it does for an unprivileged agent.
    async def refused(path: str | None = None, *, xenbus: bool = False) -> Any:
        raise actors.XenStoreUnavailable(errno.EACCES, "not allowed to connect to xenstored at /run/xs")

    monkeypatch.setattr("actors.xs.client.open_transport", refused)
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="INFO")
    logger.enable("actors")
    try:
        with trio.fail_after(10):
            control = Overrides(control=os.path.join(workdir, "control"))
            code = await daemon.run_agent(parse_config({}, control), control)
    finally:
        logger.disable("actors")
        logger.remove(sink)
    assert code == Exit.NOPERM == 77
    assert "permission denied: not allowed to connect to xenstored at /run/xs" in seen


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def test_a_domain_that_will_not_stop_ends_the_agent_with_its_own_status(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    """A handler that swallows its cancellation cannot hold the agent up: past the stop deadline plus 2 s it
    exits with status 124, and the log names the domain (issue 13's stop that always ends)."""
    handlers = Path(workdir) / "handlers"
    handlers.mkdir()
    (handlers / "stubborn_mod.py").write_text(
        "import trio\n\n"
        "async def stubborn(ctx, event):\n"
        "    if event.initial:\n"
        "        return\n"
        "    print('stubborn: started', flush=True)\n"
        "    while True:\n"
        "        try:\n"
        "            await trio.sleep(1)\n"
        "        except trio.Cancelled:\n"
        "            pass  # what a handler must never do\n"
    )
    config = Path(workdir) / "agent.toml"
    config.write_text(
        base_config(xenstored.socket_path, stop_deadline=1)
        + f'\n[handlers]\npath = ["{handlers}"]\n'
        + '\n[[watch]]\nname = "stubborn"\npath = "/local/domain/{domid}/data/ping"\ncall = "stubborn_mod:stubborn"\n'
    )
    await actors.announce_domain(xs, 4, identity="uuid-4")
    async with run_agent(workdir, "--config", str(config)) as agent:
        with trio.fail_after(30):
            await agent.wait_log("ready: ")
            await xs.write("/local/domain/4/data/ping", "1")
            await agent.wait_log("stubborn: started")
            start = trio.current_time()
            agent.signal(signal.SIGTERM)
            assert await agent.wait_exit() == 124
            elapsed = trio.current_time() - start
        assert elapsed < 1 + 2 + 2, f"the agent took {elapsed:.2f} s to give up (deadline 1 s + 2 s)"
        overrun = agent.find("stop overran the deadline")
        assert overrun and "domain 4" in overrun[0]["message"], agent.tail()
