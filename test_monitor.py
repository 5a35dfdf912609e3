"""The monitor's HTTP API, on a real server bound to port 0, with a fresh metrics registry each."""
from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

import monitor as monitor_module
from monitor import MonitorConfig, start_monitor
from tests.helpers import as_payload, heldout_frame, metric_value, request

CURL_EXAMPLE = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}


@pytest.fixture(scope="module")
def heldout():
    return heldout_frame()


@pytest.fixture
def server(small_artifact_path, small_artifact, tmp_path):
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0, window=300, label_window=200,
                           db_path=tmp_path / "monitor.db")
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    yield handle
    handle.stop()


def _metrics(server) -> str:
    status, _, text = request(server.url, "GET", "/metrics")
    assert status == 200
    return text


# ---------------------------------------------------------------------------------------------- predict

def test_predict_one_row_matches_the_pipeline(server, small_artifact):
    status, _, body = request(server.url, "POST", "/predict", CURL_EXAMPLE)
    assert status == 200
    expected = small_artifact["pipeline"].predict(pd.DataFrame([CURL_EXAMPLE]))[0]
    assert body["prediction"] == expected
    assert isinstance(body["id"], str) and len(body["id"]) == 32


def test_predict_a_list_returns_predictions_and_ids_in_order(server, small_artifact, heldout):
    rows = heldout.iloc[:50]
    status, _, body = request(server.url, "POST", "/predict", as_payload(rows))
    assert status == 200
    expected = small_artifact["pipeline"].predict(rows[list(small_artifact["schema"]["features"][i]["name"]
                                                            for i in range(6))])
    assert body["predictions"] == expected.tolist()
    assert len(set(body["ids"])) == 50


def test_every_served_input_joins_the_data_window(server, heldout):
    request(server.url, "POST", "/predict", as_payload(heldout.iloc[:40]))
    request(server.url, "POST", "/predict", CURL_EXAMPLE)
    assert len(server.monitor.inputs) == 41
    # a request's latency is observed once its response is sent, so a scrape can come first: wait (bounded)
    for _ in range(100):
        text = _metrics(server)
        if metric_value(text, "prediction_latency_seconds_count") == 2:
            break
        time.sleep(0.02)
    assert metric_value(text, "predictions_total") == 41
    assert metric_value(text, "prediction_requests_total") == 2
    assert metric_value(text, "prediction_latency_seconds_count") == 2
    assert metric_value(text, "predicted_value_count") == 41


# --------------------------------------------------------------------------------------------- feedback

def test_feedback_joins_labels_to_predictions_and_reports_unknown_ids(server, heldout):
    _, _, body = request(server.url, "POST", "/predict", as_payload(heldout.iloc[:3]))
    labels = [{"id": i, "actual": float(p)} for i, p in zip(body["ids"], heldout.price.iloc[:3])]
    labels.append({"id": "not-a-prediction", "actual": 1000})
    status, _, reply = request(server.url, "POST", "/feedback", labels)
    assert status == 200
    assert reply == {"accepted": 3, "unknown": ["not-a-prediction"]}
    actual, predicted = server.monitor.labelled.snapshot()
    assert actual.tolist() == [float(p) for p in heldout.price.iloc[:3]]
    assert predicted.tolist() == body["predictions"]
    text = _metrics(server)
    assert metric_value(text, "labels_received_total") == 3
    assert metric_value(text, "labels_unknown_total") == 1


@pytest.mark.parametrize("with_store", [True, False])
def test_a_resent_label_is_accepted_but_enters_the_window_once(small_artifact_path, small_artifact, tmp_path,
                                                                with_store):
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0,
                           db_path=tmp_path / "monitor.db" if with_store else None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        ids = request(handle.url, "POST", "/predict", [CURL_EXAMPLE] * 3)[2]["ids"]
        labels = [{"id": i, "actual": 1700.0} for i in ids]
        assert request(handle.url, "POST", "/feedback", labels)[2]["accepted"] == 3
        assert request(handle.url, "POST", "/feedback", labels[:2])[2]["accepted"] == 2  # a client's retry
        assert len(handle.monitor.labelled) == 3
        assert metric_value(_metrics(handle), "labels_received_total") == 5
    finally:
        handle.stop()


def test_feedback_accepts_a_single_object(server):
    _, _, body = request(server.url, "POST", "/predict", CURL_EXAMPLE)
    status, _, reply = request(server.url, "POST", "/feedback", {"id": body["id"], "actual": 1700})
    assert (status, reply) == (200, {"accepted": 1, "unknown": []})


