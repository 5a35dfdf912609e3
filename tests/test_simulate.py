"""simulate.py against a real monitor: paced traffic, delayed labels, drift switched on mid-run, a
bounded run; and its command line."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from evaluation import simulate
from monitor import MonitorConfig, start_monitor


@pytest.fixture
def monitor(small_artifact):
    handle = start_monitor(MonitorConfig(host="127.0.0.1", port=0, check_interval=0.5, window=300,
                                         label_window=300, db_path=None),
                           artifact=small_artifact, registry=CollectorRegistry())
    yield handle
    handle.stop()


def test_a_run_sends_paced_rows_labels_them_later_and_switches_drift_on(monitor):
    lines = []
    options = simulate.Options(url=monitor.url, rate=300, batch=20, label_delay=0.3, duration=5.0,
                               scenarios=("large_stones", "price_up_25"), drift_after=(None, 300), report_every=1.0, seed=3)
    started = time.monotonic()
    summary = simulate.run(options, out=lines.append)
    elapsed = time.monotonic() - started

    assert elapsed < options.duration + 3, "the run is bounded by --duration"
    assert summary.errors == 0, lines
    assert 0.6 * 300 * 5 <= summary.rows_sent <= 300 * 5 + 20, "about --rate rows per second"
    assert summary.requests * 20 == summary.rows_sent
    assert summary.labels_sent == summary.labels_accepted > 0 and summary.labels_unknown == 0
    assert summary.labels_sent + summary.labels_pending == summary.rows_sent
    assert summary.drift_started_after is not None and summary.drift_started_after < 3
    assert any("drift on:" in line for line in lines)
    assert sum(line.startswith("[") for line in lines) >= 4, "a progress line now and then"
    report = summary.last_drift_report
    assert report["data_drift"]["detected"] and report["data_drift"]["features"]["carat"]["detected"]
    assert report["concept_drift"]["detected"]
    assert "data drift: YES" in lines[-2] and "concept drift: YES" in lines[-2]


def test_clean_traffic_without_a_scenario_never_switches(monitor):
    lines = []
    summary = simulate.run(simulate.Options(url=monitor.url, rate=200, batch=50, label_delay=0, duration=1.5,
                                            report_every=10), out=lines.append)
    assert summary.drift_started_after is None and summary.rows_sent > 0 and summary.errors == 0
    assert "no drift" in lines[0]


def test_an_unreachable_monitor_is_counted_not_fatal():
    lines = []
    summary = simulate.run(simulate.Options(url="http://127.0.0.1:9", rate=50, duration=1.0, report_every=10),
                           out=lines.append)
    assert summary.rows_sent == 0 and 1 <= summary.errors <= 4, "retried once a second, not hammered"
    assert sum(line.startswith("error (") for line in lines) == 1, "errors are reported, not flooded"


def test_main_waits_for_health_then_gives_up(capsys):
    assert simulate.main(["--url", "http://127.0.0.1:9", "--wait", "0"]) == 1
    assert "did not answer /healthz" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("300", (300.0, None)), ("45s", (45.0, None)),
                                            ("2000rows", (None, 2000)), ("0", (0.0, None))])
def test_drift_after_takes_seconds_or_rows(text, expected):
    assert simulate.parse_drift_after(text) == expected


def test_options_come_from_the_environment_and_are_validated(monkeypatch, capsys):
    monkeypatch.setenv("SIMULATE_RATE", "7.5")
    monkeypatch.setenv("SIMULATE_SCENARIO", "cut_mix,price_up_20")
    monkeypatch.setenv("SIMULATE_DRIFT_AFTER", "500rows")
    monkeypatch.setenv("MONITOR_TOKEN", "t0ken")
    options = simulate.parse_args(["--duration", "60"])
    assert options.rate == 7.5 and options.scenarios == ("cut_mix", "price_up_20")
    assert (options.drift_after_seconds, options.drift_after_rows) == (None, 500)
    assert options.duration == 60 and options.token == "t0ken"
    for bad in (["--scenario", "no_such_thing"], ["--rate", "0"], ["--duration", "-1"],
                ["--label-fraction", "2"], ["--drift-after", "soon"]):
        with pytest.raises(SystemExit):
            simulate.parse_args(bad)
    assert "no_such_thing" in capsys.readouterr().err


def test_help_shows_defaults_and_environment_names(capsys):
    with pytest.raises(SystemExit):
        simulate.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("env SIMULATE_RATE; default: 20.0", "env SIMULATE_DURATION", "--label-delay", "2000rows"):
        assert needle in text
