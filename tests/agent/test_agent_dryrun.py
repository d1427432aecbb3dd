"""The agent's dry runs, as an operator runs them: ``mtwatch agent --config FILE --check`` on valid and broken
files, and ``mtwatch rules test`` running a file's rules (commands and handlers) once in a sandbox."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def mtwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


VALID = """\
    [registry]
    lifecycle = "auto"

    [[watch]]
    name = "ping"
    path = "/local/domain/{domid}/data/ping"
    run = ["/bin/sh", "-c", "echo value=$XS_VALUE domid=$XS_DOMID initial=${XS_INITIAL:-no} id=$XS_IDENTITY; echo to-stderr >&2", "{path}"]
    timeout = 5

    [[watch]]
    path = "/local/domain/0/backend/vif"
    route = "component:6"
    call = "dryrun_handlers:on_vif"
    initial = false

    [handlers]
    path = ["HANDLERS"]
"""

HANDLERS = """\
    async def on_vif(ctx, event):
        value = await ctx.xs.read(event.path)
        ctx.log.info("vif of domain {} is {}", ctx.domid, value.decode())
        if value == b"boom":
            raise RuntimeError("the handler's own bug")
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    write(handlers, "dryrun_handlers.py", HANDLERS)
    return write(tmp_path, "agent.toml", VALID.replace("HANDLERS", str(handlers)))


