"""Prometheus metrics of a runtime (the README's "The agent" lists them) and a minimal HTTP/1.1 endpoint.

Per-domain families are built at scrape time from ``rt.domains`` (a retired domain's series go away with it);
the latency histogram, stalls and blocked seconds are fed by ``rt.observe``. prometheus_client's own
``start_http_server`` is not used: it serves from a thread, which would read the runtime's state from outside
the trio loop. :func:`serve_metrics` answers ``GET``/``HEAD`` ``/metrics`` and ``/healthz`` (200, or 503 when
not connected or not ready, with the one-line reason), 404 elsewhere; one request per connection, each bounded
by a deadline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import Counter as MetricCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import __version__
from ..runtime.domain.context import State
from .exits import NOT_READY
from .quotas import QuotaCollector
from .status import health

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = [
    "LATENCY_BUCKETS",
    "Metrics",
    "histogram_quantile",
    "listener_addresses",
    "serve_metrics",
]

LATENCY_BUCKETS = (*(round(m * 10.0**e, 6) for e in range(-4, 1) for m in (1, 2.5, 5)), 10.0)  # 0.1 ms..10 s
READ_DEADLINE = 5.0  # seconds for a client to send its request head
WRITE_DEADLINE = 10.0  # seconds to send the response
MAX_HEAD = 8192
MAX_CONNECTIONS = 32


G, C = GaugeMetricFamily, CounterMetricFamily
# fmt: off
_PER_DOMAIN: dict[str, tuple[type[Any], str, list[str]]] = {  # name -> (kind, help, labels besides domid)
    "domain_state": (G, "1 for each domain actor's current state.", ["state"]),
    "domain_info": (G, "1 for each domain, with its name (/local/domain/<domid>/name).", ["name"]),
    "events": (C, "Watch events whose handler completed, by domain.", []),
    "events_coalesced": (C, "Events merged in a full mailbox, by domain.", []),
    "events_dropped": (C, "Events refused (the domain was failed, in backoff or stopping), by domain and reason.",
                       ["reason"]),
    "handler_failures": (C, "Handler failures (exceptions and timeouts), by domain.", []),
    "restarts": (C, "Domain actor restarts, by domain.", []),
    "mailbox_depth": (G, "Events waiting in a domain's mailbox.", []),
    "handler_busy_seconds": (G, "How long the running handler call has run (0: idle).", []),
    "throttled_seconds": (G, "How long flood control has kept the domain unwatched so far (0: not throttled).", []),
}
_SINGLE: dict[str, tuple[type[Any], str, Callable[[Runtime], float]]] = {
    "xenstore_reconnects": (C, "Connections to xenstored made again after the first was lost.", lambda rt: rt.reconnects),
    "ready": (G, "1 once the first full reconcile of the registry is done.", lambda rt: rt.ready.is_set()),
    "up": (G, "1 while the agent is connected to xenstored.", lambda rt: rt.connected.value),
}
# fmt: on


class _RuntimeCollector:
    """Reads ``rt.domains`` at every scrape (in the trio thread: the HTTP handler runs in the loop)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration; collect() builds everything at scrape time

    def collect(self) -> Iterator[Any]:
        rt = self.rt
        domains = sorted(rt.domains.items())
        counts = Counter(snapshot.state for _, snapshot in domains)
        by_state = G("mtwatch_domains", "Domain actors by state.", labels=["state"])
        for state in State:
            by_state.add_metric([state.value], counts.get(state, 0))
        lifecycle = G("mtwatch_lifecycle", "Where the domains come from now (1 for the lifecycle in use).",
                      labels=["lifecycle"])  # fmt: skip
        lifecycle.add_metric([rt.lifecycle_name], 1)
        yield from (by_state, lifecycle)
        f = {name: kind(f"mtwatch_{name}", text, labels=["domid", *extra])
             for name, (kind, text, extra) in _PER_DOMAIN.items()}  # fmt: skip
        f["events"].add_metric(["0"], rt.default_handled)  # the default actor (domid 0, like xenwatch)
        f["handler_failures"].add_metric(["0"], rt.default_failures)
        now = trio.current_time()
        for domid, snap in domains:
            label = [str(domid)]
            f["domain_state"].add_metric([*label, snap.state.value], 1)
            f["domain_info"].add_metric([*label, snap.name or ""], 1)
            for reason, count in sorted(snap.dropped_by_reason.items()):
                f["events_dropped"].add_metric([*label, reason], count)
            for name, value in (("events", snap.handled), ("events_coalesced", snap.coalesced),
                                ("handler_failures", snap.failures), ("restarts", snap.restarts),
                                ("mailbox_depth", snap.mailbox_depth)):  # fmt: skip
                f[name].add_metric(label, value)
            busy = 0.0 if snap.busy_since is None else max(0.0, now - snap.busy_since)
            f["handler_busy_seconds"].add_metric(label, busy)
            throttled = 0.0 if snap.throttled_since is None else max(0.0, now - snap.throttled_since)
            f["throttled_seconds"].add_metric(label, throttled)
        yield from f.values()
        for name, (kind, text, get) in _SINGLE.items():
            single = kind(f"mtwatch_{name}", text)
            single.add_metric([], int(get(rt)))
            yield single
        build = G("mtwatch_build_info", "The agent's version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        yield from _worker_metrics(rt)


def _worker_metrics(rt: Runtime) -> Iterator[Any]:
    """The worker processes of ``isolation = "process"`` rules."""
    pool = rt.workers
    workers = G(
        "mtwatch_workers", "Worker processes of process handlers, by state (busy, idle).", labels=["state"]
    )
    workers.add_metric(["busy"], pool.busy)
    workers.add_metric(["idle"], max(0, pool.alive - pool.busy))
    size = G("mtwatch_workers_max", "At most this many worker processes (worker_processes).")
    size.add_metric([], pool.size)
    replaced = C("mtwatch_workers_replaced", "Worker processes killed or dead, and so replaced.")
    replaced.add_metric([], pool.replaced)
    deaths = C(
        "mtwatch_worker_deaths",
        "A domain's worker killed past its timeout (timeout), out of memory (memory) or dead (SIGSEGV, ...).",
        labels=["domid", "reason"],
    )
    for (domid, reason), count in sorted(pool.deaths.items()):
        deaths.add_metric([str(domid), reason], count)
    yield from (workers, size, replaced, deaths)


class Metrics:
    """The agent's metrics registry for one runtime: ``Metrics(rt)`` registers the collector and the latency
    observer; :meth:`render` is the text a scrape gets."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.rt = rt
        self.registry.register(_RuntimeCollector(rt))
        self.registry.register(QuotaCollector(rt))
        ProcessCollector(registry=self.registry)
        self.latency = Histogram(
            "mtwatch_event_latency_seconds",
            "Time from the reader receiving a watch event to its handler starting.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stalls = MetricCounter(
            "mtwatch_xenstore_stalls",
            "Times xenstored went silent with requests pending (stall_after), no guest's fault.",
            registry=self.registry,
        )
        self.blocked = MetricCounter(
            "mtwatch_loop_blocked_seconds",
            "Seconds the event loop was blocked, charged to the domain whose code blocked it.",
            ["domid"],
            registry=self.registry,
        )
        self.throttles = MetricCounter(
            "mtwatch_throttles",
            "Times flood control throttled a domain (unwatched it for a cool-down), by domain.",
            ["domid"],
            registry=self.registry,
        )
        rt.observe(self._observe)

    def _observe(self, kind: str, domid: int, value: float) -> None:
        if kind == "latency":
            self.latency.observe(max(0.0, value))
        elif kind == "stall":
            self.stalls.inc()
        elif kind == "blocked":
            self.blocked.labels(str(domid)).inc(max(0.0, value))
        elif kind == "throttled" and value:
            self.throttles.labels(str(domid)).inc()

    def latency_summary(self) -> dict[str, Any]:
        """The latency histogram's count, p50 and p99 (seconds; None without observations)."""
        buckets: list[tuple[float, float]] = []
        count = 0.0
        for family in self.latency.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), float(sample.value)))
                elif sample.name.endswith("_count"):
                    count = float(sample.value)
        return {
            "count": int(count),
            "p50": histogram_quantile(0.5, buckets),
            "p99": histogram_quantile(0.99, buckets),
        }

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile``: linear interpolation in the bucket holding the q-quantile, from
    ``(le, cumulative count)`` pairs. None without observations; the largest finite bound when the quantile
    falls into the +Inf bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            if cumulative == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def listener_addresses(listeners: list[trio.SocketListener]) -> list[str]:
    names = []
    for listener in listeners:
        address = listener.socket.getsockname()
        host, port = address[0], address[1]
        names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return names


