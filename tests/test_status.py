"""``mtwatch status`` and ``mtwatch top`` against a stub metrics endpoint (and, once it exists, the real agent)."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from actors.agent import status
from actors.agent.status import (
    Endpoint,
    MetricsUnreachable,
    histogram_quantile,
    main_status,
    main_top,
    parse_metrics,
    rates,
    render_table,
)

# What the agent's endpoint serves (prometheus_client's text format, _created series included).
METRICS = """\
# HELP mtwatch_domains Domain actors by state.
# TYPE mtwatch_domains gauge
mtwatch_domains{state="starting"} 0.0
mtwatch_domains{state="running"} 3.0
mtwatch_domains{state="backoff"} 0.0
mtwatch_domains{state="failed"} 1.0
mtwatch_domains{state="stopping"} 0.0
# HELP mtwatch_events_total Events handled.
# TYPE mtwatch_events_total counter
mtwatch_events_total{domid="1"} %(events1)s
mtwatch_events_total{domid="4"} 2.0
mtwatch_events_total{domid="5"} 10.0
mtwatch_events_total{domid="6"} 50.0
# HELP mtwatch_events_created Events handled.
# TYPE mtwatch_events_created gauge
mtwatch_events_created{domid="1"} 1.7e+09
# HELP mtwatch_events_coalesced_total Events coalesced.
# TYPE mtwatch_events_coalesced_total counter
mtwatch_events_coalesced_total{domid="1"} 0.0
mtwatch_events_coalesced_total{domid="4"} 300.0
mtwatch_events_coalesced_total{domid="5"} 0.0
mtwatch_events_coalesced_total{domid="6"} 5000.0
# HELP mtwatch_handler_failures_total Handler failures.
# TYPE mtwatch_handler_failures_total counter
mtwatch_handler_failures_total{domid="1"} 0.0
mtwatch_handler_failures_total{domid="4"} 0.0
mtwatch_handler_failures_total{domid="5"} 6.0
mtwatch_handler_failures_total{domid="6"} 0.0
# HELP mtwatch_restarts_total Restarts.
# TYPE mtwatch_restarts_total counter
mtwatch_restarts_total{domid="1"} 0.0
mtwatch_restarts_total{domid="4"} 0.0
mtwatch_restarts_total{domid="5"} 5.0
mtwatch_restarts_total{domid="6"} 0.0
# HELP mtwatch_mailbox_depth Mailbox depth.
# TYPE mtwatch_mailbox_depth gauge
mtwatch_mailbox_depth{domid="1"} 0.0
mtwatch_mailbox_depth{domid="4"} 65.0
mtwatch_mailbox_depth{domid="5"} 0.0
mtwatch_mailbox_depth{domid="6"} 120.0
# HELP mtwatch_event_latency_seconds Reader to handler.
# TYPE mtwatch_event_latency_seconds histogram
mtwatch_event_latency_seconds_bucket{le="0.001"} 50.0
mtwatch_event_latency_seconds_bucket{le="0.01"} 90.0
mtwatch_event_latency_seconds_bucket{le="0.1"} 99.0
mtwatch_event_latency_seconds_bucket{le="1.0"} 99.0
mtwatch_event_latency_seconds_bucket{le="+Inf"} 100.0
mtwatch_event_latency_seconds_count 100.0
mtwatch_event_latency_seconds_sum 3.5
# HELP mtwatch_xenstore_reconnects_total Reconnects.
# TYPE mtwatch_xenstore_reconnects_total counter
mtwatch_xenstore_reconnects_total 2.0
"""

STATE_GAUGE = """\
# HELP mtwatch_domain_state Each domain's state.
# TYPE mtwatch_domain_state gauge
mtwatch_domain_state{domid="1",state="running"} 1.0
mtwatch_domain_state{domid="1",state="failed"} 0.0
mtwatch_domain_state{domid="4",state="running"} 1.0
mtwatch_domain_state{domid="5",state="failed"} 1.0
"""


def metrics(events1: float = 100.0) -> str:
    return METRICS % {"events1": events1}


class Stub:
    """A metrics endpoint in a thread: ``body()`` is served at /metrics, ``status_code`` with it."""

    def __init__(self, body: Callable[[], str]) -> None:
        self.body = body
        self.status_code = 200
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests += 1
                data = stub.body().encode()
                code = stub.status_code if self.path == "/metrics" else 404
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.address)


@contextmanager
def serving(body: Callable[[], str]) -> Iterator[Stub]:
    stub = Stub(body)
    thread = threading.Thread(target=stub.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()
        thread.join(5)


def dead_address() -> str:
    """An address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