# ----------------------------------------------------------------------------------------------- drift

def test_drift_report_before_and_after_a_check(server, heldout):
    status, _, body = request(server.url, "GET", "/drift")
    assert status == 200 and body["checked_at"] is None

    request(server.url, "POST", "/predict", as_payload(heldout.iloc[:200]))
    status, _, report = request(server.url, "POST", "/drift/check")
    assert status == 200
    assert report["checked_at"]
    data, concept = report["data_drift"], report["concept_drift"]
    assert data["window_size"] == 200
    assert set(data["features"]) == {"carat", "cut", "color", "clarity", "depth", "table"}
    for feature in data["features"].values():
        assert {"test", "statistic", "p_value", "detected"} <= set(feature)
    assert {"score", "detected", "labelled_size", "mse", "reference_mse"} <= set(concept)
    assert request(server.url, "GET", "/drift")[2] == report

    text = _metrics(server)
    assert metric_value(text, "drift_checks_total") == 1
    assert metric_value(text, "drift_window_samples", {"window": "inputs"}) == 200
    assert not math.isnan(metric_value(text, "data_drift_feature_p_value", {"feature": "carat"}))


def _stream(server, frame, batch=50, label_factor=None):
    """Predict frame's rows through the API; with label_factor, send price*factor as labels."""
    for start in range(0, len(frame), batch):
        chunk = frame.iloc[start:start + batch]
        status, _, body = request(server.url, "POST", "/predict", as_payload(chunk))
        assert status == 200
        if label_factor is not None:
            labels = [{"id": i, "actual": float(p) * label_factor} for i, p in zip(body["ids"], chunk.price)]
            assert request(server.url, "POST", "/feedback", labels)[2]["unknown"] == []


def test_clean_traffic_is_not_flagged(server, heldout):
    _stream(server, heldout.sample(300, random_state=1), label_factor=1.0)
    report = request(server.url, "POST", "/drift/check")[2]
    assert report["data_drift"]["detected"] is False
    assert report["concept_drift"]["detected"] is False


def test_larger_stones_are_flagged_as_data_drift_on_carat(server, heldout):
    large = heldout[heldout.carat > 1.2].sample(300, random_state=2, replace=True)
    _stream(server, large)
    report = request(server.url, "POST", "/drift/check")[2]
    assert report["data_drift"]["detected"] is True
    assert report["data_drift"]["features"]["carat"]["detected"] is True
    assert metric_value(_metrics(server), "data_drift_detected") == 1


def test_higher_prices_for_the_same_inputs_are_flagged_as_concept_drift(server, heldout):
    _stream(server, heldout.sample(200, random_state=4), label_factor=1.25)
    report = request(server.url, "POST", "/drift/check")[2]
    assert report["data_drift"]["detected"] is False
    concept = report["concept_drift"]
    assert concept["detected"] is True
    assert concept["score"] > 0.1
    assert metric_value(_metrics(server), "concept_drift_detected") == 1


# ----------------------------------------------------------------------------------- other endpoints

def test_healthz_metrics_and_index(server):
    status, _, body = request(server.url, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    text = _metrics(server)
    assert metric_value(text, "model_info", {"version": server.monitor.info["model_version"]}) == 1
    assert metric_value(text, "model_heldout_mse") > 0
    status, _, body = request(server.url, "GET", "/")
    assert "/predict" in body["endpoints"]


def test_head_answers_like_get_without_a_body(server):
    # load balancers probe with HEAD
    for path in ("/healthz", "/metrics", "/drift", "/"):
        status, headers, body = request(server.url, "HEAD", path)
        assert status == 200, path
        assert body == "" and int(headers["Content-Length"]) > 0, path
    status, headers, _ = request(server.url, "HEAD", "/predict")
    assert status == 405 and headers["Allow"] == "POST"


def test_the_window_gauges_follow_the_windows_between_checks(server, heldout):
    request(server.url, "POST", "/predict", as_payload(heldout.iloc[:40]))
    assert metric_value(_metrics(server), "drift_window_samples", {"window": "inputs"}) == 40
    assert server.monitor.latest_check is None  # no check ran: the gauge is live


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404), ("POST", "/predict/extra", 404), ("GET", "/predict", 405),
    ("DELETE", "/feedback", 405), ("POST", "/metrics", 405), ("PUT", "/drift", 405),
    ("BREW", "/predict", 405), ("PATCH", "/nope", 404),
])
def test_unknown_paths_and_wrong_methods_get_json_errors(server, method, path, status):
    got, headers, body = request(server.url, method, path)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert "error" in body
    if status == 405:
        assert headers["Allow"]


