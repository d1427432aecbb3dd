"""``isolation="process"``: handlers in killable worker processes, over real sockets on the embedded xenstored.

Each fault is real (a spin, an allocation past the cap, a segfault through ctypes, ``os._exit``, a spin that
ignores SIGTERM); each costs only its domain, while a healthy domain beside it keeps being served and is
charged nothing. Worker processes run in real time, so these tests run on trio's real clock; nothing asserts a
duration (waits are bounded by ``fail_after`` only so that a broken runtime fails instead of hanging)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from loguru import logger

import actors
from actors import State
from actors.runtime.domain.calls import HandlerTimeout
from actors.runtime.workers.pool import WorkerDied, WorkerMemoryExceeded
from harness import process_handlers as ph
from harness.servers import Embedded

pytestmark = pytest.mark.slow

WAIT = 60  # seconds: a bound for a broken runtime, not a measurement


def forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined,no-any-return]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@asynccontextmanager
async def runtime(xs: actors.XenStore, **overrides: Any) -> AsyncIterator[actors.Runtime]:
    overrides.setdefault("restart", actors.RestartPolicy(max_restarts=1000, backoff_initial=0.01))
    async with actors.open_runtime(xs, block_threshold=None, **overrides) as rt:
        yield rt


async def start(xs: actors.XenStore, rt: actors.Runtime, *domids: int) -> None:
    for domid in domids:
        await xs.write(f"/local/domain/{domid}/name", f"guest{domid}")
        await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
    for domid in domids:
        await rt.wait_domain(domid, State.RUNNING)


async def seen(xs: actors.XenStore, domid: int) -> list[str]:
    """The values domain ``domid``'s ``record`` handler saw, in order."""
    path = f"/local/domain/{domid}/seen"
    if not await xs.exists(path):
        return []
    return [entry.split(":")[0] for entry in (await xs.read(path)).decode().rstrip(",").split(",")]


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 (worker processes run in real time: polled)
            await trio.sleep(0.01)