# -- parsing --------------------------------------------------------------------------------------------------


def test_parse_reads_every_domain_and_derives_states() -> None:
    snap = parse_metrics(metrics(), taken_at=1.0)
    assert sorted(snap.domains) == [1, 4, 5, 6]
    assert snap.states == {"starting": 0, "running": 3, "backoff": 0, "failed": 1, "stopping": 0}
    d4, d5, d6 = snap.domains[4], snap.domains[5], snap.domains[6]
    assert (d4.mailbox_depth, d4.coalesced, d4.events) == (65, 300, 2)
    assert (d5.failures, d5.restarts) == (6, 5)
    assert d6.coalesced == 5000
    assert not snap.exact_states
    # more failures than restarts and only "failed" holds troubled domains: failed; the rest all run
    assert d5.state == "failed"
    assert {snap.domains[d].state for d in (1, 4, 6)} == {"running"}
    assert snap.reconnects == 2
    assert snap.latency_count == 100 and snap.latency_sum == 3.5
    totals = snap.totals()
    assert totals["domains"] == 4 and totals["coalesced"] == 5300 and totals["mailbox_depth"] == 185


def test_derived_state_shows_candidates_when_counters_cannot_tell() -> None:
    text = metrics().replace('state="backoff"} 0.0', 'state="backoff"} 1.0')
    snap = parse_metrics(text)
    assert snap.domains[5].state == "backoff/failed"


def test_state_gauge_wins_and_hides_gone_domains() -> None:
    snap = parse_metrics(metrics() + STATE_GAUGE)
    assert snap.exact_states
    assert sorted(snap.domains) == [1, 4, 5]  # 6 has counters but no live state: gone
    assert [snap.domains[d].state for d in (1, 4, 5)] == ["running", "running", "failed"]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    snap = parse_metrics(metrics())
    assert snap.latency_quantile(0.5) == pytest.approx(0.001)
    assert snap.latency_quantile(0.7) == pytest.approx(0.001 + 0.009 * 20 / 40)
    assert snap.latency_quantile(0.99) == pytest.approx(0.1)
    assert snap.latency_quantile(1.0) == pytest.approx(1.0)  # in +Inf: the largest finite bound
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(float("inf"), 0.0)]) is None


def test_parse_refuses_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse_metrics("<html>not metrics</html>\n")


def test_rates_between_two_scrapes() -> None:
    before = parse_metrics(metrics(100), taken_at=10.0)
    after = parse_metrics(metrics(150), taken_at=12.0)
    r = rates(before, after)
    assert r[1] == pytest.approx(25.0) and r[4] == 0.0
    assert rates(None, after) == dict.fromkeys(after.domains)
    assert rates(after, parse_metrics(metrics(3), taken_at=13.0))[1] is None  # a counter went back: restart


def test_table_has_every_domain_and_totals() -> None:
    lines = render_table(parse_metrics(metrics()))
    assert lines[0].split() == ["DOMID", "STATE", "MAILBOX", "EVENTS", "COALESCED", "FAILURES", "RESTARTS"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["4"] == ["4", "running", "65", "2", "300", "0", "0"]
    assert rows["5"] == ["5", "failed", "0", "10", "0", "6", "5"]
    assert rows["total"] == ["total", "4", "domains", "185", "162", "5300", "6", "5"]
    assert "failed 1, running 3" in lines[-1] and "reconnects 2" in lines[-1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9477", Endpoint("127.0.0.1", 9477)),
        (":9000", Endpoint("127.0.0.1", 9000)),
        ("[::1]:9477", Endpoint("::1", 9477)),
        ("http://host:81/m", Endpoint("host", 81, "/m")),
    ],
)
def test_endpoint_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize("text", ["nohost", "host:http", "host:70000", "https://host:1/"])
def test_endpoint_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(text)


