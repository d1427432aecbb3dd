"""``mtwatch status`` and ``mtwatch top``: a running agent's domains, read from its metrics endpoint.

Both read the agent's ``GET /metrics`` (Prometheus text format) and show one row per domain: state, mailbox
depth, events handled (a total for ``status``, a rate between two scrapes for ``top``), coalesced events,
handler failures and restarts, then the totals. Nothing here talks to xenstored: what the agent exports is
what is shown.

The per-domain state comes from ``mtwatch_domain_state{domid,state} = 1`` when the agent exports it. Without
it, a domain's state is derived from the counters and ``mtwatch_domains{state}``: a domain with more failures
than restarts is in backoff or failed; one where only one state holds all the domains is in that state. When
the counters cannot tell, the candidates are shown joined by ``/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import select
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import trio
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DEFAULT_METRICS",
    "DomainStats",
    "Endpoint",
    "MetricsUnreachable",
    "Snapshot",
    "fetch",
    "fetch_async",
    "format_seconds",
    "histogram_quantile",
    "main_status",
    "main_top",
    "parse_metrics",
    "rates",
    "render_table",
    "scrape",
    "scrape_async",
]

DEFAULT_METRICS = "127.0.0.1:9477"
DEFAULT_TIMEOUT = 3.0
EXIT_UNREACHABLE = 1

_HEALTHY = ("starting", "running", "stopping")
_TROUBLED = ("backoff", "failed")
_PER_DOMAIN = {
    "mtwatch_events_total": "events",
    "mtwatch_events_coalesced_total": "coalesced",
    "mtwatch_handler_failures_total": "failures",
    "mtwatch_restarts_total": "restarts",
    "mtwatch_mailbox_depth": "mailbox_depth",
}
_CLEAR = "\x1b[H\x1b[2J"


class MetricsUnreachable(Exception):
    """The metrics endpoint did not answer, answered with an error, or did not speak Prometheus text."""


# -- the endpoint ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    path: str = "/metrics"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (localhost) or ``http://HOST:PORT/PATH``."""
        if "://" in text:
            url = urllib.parse.urlsplit(text)
            if url.scheme != "http" or not url.hostname:
                raise ValueError(f"not an http:// address: {text!r}")
            return cls(url.hostname, url.port or 80, url.path or "/metrics")
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        host = host.strip("[]") or "127.0.0.1"
        return cls(host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


def fetch(endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT) -> str:
    """GET the metrics text (blocking, bounded by ``timeout``); MetricsUnreachable on any failure."""
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        conn.request("GET", endpoint.path, headers={"Accept": "text/plain; version=0.0.4"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise MetricsUnreachable(f"{endpoint}: {_reason(exc)}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise MetricsUnreachable(f"{endpoint}: HTTP {response.status} {response.reason}")
    return body.decode("utf-8", "replace")


async def fetch_async(endpoint: Endpoint) -> str:
    """:func:`fetch` for trio code: the same GET over a trio stream. It has no timeout of its own: bound it
    with ``trio.fail_after`` or ``trio.move_on_after``."""
    request = (
        f"GET {endpoint.path} HTTP/1.0\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
        "Accept: text/plain; version=0.0.4\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks: list[bytes] = []
    try:
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        async with stream:
            await stream.send_all(request)
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    except (OSError, trio.BrokenResourceError) as exc:
        raise MetricsUnreachable(f"{endpoint}: {_reason(exc)}") from exc
    return _http_body(endpoint, b"".join(chunks))


def _http_body(endpoint: Endpoint, raw: bytes) -> str:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[0].startswith("HTTP/"):
        raise MetricsUnreachable(f"{endpoint}: not an HTTP response")
    if status[1] != "200":
        raise MetricsUnreachable(f"{endpoint}: HTTP {' '.join(status[1:])}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    return body.decode("utf-8", "replace")


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `mtwatch agent --metrics` running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# -- what a scrape says -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainStats:
    """One domain as the agent exports it."""

    domid: int
    state: str
    mailbox_depth: int = 0
    events: float = 0.0
    coalesced: float = 0.0
    failures: float = 0.0
    restarts: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "domid": self.domid,
            "state": self.state,
            "mailbox_depth": self.mailbox_depth,
            "events": int(self.events),
            "coalesced": int(self.coalesced),
            "failures": int(self.failures),
            "restarts": int(self.restarts),
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape: ``taken_at`` is ``time.monotonic()`` when it was read."""

    taken_at: float
    domains: dict[int, DomainStats]
    states: dict[str, int]
    reconnects: float = 0.0
    latency_buckets: tuple[tuple[float, float], ...] = ()
    latency_count: float = 0.0
    latency_sum: float = 0.0
    exact_states: bool = False  # True when the agent exports mtwatch_domain_state

    def latency_quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.latency_buckets)

    def totals(self) -> dict[str, Any]:
        rows = [d for d in self.domains.values() if d.domid != 0]
        return {
            "domains": sum(self.states.values()) if self.states else len(rows),
            "states": dict(self.states),
            "mailbox_depth": sum(d.mailbox_depth for d in rows),
            "events": int(sum(d.events for d in rows)),
            "coalesced": int(sum(d.coalesced for d in rows)),
            "failures": int(sum(d.failures for d in rows)),
            "restarts": int(sum(d.restarts for d in rows)),
            "reconnects": int(self.reconnects),
        }

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency_quantile(0.5), self.latency_quantile(0.99)
        return {
            "domains": [d.as_dict() for d in sorted(self.domains.values(), key=lambda d: d.domid)],
            "states_exact": self.exact_states,
            "totals": self.totals(),
            "latency": {
                "count": int(self.latency_count),
                "sum_seconds": self.latency_sum,
                "p50_seconds": p50,
                "p99_seconds": p99,
            },
        }


def parse_metrics(text: str, taken_at: float | None = None) -> Snapshot:
    """Read the agent's metrics out of Prometheus text; unknown metrics are ignored. ValueError if the text
    is not Prometheus text."""
    per: dict[int, dict[str, float]] = {}
    states: dict[str, int] = {}
    exact: dict[int, str] = {}
    has_state_gauge = False
    buckets: list[tuple[float, float]] = []
    count = total = reconnects = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name in _PER_DOMAIN:
                domid = _domid(labels)
                if domid is not None:
                    per.setdefault(domid, {})[_PER_DOMAIN[name]] = value
            elif name == "mtwatch_domains" and "state" in labels:
                states[labels["state"]] = int(value)
            elif name == "mtwatch_domain_state":
                has_state_gauge = True
                domid = _domid(labels)
                if domid is not None and value and "state" in labels:
                    exact[domid] = labels["state"]
            elif name == "mtwatch_event_latency_seconds_bucket" and "le" in labels:
                buckets.append((float(labels["le"]), value))
            elif name == "mtwatch_event_latency_seconds_count":
                count = value
            elif name == "mtwatch_event_latency_seconds_sum":
                total = value
            elif name == "mtwatch_xenstore_reconnects_total":
                reconnects = value
    if has_state_gauge:
        per = {domid: values for domid, values in per.items() if domid in exact or domid == 0}
        for domid in exact:
            per.setdefault(domid, {})
    domains = {}
    for domid, values in per.items():
        state = exact.get(domid) or ("default" if domid == 0 else "")
        domains[domid] = DomainStats(
            domid=domid,
            state=state,
            mailbox_depth=int(values.get("mailbox_depth", 0)),
            events=values.get("events", 0.0),
            coalesced=values.get("coalesced", 0.0),
            failures=values.get("failures", 0.0),
            restarts=values.get("restarts", 0.0),
        )
    if not has_state_gauge:
        domains = _derive_states(domains, states)
    return Snapshot(
        taken_at=time.monotonic() if taken_at is None else taken_at,
        domains=domains,
        states=states,
        reconnects=reconnects,
        latency_buckets=tuple(sorted(buckets)),
        latency_count=count,
        latency_sum=total,
        exact_states=has_state_gauge,
    )


def _domid(labels: Mapping[str, str]) -> int | None:
    raw = labels.get("domid", "")
    return int(raw) if raw.isdigit() else None


def _derive_states(domains: dict[int, DomainStats], states: Mapping[str, int]) -> dict[int, DomainStats]:
    """Without a per-domain state gauge: more failures than restarts means backoff or failed (a restart is
    counted when its backoff ends); otherwise one of the healthy states. Of those, keep the states that
    ``mtwatch_domains{state}`` says hold a domain; when that leaves several, ``running`` if it holds them all."""
    live = {s for s, n in states.items() if n > 0}
    guests = [d for domid, d in domains.items() if domid != 0]
    troubled = {d.domid for d in guests if d.failures > d.restarts}
    healthy_count = len(guests) - len(troubled)
    derived = dict(domains)
    for d in guests:
        pool = _TROUBLED if d.domid in troubled else _HEALTHY
        candidates = [s for s in pool if s in live] or (list(pool[1:2]) if pool is _HEALTHY else list(pool))
        if len(candidates) > 1 and pool is _HEALTHY and states.get("running", 0) >= healthy_count:
            candidates = ["running"]
        derived[d.domid] = DomainStats(
            d.domid, "/".join(candidates), d.mailbox_depth, d.events, d.coalesced, d.failures, d.restarts
        )
    return derived


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


def scrape(endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT) -> Snapshot:
    """Fetch and parse; MetricsUnreachable when the endpoint fails or does not speak Prometheus text."""
    text = fetch(endpoint, timeout)
    return _parse_or_fail(endpoint, text)


async def scrape_async(endpoint: Endpoint) -> Snapshot:
    """:func:`scrape` for trio code (bound it with ``trio.fail_after``)."""
    text = await fetch_async(endpoint)
    return _parse_or_fail(endpoint, text)


def _parse_or_fail(endpoint: Endpoint, text: str) -> Snapshot:
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise MetricsUnreachable(f"{endpoint}: not Prometheus text ({exc})") from exc


def rates(before: Snapshot | None, after: Snapshot) -> dict[int, float | None]:
    """Events handled per second for each domain of ``after`` between two scrapes; None where it cannot be
    told (first scrape, a domain that was not there before, a counter that went back)."""
    if before is None or after.taken_at <= before.taken_at:
        return dict.fromkeys(after.domains)
    elapsed = after.taken_at - before.taken_at
    out: dict[int, float | None] = {}
    for domid, d in after.domains.items():
        prev = before.domains.get(domid)
        out[domid] = None if prev is None or d.events < prev.events else (d.events - prev.events) / elapsed
    return out


# -- the table ------------------------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """``0.317 ms``, ``24.8 ms``, ``8.08 s``; ``-`` for None."""
    if seconds is None:
        return "-"
    if abs(seconds) >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1000:.3g} ms"


def render_table(snapshot: Snapshot, per_second: Mapping[int, float | None] | None = None) -> list[str]:
    """The domain table and its totals, as lines. ``per_second`` (from :func:`rates`) replaces the events
    column with a rate."""
    events_head = "EVENTS/S" if per_second is not None else "EVENTS"
    lines = [
        f"{'DOMID':>6}  {'STATE':<15} {'MAILBOX':>7} {events_head:>9} {'COALESCED':>9} {'FAILURES':>8} {'RESTARTS':>8}"
    ]
    for domid in sorted(snapshot.domains):
        d = snapshot.domains[domid]
        if per_second is not None:
            rate = per_second.get(domid)
            events = "-" if rate is None else f"{rate:.1f}"
        else:
            events = str(int(d.events))
        lines.append(
            f"{domid:>6}  {d.state:<15} {d.mailbox_depth:>7} {events:>9} {int(d.coalesced):>9}"
            f" {int(d.failures):>8} {int(d.restarts):>8}"
        )
    t = snapshot.totals()
    if per_second is not None:
        known = [r for domid, r in per_second.items() if r is not None and domid != 0]
        events = f"{sum(known):.1f}" if known else "-"
    else:
        events = str(t["events"])
    lines.append(
        f"{'total':>6}  {str(t['domains']) + ' domains':<15} {t['mailbox_depth']:>7} {events:>9}"
        f" {t['coalesced']:>9} {t['failures']:>8} {t['restarts']:>8}"
    )
    by_state = ", ".join(f"{s} {n}" for s, n in sorted(t["states"].items()) if n) or "none"
    lines.append(
        f"states: {by_state}; latency p50 {format_seconds(snapshot.latency_quantile(0.5))}, p99"
        f" {format_seconds(snapshot.latency_quantile(0.99))} over {int(snapshot.latency_count)} events;"
        f" xenstore reconnects {t['reconnects']}"
        + ("" if snapshot.exact_states else "; states derived from counters")
    )
    return lines


# -- the commands ---------------------------------------------------------------------------------------------


def _endpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=DEFAULT_METRICS,
        help="the agent's metrics endpoint (default %(default)s; http://HOST:PORT/PATH also works)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for it (default %(default)s)"
    )


def _endpoint(parser: argparse.ArgumentParser, text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits


def main_status(argv: list[str]) -> int:
    """``mtwatch status [--json] [--metrics HOST:PORT]``: one scrape, totals per domain."""
    parser = argparse.ArgumentParser(prog="mtwatch status", description="Show a running agent's domains.")
    _endpoint_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    endpoint = _endpoint(parser, args.metrics)
    try:
        snapshot = scrape(endpoint, args.timeout)
    except MetricsUnreachable as exc:
        print(f"mtwatch status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps({"endpoint": str(endpoint), **snapshot.as_dict()}, indent=2))
    else:
        print("\n".join(render_table(snapshot)))
    return 0


class _Keys:
    """Single keys from a terminal stdin (cbreak mode, restored on exit); nothing when stdin is no tty."""

    def __init__(self, stream: TextIO) -> None:
        self.fd: int | None = None
        self._saved: Any = None
        try:
            if stream.isatty():
                self.fd = stream.fileno()
        except (ValueError, OSError):
            self.fd = None

    def __enter__(self) -> _Keys:
        if self.fd is not None:
            import termios
            import tty

            try:
                self._saved = termios.tcgetattr(self.fd)
                tty.setcbreak(self.fd)
            except termios.error:
                self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, seconds: float) -> str:
        """Wait up to ``seconds``; the keys pressed meanwhile (returns at the first)."""
        if self.fd is None:
            time.sleep(max(seconds, 0.0))
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(seconds, 0.0))
        if not ready:
            return ""
        return os.read(self.fd, 64).decode(errors="replace")


def main_top(argv: list[str]) -> int:
    """``mtwatch top [--metrics HOST:PORT] [--interval S]``: refresh the table until ``q`` or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="mtwatch top", description="A live view of a running agent's domains (q or Ctrl-C quits)."
    )
    _endpoint_arg(parser)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument(
        "-n", "--iterations", type=int, default=0, help="stop after this many refreshes (default: never)"
    )
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    endpoint = _endpoint(parser, args.metrics)
    out = sys.stdout
    live = out.isatty()
    previous: Snapshot | None = None
    shown = 0
    try:
        with _Keys(sys.stdin) as keys:
            while True:
                try:
                    snapshot = scrape(endpoint, min(args.timeout, max(args.interval, 0.5) * 3))
                except MetricsUnreachable as exc:
                    if live and shown:
                        out.write("\n")
                    print(f"mtwatch top: {exc}", file=sys.stderr)
                    return EXIT_UNREACHABLE
                lines = render_table(snapshot, rates(previous, snapshot))
                header = f"mtwatch top - {endpoint} - {time.strftime('%H:%M:%S')}" + (
                    "   (q quits)" if keys.fd is not None else ""
                )
                if live:
                    out.write(_CLEAR + "\n".join([header, "", *lines]) + "\n")
                else:
                    out.write("\n".join([header, *lines]) + "\n\n")
                out.flush()
                previous = snapshot
                shown += 1
                if args.iterations and shown >= args.iterations:
                    return 0
                if "q" in keys.wait(args.interval).lower():
                    return 0
    except KeyboardInterrupt:
        if live:
            out.write("\n")
        return 0