# ---------------------------------------------------------------------------------------- bad input

BAD_PREDICT = [
    ("invalid_json", b'{"carat": 0.5,', "not valid JSON"),
    ("empty_body", b"", "empty body"),
    ("missing_field", {k: v for k, v in CURL_EXAMPLE.items() if k != "cut"}, "cut: missing"),
    ("not_a_number", {**CURL_EXAMPLE, "carat": "0.5"}, "carat: expected a number"),
    ("not_a_number", {**CURL_EXAMPLE, "depth": True}, "depth: expected a number"),
    ("not_a_number", {**CURL_EXAMPLE, "table": None}, "table: expected a number"),
    ("non_finite", b'{"carat": NaN, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}',
     "carat: expected a finite number"),
    ("non_finite", b'{"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": Infinity, "table": 55}',
     "depth: expected a finite number"),
    ("out_of_range", {**CURL_EXAMPLE, "carat": -1}, "carat: expected a positive number"),
    ("unknown_category", {**CURL_EXAMPLE, "cut": "Excellent"}, "accepted: Fair, Good, Very Good, Premium, Ideal"),
    ("wrong_type", {**CURL_EXAMPLE, "color": 3}, "color: expected a string"),
    ("unknown_field", {**CURL_EXAMPLE, "price": 100}, "'price': unknown field"),
    ("wrong_type", "a string", "expected a JSON object or a list"),
    ("wrong_type", 42, "expected a JSON object or a list"),
    ("empty_list", [], "is empty"),
    ("not_an_object", [CURL_EXAMPLE, 1, "x"], "[1]: expected a JSON object with fields carat, cut, color, clarity, depth, table, got the number 1"),
    ("unknown_category", [CURL_EXAMPLE, {**CURL_EXAMPLE, "clarity": "XX"}], "[1].clarity: unknown category"),
    ("invalid_json", b"\xff\xfe\x00", "not valid JSON"),
    ("invalid_json", b"[" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize("reason,body,message", BAD_PREDICT, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_PREDICT)])
def test_bad_predict_input_gets_a_400_naming_the_problem(server, reason, body, message):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, headers, reply = request(server.url, "POST", "/predict", raw=raw)
    assert status == 400, reply
    assert headers["Content-Type"] == "application/json"
    assert message in reply["error"]
    assert metric_value(_metrics(server), "invalid_requests_total", {"endpoint": "/predict", "reason": reason}) == 1
    assert len(server.monitor.inputs) == 0  # nothing from a refused request reaches the window


BAD_FEEDBACK = [
    ("missing_field", {"actual": 100}, "id: expected the prediction id"),
    ("missing_field", {"id": "abc"}, "actual: missing"),
    ("not_a_number", {"id": "abc", "actual": "100"}, "actual: expected a number"),
    ("out_of_range", {"id": "abc", "actual": -5}, "actual: expected a positive number"),
    ("wrong_type", {"id": 5, "actual": 100}, "id: expected the prediction id"),
    ("unknown_field", {"id": "abc", "actual": 100, "x": 1}, "unknown field"),
    ("not_an_object", [["abc", 100]], "[0]: expected an object {\"id\": \"<prediction id>\", \"actual\": <price>}, got an array"),
    ("empty_list", [], "is empty"),
]


@pytest.mark.parametrize("reason,body,message", BAD_FEEDBACK, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_FEEDBACK)])
def test_bad_feedback_gets_a_400_naming_the_problem(server, reason, body, message):
    status, _, reply = request(server.url, "POST", "/feedback", body)
    assert status == 400
    assert message in reply["error"]
    assert metric_value(_metrics(server), "invalid_requests_total", {"endpoint": "/feedback", "reason": reason}) == 1


def test_wrong_content_type_and_oversized_body(small_artifact_path, small_artifact):
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0, max_body_bytes=1000, max_rows=5,
                           db_path=None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        status, _, reply = request(handle.url, "POST", "/predict", CURL_EXAMPLE,
                                   headers={"Content-Type": "text/plain"})
        assert status == 415 and "application/json" in reply["error"]
        status, _, reply = request(handle.url, "POST", "/predict", raw=b" " * 5000)
        assert status == 413 and "at most 1000 bytes" in reply["error"]
        status, _, reply = request(handle.url, "POST", "/predict", [CURL_EXAMPLE] * 6)
        assert status == 413 and "at most 5" in reply["error"]
    finally:
        handle.stop()