async def test_a_process_handler_gets_a_picklable_context_its_own_connection_and_logs_with_its_domid(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    lines: list[dict[str, Any]] = []
    sink = logger.add(lambda m: lines.append(dict(m.record["extra"], message=m.record["message"])))
    logger.enable("actors")
    try:
        async with runtime(xs) as rt:
            rt.watch("/local/domain/{domid}/data", ph.record, isolation="process", timeout=10)
            rt.on_message(ph.describe, isolation="process", timeout=10)
            assert not rt._pool.started and rt.workers.alive == 0  # nothing started that is not used
            await start(xs, rt, 5)
            answer = await rt.ask(5, {"n": 1}, timeout=WAIT)
            assert answer["domid"] == 5 and answer["name"] == "guest5"
            assert answer["identity"] == b"uuid-5" and answer["template"] is None
            assert answer["message"] == {"n": 1} and answer["pid"] != os.getpid()
            await xs.write("/local/domain/5/data", "a")
            await until(lambda: rt.domains[5].handled >= 3)  # the initial event, the message, the write
            seen = (await xs.read("/local/domain/5/seen")).decode()
            assert seen == f"a:{answer['pid']},"  # written by the worker on its own connection
            assert rt.domains[5].failures == 0
            pids = set(rt._pool.pids)
            assert pids == {answer["pid"]}
    finally:
        logger.remove(sink)
        logger.disable("actors")
    assert [line for line in lines if line["message"] == f"worker {answer['pid']} got {{'n': 1}}"] == [
        {"domid": 5, "pid": answer["pid"], "message": f"worker {answer['pid']} got {{'n': 1}}"}
    ]
    assert not any(alive(pid) for pid in pids)  # leaving ended every worker
    assert forkserver_pid() is None  # and the forkserver they were forked from


@pytest.mark.parametrize(
    ("handler", "error", "reason"),
    [
        (ph.spin, HandlerTimeout, "timeout"),
        (ph.spin_ignoring_sigterm, HandlerTimeout, "timeout"),
        (ph.allocate, WorkerMemoryExceeded, "memory"),
        (ph.segfault, WorkerDied, "SIGSEGV"),
        (ph.exit3, WorkerDied, "exit status 3"),
        (ph.killed, WorkerDied, "SIGKILL"),
    ],
    ids=["spin", "ignores-sigterm", "allocate", "segfault", "exit", "oom-killed"],
)
async def test_a_fault_in_a_worker_costs_only_its_domain(
    xenstored: Embedded,
    xs: actors.XenStore,
    handler: Callable[..., None],
    error: type[Exception],
    reason: str,
) -> None:
    async with runtime(xs, worker_processes=2, worker_memory_limit=256 << 20, worker_grace=0.1) as rt:
        rt.watch("/local/domain/{domid}/data", ph.record, isolation="process", timeout=10)
        rt.watch("/local/domain/{domid}/bad", handler, isolation="process", timeout=1, name="bad")
        await start(xs, rt, 1, 2)
        await until(lambda: rt.domains[1].handled >= 2 and rt.domains[2].handled >= 2)
        await xs.write("/local/domain/2/bad", "go")
        for n in range(5):  # the healthy domain is served meanwhile
            await xs.write(f"/local/domain/1/data/{n}", str(n))
            await trio.sleep(0.1)
        await until(lambda: rt.domains[2].failures >= 1)
        snapshot = rt.domains[2]
        assert isinstance(snapshot.last_exception, error), snapshot.last_error
        if isinstance(snapshot.last_exception, WorkerDied):
            assert snapshot.last_exception.reason == reason
        with trio.fail_after(WAIT):
            while len(handled := await seen(xs, 1)) < 5:  # noqa: ASYNC110 (polled, as above)
                await trio.sleep(0.05)
        assert handled == ["0", "1", "2", "3", "4"], await xs.read("/local/domain/1/seen")
        assert rt.domains[1].failures == 0 and rt.domains[1].state is State.RUNNING
        workers = rt.workers
        assert workers.deaths == {(2, reason): 1}
        assert workers.replaced >= 1
        await rt.wait_domain(2, State.RUNNING)  # restarted by the supervisor, like any failure
        pids = set(rt._pool.pids)
    assert not any(alive(pid) for pid in pids)


async def test_two_deep_mailboxes_share_one_worker_in_turns_each_in_order(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    async with runtime(xs, worker_processes=1) as rt:
        rt.watch("/local/domain/{domid}/queue", ph.in_turn, isolation="process", timeout=10)
        await start(xs, rt, 1, 2)
        await until(lambda: rt.domains[1].handled >= 1 and rt.domains[2].handled >= 1)
        pipe = xs.pipeline()
        for n in range(50):  # 50 events queued for each domain, faster than one worker takes them
            for domid in (1, 2):
                pipe.write(f"/local/domain/{domid}/queue/{n:02}", str(n))
        await pipe.send()
        await until(lambda: rt.domains[1].handled >= 51 and rt.domains[2].handled >= 51)
        assert rt.domains[1].failures == rt.domains[2].failures == 0
        turns = (await xs.read("/local/domain/0/turns")).decode().rstrip(",").split(",")
        pids = set(rt._pool.pids)
    assert len(pids) == 1  # one worker served both
    for domid in (1, 2):  # each domain's events one at a time, in order
        assert [t.split(":")[1] for t in turns if t.startswith(f"{domid}:")] == [f"{n:02}" for n in range(50)]
    # Fair: neither domain ever ran more than one call ahead of the other while both had events waiting.
    lead = 0
    for turn in turns:
        lead += 1 if turn.startswith("1:") else -1
        assert abs(lead) <= 2, turns


async def test_a_process_message_handler_answers_and_is_killed_past_its_timeout(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    async with runtime(xs, worker_grace=0.1) as rt:
        rt.on_message(ph.spin_message, isolation="process", timeout=0.5)
        await start(xs, rt, 3)
        with pytest.raises(HandlerTimeout):
            await rt.ask(3, "spin", timeout=WAIT)
        await until(lambda: rt.domains[3].failures == 1)
        assert rt.workers.deaths == {(3, "timeout"): 1}


async def test_a_process_handler_must_be_found_by_its_import_path(xs: actors.XenStore) -> None:
    async with runtime(xs) as rt:
        with pytest.raises(TypeError, match="import path"):
            rt.watch("/local/domain/{domid}/x", lambda ctx, event: None, isolation="process")

        async def inline(ctx: actors.DomainContext, event: actors.WatchEvent) -> None:
            pass

        with pytest.raises(TypeError, match="not async"):
            rt.watch("/local/domain/{domid}/x", inline, isolation="process")
        with pytest.raises(ValueError, match="isolation must be one of"):
            rt.watch("/local/domain/{domid}/x", ph.noop, isolation="fork")
        with pytest.raises(ValueError, match="needs an async def"):
            rt.watch("/local/domain/{domid}/x", ph.noop, isolation="inline")
        assert not rt._pool.started


async def test_renewed_workers_replace_the_old_ones_once_their_calls_end(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    async with runtime(xs) as rt:
        rt.on_message(ph.describe, isolation="process", timeout=10)
        await start(xs, rt, 4)
        first = (await rt.ask(4, "one", timeout=WAIT))["pid"]
        rt.renew_workers()
        second = (await rt.ask(4, "two", timeout=WAIT))["pid"]
        assert second != first  # a fresh worker, which imported the handler's module anew
        await until(lambda: not alive(first))  # the old one ended, its call done
        assert rt.domains[4].failures == 0
    assert not alive(second)


async def test_one_domain_keeps_its_order_with_workers_to_spare_and_a_global_watch_runs_in_a_worker_too(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    async with runtime(xs, worker_processes=2) as rt:
        rt.watch("/local/domain/{domid}/queue", ph.in_turn, isolation="process", timeout=10)
        rt.watch("/local/domain/0/global", ph.record, isolation="process", timeout=10)
        await start(xs, rt, 1)
        pipe = xs.pipeline()
        for n in range(30):
            pipe.write(f"/local/domain/1/queue/{n:02}", str(n))
        await pipe.send()
        await xs.write("/local/domain/0/global", "g")
        await until(lambda: rt.domains[1].handled >= 31 and rt.default_handled >= 2)
        turns = (await xs.read("/local/domain/0/turns")).decode().rstrip(",").split(",")
        assert turns == [f"1:{n:02}" for n in range(30)]  # never two of its events at once, never reordered
        # The default actor's (domid 0) handler ran in a worker (its registration event may come after the write).
        assert set(await seen(xs, 0)) == {"g"}
        assert rt.domains[1].failures == 0 and rt.default_failures == 0


async def test_the_stacks_of_a_domain_name_the_worker_process_its_handler_runs_in(
    xenstored: Embedded, xs: actors.XenStore
) -> None:
    """Hang forensics (issue 21) for a process handler: the handler's task waits on its worker, whose pid
    ``rt.stacks`` and ``mtwatch stack`` give; none once the call is over."""
    from actors.agent.forensics import format_stacks, stack_answer

    async with runtime(xs, worker_processes=1, stop_deadline=2) as rt:
        rt.watch("/local/domain/{domid}/bad", ph.spin, isolation="process", timeout=30, name="bad")
        await start(xs, rt, 3)
        assert rt.stacks(3).worker_pid is None
        await xs.write("/local/domain/3/bad", "go")
        await until(lambda: rt.stacks(3).worker_pid is not None)
        stacks = rt.stacks(3)
        assert stacks.worker_pid in rt._pool.pids and alive(stacks.worker_pid)
        assert stacks.tasks[0].what.startswith("handler of 'bad'")
        answer = stack_answer(rt, {"domid": 3})
        assert answer["worker"]["pid"] == stacks.worker_pid
        assert f"worker process pid {stacks.worker_pid}: runs this domain's handler" in format_stacks(answer)
        rt.reload(3)  # the spinning worker is killed at the stop's deadline less the hooks' share
        await until(lambda: rt.stacks(3).worker_pid is None if 3 in rt.domains else False)
