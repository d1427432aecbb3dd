"""The control socket end to end: a real agent process, ``mtwatch status``/``domains``/``reset`` as real
processes over it, status exit codes with xenstored (a real ``mtwatch xenstored`` process) killed and started
again, and ``/healthz`` over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from test_agent_daemon import REPO, clean_env, poll, run_agent, script

import actors
from actors.agent.control import ControlInUse, ask, bind_control, serve_control
from harness.servers import Embedded

CLI = [sys.executable, "-m", "actors.cli"]
T = TypeVar("T")


async def ask_async(path: str, request: dict[str, object]) -> dict[str, Any]:
    return await trio.to_thread.run_sync(ask, path, request, abandon_on_cancel=True)


async def eventually(check: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    """Ask ``check()`` again until ``ok`` says yes (another process is getting there)."""
    while True:
        value = await check()
        if ok(value):
            return value
        await trio.sleep(0.05)


async def cli(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(20):
        result = await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False, env=clean_env(), cwd=REPO
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def config(workdir: str, socket_path: str, command: str) -> str:
    path = Path(workdir) / "agent.toml"
    path.write_text(
        f"""
[xenstore]
socket = "{socket_path}"
[runtime]
stop_deadline = 2
[restart]
max_restarts = 0
backoff_initial = 0
backoff_max = 0
[log]
format = "json"
level = "DEBUG"
[[watch]]
name = "check"
path = "/local/domain/{{domid}}/data/check"
run = ["{command}"]
"""
    )
    return str(path)


@asynccontextmanager
async def xenstored_process(path: str) -> AsyncIterator[trio.Process]:
    proc = await trio.lowlevel.open_process([*CLI, "xenstored", "--socket", path], stderr=subprocess.DEVNULL)
    try:
        await poll(lambda: os.path.exists(path))
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_reset_of_a_failed_domain_through_the_control_socket(
    xenstored: object, xs: actors.XenStore, workdir: str
) -> None:
    flag = Path(workdir) / "fixed"
    command = script(workdir, "check", f"[ -e {flag} ] || {{ echo broken >&2; exit 3; }}\n")
    socket_path = os.path.join(workdir, "socket")
    control = os.path.join(workdir, "control")
    async with run_agent(workdir, "--config", config(workdir, socket_path, command)) as agent:
        with trio.fail_after(30):
            await agent.wait_log("ready: ")
            assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
            await actors.announce_domain(xs, 5, identity="uuid-5")
            await actors.announce_domain(xs, 6, identity="uuid-6")
            await agent.wait_log("failed", count=1)
            await poll(lambda: len(agent.find("gave up")) >= 2 or len(agent.find("failed")) >= 2)

            async def states() -> dict[int, str]:
                doc = await ask_async(control, {"op": "status"})
                return {d["domid"]: d["state"] for d in doc["domains"]}

            await eventually(states, lambda s: s == {5: "failed", 6: "failed"})
            code, out, _ = await cli("status", "--control", control)
            assert code == 1
            assert "health: degraded: 2 failed (5, 6)" in out
            assert "exited with status 3" in out  # the last error, in the failed rows' note
            code, out, _ = await cli("domains", "--control", control)
            assert code == 0 and out.splitlines()[0].split()[:3] == ["DOMID", "NAME", "STATE"]

            flag.touch()
            code, out, _ = await cli("reset", "5", "--control", control)
            assert (code, out.strip()) == (0, "reset: 5")
            await eventually(states, lambda s: s[5] == "running")
            assert (await states())[6] == "failed"
            code, _, err = await cli("reset", "5", "--control", control)
            assert code == 1 and "domain 5 is running, not failed" in err
            code, _, err = await cli("reset", "77", "--control", control)
            assert code == 1 and "no domain 77" in err
            code, out, _ = await cli("reset", "--all-failed", "--control", control)
            assert (code, out.strip()) == (0, "reset: 6")
            await eventually(states, lambda s: s == {5: "running", 6: "running"})
            code, out, _ = await cli("status", "--json", "--control", control)
            doc = json.loads(out)
            assert code == 0 and doc["health"]["code"] == 0
            assert doc["connection"]["connected"] is True
            assert agent.find("control: reset of domain 5")

        agent.signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await agent.wait_exit() == 0
    assert not await trio.Path(control).exists()  # the agent removes the socket it made
    code, _, err = await cli("status", "--control", control)
    assert code == 3 and f"no agent at {control}" in err and "Traceback" not in err


async def test_status_and_healthz_follow_xenstored(workdir: str) -> None:
    socket_path = os.path.join(workdir, "xs.sock")
    control = os.path.join(workdir, "control")
    command = script(workdir, "check", "true\n")
    args = ("--config", config(workdir, socket_path, command), "--metrics", "127.0.0.1:0")
    async with run_agent(workdir, *args) as agent:
        with trio.fail_after(60):
            await agent.wait_log("control socket")
            code, out, _ = await cli("status", "--control", control)
            port = int(agent.find("metrics on http://")[0]["message"].rsplit(":", 1)[1].split("/")[0])
            assert code == 2 and "NOT CONNECTED" in out  # no xenstored yet
            assert (await healthz(port))[0] == 503
            async with xenstored_process(socket_path) as daemon:
                await eventually(lambda: health(control), lambda code: code == 0)
                assert (await cli("status", "--control", control))[0] == 0
                status, body = await healthz(port)
                assert status == 200 and body.startswith("healthy: ") and body.count("\n") == 1
                daemon.kill()  # xenstored gone: not connected, 2, and 503
                await daemon.wait()
                await eventually(lambda: health(control), lambda code: code == 2)
                result = await cli("status", "--control", control)
                assert result[0] == 2 and "not connected to xenstored" in result[1]
                assert (await healthz(port))[0] == 503
            await trio.Path(socket_path).unlink()  # what the killed daemon left (a new one refuses it)
            async with xenstored_process(socket_path):  # back: healthy again, one reconnect more
                await eventually(lambda: health(control), lambda code: code == 0)
                result = await cli("status", "--json", "--control", control)
                assert result[0] == 0 and json.loads(result[1])["connection"]["reconnects"] >= 1
                assert (await healthz(port))[0] == 200


async def health(control: str) -> int:
    doc = await ask_async(control, {"op": "status"})
    return int(doc["health"]["code"])


async def healthz(port: int) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_a_second_agent_on_the_same_control_socket_is_refused(workdir: str) -> None:
    path = os.path.join(workdir, "control")
    sock, _ = bind_control(path)

    async def status(request: dict[str, object]) -> dict[str, object]:
        return {"ok": True, "echo": request}

    with sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, sock, status)
            answer = await ask_async(path, {"op": "x", "n": 1})
            assert answer == {"ok": True, "echo": {"op": "x", "n": 1}}
            with socket.socket(socket.AF_UNIX) as raw:  # bad input: an error line each, the connection kept
                raw.connect(path)
                raw.sendall(b"not json\n[1]\n")
                replies = b""
                while replies.count(b"\n") < 2:
                    replies += await trio.to_thread.run_sync(raw.recv, 4096)
                first, second = (json.loads(line) for line in replies.splitlines())
                assert first["ok"] is False and "not JSON" in first["error"]
                assert second["ok"] is False and '"op"' in second["error"]
            with pytest.raises(ControlInUse):  # a live agent answers: refused
                await trio.to_thread.run_sync(bind_control, path)
            nursery.cancel_scope.cancel()
    os.unlink(path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody answers on: replaced
    sock, _ = bind_control(path)
    sock.close()


async def test_sighup_with_changed_rules_resets_the_failed_domains(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    broken = script(workdir, "broken", "exit 3\n")
    control = os.path.join(workdir, "control")
    config_path = config(workdir, xenstored.socket_path, broken)

    async def states() -> dict[int, str]:
        doc = await ask_async(control, {"op": "status"})
        return {d["domid"]: d["state"] for d in doc["domains"]}

    async with run_agent(workdir, "--config", config_path) as agent:
        with trio.fail_after(30):
            await agent.wait_log("ready: ")
            await actors.announce_domain(xs, 5, identity="uuid-5")
            await eventually(states, lambda s: s == {5: "failed"})
            fixed = script(workdir, "fixed", "true\n")
            text = await trio.Path(config_path).read_text()
            await trio.Path(config_path).write_text(text.replace(broken, fixed))
            agent.signal(signal.SIGHUP)
            await agent.wait_log("reload done")
            await eventually(states, lambda s: s == {5: "running"})
            assert agent.find("control: reset of domain 5 (was failed)")


async def test_events_refused_for_a_failed_domain_are_counted_and_logged_once(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    """A global watch routed to a failed domain: its events are refused, counted by reason in the status
    document (and so in mtwatch_events_dropped_total), and logged once for the state, not once per event."""
    command = script(workdir, "check", "echo broken >&2; exit 3\n")
    path = config(workdir, xenstored.socket_path, command)
    rule = '\n[[watch]]\nname = "vif"\npath = "/local/domain/0/backend/vif"\nroute = "component:6"\nrun = ["true"]\n'
    await trio.Path(path).write_text(await trio.Path(path).read_text() + rule)
    control = os.path.join(workdir, "control")
    async with run_agent(workdir, "--config", path, "--control", control) as agent:
        with trio.fail_after(60):
            await agent.wait_log("ready: ")
            await actors.announce_domain(xs, 6, identity="uuid-6")

            async def state_of_6() -> dict[str, object]:
                doc = await ask_async(control, {"op": "status"})
                return next((d for d in doc["domains"] if d["domid"] == 6), {})

            await eventually(state_of_6, lambda d: d.get("state") == "failed")
            for n in range(5):
                await xs.write(f"/local/domain/0/backend/vif/6/0/state{n}", "4")
            await eventually(state_of_6, lambda d: d.get("dropped_by_reason", {}).get("failed", 0) >= 5)
            await agent.wait_log("domain 6 is failed: its events are dropped")
            assert len(agent.find("domain 6 is failed: its events are dropped")) == 1