# ------------------------------------------------------------------------------------- drift loop

def test_drift_loop_survives_a_failing_check_and_keeps_its_schedule():
    calls = []

    def flaky_check():
        calls.append(time.monotonic())
        if len(calls) in (1, 3):
            raise RuntimeError("corrupt window")

    loop = monitor_module._Every(0.05, flaky_check, "flaky-check")
    loop.start()
    deadline = time.monotonic() + 5
    while len(calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    assert len(calls) >= 6
    count = len(calls)
    time.sleep(0.2)
    assert len(calls) == count  # stopped means stopped


def test_a_failing_scheduled_check_is_counted_and_the_next_one_runs(small_artifact_path, small_artifact, monkeypatch):
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0.05, window=100, db_path=None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        real_score = handle.monitor.data_detector.score
        failures = {"left": 2}

        def sometimes_failing(window):
            if failures["left"]:
                failures["left"] -= 1
                raise FloatingPointError("numeric failure")
            return real_score(window)

        monkeypatch.setattr(handle.monitor.data_detector, "score", sometimes_failing)
        deadline = time.monotonic() + 10
        while handle.monitor.latest_check is None and time.monotonic() < deadline:
            time.sleep(0.02)
        text = _metrics(handle)
        assert metric_value(text, "drift_check_failures_total") == 2
        assert metric_value(text, "drift_checks_total") >= 3
        assert handle.monitor.latest_check is not None
    finally:
        handle.stop()


def test_predictions_keep_flowing_during_drift_checks(server, heldout, small_artifact):
    payload = as_payload(heldout.iloc[:20])
    expected = small_artifact["pipeline"].predict(heldout.iloc[:20][[f["name"] for f in small_artifact["schema"]["features"]]])
    request(server.url, "POST", "/predict", as_payload(heldout.iloc[:300]))
    stop = threading.Event()
    errors, results = [], []

    def keep_checking():
        while not stop.is_set():
            try:
                server.monitor.check_drift()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    def keep_predicting():
        for _ in range(15):
            status, _, body = request(server.url, "POST", "/predict", payload)
            results.append((status, body.get("predictions")))

    checker = threading.Thread(target=keep_checking)
    checker.start()
    clients = [threading.Thread(target=keep_predicting) for _ in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(timeout=60)
    stop.set()
    checker.join(timeout=10)
    assert not errors
    assert len(results) == 60
    assert all(status == 200 and predictions == expected.tolist() for status, predictions in results)
    assert metric_value(_metrics(server), "drift_checks_total") >= 1


def test_concurrent_single_row_requests_are_batched_and_answered_correctly(server, heldout, small_artifact):
    frame = heldout.iloc[:64]
    payload = as_payload(frame)
    expected = small_artifact["pipeline"].predict(frame[[f["name"] for f in small_artifact["schema"]["features"]]])
    answers = [None] * len(payload)

    def one(i):
        answers[i] = request(server.url, "POST", "/predict", payload[i])[2]["prediction"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payload))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert np.array_equal(np.array(answers), expected)


def test_a_label_cusum_alarm_before_the_window_can_be_tested_is_logged_not_a_traceback(
        small_artifact_path, small_artifact, heldout, caplog):
    """Prices tripled on the first labels: the labels' CUSUM alarms within a few of them and checks
    at once, when the windowed concept test has too few labels to give an MSE. The check's log line
    says so instead of raising on the missing figure (which failed the alarm's check thread)."""
    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0, db_path=None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        rows = heldout.iloc[:12]
        status, _, body = request(handle.url, "POST", "/predict", as_payload(rows))
        assert status == 200
        with caplog.at_level("WARNING", logger="monitor"):
            labels = [{"id": i, "actual": 3 * float(p)} for i, p in zip(body["ids"], rows["price"])]
            assert request(handle.url, "POST", "/feedback", labels)[0] == 200
            deadline = time.monotonic() + 10
            while not any("concept drift detected" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.02)
        concept = handle.monitor.latest_check.concept
        assert concept.detected and concept.mse_increase is None and concept.labelled_size == 12
        assert not [r for r in caplog.records if r.exc_info or "failed" in r.getMessage()]
        (line,) = [r.getMessage() for r in caplog.records if "concept drift detected" in r.getMessage()]
        assert "MSE n/a" in line and "(12 labels)" in line
    finally:
        handle.stop()