def test_check_prints_the_rules_of_a_valid_file(config: Path) -> None:
    result = mtwatch("agent", "--config", str(config), "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config}: valid"
    assert "lifecycle auto (root /local/domain/0/mtwatch)" in lines[1]
    assert lines[2] == "2 rules:"
    assert lines[3].startswith("  watch[0] ping: /local/domain/{domid}/data/ping -> run /bin/sh -c ")
    assert lines[3].endswith("(per domain, timeout 5 s)")
    assert lines[4] == (
        "  watch[1] /local/domain/0/backend/vif -> call dryrun_handlers:on_vif"
        " (global, routed component:6, timeout 5 s, initial = false)"
    )
    assert result.stderr == ""


def test_check_names_every_error_with_its_line(tmp_path: Path) -> None:
    broken = write(
        tmp_path,
        "broken.toml",
        """\
        [runtime]
        mailbox_size = 0
        stop_deadline = "soon"
        colour = "blue"

        [[watch]]
        path = "/local/domain/{domid}/data/ping"
        run = "echo hi"
        timeout = -1

        [[watch]]
        path = "/x/{name}"
        call = "no_such_module_here:fn"
        """,
    )
    result = mtwatch("agent", "--config", str(broken), "--check")
    assert result.returncode == 78
    assert result.stdout == ""
    prefix = f"mtwatch agent: configuration error: {broken}"
    assert result.stderr.splitlines() == [
        f"{prefix}:2: runtime.mailbox_size: must be at least 1, not 0",
        f"{prefix}:3: runtime.stop_deadline: must be a number of seconds, not 'soon'",
        f"{prefix}:4: runtime.colour: unknown key",
        f"{prefix}:8: watch[0].run: must be a list of strings (argv, no shell), like ['echo hi']",
        f"{prefix}:9: watch[0].timeout: must be a positive number, not -1",
        f"{prefix}:12: watch[1].path: '/x/{{name}}': only {{domid}} may be filled in, not {{name}}",
        f"{prefix}:13: watch[1].call: cannot import 'no_such_module_here': No module named 'no_such_module_here'",
        "mtwatch agent: 7 errors",
    ]


def test_check_of_a_file_that_is_not_toml(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.toml", "[runtime\nmailbox_size = 1\n")
    result = mtwatch("agent", "--config", str(broken), "--check")
    assert result.returncode == 78
    assert result.stderr.startswith(f"mtwatch agent: configuration error: {broken}:1: invalid TOML: ")
    assert mtwatch("agent", "--config", str(tmp_path / "missing.toml"), "--check").returncode == 78


def test_rules_test_runs_a_command_once_with_the_agents_environment(config: Path) -> None:
    result = mtwatch(
        "rules",
        "test",
        "--config",
        str(config),
        "--domain",
        "5",
        "--write",
        "/local/domain/5/data/ping=hello",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "wrote /local/domain/5/data/ping = 'hello' as guest 5" in out
    uuid = out.split("uuid ")[1].split(")")[0]
    assert "  event: /local/domain/5/data/ping (domain 5)" in out
    assert "  ran: /bin/sh -c 'echo value=$XS_VALUE" in out and "/local/domain/5/data/ping\n" in out  # {path}
    # once, for the write: not for the registration (XS_INITIAL), with the domain's identity
    assert out.count("  stdout: ") == 1
    assert f"  stdout: value=hello domid=5 initial=no id={uuid}" in out
    assert "  stderr: to-stderr" in out
    assert "  exit status 0" in out
    assert out.splitlines()[-1] == "1 rule run, 0 failed"


def test_rules_test_reports_a_failing_command(tmp_path: Path) -> None:
    failing = write(
        tmp_path,
        "failing.toml",
        """\
        [[watch]]
        path = "/local/domain/{domid}/data/ping"
        run = ["/bin/sh", "-c", "echo trying; exit 3"]
        initial = false
        """,
    )
    result = mtwatch(
        "rules", "test", "--config", str(failing), "--domain", "7", "--write", "/local/domain/7/data/ping=1"
    )
    assert result.returncode == 1
    assert "  stdout: trying" in result.stdout
    assert "  exit status 3: sh (pid " in result.stdout and "exited with status 3" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 rule run, 1 failed"


def test_rules_test_runs_a_handler_for_a_routed_backend_write(config: Path) -> None:
    result = mtwatch(
        "rules", "test", "--config", str(config), "--domain", "5",
        "--write", "/local/domain/0/backend/vif/5/0/state=4",
        "--write", "/local/domain/0/backend/vif/5/1/state=boom",
    )  # fmt: skip
    out = result.stdout
    assert "wrote /local/domain/0/backend/vif/5/0/state = '4' as dom0" in out
    assert "  log INFO: vif of domain 5 is 4" in out
    assert "  failed: RuntimeError: the handler's own bug" in out
    assert out.splitlines()[-1] == "2 rule runs, 1 failed"
    assert result.returncode == 1


def test_rules_test_with_nothing_matching_or_a_refused_write(config: Path) -> None:
    result = mtwatch(
        "rules", "test", "--config", str(config), "--domain", "5", "--write", "/local/domain/5/data/other=1"
    )
    assert result.returncode == 1
    assert "0 rule runs, 0 failed" in result.stdout
    assert "no rule ran for these writes" in result.stderr
    refused = mtwatch(
        "rules", "test", "--config", str(config), "--domain", "5", "--write", "/local/domain/5/name=x"
    )
    assert refused.returncode == 1
    assert "WRITE on '/local/domain/5/name': EACCES" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "0", "--write", "/a=1"], "out of range"),
        (["--domain", "5", "--write", "data=1"], "expected /ABSOLUTE/PATH=VALUE"),
        (["--domain", "5"], "give at least one --write"),
    ],
)
def test_rules_test_usage_errors(config: Path, args: list[str], message: str) -> None:
    result = mtwatch("rules", "test", "--config", str(config), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_rules_test_of_a_broken_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.toml", "[[watch]]\npath = '/local/domain/{domid}/x'\n")
    result = mtwatch(
        "rules", "test", "--config", str(broken), "--domain", "5", "--write", "/local/domain/5/x=1"
    )
    assert result.returncode == 78
    assert f"{broken}:1: watch[0]: needs exactly one of run" in result.stderr


def test_rules_test_runs_a_process_rule_in_a_worker(tmp_path: Path) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    write(
        handlers,
        "dryrun_workers.py",
        """\
        import os

        def parse(ctx, event):
            ctx.log.info("parsed {} in a worker", ctx.xs.read(event.path).decode())
            if ctx.xs.read(event.path) == b"crash":
                os._exit(3)
        """,
    )
    rules = write(
        tmp_path,
        "agent.toml",
        f"""\
        [[watch]]
        path = "/local/domain/{{domid}}/data/blob"
        call = "dryrun_workers:parse"
        isolation = "process"
        initial = false

        [handlers]
        path = ["{handlers}"]
        """,
    )
    result = mtwatch(
        "rules", "test", "--config", str(rules), "--domain", "5",
        "--write", "/local/domain/5/data/blob/1=abc",
        "--write", "/local/domain/5/data/blob/2=crash",
    )  # fmt: skip
    out = result.stdout
    assert "  log INFO: parsed abc in a worker" in out, out + result.stderr
    assert "WorkerDied" in out and "exit status 3" in out
    assert out.splitlines()[-1] == "2 rule runs, 1 failed"
