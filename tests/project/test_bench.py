"""scripts/bench.py runs every scenario at tiny sizes and prints its JSON (a smoke test so the bench cannot rot:
it asserts no timing, only the shape of the report and that the counts add up)."""

from __future__ import annotations

import json
import sys

import pytest
import trio

from harness.build import PROJECT_ROOT

BENCH = PROJECT_ROOT / "scripts" / "bench.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    async def run() -> bytes:
        with trio.fail_after(280):
            done = await trio.run_process(
                [sys.executable, str(BENCH), "--quick"], capture_stdout=True, capture_stderr=True
            )
        return done.stdout

    parsed: dict[str, object] = json.loads(trio.run(run))
    return parsed


def section(report: dict[str, object], name: str) -> dict[str, object]:
    value = report[name]
    assert isinstance(value, dict)
    return value


def test_events_stream_every_consumer_counts_every_event(report: dict[str, object]) -> None:
    stream = section(report, "events-stream")
    for consumer in ("decoder", "pyxs", "client", "client_batch", "runtime"):
        figures = section(stream, consumer)
        assert figures["events"] == stream["events"], consumer
        assert isinstance(figures["events_per_s"], int) and figures["events_per_s"] > 0
    assert set(section(stream, "ratios")) >= {"runtime_vs_pyxs", "runtime_vs_client"}


def test_scale_measures_both_lifecycles_beside_the_floor(report: dict[str, object]) -> None:
    scale = section(report, "scale")
    keys = {"seconds_until_all_run", "rss_bytes_per_actor", "heap_bytes_per_actor", "seconds_to_leave"}
    assert set(section(scale, "floor")) >= keys
    for lifecycle in ("mtwatch_tree", "stock_host"):
        side = section(scale, lifecycle)
        assert set(side) >= keys
        assert isinstance(side["heap_bytes_per_actor"], int) and side["heap_bytes_per_actor"] > 0
        assert set(section(side, "ratios")) == {
            "start_vs_floor",
            "start_cpu_vs_floor",
            "rss_vs_floor",
            "heap_vs_floor",
        }


def test_costs_of_the_watchdog_and_the_nursery_side_by_side(report: dict[str, object]) -> None:
    costs = section(report, "costs")
    watchdog = section(costs, "watchdog")
    for side in ("with", "without"):
        figures = section(watchdog, side)
        assert isinstance(figures["heap_bytes_per_actor"], int) and figures["heap_bytes_per_actor"] > 0
        events = section(figures, "events_stream")
        assert isinstance(events["events_per_s"], int) and events["events_per_s"] > 0
    nursery = section(costs, "nursery")
    assert set(nursery) == {
        "floor_with_nursery",
        "floor_without_nursery",
        "heap_bytes_per_nursery",
        "rss_bytes_per_nursery",
    }
    assert isinstance(nursery["heap_bytes_per_nursery"], int)


def test_latency_handles_every_event(report: dict[str, object]) -> None:
    latency = section(report, "latency")
    assert latency["handled"] == latency["events"]
    p50, p99, top = latency["latency_p50_ms"], latency["latency_p99_ms"], latency["latency_max_ms"]
    assert isinstance(p50, float) and isinstance(p99, float) and isinstance(top, float)
    assert 0 <= p50 <= p99 <= top


def test_queues_report_every_kind(report: dict[str, object]) -> None:
    queues = section(report, "queues")
    for kind in ("mailbox", "queue", "queue_batch"):
        assert set(section(queues, kind)) == {"post_ns", "receive_ns"}


def test_stock_host_reports_every_daemon(report: dict[str, object]) -> None:
    stock = section(report, "stock-host")
    for daemon in ("embedded_4_22_watch_depth", "embedded_4_17"):
        for figures in section(stock, daemon).values():
            assert isinstance(figures, dict) and set(figures) == {
                "create_to_running_ms",
                "destroy_to_gone_ms",
                "release_first_to_gone_ms",
            }


def test_xenstored_and_flood_report(report: dict[str, object]) -> None:
    embedded = section(section(report, "xenstored"), "embedded")
    assert isinstance(embedded["ops"], int) and embedded["ops"] > 0
    flood = section(report, "flood")
    for daemon in ("embedded", "cxenstored"):
        figures = section(flood, daemon)
        if "unavailable" in figures:
            continue
        for name in ("one_path", "many_paths"):
            run = section(figures, name)
            # Lossless: the flooded domain's handler ends up with the last value of every path.
            assert run["final_value_seen_after_s"] is not None, (daemon, name)
            assert isinstance(run["others_p99_reader_to_handler_ms"], float), (daemon, name)
            assert isinstance(run["throttled_at_end"], bool), (daemon, name)
            # Consistent: a domain throttled at the flood's end was throttled at least once.
            assert isinstance(run["throttles"], int), (daemon, name)
            assert run["throttles"] >= int(run["throttled_at_end"]), (daemon, name)
        floor = section(figures, "unwatched_floor")
        assert isinstance(floor["others_p99_reader_to_handler_ms"], float), daemon


def test_flood_cost_accounts_for_every_event(report: dict[str, object]) -> None:
    cost = section(report, "flood-cost")
    events = cost["events"]
    assert section(cost, "noop")["handled"] == events
    for mode in ("busy", "busy_unthrottled", "throttled"):
        figures = section(cost, mode)
        assert isinstance(figures["us_per_event"], float) and figures["us_per_event"] > 0, mode
        assert isinstance(figures["within_target"], bool), mode
    for mode in ("busy", "throttled"):  # flood control on: every event handled, folded in or dropped
        figures = section(cost, mode)
        accounted = ("handled", "coalesced", "dropped_by_runtime", "dropped_by_client")
        assert sum(figures[key] for key in accounted) == events, (mode, figures)  # type: ignore[misc]
        assert figures["throttled"] is True, mode


