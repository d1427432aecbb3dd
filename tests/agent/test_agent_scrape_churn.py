"""A scrape is whole while domains come and go: the body is built in slices (here forced to one domain a slice,
so that the churn lands between any two), and every scrape parses completely, its Content-Length is its
length, every per-domain family names the same domains (each domain's series read at one moment), and the
aggregates are always there; ``per_domain`` limits the per-domain series to the domains in trouble, or none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
from prometheus_client.parser import text_string_to_metric_families

import actors
from actors import DomainContext, RestartPolicy, State, WatchEvent
from actors.agent.metrics import Metrics, serve_metrics
from actors.runtime import slices

PER_DOMAIN = (
    "mtwatch_domain_state",
    "mtwatch_domain_info",
    "mtwatch_events_coalesced_total",
    "mtwatch_restarts_total",
    "mtwatch_mailbox_depth",
    "mtwatch_handler_busy_seconds",
    "mtwatch_throttled_seconds",
)
AGGREGATES = (
    "mtwatch_domains",
    "mtwatch_up",
    "mtwatch_ready",
    "mtwatch_host_events_total",
    "mtwatch_lifecycle",
)


async def get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length")]
    assert length == [len(body)]
    return body


def domains_by_family(body: bytes) -> dict[str, set[str]]:
    """Every sample's family -> the domids it names; parsing raises on any broken line."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set())
            if "domid" in sample.labels:
                found[sample.name].add(sample.labels["domid"])
    return found


@pytest.fixture
async def scraped(
    xs: actors.XenStore, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[actors.Runtime, Metrics, int]]:
    monkeypatch.setattr(slices, "SLICE", 0.0)  # give the loop back after every domain

    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        if event.path.endswith("/fail"):
            raise RuntimeError("failing on purpose")

    policy = RestartPolicy(max_restarts=0, period=60)
    async with actors.open_runtime(xs, restart=policy, stop_deadline=1) as rt, trio.open_nursery() as nursery:
        rt.watch("/local/domain/{domid}/data", handler)
        metrics = Metrics(rt)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(serve_metrics, metrics, listeners)
        yield rt, metrics, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_every_scrape_is_whole_while_domains_change(
    xs: actors.XenStore, scraped: tuple[actors.Runtime, Metrics, int]
) -> None:
    rt, _metrics, port = scraped
    with trio.fail_after(60):
        for domid in range(1, 61):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        for domid in range(1, 61):
            await rt.wait_domain(domid, State.RUNNING)
        churned = trio.Event()

        async def churn() -> None:
            async with actors.connect(xs.name) as toolstack:
                for round_ in range(6):
                    for domid in range(1 + round_ * 10, 11 + round_ * 10):
                        await actors.retire_domain(toolstack, domid)
                    for domid in range(1 + round_ * 10, 11 + round_ * 10):
                        await actors.announce_domain(toolstack, domid, identity=f"again-{domid}")
                    await trio.lowlevel.checkpoint()
            churned.set()

        scrapes = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(churn)
            while not churned.is_set() or scrapes < 3:
                found = domains_by_family(await get(port))
                scrapes += 1
                for name in AGGREGATES:
                    assert name in found, name
                named = [found[name] for name in PER_DOMAIN]
                assert all(domids == named[0] for domids in named), "a domain's series from two moments"
                assert named[0] <= {str(d) for d in range(1, 61)}
        assert scrapes >= 3


async def test_per_domain_series_for_all_trouble_or_none(
    xs: actors.XenStore, scraped: tuple[actors.Runtime, Metrics, int]
) -> None:
    rt, metrics, port = scraped
    with trio.fail_after(30):
        for domid in (3, 4, 5):
            await actors.announce_domain(xs, domid, identity=f"uuid-{domid}")
        for domid in (3, 4, 5):
            await rt.wait_domain(domid, State.RUNNING)
        await xs.write("/local/domain/4/data/fail", "1")
        await rt.wait_domain(4, State.FAILED)
    everyone = domains_by_family(await get(port))
    assert everyone["mtwatch_domain_state"] == {"3", "4", "5"}
    metrics.per_domain = "trouble"
    trouble = domains_by_family(await get(port))
    assert trouble["mtwatch_domain_state"] == {"4"} and trouble["mtwatch_restarts_total"] == {"4"}
    metrics.per_domain = "none"
    none = domains_by_family(await get(port))
    assert "mtwatch_domain_state" not in none or none["mtwatch_domain_state"] == set()
    for body in (everyone, trouble, none):
        for name in AGGREGATES:
            assert name in body, name
    assert metrics.render().count(b"mtwatch_domains{") == len(State)
    with pytest.raises(ValueError, match="per_domain"):
        Metrics(rt, "some")  # type: ignore[arg-type]
