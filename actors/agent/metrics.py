"""Prometheus metrics of a runtime (the README's "The agent" lists them) and a minimal HTTP/1.1 endpoint.

One place renders every family (:meth:`Metrics.pieces`): the aggregates from the runtime's kept counts
(``rt.census``, never a walk over the domains), then the per-domain families in one pass over the domains, each
domain's series read at one moment (a retired domain's series go away with it), then what ``rt.observe`` fed
(the latency histogram, stalls, blocked seconds, throttles) and ``process_*`` through prometheus_client. A scrape
renders in slices (:meth:`Metrics.scrape`): at 32,751 domains the body is about 14 MB, and the loop is given back
every few milliseconds while it is built; the body is always whole (every family complete, each domain's
series from one snapshot of it). Which domains get per-domain series is ``per_domain``: ``"all"`` (the
default), ``"trouble"`` (those not simply running: failed, backoff, starting, stopping, or throttled) or
``"none"``; the aggregates are always there.

prometheus_client's own ``start_http_server`` is not used: it serves from a thread, which would read the
runtime's state from outside the trio loop. :func:`serve_metrics` answers ``GET``/``HEAD`` ``/metrics`` and
``/healthz`` (200, or 503 when not connected or not ready, with the one-line reason), 404 elsewhere; one request
per connection, each bounded by a deadline.
"""

from __future__ import annotations

import math
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

from .. import __version__
from ..runtime.domain.context import DomainSnapshot, State
from ..runtime.slices import in_slices
from .config import PER_DOMAIN, PerDomain
from .exits import NOT_READY
from .status import health

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = [
    "LATENCY_BUCKETS",
    "PER_DOMAIN",
    "Metrics",
    "histogram_quantile",
    "listener_addresses",
    "serve_metrics",
]

LATENCY_BUCKETS = (*(round(m * 10.0**e, 6) for e in range(-4, 1) for m in (1, 2.5, 5)), 10.0)  # 0.1 ms..10 s
READ_DEADLINE = 5.0  # seconds for a client to send its request head
WRITE_DEADLINE = 30.0  # seconds to send the response (14 MB at 32,751 domains)
MAX_HEAD = 8192
MAX_CONNECTIONS = 32

# fmt: off
# name -> (type, help, labels besides domid, the samples of one domain: (extra label values, value) pairs)
_Samples = Callable[[DomainSnapshot, float], Iterable[tuple[tuple[str, ...], float]]]
_PER_DOMAIN: dict[str, tuple[str, str, tuple[str, ...], _Samples]] = {
    "domain_state": ("gauge", "1 for each domain actor's current state.", ("state",),
                     lambda d, now: (((d.state.value,), 1),)),
    "domain_info": ("gauge", "1 for each domain, with its name (/local/domain/<domid>/name).", ("name",),
                    lambda d, now: (((d.name or "",), 1),)),
    "events": ("counter", "Watch events whose handler completed, by domain.", (),
               lambda d, now: (((), d.handled),)),
    "events_coalesced": ("counter", "Events merged in a full mailbox, by domain.", (),
                         lambda d, now: (((), d.coalesced),)),
    "events_dropped": ("counter", "Events refused (the domain was failed, in backoff or stopping), by domain and"
                       " reason.", ("reason",),
                       lambda d, now: (((r,), n) for r, n in sorted(d.dropped_by_reason.items()))),
    "handler_failures": ("counter", "Handler failures (exceptions and timeouts), by domain.", (),
                         lambda d, now: (((), d.failures),)),
    "restarts": ("counter", "Domain actor restarts, by domain.", (), lambda d, now: (((), d.restarts),)),
    "mailbox_depth": ("gauge", "Events waiting in a domain's mailbox.", (), lambda d, now: (((), d.mailbox_depth),)),
    "handler_busy_seconds": ("gauge", "How long the running handler call has run (0: idle).", (),
                             lambda d, now: (((), _since(d.busy_since, now)),)),
    "throttled_seconds": ("gauge", "How long flood control has kept the domain unwatched so far (0: not"
                          " throttled).", (), lambda d, now: (((), _since(d.throttled_since, now)),)),
}
_SINGLE: dict[str, tuple[str, str, Callable[[Runtime], float]]] = {
    "xenstore_reconnects": ("counter", "Connections to xenstored made again after the first was lost.",
                            lambda rt: rt.reconnects),
    "ready": ("gauge", "1 once the first full reconcile of the registry is done.", lambda rt: rt.ready.is_set()),
    "up": ("gauge", "1 while the agent is connected to xenstored.", lambda rt: rt.connected.value),
    "domains_throttled": ("gauge", "Domains flood control keeps unwatched now.",
                          lambda rt: len(rt.census.throttled)),
}
# fmt: on


