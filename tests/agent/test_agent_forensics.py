"""The operator's view through a running agent: a guest near its watch quota is in ``/metrics``, in
``mtwatch status`` (one line, exit 1: degraded) and in ``status --json``; a hung handler's await stack comes
out of ``mtwatch stack DOMID`` and, once it has been busy past half its timeout, out of ``status --json``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio
from test_agent_daemon import REPO, clean_env, metrics_port, run_agent, scrape

import actors
from actors.xenstored.testing import RawClient
from harness.servers import Embedded

CLI = [sys.executable, "-m", "actors.cli"]

HANDLERS = """
import trio


async def wait_for_the_console(ctx):
    await trio.sleep_forever()


async def hang(ctx, event):
    await wait_for_the_console(ctx)
"""


def agent_config(workdir: str, socket_path: str) -> str:
    Path(workdir, "ophandlers.py").write_text(HANDLERS)
    return f"""
[xenstore]
socket = "{socket_path}"

[runtime]
stop_deadline = 3.0
quota_interval = 0.2
quota_threshold = 0.5

[log]
format = "json"
level = "DEBUG"

[handlers]
path = ["{workdir}"]

[[watch]]
name = "hang"
path = "/local/domain/{{domid}}/data/hang"
call = "ophandlers:hang"
timeout = 6.0
initial = false
"""


async def cli(workdir: str, *args: str) -> tuple[int, str, str]:
    with trio.fail_after(20):
        result = await trio.run_process(
            [*CLI, *args, "--control", os.path.join(workdir, "control")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env(),
            cwd=REPO,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_quota_and_stacks_through_the_agent(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    config = Path(workdir) / "agent.toml"
    config.write_text(agent_config(workdir, xenstored.socket_path))
    for domid in (4, 5):
        await xs.mkdir(f"/local/domain/{domid}")
        await xs.set_perms(f"/local/domain/{domid}", [f"n{domid}"])
        await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
    await xs.write("/local/domain/5/name", "web-5")
    async with (
        run_agent(workdir, "--config", str(config), "--metrics", "127.0.0.1:0") as agent,
        xenstored.guest(5) as stream,
    ):
        g = RawClient(stream)
        for i in range(70):  # 70 of 128 watches: above the 50% threshold
            await g.watch(f"/local/domain/5/w{i}", f"t{i}")
        with trio.fail_after(20):
            await agent.wait_log("domain 5 uses 55% of its XenStore watches quota (70/128; threshold 50%)")
            samples = await scrape(metrics_port(agent))
            assert samples["mtwatch_xenstore_quota_used"][(("domid", "5"), ("resource", "watches"))] == 70
            assert samples["mtwatch_xenstore_quota_limit"][(("domid", "5"), ("resource", "watches"))] == 128
            assert samples["mtwatch_xenstore_quota_limit"][(("domid", "4"), ("resource", "nodes"))] == 1000
            assert samples["mtwatch_xenstore_quota_state"][(("state", "cxenstored"),)] == 1

            code, out, _ = await cli(workdir, "status")
            assert code == 1, out
            assert "degraded: 1 above a quota (5)" in out
            assert "quota: domain 5 (web-5) uses 55% of its watches quota (70/128; threshold 50%)" in out
            code, out, _ = await cli(workdir, "status", "--json")
            doc = json.loads(out)
            assert doc["quota"]["above"] == [
                {"domid": 5, "resource": "watches", "used": 70, "limit": 128, "share": 0.5469}
            ]
            assert {d["domid"]: d["quota"] for d in doc["domains"]}[5] == ["watches", 0.5469]

            # A hung handler: its stack, on demand and (past half its 6 s timeout) in status --json.
            await xs.write("/local/domain/4/data/hang", "1")
            code, out, err = await cli(workdir, "stack", "4")
            assert code == 0, err
            first, *rest = out.splitlines()
            assert first == "domain 4: running"
            assert rest[0].startswith(
                "task 'mtwatch-4': handler of 'hang' for /local/domain/4/data/hang, for "
            )
            assert rest[0].endswith("(timeout 6 s)")
            assert "in wait_for_the_console" in out and "await trio.sleep_forever()" in out
            stacks: list[dict[str, object]] = []
            while not stacks:
                await trio.sleep(0.2)
                stacks = json.loads((await cli(workdir, "status", "--json"))[1])["stacks"]
            (busy,) = stacks
            assert busy["domid"] == 4 and busy["busy"] > 3  # type: ignore[operator]
            assert "wait_for_the_console" in busy["tasks"][0]["stack"]  # type: ignore[index]

            code, _, err = await cli(workdir, "stack", "9")
            assert code == 1 and "domain 9 has no actor (not announced, or gone)" in err


def test_the_quota_words_of_status_and_top() -> None:
    from actors.agent.quotas import quota_labels, quota_lines
    from actors.agent.status import rows

    doc = {
        "quota": {
            "state": "cxenstored",
            "why": "",
            "threshold": 0.9,
            "above": [
                {"domid": 5, "resource": "transactions", "used": 11, "limit": 10, "share": 1.1},
            ],
        },
        "domains": [
            {
                "domid": 5,
                "name": "web-5",
                "state": "running",
                "mailbox": 0,
                "handled": 3,
                "dropped": 0,
                "failures": 0,
                "restarts": 0,
                "quota": ["transactions", 1.1],
            },
            {
                "domid": 6,
                "name": None,
                "state": "running",
                "mailbox": 0,
                "handled": 1,
                "dropped": 0,
                "failures": 0,
                "restarts": 0,
                "quota": None,
            },
        ],
    }
    assert quota_lines(doc) == [
        "quota: domain 5 (web-5) uses 110% of its transactions quota (11/10; threshold 90%)"
    ]
    assert quota_labels(doc) == {5: "quota 110% transactions"}
    table = dict(rows(doc, labels=quota_labels(doc)))
    assert table[5].endswith("quota 110% transactions") and "quota" not in table[6]
    unsupported = {"quota": {"state": "unsupported", "why": "CONTROL quota answered ENOSYS"}, "domains": []}
    assert quota_lines(unsupported) == ["quota: xenstored reports none (CONTROL quota answered ENOSYS)"]
