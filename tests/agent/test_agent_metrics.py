"""The agent's metrics in process: a runtime with domains on the embedded xenstored, scraped over real HTTP from
the trio endpoint and parsed with prometheus_client's own parser."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.agent.metrics import Metrics, serve_metrics
from harness.proxy import open_proxy
from harness.servers import Embedded


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status, *headers = head.decode().split("\r\n")
    return status, dict(h.split(": ", 1) for h in headers), body


def parse(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of every sample -> labels -> value."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_domid(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[str, float]:
    return {dict(labels)["domid"]: value for labels, value in samples.get(name, {}).items()}


class Handler:
    def __init__(self) -> None:
        self.fail: set[int] = set()
        self.handled = trio.Event()

    async def __call__(self, ctx: DomainContext, event: WatchEvent) -> None:
        if ctx.domid in self.fail:
            raise RuntimeError("failing on purpose")
        self.handled.set()


@pytest.fixture
async def served(xs: actors.XenStore) -> AsyncIterator[tuple[actors.Runtime, int, Handler]]:
    handler = Handler()
    policy = RestartPolicy(max_restarts=10, period=60, backoff_initial=0.01, backoff_max=0.02)
    async with actors.open_runtime(xs, restart=policy, stop_deadline=2) as rt, trio.open_nursery() as nursery:
        rt.watch("/local/domain/{domid}/data/ping", handler, name="ping")
        metrics = Metrics(rt)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(serve_metrics, metrics, listeners)
        yield rt, port, handler
        nursery.cancel_scope.cancel()


async def test_scrape_shows_domains_and_their_counts(
    xs: actors.XenStore, served: tuple[actors.Runtime, int, Handler]
) -> None:
    rt, port, handler = served
    handler.fail.add(4)
    with trio.fail_after(10):
        for domid in (3, 4):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        await rt.wait_domain(3, State.RUNNING)
        for n in range(3):
            await xs.write("/local/domain/3/data/ping", str(n))
        while rt.domains[3].handled < 3 or rt.domains[4].restarts < 2:
            await rt.changed.wait()

        status, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert int(headers["Content-Length"]) == len(body)
    samples = parse(body)
    domains = {dict(labels)["state"]: value for labels, value in samples["mtwatch_domains"].items()}
    assert set(domains) == {s.value for s in State}
    assert sum(domains.values()) == 2 and domains["running"] >= 1
    assert by_domid(samples, "mtwatch_events_total")["3"] >= 3
    assert by_domid(samples, "mtwatch_events_total")["4"] == 0
    assert by_domid(samples, "mtwatch_handler_failures_total")["4"] >= 2
    assert by_domid(samples, "mtwatch_restarts_total")["4"] >= 2
    assert by_domid(samples, "mtwatch_handler_failures_total")["3"] == 0
    assert set(by_domid(samples, "mtwatch_mailbox_depth")) == {"3", "4"}
    assert set(by_domid(samples, "mtwatch_events_coalesced_total")) == {"3", "4"}
    assert samples["mtwatch_xenstore_reconnects_total"][()] == 0
    assert samples["mtwatch_ready"][()] == 1
    assert samples["mtwatch_event_latency_seconds_count"][()] >= 3
    assert samples["mtwatch_event_latency_seconds_bucket"][(("le", "+Inf"),)] >= 3
    states = {dict(labels)["domid"]: dict(labels)["state"] for labels in samples["mtwatch_domain_state"]}
    assert states["3"] == "running"
    assert samples["mtwatch_up"][()] == 1
    assert samples["mtwatch_lifecycle"] == {(("lifecycle", "mtwatch"),): 1}  # auto, and the root exists
    assert samples["mtwatch_build_info"][(("version", actors.__version__),)] == 1
    assert samples["process_cpu_seconds_total"][()] > 0  # prometheus_client's ProcessCollector
    assert set(by_domid(samples, "mtwatch_handler_busy_seconds")) == {"3", "4"}
    assert {dict(labels)["domid"] for labels in samples["mtwatch_domain_info"]} == {"3", "4"}

    # A retired domain's series go away.
    with trio.fail_after(10):
        await actors.retire_domain(xs, 4)
        await rt.wait_domain(4, None)
        _, _, body = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    samples = parse(body)
    for name in ("mtwatch_restarts_total", "mtwatch_mailbox_depth"):
        assert set(by_domid(samples, name)) == {"3"}
    # Events and failures also have the default actor's series, domid 0.
    for name in ("mtwatch_events_total", "mtwatch_handler_failures_total"):
        assert set(by_domid(samples, name)) == {"0", "3"}
    assert set(by_domid(samples, "mtwatch_events_total")) == {"0", "3"}  # 0: the default actor


async def test_other_requests(served: tuple[actors.Runtime, int, Handler]) -> None:
    rt, port, _ = served
    with trio.fail_after(10):
        status, _, body = await http(port, b"GET / HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 404 Not Found"
        status, _, _ = await http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert status == "HTTP/1.1 405 Method Not Allowed"
        status, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and int(headers["Content-Length"]) > 0 and body == b""
        status, _, body = await http(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and b"mtwatch_domains" in body
        await rt.ready.wait()
        status, headers, body = await http(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b"healthy: 0 domains\n"
        status, _, _ = await http(port, b"garbage\r\n\r\n")
        assert status == "HTTP/1.1 400 Bad Request"
        status, _, _ = await http(port, b"GET /" + b"x" * 10000)
        assert status == "HTTP/1.1 400 Bad Request"


async def test_a_silent_client_is_cut_off_at_the_read_deadline(
    autojump_clock: trio.testing.MockClock, xs: actors.XenStore
) -> None:
    async with actors.open_runtime(xs) as rt, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(serve_metrics, Metrics(rt), listeners)
        with trio.fail_after(60):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                start = trio.current_time()
                data = bytearray()
                while chunk := await stream.receive_some(4096):  # sends nothing, waits for the server
                    data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.5)
        nursery.cancel_scope.cancel()


async def test_stalls_and_loop_blocks_are_counted(
    xenstored: Embedded, xs: actors.XenStore, workdir: str
) -> None:
    """A daemon that holds every byte (a proxy that stalls) counts in mtwatch_xenstore_stalls_total; a handler that
    blocks the event loop counts in mtwatch_loop_blocked_seconds_total for its domain alone."""
    await actors.announce_domain(xs, 5, identity="a")
    await actors.announce_domain(xs, 6, identity="b")

    def blocking(ctx: DomainContext, event: WatchEvent) -> None:
        pass  # a plain def runs in a worker thread: blocking there is fine

    async def blocks_the_loop(ctx: DomainContext, event: WatchEvent) -> None:
        if not event.initial:
            time.sleep(0.8)  # noqa: ASYNC251  (the point of the test)

    async with (
        open_proxy(xenstored.socket_path, os.path.join(workdir, "proxy")) as proxy,
        actors.open_runtime(connect=lambda: actors.connect(proxy.path), stall_after=0.2) as rt,
    ):
        metrics = Metrics(rt)
        rt.watch("/local/domain/{domid}/data", blocking)
        rt.watch("/local/domain/{domid}/block", blocks_the_loop)
        with trio.fail_after(20):
            await rt.wait_domain(5, State.RUNNING)
            await rt.wait_domain(6, State.RUNNING)
            proxy.stall()
            with trio.move_on_after(0.6):
                await rt.xs.read("/local/domain/5/data/x")  # pending while nothing gets through
            proxy.resume()
            while parse(metrics.render())["mtwatch_xenstore_stalls_total"][()] < 1:  # noqa: ASYNC110
                await trio.sleep(0.05)  # polling the scrape, as Prometheus would
            await xs.write("/local/domain/6/block", "now")
            while not by_domid(parse(metrics.render()), "mtwatch_loop_blocked_seconds_total"):  # noqa: ASYNC110
                await trio.sleep(0.05)
    samples = parse(metrics.render())
    assert samples["mtwatch_xenstore_stalls_total"][()] >= 1
    blocked = by_domid(samples, "mtwatch_loop_blocked_seconds_total")
    assert set(blocked) == {"6"} and blocked["6"] >= 0.5


async def test_a_throttled_domain_shows_for_how_long(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    """Flood control's throttle is in the metrics: a count per domain and, while it lasts, its duration."""
    options = actors.RuntimeOptions(flood_rate=50, flood_cooldown=3.0, flood_cooldown_max=3.0)

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        await trio.sleep(0.001)

    async with actors.open_runtime(xs, options=options) as rt:
        metrics = Metrics(rt)
        rt.watch("/local/domain/{domid}/data", handler)
        for domid in (5, 6):
            await xs.write(f"/local/domain/{domid}/data", "")
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        with trio.fail_after(60):
            for domid in (5, 6):
                await rt.wait_domain(domid, State.RUNNING)
            n = 0
            while rt.domains[5].throttled_since is None:
                await xs.write(f"/local/domain/5/data/k{n % 20}", str(n))
                n += 1
            await trio.sleep(1.0)
            samples = parse(metrics.render())
            throttled = by_domid(samples, "mtwatch_throttled_seconds")
            assert throttled["5"] >= 1.0 and throttled["6"] == 0
            assert by_domid(samples, "mtwatch_throttles_total") == {"5": 1}
            while rt.domains[5].throttled_since is not None:  # noqa: ASYNC110 (a snapshot, polled)
                await trio.sleep(0.5)
            samples = parse(metrics.render())
            assert by_domid(samples, "mtwatch_throttled_seconds")["5"] == 0
