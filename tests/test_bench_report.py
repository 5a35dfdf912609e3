"""bench.py's drift report step (--report-page) against a real monitor: it reports the render cost
per check, the page's size and p99 with and without page views, and reads them into the report.
No timing is asserted (a busy test machine must not fail the suite): the benchmark is the measure."""
from __future__ import annotations

import importlib.util
import os

import pytest
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from tests.observability import ROOT

spec = importlib.util.spec_from_file_location("bench_module", ROOT / "bench" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def measured(small_artifact, tmp_path_factory):
    args = bench.parse_args(["--quick", "--report-page", "--report-duration", "1", "--report-rate", "20"])
    rows, prices = bench.heldout()
    rows_file = tmp_path_factory.mktemp("bench-report") / "rows.jsonl"
    rows_file.write_text("".join(bench.json.dumps(r) + "\n" for r in rows[:200]))
    registry = CollectorRegistry()
    handle = start_monitor(MonitorConfig(port=0, check_interval=0, window=300, label_window=300, db_path=None),
                           artifact=small_artifact, registry=registry)
    try:
        port = handle.server.server_address[1]
        bench.fill_windows(port, rows, prices, 300)
        render = bench.report_render_cost(port, 2, os.getpid(), views=200)
        during = bench.report_views_during_load(port, os.getpid(), rows_file, args, args.report_duration)
        # a CUSUM alarm on the streamed rows may run one more check (its own thread): count them all
        renders = (handle.monitor.report_page.renders, registry.get_sample_value("drift_checks_total"))
    finally:
        handle.stop()
    return args, render, during, renders


def test_the_render_cost_and_size_are_reported(measured):
    _, render, _, _ = measured
    assert render["checks"] == 2
    assert 0 < render["render_median_ms"] <= render["render_max_ms"] and render["render_cpu_median_ms"] > 0
    assert render["cached_view_median_ms"] > 0 and render["first_view_median_ms"] > 0
    assert render["view_server_cpu_us"] > 0
    assert 0 < render["page_gzip_kb"] < render["page_kb"]


def test_views_run_beside_wrk_and_each_check_is_drawn_once(measured):
    args, _, during, renders = measured
    assert during["rounds"] == 1 and len(during["without_views"]) == 2 and len(during["with_views"]) == 1
    assert during["views"] > 0 and during["view_failures"] == 0 and during["errors"] == 0
    for run in during["without_views"] + during["with_views"]:
        assert run["requests"] > 0 and 0 < run["p99_ms"]
    assert during["render_ms_under_load"][0] > 0
    # two checks of report_render_cost and one before the run with views (plus any check a CUSUM alarm
    # ran between them): at most one render per check, however many views
    renders, checks = renders
    assert 3 <= renders <= checks < during["views"]
    assert during["p99_noise_ms"] >= 0


def test_the_figures_reach_the_targets_and_the_markdown(measured):
    args, render, during, _ = measured
    results = {"machine": bench.machine_info(), "command": "python bench/bench.py --report-page",
               "settings": {"connections": args.connections, "threads": args.threads, "duration_s": args.duration,
                            "warmup_s": args.warmup, "batch_duration_s": args.batch_duration},
               "single": {}, "batch": {}, "drift": {}, "memory": {}, "store": {"db_option": True},
               "model": {"file_mb": 1.0},
               "report_page": {"render": {"300": render}, "during_load": {"window": 300, "rate": 20.0, **during}}}
    results["targets"] = bench.evaluate(results)
    (target,) = [t for t in results["targets"] if "report views/s" in t["target"]]
    assert isinstance(target["met"], bool) and f"{during['p99_with_median_ms']} ms with" in target["measured"]
    text = bench.render(results)
    assert "### Drift report page" in text and f"| 300 | {render['render_median_ms']:.1f} |" in text
    assert "1. without views" in text and "2. with views" in text and "3. without views" in text
