"""The status document at scale: its health and summary from the kept counts, its rows limited (trouble first,
then by domid) unless all are asked for, and its JSON encoded in slices exactly as ``json.dumps`` would."""

from __future__ import annotations

import json

import trio

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.agent.status import describe, encode, health, rows, totals


async def test_rows_are_limited_trouble_first_and_the_summary_counts_all(xs: actors.XenStore) -> None:
    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        if event.path.endswith("/fail"):
            raise RuntimeError("failing on purpose")

    policy = RestartPolicy(max_restarts=0, period=60)
    async with actors.open_runtime(xs, restart=policy, stop_deadline=1) as rt:
        rt.watch("/local/domain/{domid}/data", handler)
        with trio.fail_after(30):
            for domid in range(1, 71):
                await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
            for domid in range(1, 71):
                await rt.wait_domain(domid, State.RUNNING)
            for domid in (64, 9):
                await xs.write(f"/local/domain/{domid}/data/fail", "1")
                await rt.wait_domain(domid, State.FAILED)
        code, reason = health(rt)
        assert code == 1 and reason.startswith(
            "degraded: 2 failed (9, 64); 70 domains (68 running, 2 failed)"
        )

        doc = await describe(rt, started_at=0.0, xenstore=xs.name)  # the default: 50 rows
        assert [d["domid"] for d in doc["domains"][:3]] == [9, 64, 1]
        assert len(doc["domains"]) == 50
        assert doc["summary"] == {
            "domains": 70,
            "states": {"running": 68, "failed": 2},
            "throttled": 0,
            "shown": 50,
        }
        assert totals(doc).startswith("70 domains (2 failed, 68 running); 50 shown (trouble first)")
        assert [domid for domid, _ in rows(doc)][:2] == [9, 64]
        expected = json.loads(json.dumps(doc, default=str))
        assert json.loads(await encode(doc)) == expected

        everything = await describe(rt, started_at=0.0, xenstore=xs.name, limit=None)
        assert sorted(d["domid"] for d in everything["domains"]) == list(range(1, 71))
        assert "shown" not in totals(everything)
        expected = json.loads(json.dumps(everything, default=str))
        encoded = await encode(everything)
        assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
        assert json.loads(encoded) == expected
        big = {**expected, "domains": expected["domains"] * 9}  # past the size encoded in slices
        expected = json.loads(json.dumps(big))
        assert json.loads(await encode(big)) == expected
        assert big["domains"] == []  # consumed as encoded

        none = await describe(rt, started_at=0.0, xenstore=xs.name, limit=0)
        assert none["domains"] == [] and none["summary"]["domains"] == 70
