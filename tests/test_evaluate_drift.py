"""evaluate_drift.py --through-api: the scenarios streamed through a real monitor's HTTP API."""
from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from evaluation import evaluate_drift
from monitor import MonitorConfig, start_monitor

# Short streams on the 20-tree model: a window of 200, a check every 50 rows.
SHORT = ["--seeds", "1", "--jobs", "1", "--window", "200", "--check-every", "50"]


def test_through_api_detects_the_drifted_scenario_and_prints_the_table(small_artifact_path, tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert evaluate_drift.main(["--through-api", "--model", str(small_artifact_path), *SHORT,
                                "--scenarios", "clean", "price_up_25", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Mode: through the HTTP API")
    assert "False alarms on clean traffic: data drift" in table
    assert "| price_up_25 | concept | prices 25% higher for the same stones | 100% |" in table
    assert "| clean |" not in table

    saved = json.loads(out.read_text())
    assert saved["mode"] == "through-api" and saved["args"]["through_api"] is True
    runs = {r["scenario"]: r for r in saved["runs"]}
    assert set(runs) == {"clean", "price_up_25"}
    # the clean run's checks are counted (the window of 200 fills within its 800 warm-up rows)
    assert runs["clean"]["clean_checks"] > 10 and runs["clean"]["delay"] is None
    assert runs["price_up_25"]["delay"] is not None and runs["price_up_25"]["delay"] <= 200


def test_through_api_gives_the_in_process_records_seed_for_seed(small_artifact_path):
    """Same rows, references, windows and tests: the HTTP path must not change a single flag."""
    argv = ["--model", str(small_artifact_path), *SHORT, "--scenarios", "clean", "large_stones", "price_up_25"]
    in_process = evaluate_drift.run_evaluation(evaluate_drift.parse_args(argv))
    through_api = evaluate_drift.run_evaluation(evaluate_drift.parse_args(argv + ["--through-api"]))
    assert through_api["runs"] == in_process["runs"]
    detected = {r["scenario"]: r["delay"] for r in through_api["runs"]}
    assert detected["large_stones"] is not None and detected["price_up_25"] is not None
    # the CUSUMs' alarms came through the API too (sequential.alarms), at the same rows, before a check
    cusum = {r["scenario"]: (r["delay_cusum"], r["delay_tests"]) for r in through_api["runs"]}
    assert cusum["price_up_25"][0] is not None and cusum["price_up_25"][0] < cusum["price_up_25"][1]
    assert detected["price_up_25"] == cusum["price_up_25"][0]  # the delay at row resolution


def test_http_sink_raises_on_a_refused_request(small_artifact):
    """A monitor that refuses the labels (here: a token the sink does not send) stops the run
    instead of being counted as 'no drift'."""
    handle = start_monitor(MonitorConfig(port=0, check_interval=0, window=50, label_window=50, db_path=None,
                                         token="secret"), artifact=small_artifact, registry=CollectorRegistry())
    try:
        frame = small_artifact["reference_features"].iloc[:10].copy()
        frame["price"] = 1000.0
        frame["predicted"] = 1000.0
        traffic = evaluate_drift.Traffic(frame, {})
        with evaluate_drift.http_sink(handle.url) as sink:
            with pytest.raises(evaluate_drift.ApiError, match="/feedback: HTTP 401"):
                sink(traffic, 0, 10)
    finally:
        handle.stop()


def test_payload_is_json_objects_with_grades_as_strings(small_artifact):
    frame = small_artifact["reference_features"].iloc[:3].copy()
    traffic = evaluate_drift.Traffic(frame.assign(price=1.0, predicted=1.0), {})
    payload = traffic.payload()
    assert len(payload) == 3 and list(payload[0]) == ["carat", "cut", "color", "clarity", "depth", "table"]
    for row, (_, expected) in zip(payload, frame.iterrows()):
        assert all(type(row[k]) is str and row[k] == str(expected[k]) for k in ("cut", "color", "clarity"))
        assert all(type(row[k]) is float and row[k] == float(expected[k]) for k in ("carat", "depth", "table"))
    assert json.loads(json.dumps(payload)) == payload


def test_the_classifier_example_reports_false_alarms_and_delays(capsys):
    """evaluate_drift --example classifier: the class-mix shift is data drift, one class's labels
    flipped is concept drift (a small forest, two seeds, a window of 300)."""
    assert evaluate_drift.main(["--example", "classifier", "--seeds", "2", "--n-estimators", "10", "--jobs", "1",
                                "--window", "300", "--check-every", "50"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Model classifier: held-out accuracy 0.")
    assert "False alarms on clean traffic: data drift" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| data | worse cuts more common" in rows["class_mix"]
    assert "| concept | labels flipped for one class: Premium labelled Ideal | 100% |" in rows["premium_as_ideal"]