def _number(value: float) -> str:
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(value)


def _since(at: float | None, now: float) -> float:
    return 0.0 if at is None else max(0.0, now - at)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _head(name: str, kind: str, text: str) -> str:
    full = f"mtwatch_{name}" + ("_total" if kind == "counter" else "")
    return f"# HELP {full} {_escape_help(text)}\n# TYPE {full} {kind}\n"


def _sample(name: str, kind: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    full = f"mtwatch_{name}" + ("_total" if kind == "counter" else "")
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
    return f"{full}{{{inner}}} {_number(value)}\n" if inner else f"{full} {_number(value)}\n"


class Metrics:
    """The agent's metrics for one runtime: ``Metrics(rt, per_domain="all")`` registers its observer;
    :meth:`scrape` (in slices) or :meth:`render` (in one go) give the text a scrape gets."""

    def __init__(self, rt: Runtime, per_domain: PerDomain = "all") -> None:
        if per_domain not in PER_DOMAIN:
            raise ValueError(f"per_domain must be one of {', '.join(PER_DOMAIN)}, not {per_domain!r}")
        self.rt = rt
        self.per_domain: PerDomain = per_domain
        self.events = self.failures = self.restarts = 0  # over every domain and the default actor
        self.registry = CollectorRegistry(auto_describe=False)
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
        if kind == "event":
            self.events += 1
        elif kind == "latency":
            self.latency.observe(max(0.0, value))
        elif kind == "failure":
            self.failures += 1
        elif kind == "restart":
            self.restarts += 1
        elif kind == "stall":
            self.stalls.inc()
        elif kind == "blocked":
            self.blocked.labels(str(domid)).inc(max(0.0, value))
        elif kind == "throttled" and value:
            self.throttles.labels(str(domid)).inc()

    # -- the one place that renders the families -----------------------------------------------------------

    def pieces(self) -> Iterator[str | None]:
        """The body's text in pieces, in order; None marks a point where a scrape may give the loop back."""
        rt = self.rt
        yield from self._aggregates(rt)
        yield from self._domains(rt)
        yield from self._quotas(rt)
        yield from self._workers(rt)
        for name, (kind, text, get) in _SINGLE.items():
            yield _head(name, kind, text) + _sample(name, kind, (), int(get(rt)))
        yield _head("build_info", "gauge", "The agent's version.")
        yield _sample("build_info", "gauge", (("version", __version__),), 1)
        yield generate_latest(self.registry).decode()

    def _aggregates(self, rt: Runtime) -> Iterator[str]:
        counts = rt.census.counts()
        yield _head("domains", "gauge", "Domain actors by state.")
        yield "".join(_sample("domains", "gauge", (("state", s.value),), counts[s]) for s in State)
        text = "Where the domains come from now (1 for the lifecycle in use)."
        yield _head("lifecycle", "gauge", text) + _sample(
            "lifecycle", "gauge", (("lifecycle", rt.lifecycle_name),), 1
        )
        for name, value, text in (
            ("host_events", self.events, "Watch events whose handler completed, over every domain."),
            ("host_handler_failures", self.failures, "Handler failures, over every domain."),
            ("host_restarts", self.restarts, "Domain actor restarts, over every domain."),
        ):
            yield _head(name, "counter", text) + _sample(name, "counter", (), value)

    def _domains(self, rt: Runtime) -> Iterator[str | None]:
        """The per-domain families, from one pass over the domains (each domain read once, at one moment)."""
        lines: dict[str, list[str]] = {name: [] for name in _PER_DOMAIN}
        lines["events"].append(_sample("events", "counter", (("domid", "0"),), rt.default_handled))
        lines["handler_failures"].append(
            _sample("handler_failures", "counter", (("domid", "0"),), rt.default_failures)
        )
        domains = rt.domains
        if self.per_domain == "all":
            domids: Iterable[int] = domains  # in the order they came (sorting 32,751 is a hold of its own)
        elif self.per_domain == "trouble":
            domids = sorted(rt.census.trouble())
        else:
            domids = ()
        now = trio.current_time()
        for domid in domids:
            try:
                snap = domains[domid]
            except KeyError:
                continue  # gone since the walk began
            label = ("domid", str(domid))
            for name, (kind, _text, extra, samples) in _PER_DOMAIN.items():
                out = lines[name]
                for values, value in samples(snap, now):
                    out.append(_sample(name, kind, (label, *zip(extra, values, strict=True)), value))
            yield None
        for name, (kind, text, _extra, _samples) in _PER_DOMAIN.items():
            yield _head(name, kind, text)
            yield "".join(lines.pop(name))  # each family's lines freed as it is joined, not all at the end

    def _quotas(self, rt: Runtime) -> Iterator[str | None]:
        """The quota telemetry (``rt.quotas``, as of its last round): each domain's use and limit per resource
        (for the domains ``per_domain`` names; ``"trouble"`` adds those above the threshold), the threshold and
        how quotas are read."""
        report = rt.quotas
        if self.per_domain == "all":
            domids: Iterable[int] = list(report.domains)
        elif self.per_domain == "trouble":
            domids = sorted((rt.census.trouble() | set(report.above)) & report.domains.keys())
        else:
            domids = ()
        used: list[str] = []
        limit: list[str] = []
        for domid in domids:
            quota = report.domains.get(domid)
            if quota is None:
                continue
            label = ("domid", str(domid))
            for resource, value in quota.used.items():
                used.append(_sample("xenstore_quota_used", "gauge", (label, ("resource", resource)), value))
            for resource, value in quota.limit.items():
                limit.append(_sample("xenstore_quota_limit", "gauge", (label, ("resource", resource)), value))
            yield None
        text = "A domain's use of a XenStore quota, as xenstored reported it at the last quota round."
        yield _head("xenstore_quota_used", "gauge", text) + "".join(used)
        text = "A domain's XenStore quota (its limit), as xenstored reported it at the last quota round."
        yield _head("xenstore_quota_limit", "gauge", text) + "".join(limit)
        text = "The share of a quota at which a domain is reported (quota_threshold)."
        yield _head("xenstore_quota_threshold", "gauge", text)
        yield _sample("xenstore_quota_threshold", "gauge", (), report.threshold)
        text = "1 for how quotas are read: off, unknown (no round yet), cxenstored, oxenstored (nodes only), unsupported."
        yield _head("xenstore_quota_state", "gauge", text)
        yield _sample("xenstore_quota_state", "gauge", (("state", report.state),), 1)

    def _workers(self, rt: Runtime) -> Iterator[str]:
        """The worker processes of ``isolation = "process"`` rules (deaths by domain: only domains that had one)."""
        pool = rt.workers
        yield _head("workers", "gauge", "Worker processes of process handlers, by state (busy, idle).")
        yield _sample("workers", "gauge", (("state", "busy"),), pool.busy)
        yield _sample("workers", "gauge", (("state", "idle"),), max(0, pool.alive - pool.busy))
        text = "At most this many worker processes (worker_processes)."
        yield _head("workers_max", "gauge", text) + _sample("workers_max", "gauge", (), pool.size)
        text = "Worker processes killed or dead, and so replaced."
        yield _head("workers_replaced", "counter", text) + _sample(
            "workers_replaced", "counter", (), pool.replaced
        )
        text = "A domain's worker killed past its timeout (timeout), out of memory (memory) or dead (SIGSEGV, ...)."
        yield _head("worker_deaths", "counter", text) + "".join(
            _sample("worker_deaths", "counter", (("domid", str(domid)), ("reason", reason)), count)
            for (domid, reason), count in sorted(pool.deaths.items())
        )

    def render(self) -> bytes:
        """The whole body in one go (for a small host, or a test)."""
        return "".join(piece for piece in self.pieces() if piece is not None).encode()

    async def scrape(self) -> bytes:
        """The whole body, giving the loop back every few milliseconds while it is built (each piece encoded as
        it comes: a body of 14 MB is never encoded in one go)."""
        parts: list[bytes] = []
        async for piece in in_slices(self.pieces()):
            if piece is not None:
                parts.append(piece.encode())
        return b"".join(parts)

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
) -> tuple[bytes, bytes]:
    """The response's head and body, sent one after the other (a 14 MB body is not copied to join them)."""
    lines = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (lines + "Connection: close\r\n\r\n").encode("ascii"), (b"" if head else body)


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


async def _route(metrics: Metrics, head: bytes | None) -> tuple[bytes, bytes]:
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
    return _response("200 OK", await metrics.scrape(), CONTENT_TYPE_LATEST, head=is_head)


async def _send(stream: trio.SocketStream, response: tuple[bytes, bytes]) -> None:
    head, body = response
    await stream.send_all(head)
    if body:
        await stream.send_all(body)


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
                    await _send(stream, _response("503 Service Unavailable", b"busy\n"))
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
                response = await _route(metrics, head)
            except Exception:  # a collector's bug is this scrape's error, not the end of the agent
                logger.opt(exception=True).error("metrics request failed")
                response = _response("500 Internal Server Error", b"internal error\n")
        with trio.move_on_after(WRITE_DEADLINE):
            await _send(stream, response)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            task_status.started()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
