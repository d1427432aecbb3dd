"""A watch sink that raises ends its own watch, never the connection; run_transaction's deadline. Over a real
socket to the embedded xenstored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import actors
from actors.xs.errors import ConflictDeadline
from actors.xs.subscription import Subscription
from actors.xs.wire import Frame, Op
from harness.faultproxy import fault_proxy
from harness.servers import Embedded


class SinkBroke(Exception):
    pass


async def test_a_raising_sink_ends_its_own_watch_and_nothing_else(xs: actors.XenStore) -> None:
    good: list[str] = []
    good_seen = trio.Event()
    await xs.write("/bad/x", b"0")
    await xs.write("/good/x", b"0")

    def on_good(event: actors.WatchEvent) -> None:
        good.append(event.path)
        if event.path == "/good/x" and not event.initial:
            good_seen.set()

    await xs.add_watch("/good", "good", on_good)
    broken = SinkBroke("the sink broke")
    calls: list[str] = []

    def bad(event: actors.WatchEvent) -> None:
        calls.append(event.path)
        if not event.initial:
            raise broken

    await xs.add_watch("/bad", "bad", bad)
    await xs.write("/bad/x", b"1")  # the sink raises from inside the reader
    await xs.write("/bad/y", b"1")  # not delivered: that watch is gone
    await xs.write("/good/x", b"1")  # later, on the same connection: still delivered
    with trio.fail_after(5):
        await good_seen.wait()
    assert calls == ["/bad", "/bad/x"]
    assert xs.watch_errors == {"bad": broken}
    assert not xs.is_lost
    assert await xs.read("/good/x") == b"1"  # requests go on
    # The daemon forgot the watch too (the UNWATCH nobody waited for), so its token is free again.
    again = trio.Event()
    await xs.add_watch("/bad", "bad", lambda event: again.set() if event.path == "/bad/x" else None)
    await xs.write("/bad/x", b"2")
    with trio.fail_after(5):
        await again.wait()
    assert xs.watch_errors.pop("bad") is broken


async def test_a_raising_initial_event_sink_fails_before_add_watch_returns(xs: actors.XenStore) -> None:
    def bad(event: actors.WatchEvent) -> None:
        raise SinkBroke(event.path)

    await xs.add_watch("/early", "early", bad)  # the registration event may come before WATCH's reply
    with trio.fail_after(5):
        while "early" not in xs.watch_errors:
            await xs.read("/")  # a round trip: the event, if not yet, is in by its reply
    assert str(xs.watch_errors["early"]) == "/early"
    assert not xs.is_lost


async def test_a_subscription_whose_sink_raised_raises_that_error(
    xs: actors.XenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver = Subscription.deliver

    def fragile(self: Subscription, event: actors.WatchEvent) -> None:
        if event.path == "/fragile/boom":
            raise SinkBroke("boom")
        deliver(self, event)

    monkeypatch.setattr(Subscription, "deliver", fragile)
    async with xs.watch("/fragile") as fragile_events, xs.watch("/steady") as steady_events:
        await xs.write("/fragile/boom", b"1")
        await xs.write("/steady/x", b"1")
        with trio.fail_after(5):
            paths = [event.path async for event in _until(steady_events, "/steady/x")]
            assert paths[-1] == "/steady/x"
            with pytest.raises(SinkBroke, match="boom"):
                async for _ in fragile_events:
                    pass
        assert await xs.read("/steady/x") == b"1"
        assert not xs.is_lost


async def _until(events: Subscription, path: str) -> AsyncIterator[actors.WatchEvent]:
    async for event in events:
        yield event
        if event.path == path:
            return


async def test_run_transaction_redoes_conflicts_until_its_deadline(
    xenstored: Embedded, autojump_clock: object
) -> None:
    def conflict(frame: Frame) -> str | None:  # every commit conflicts
        return "EAGAIN" if frame.op == Op.TRANSACTION_END and frame.payload == b"T\0" else None

    async def body(tx: actors.Transaction) -> int:
        await tx.write("/tx/x", b"1")
        return 7

    async with fault_proxy(xenstored.socket_path) as proxy, actors.connect(proxy.path) as xs:
        proxy.rule = conflict
        start = trio.current_time()
        with pytest.raises(ConflictDeadline) as info:
            await xs.run_transaction(body, attempts=1, deadline=3.0)  # attempts yields to the deadline
        assert trio.current_time() - start >= 3.0
        assert info.value.conflicts == sum(error == "EAGAIN" for _, error in proxy.refused) > 1
        assert isinstance(info.value, actors.TransactionConflict) and info.value.deadline == 3.0
        with pytest.raises(actors.TransactionConflict) as plain:
            await xs.run_transaction(body, attempts=2)
        assert not isinstance(plain.value, ConflictDeadline)
        proxy.rule = lambda frame: None
        assert await xs.run_transaction(body, deadline=3.0) == 7
        assert await xs.read("/tx/x") == b"1"