def test_sandbox_measures_the_kit(report: dict[str, object]) -> None:
    kit = section(report, "sandbox")
    assert kit["rounds"] == 3 and kit["target_start_ms"] == 50
    for part in ("start", "leave", "runtime_ready", "create_domain_to_running"):
        figures = section(kit, part)
        assert set(figures) == {"first_ms", "median_ms", "max_ms"}
        assert all(isinstance(v, float) and v > 0 for v in figures.values()), part


def test_quota_reads_every_domain_on_every_daemon(report: dict[str, object]) -> None:
    quota = section(report, "quota")
    for daemon in ("embedded_4_22", "embedded_4_17", "cxenstored_4_17"):
        figures = section(quota, daemon)
        if "unavailable" in figures:
            continue
        assert figures["domains_read"] == figures["domains"] and figures["state"] == "cxenstored"
        assert set(figures) >= {
            "round_s_median",
            "loop_held_ms_max",
            "longest_step_cpu_ms",
            "longest_gc_pause_cpu_ms",
            "longest_step_without_gc_cpu_ms",
        }


def test_workers_every_case_reports_whether_the_runtime_survived_and_what_was_charged(
    report: dict[str, object],
) -> None:
    workers = section(report, "workers")
    for isolation in ("process", "thread"):
        cases = section(workers, isolation)
        assert set(cases) == {"spin", "allocate", "segfault", "exit"}
        for fault in cases:
            case = section(cases, fault)
            if case["runtime"] != "up":
                assert isolation == "thread" and fault in ("segfault", "exit"), (isolation, fault, case)
                continue
            assert (
                set(section(case, "calm"))
                == set(section(case, "fault"))
                == {
                    "healthy_p99_write_to_handler_ms",
                    "healthy_pings_handled",
                    "healthy_pings_per_s",
                    "loop_late_max_ms",
                }
            )
            assert section(case, "calm")["healthy_pings_handled"]
    for fault in (
        "spin",
        "allocate",
        "segfault",
        "exit",
    ):  # a process handler's fault never kills the runtime
        case = section(section(workers, "process"), fault)
        assert case["runtime"] == "up" and case["healthy_failures"] == 0, (fault, case)
    cost = section(workers, "call_cost")
    for kind in ("inline", "thread", "process"):
        assert set(section(cost, kind)) == {"p50_ms", "p99_ms"}


def test_flood_burst_measures_calm_and_burst_in_one_run_on_both_daemons(report: dict[str, object]) -> None:
    burst = section(report, "flood-burst")
    for daemon in ("embedded", "cxenstored"):
        figures = section(burst, daemon)
        if "unavailable" in figures:
            continue
        assert figures["calm_samples"] and figures["burst_samples"], daemon  # both measured, side by side
        for key in ("calm_p99_reader_to_handler_ms", "burst_p99_reader_to_handler_ms"):
            assert isinstance(figures[key], float) and figures[key] > 0, (daemon, key)
        assert isinstance(figures["throttles"], int), daemon
        seen = figures["final_values_seen_after_s"]
        assert isinstance(seen, list) and len(seen) == figures["bursts"], daemon
        assert all(value is not None for value in seen), (daemon, seen)  # lossless: every last value read


def test_stall_counts_what_a_stopped_daemon_costs_the_domains(report: dict[str, object]) -> None:
    stall = section(report, "stall")
    for daemon in ("embedded", "cxenstored"):
        figures = section(stall, daemon)
        if "unavailable" in figures:
            continue
        after = section(figures, "after_all_stops")
        assert set(after) >= {"domains_charged", "domains_failed", "cut_short", "last_value_handled"}
        assert after["last_value_handled"] == after["domains"], (daemon, after)
        assert after["domains_charged"] == 0 and after["domains_failed"] == 0, (daemon, after)


def test_scale_reports_the_loops_lateness_in_every_phase(report: dict[str, object]) -> None:
    lateness = section(section(report, "scale"), "loop_lateness")
    runs = {key: value for key, value in lateness.items() if key != "targets"}
    assert len(runs) == 3  # two sizes, and the larger once more without the runtime's gc.freeze
    for key, run in runs.items():
        assert isinstance(run, dict)
        for phase in ("start", "snapshot", "churn", "leave"):
            figures = section(run, phase)
            for name in ("seconds", "cpu_seconds", "loop_late_max_ms", "loop_held_max_ms", "gc_seconds"):
                assert isinstance(figures[name], int | float) and figures[name] >= 0, (key, phase, name)
        assert section(run, "snapshot")["metrics_bytes"] > run["domains"] * 100  # type: ignore[operator]
        assert (run["gc_freeze_at"] is None) == key.endswith("_without_gc_freeze")


def test_agent_reports_every_figure_beside_the_runtime(report: dict[str, object]) -> None:
    agent = section(report, "agent")
    (size,) = (key for key in agent if key.isdigit())
    figures = section(agent, size)
    assert isinstance(figures["seconds_to_healthy"], float) and figures["seconds_to_healthy"] > 0
    assert isinstance(figures["idle_cpu_percent"], float)
    scrape = section(figures, "scrape")
    assert scrape["whole"] is True and scrape["bytes"] > int(size) * 100  # type: ignore[operator]
    status = section(figures, "status")
    assert status["exit_status"] == 0 and status["rows"] == int(size)  # fewer than the default 50 rows
    assert set(section(figures, "loop_held_max_ms")) == {"start", "scrape", "status", "status_all"}
    assert set(section(figures, "ratios")) == {"healthy_vs_runtime_start", "rss_per_domain_vs_runtime"}