def _response(
    status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False
) -> bytes:
    lines = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (lines + "Connection: close\r\n\r\n").encode("ascii") + (b"" if head else body)


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = bytearray()
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _route(metrics: Metrics, head: bytes | None) -> bytes:
    parts = [] if head is None else head.split(b"\n", 1)[0].strip().decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target, _ = parts
    path, is_head = target.split("?", 1)[0], method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n")
    if path == "/healthz":
        code, reason = health(metrics.rt)
        status = "503 Service Unavailable" if code >= NOT_READY else "200 OK"
        return _response(status, reason.encode() + b"\n", head=is_head)
    if path != "/metrics":
        return _response("404 Not Found", b"not found: try /metrics\n", head=is_head)
    return _response("200 OK", metrics.render(), CONTENT_TYPE_LATEST, head=is_head)


async def serve_metrics(
    metrics: Metrics,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``listeners`` until cancelled (then close them)."""
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(WRITE_DEADLINE):
                    await stream.send_all(_response("503 Service Unavailable", b"busy\n"))
                return
            try:
                await _answer(stream)
            finally:
                limiter.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(stream: trio.SocketStream) -> None:
        head: bytes | None = None
        with trio.move_on_after(READ_DEADLINE) as reading:
            head = await _read_head(stream)
        response = _response("408 Request Timeout", b"request timeout\n")
        if not reading.cancelled_caught:
            try:
                response = _route(metrics, head)
            except Exception:  # a collector's bug is this scrape's error, not the end of the agent
                logger.opt(exception=True).error("metrics request failed")
                response = _response("500 Internal Server Error", b"internal error\n")
        with trio.move_on_after(WRITE_DEADLINE):
            await stream.send_all(response)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            task_status.started()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