# -- mtwatch status -----------------------------------------------------------------------------------------


def test_status_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(metrics) as stub:
        assert main_status(["--metrics", stub.address]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(" DOMID")
    assert any(line.split()[:2] == ["5", "failed"] for line in out)


def test_status_json(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(lambda: metrics() + STATE_GAUGE) as stub:
        assert main_status(["--json", "--metrics", stub.address]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["endpoint"] == f"http://{stub.address}/metrics"
    assert data["states_exact"] is True
    assert [d["domid"] for d in data["domains"]] == [1, 4, 5]
    assert data["domains"][2] == {
        "domid": 5,
        "state": "failed",
        "mailbox_depth": 0,
        "events": 10,
        "coalesced": 0,
        "failures": 6,
        "restarts": 5,
    }
    assert data["totals"]["reconnects"] == 2
    assert data["latency"]["p99_seconds"] == pytest.approx(0.1)


def test_status_unreachable_is_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_status(["--metrics", dead_address(), "--timeout", "2"]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "connection refused" in captured.err


def test_status_http_error_and_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(metrics) as stub:
        stub.status_code = 503
        assert main_status(["--metrics", stub.address]) == 1
        assert "HTTP 503" in capsys.readouterr().err
    with serving(lambda: "<html>hello</html>\n") as stub:
        assert main_status(["--metrics", stub.address]) == 1
        assert "not Prometheus text" in capsys.readouterr().err


def test_status_times_out_on_a_silent_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert main_status(["--metrics", f"127.0.0.1:{port}", "--timeout", "0.2"]) == 1
    assert "timed out" in capsys.readouterr().err


async def test_fetch_async_matches_fetch() -> None:
    with serving(metrics) as stub:
        with trio.fail_after(5):
            text = await status.fetch_async(stub.endpoint)
            snap = await status.scrape_async(stub.endpoint)
        assert text == metrics()
        assert sorted(snap.domains) == [1, 4, 5, 6]
    with trio.fail_after(5), pytest.raises(MetricsUnreachable):
        await status.fetch_async(Endpoint.parse(dead_address()))


def test_http_body_handles_chunked_and_errors() -> None:
    endpoint = Endpoint("h", 1)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert status._http_body(endpoint, raw) == "hello world"
    with pytest.raises(MetricsUnreachable, match="HTTP 404"):
        status._http_body(endpoint, b"HTTP/1.0 404 Not Found\r\n\r\n")
    with pytest.raises(MetricsUnreachable, match="not an HTTP response"):
        status._http_body(endpoint, b"garbage")


# -- mtwatch top --------------------------------------------------------------------------------------------


def test_top_refreshes_with_rates(capsys: pytest.CaptureFixture[str]) -> None:
    counter = iter(range(100, 10_000, 40))
    with serving(lambda: metrics(next(counter))) as stub:
        assert main_top(["--metrics", stub.address, "--interval", "0.1", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no terminal: plain lines
    tables = [block for block in out.split("\n\n") if block.strip()]
    assert len(tables) == 3
    first = {line.split()[0]: line.split() for line in tables[0].splitlines()[2:]}
    last = {line.split()[0]: line.split() for line in tables[2].splitlines()[2:]}
    assert "EVENTS/S" in tables[0]
    assert first["1"][3] == "-"  # one scrape: no rate yet
    assert float(last["1"][3]) > 0 and float(last["4"][3]) == 0


def test_top_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_top(["--metrics", dead_address(), "--interval", "0.1"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_top_exits_when_the_agent_goes_away(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(metrics) as stub:
        address = stub.address

        def body() -> str:
            if stub.requests > 1:
                stub.status_code = 500
            return metrics()

        stub.body = body
        assert main_top(["--metrics", address, "--interval", "0.05"]) == 1
    assert "HTTP 500" in capsys.readouterr().err


def test_top_quits_on_q_from_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import termios

    master, slave = os.openpty()

    def body() -> str:
        os.write(master, b"q")  # pressed once top shows its first table (cbreak mode is on by then)
        return metrics()

    try:
        with os.fdopen(os.dup(slave), "r") as tty_in, serving(body) as stub:
            monkeypatch.setattr(sys, "stdin", tty_in)
            out = io.StringIO()
            monkeypatch.setattr(sys, "stdout", out)
            assert main_top(["--metrics", stub.address, "--interval", "2", "-n", "3"]) == 0
            assert stub.requests == 1  # q, not the -n limit, ended it
            assert "(q quits)" in out.getvalue()
            assert termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak undone
    finally:
        os.close(master)
        os.close(slave)


def test_cli_dispatches_status(capsys: pytest.CaptureFixture[str]) -> None:
    from actors.cli import main

    with serving(metrics) as stub:
        assert main(["status", "--metrics", stub.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["domains"] == 4


# -- against the real agent -----------------------------------------------------------------------------------

needs_agent = pytest.mark.skipif(
    not (Path(__file__).resolve().parent.parent / "actors" / "agent" / "daemon.py").exists(),
    reason="mtwatch agent (actors/agent/daemon.py) not there yet",
)


@needs_agent
@pytest.mark.slow
async def test_status_and_top_against_the_real_agent(
    xenstored: Any, xs: actors.XenStore, workdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = int(dead_address().rsplit(":", 1)[1])
    address = f"127.0.0.1:{port}"
    config = Path(workdir) / "agent.toml"
    config.write_text(
        f'[xenstore]\nsocket = "{xenstored.socket_path}"\n[metrics]\nlisten = "{address}"\n'
        "[restart]\nmax_restarts = 1\nbackoff_initial = 0.05\nbackoff_max = 0.05\n"
        '[[watch]]\npath = "/local/domain/{domid}/data/ping"\ncall = "actors.agent.demo_handlers:ping"\n'
        '[[watch]]\npath = "/local/domain/{domid}/data/crash"\ncall = "actors.agent.demo_handlers:crash"\n'
    )
    argv = [sys.executable, "-m", "actors.cli", "agent", "--config", str(config)]

    async def status_json() -> dict[str, Any]:
        capsys.readouterr()
        code = await trio.to_thread.run_sync(main_status, ["--json", "--metrics", address])
        out = capsys.readouterr().out
        return json.loads(out) if code == 0 else {}

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent: trio.Process = await nursery.start(
                functools.partial(trio.run_process, argv, stderr=subprocess.DEVNULL, check=False)
            )
            await actors.announce_domain(xs, 3, identity="guest-3")
            await actors.announce_domain(xs, 9, identity="guest-9")

            async def until(ok: Callable[[dict[int, dict[str, Any]]], bool]) -> dict[str, Any]:
                while True:
                    data = await status_json()
                    if ok({d["domid"]: d for d in data.get("domains", [])}):
                        return data
                    await trio.sleep(0.05)

            await until(lambda rows: all(rows.get(d, {}).get("state") == "running" for d in (3, 9)))
            for n in range(5):
                await xs.write(f"/local/domain/3/data/ping/{n}", f"{time.monotonic():.6f}")
            await xs.write("/local/domain/9/data/crash", "poison")
            data = await until(lambda rows: rows[3]["events"] >= 7 and rows[9]["state"] == "failed")
            rows = {d["domid"]: d for d in data["domains"]}
            assert data["states_exact"] is True  # the agent exports mtwatch_domain_state
            assert rows[3]["state"] == "running" and rows[3]["failures"] == 0
            assert rows[9]["failures"] == 2 and rows[9]["restarts"] == 1
            assert data["totals"]["states"]["running"] == 1 and data["totals"]["states"]["failed"] == 1
            assert data["latency"]["count"] >= 5

            capsys.readouterr()
            code = await trio.to_thread.run_sync(
                main_top, ["--metrics", address, "--interval", "0.2", "-n", "2"]
            )
            assert code == 0
            table = capsys.readouterr().out.split("\n\n")[1].splitlines()
            rows_top = {line.split()[0]: line.split() for line in table[2:]}
            assert rows_top["3"][:2] == ["3", "running"] and rows_top["9"][:2] == ["9", "failed"]

            agent.send_signal(signal.SIGTERM)
            await agent.wait()
    assert agent.returncode == 0
    assert main_status(["--metrics", address]) == 1  # gone: one line, non-zero
    assert "connection refused" in capsys.readouterr().err
