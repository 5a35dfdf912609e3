"""A fleet: several real monitor processes on one real PostgreSQL database (tests/postgres.py starts
it), and an SQLite file that a second process may not write.

- labels sent to any replica join predictions served by any other; unknown means unknown to all;
- one drift check per interval for the whole fleet, not one per replica, and every replica serves
  the same latest report;
- the checking replica SIGKILLed or SIGSTOPped: the others go on checking within the bound, and a
  checker stuck inside its transaction loses it (and its report) to the server's timeouts;
- the database stopped and started again: predictions keep answering, labels get 503, /healthz says
  why, checks fail and are counted, and everything acknowledged is in the database afterwards.

Every wait is bounded; every test takes well under a minute."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.fixtures import CUT_CLASSES
from tests.helpers import as_payload, heldout_frame, metric_value, request
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 1.5     # seconds between fleet checks in these tests
DB_TIMEOUT = 2.0   # --db-timeout: how long a hung session may hold anything


@pytest.fixture(scope="module")
def heldout():
    return heldout_frame()


class Replica:
    """`python monitor.py` on a free port of 127.0.0.1, sharing the database at `db`."""

    def __init__(self, model: Path, db: str, name: str, *extra: str, interval: float = INTERVAL):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "monitor.py"), "--model", str(model), "--db", db, "--port", "0",
             "--replica-id", name, "--check-interval", str(interval), "--window", "300", "--label-window", "300",
             "--db-timeout", str(DB_TIMEOUT), "--maintenance-interval", "0.5", *extra],
            stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.log: list[str] = []
        self.url = None

    def wait_serving(self, timeout: float = 60) -> "Replica":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"{self.name} exited before serving:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise AssertionError(f"{self.name} did not start in {timeout} s:\n" + "".join(self.log))

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def get(self, path: str):
        return request(self.url, "GET", path, timeout=10)[2]

    def post(self, path: str, body=None):
        status, _, answer = request(self.url, "POST", path, body, timeout=10)
        return status, answer

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_fleet(model: Path, db: str, n: int, **kwargs) -> list[Replica]:
    replicas = [Replica(model, db, f"replica-{k}", **kwargs) for k in range(n)]   # start together
    try:
        return [r.wait_serving() for r in replicas]
    except BaseException:
        for r in replicas:
            r.stop()
        raise


@pytest.fixture
def fleet_of(small_artifact_path):
    started: list[Replica] = []

    def start(db: str, n: int, **kwargs) -> list[Replica]:
        replicas = start_fleet(small_artifact_path, db, n, **kwargs)
        started.extend(replicas)
        return replicas

    yield start
    for r in started:
        r.stop()


def sql(db: str, text: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(db) as conn:
        return conn.execute(text, args).fetchall()


def reports(db: str) -> list[tuple]:
    """(id, checked_at as unix seconds, checked_by) of every stored fleet report, oldest first."""
    return sql(db, "SELECT id, extract(epoch FROM checked_at)::float8, checked_by FROM drift_reports ORDER BY id")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _iso(unix_seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).isoformat(timespec="seconds")


def db_now(db: str) -> float:
    return sql(db, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]


# ------------------------------------------------------------------ what crosses the database

def test_the_store_s_columns_give_the_windows_a_replica_would(small_artifact, heldout):
    """A fleet check scores windows built column-wise from the store (windows_from_columns): they
    must be those the replica's own InputWindow and LabelledWindow would hold, predictions, arrival
    times and the labelled inputs' grades included (an unknown grade reads NaN there)."""
    import numpy as np

    from monitoring.fleet import snapshot_from_columns, windows_from_columns
    from monitoring.model import Schema
    from monitoring.windows import InputWindow, LabelledWindow

    schema = Schema(small_artifact["schema"])
    grades = tuple(f.name for f in schema.features if f.kind == "categorical")
    frame = heldout.iloc[:257]
    rows = [schema.parse_row(r) for r in as_payload(frame)]
    predictions = [500.0 + k for k in range(len(rows))]
    times = [1.8e9 + 0.25 * k for k in range(len(rows))]
    pairs = [(float(p), 1000.0 + k) for k, p in enumerate(frame["price"])]
    label_grades = [[row[schema.names.index(g)] for g in grades] for row in rows]
    label_grades[3][0] = None          # a grade the store has no value for
    label_grades[4][1] = "Z"           # and one this schema does not know
    codes = [[np.nan if v not in schema.features[schema.names.index(g)].categories else schema.code(g, v)
              for g, v in zip(grades, row)] for row in label_grades]
    inputs, labelled = InputWindow(schema, 1000), LabelledWindow(1000, grades=grades)
    for k, row in enumerate(rows):
        inputs.extend([row], now=times[k], predictions=[predictions[k]])
        labelled.extend([pairs[k]], grades=[codes[k]], now=times[k] + 60)
    columns = {"features": {name: [row[j] for row in rows] for j, name in enumerate(schema.names)},
               "prediction": predictions, "ts": times}
    label_columns = {"actual": [a for a, _ in pairs], "prediction": [p for _, p in pairs],
                     "label_ts": [t + 60 for t in times],
                     "features": {g: [row[j] for row in label_grades] for j, g in enumerate(grades)}}
    built = windows_from_columns(schema, columns, label_columns)
    expected, served, arrived = inputs.snapshot_all()
    assert list(built.inputs) == list(expected)
    for name in expected:
        assert built.inputs[name].dtype == expected[name].dtype
        assert np.array_equal(built.inputs[name], expected[name])
    assert np.array_equal(built.predictions, served) and np.array_equal(built.input_times, arrived)
    actual, predicted, grade_codes, label_times = labelled.snapshot_all()
    assert np.array_equal(built.actual, actual) and np.array_equal(built.predicted, predicted)
    assert np.array_equal(built.label_times, label_times)
    assert list(built.grades) == list(grade_codes) == list(grades)
    for g in grades:
        assert np.array_equal(built.grades[g], grade_codes[g], equal_nan=True)
    assert np.isnan(built.grades[grades[0]][3]) and np.isnan(built.grades[grades[1]][4])
    page = snapshot_from_columns(schema, columns, label_columns)   # what the report page draws
    assert np.array_equal(page.actual, actual) and np.array_equal(page.inputs["carat"], expected["carat"])


def _every_field_set(value, where: str = "check") -> None:
    """Fail on a dataclass field (at any depth) left None or empty: a round trip of such a report
    would not show that its reader drops a field."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _every_field_set(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, dict):
        assert value, f"{where} is empty"
        for k, v in value.items():
            _every_field_set(v, f"{where}[{k!r}]")
    else:
        assert value is not None and value != [], f"{where} is not set"


def _cusums(subject: str, threshold: float) -> dict:
    """A check's `sequential` entry (monitoring/sequential.report) with one alarm."""
    alarm = {"subject": subject, "direction": "up", "statistic": threshold + 0.4, "threshold": threshold, "row": 1040,
             "since": 1012, "since_time": 1.8e9 + 3.5}
    return {"test": "cusum", "rows": 1050, "alarm": True, "alarms": [alarm],
            "subjects": {subject: {"statistic": threshold + 0.4, "threshold": threshold, "direction": "up",
                                   "alarm": True, "since": 1.8e9 + 3.5, "since_row": 1012}}}


def test_a_report_with_every_field_set_reads_back_the_same():
    """Every field of a check, the #11 ones included (the joint test, what fired at which scale and
    since when, the concept segments, the performance estimate), crosses the database and comes back
    typed: to_dict -> JSON -> from_dict -> to_dict gives the same JSON."""
    from monitor import DriftCheck
    from monitoring.drift import (ConceptDriftReport, DataDriftReport, Detection, FeatureDrift, MultivariateDrift,
                                  SegmentDrift)
    from monitoring.performance import PerformanceEstimate

    data = DataDriftReport(
        max_distance=0.31, detected=True, window_size=1000, alpha=0.005,
        features={"carat": FeatureDrift("carat", "ks", 0.31, 1e-12, 0.31, True),
                  "cut": FeatureDrift("cut", "chi2", 3.5, 0.48, 0.012, False)},
        reason="a reason", multivariate=MultivariateDrift("pca-reconstruction", 1.55, 6e-35, True, 3),
        tests=25, scales=[50, 100, 250],
        # a data detection has no segment in practice: set here so that none of its fields is unread
        detections={"carat": Detection("ks", 100, 2e-9, 87, "all", 1.8e9 + 0.5),
                    "multivariate": Detection("pca-reconstruction", 250, 1e-7, 240, "all", 1.8e9)},
        sequential=_cusums("carat", 18.1))
    concept = ConceptDriftReport(
        mse_increase=0.52, detected=True, labelled_size=500, mse=410_000.0, reference_mse=270_000.0,
        statistic=0.21, p_value=1.5e-9, alpha=0.005, test="pit-ks", mean_log_ratio=0.13, bias_pct=14.8,
        reason="another reason", tests=96, scales=[50, 100, 250],
        detection=Detection("bias", 250, 3e-8, 180, "price 6,200-9,900", 1.8e9 + 7.25),
        segments={"price 6,200-9,900": SegmentDrift(120, 14.8, 1e-8, True),
                  "cut=Fair": SegmentDrift(25, -0.7, 0.61, False)},
        # a log-ratio report has no bias in units in practice: set so that none of its fields is unread
        error="log_ratio", bias=310.0, sequential=_cusums("price 4,600+", 9.2))
    performance = PerformanceEstimate("mse", 640_000.0, 302_500.0, 250_000.0, 360_000.0, True, 1000)
    check = DriftCheck("2026-11-27T10:00:00+00:00", "v1", data, concept, 0.042, performance, scope="fleet",
                       checked_by="a:1")
    _every_field_set(check)
    as_json = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    again = DriftCheck.from_dict(as_json)
    assert again == check                     # typed again, field by field
    assert again.to_dict() == as_json
    assert isinstance(again.concept.segments["cut=Fair"], SegmentDrift)
    assert isinstance(again.data.detections["multivariate"], Detection)
    # a report without an error model, or from before the performance estimate, reads as None
    del as_json["performance_estimate"]
    assert DriftCheck.from_dict(as_json).performance is None


def test_a_classifier_s_report_with_every_field_set_reads_back_the_same():
    """A classifier's concept report (accuracy and log loss, monitoring/classification.py) crosses
    the database as the same JSON and comes back as a ClassificationConceptReport: another replica
    of a classifier's fleet serves it and sets its gauges from it."""
    from monitor import DriftCheck
    from monitoring.classification import ClassificationConceptReport
    from monitoring.drift import DataDriftReport, Detection, FeatureDrift

    data = DataDriftReport(max_distance=0.2, detected=False, window_size=300, alpha=0.005,
                           features={"color": FeatureDrift("color", "chi2", 7.5, 0.28, 0.05, False)},
                           reason="a reason", tests=12, scales=[50, 100])
    # a classifier's report has no multi-scale detection in practice: set so that none of its fields is unread
    concept = ClassificationConceptReport(loss_increase=0.61, detected=True, labelled_size=300, accuracy=0.52,
                                          reference_accuracy=0.79, accuracy_drop=0.27, log_loss=0.95,
                                          reference_log_loss=0.59, loss_p_value=1e-9, accuracy_p_value=1e-12,
                                          p_value=2e-12, alpha=0.005, test="loss-accuracy", reason="why",
                                          detection=Detection("loss", 300, 2e-12, 250, "all", 1.8e9))
    check = DriftCheck("2026-11-27T10:00:00+00:00", "v1", data, concept, 0.03, None, scope="fleet",
                       checked_by="b:2")
    _every_field_set(concept)
    as_json = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    again = DriftCheck.from_dict(as_json)
    assert isinstance(again.concept, ClassificationConceptReport) and again == check
    assert again.to_dict() == as_json


def test_a_fleet_check_flags_what_a_single_replica_flags(pg_url, small_artifact, heldout):
    """The same traffic, served by one monitor with its own windows and by a replica of a fleet whose
    check reads the windows from PostgreSQL: both checks compute the same #11 detections (the
    tests at every scale, the joint test, the concept segments by grade and price band, the
    performance estimate); only the times differ (each is its own clock's)."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from monitor import Monitor, MonitorConfig
    from monitoring.model import Schema

    schema = Schema(small_artifact["schema"])
    # bigger stones than in training (data drift, a larger expected error), and prices 30% higher
    # for the Premium cut only (a concept segment)
    frame = heldout[heldout["carat"] > 0.7].iloc[:400]
    rows = [schema.parse_row(r) for r in as_payload(frame)]
    actual = np.where(frame["cut"].astype(str) == "Premium", 1.3, 1.0) * frame["price"].to_numpy(dtype=float)

    checks = {}
    for name, db in (("single", None), ("fleet", pg_url)):
        monitor = Monitor(MonitorConfig(model_path=Path("unused"), check_interval=0, window=300, label_window=300,
                                        db_path=db, replica_id=name), small_artifact, CollectorRegistry())
        monitor.start()
        try:
            assert monitor.fleet == (db is not None)
            ids = []
            for start in range(0, len(rows), 50):     # served in lists, in order
                ids += monitor.predict(rows[start:start + 50])[1]
            for label_id, price in zip(ids, actual):  # one label at a time: the labels' order is the same
                assert monitor.record_labels([(label_id, float(price))]) == (1, [])
            checks[name] = monitor.check_drift().to_dict()
        finally:
            monitor.stop()
    single, fleet = checks["single"], checks["fleet"]
    assert (single["scope"], fleet["scope"]) == ("replica", "fleet")

    def timeless(report):
        """The report without its own clock's figures (when checked, how long, by whom, since when)."""
        out = json.loads(json.dumps(report))
        for key in ("checked_at", "duration_seconds", "scope", "checked_by"):
            del out[key]
        for detection in [*out["data_drift"]["detections"].values(), out["concept_drift"]["detection"]]:
            assert detection["since"] is not None     # dated by each store's arrival times
            del detection["since"]
        # the CUSUMs: a replica's run over all its traffic (400 rows), a fleet check's over its window
        # (300), by design (README: Running several replicas); both report them
        for part, subject in (("data_drift", "carat"), ("concept_drift", "all")):
            assert subject in out[part].pop("sequential")["subjects"]
        return out

    assert timeless(fleet) == timeless(single)
    # and the traffic did exercise each addition
    assert single["data_drift"]["detected"] and single["data_drift"]["multivariate"]["p_value"] is not None
    assert single["concept_drift"]["segments"]["cut=Premium"]["detected"]
    assert single["performance_estimate"]["detected"]
    assert single["data_drift"]["window_size"] == fleet["data_drift"]["window_size"] == 300


# ------------------------------------------------------------------ any model, not only diamonds

@pytest.fixture(params=["classifier", "friedman"])
def other_model(request):
    """(name, artifact path, split) of a model trained by train.py from a CSV (tests/fixtures.py)."""
    return (request.param, *request.getfixturevalue(request.param))


def _drifting_stream(name: str, split, clean: int, drifted: int):
    """(clean rows, their labels, drifted rows, their labels) of held-out traffic whose second part
    drifts in its inputs and in its labels. Classifier: only Fair and Good stones (a class-mix
    shift) with Good labelled Very Good; friedman: x7, which the target does not depend on, + 0.3
    (a third of its range), and targets + 1.0."""
    X, y = split.X_test, split.y_test
    if name == "classifier":
        mix = (y == "Fair") | (y == "Good")
        later = X.iloc[clean:][mix.iloc[clean:].to_numpy()].iloc[:drifted]
        return (X.iloc[:clean], list(y.iloc[:clean]), later,
                list(y.loc[later.index].replace({"Good": "Very Good"})))
    later = X.iloc[clean:clean + drifted].copy()
    later["x7"] = later["x7"] + 0.3
    return X.iloc[:clean], [float(v) for v in y.iloc[:clean]], later, [float(v) + 1.0 for v in y.iloc[clean:clean + drifted]]


def _timeless(report: dict) -> dict:
    """A report without its own clock's figures (when checked, how long, by whom, since when)."""
    out = json.loads(json.dumps(report))
    for key in ("checked_at", "duration_seconds", "scope", "checked_by"):
        del out[key]
    for detection in [*out["data_drift"]["detections"].values(), out["concept_drift"].get("detection")]:
        if detection is not None:
            assert detection["since"] is not None     # dated by each store's arrival times
            del detection["since"]
    # The CUSUMs: a single monitor runs them over every row it served, a fleet check from zero over
    # its window, so each counts rows (and dates the change) from its own start, and sums in its own
    # order (the last bits differ); the statistics, thresholds and alarms must still agree.
    for part in ("data_drift", "concept_drift"):
        sequential = out[part].get("sequential")
        if sequential is not None:
            del sequential["rows"]
            for subject in [*sequential["subjects"].values(), *sequential["alarms"]]:
                assert subject["since"] is not None or not subject.get("alarm", True)
                for key in ("since", "since_row", "since_time", "row"):
                    subject.pop(key, None)
                subject["statistic"] = round(subject["statistic"], 9)
    return out


def test_a_fleet_check_of_any_model_flags_what_a_single_replica_flags(other_model, pg_url):
    """As for diamonds, with the classifier (each label enters the window as (correct, log loss) of
    the probabilities predicted from its input: a fleet check reads every feature of its labelled
    rows from PostgreSQL and predicts them again) and friedman (a 30-category column, a target of
    either sign): the same traffic through one monitor with its own windows and through a fleet
    replica gives the same report, figure for figure."""
    from prometheus_client import CollectorRegistry

    from monitor import Monitor, MonitorConfig
    from monitoring.model import Schema, load_artifact
    from tests.helpers import frame_payload

    name, path, split = other_model
    artifact = load_artifact(path)
    schema = Schema(artifact["schema"])
    clean, clean_labels, drifted, drifted_labels = _drifting_stream(name, split, 150, 250)
    rows = [schema.parse_row(r) for r in frame_payload(clean) + frame_payload(drifted)]
    actual = [schema.parse_label({"id": "x", "actual": v})[1] for v in clean_labels + drifted_labels]
    checks = {}
    for side, db in (("single", None), ("fleet", pg_url)):
        monitor = Monitor(MonitorConfig(model_path=path, check_interval=0, window=300, label_window=300,
                                        db_path=db, replica_id=side), artifact, CollectorRegistry())
        monitor.start()
        try:
            assert monitor.fleet == (db is not None)
            ids = []
            for start in range(0, len(rows), 50):      # served in lists, in order
                ids += monitor.predict(rows[start:start + 50])[1]
            for label_id, value in zip(ids, actual):   # one label at a time: the labels' order is the same
                assert monitor.record_labels([(label_id, value)]) == (1, [])
            checks[side] = monitor.check_drift().to_dict()
        finally:
            monitor.stop()
    single, fleet = checks["single"], checks["fleet"]
    assert (single["scope"], fleet["scope"]) == ("replica", "fleet")
    assert _timeless(fleet) == _timeless(single)
    # and the traffic did drift, in its inputs and in its labels
    assert single["data_drift"]["detected"] and single["concept_drift"]["detected"]
    assert single["data_drift"]["window_size"] == single["concept_drift"]["labelled_size"] == 300
    if name == "classifier":
        assert single["concept_drift"]["test"] == "loss-accuracy" and single["concept_drift"]["accuracy_drop"] > 0.1
    else:
        assert single["concept_drift"]["error"] == "residual" and single["concept_drift"]["bias"] > 0.3
        assert single["data_drift"]["features"]["x7"]["detected"]


def test_two_replicas_of_any_model_predict_on_one_label_on_the_other_and_check_as_a_fleet(other_model, pg_url,
                                                                                       small_artifact_path):
    """Two real replicas of a model trained by train.py on one PostgreSQL database: predictions on
    A, their labels on B (a classifier's as class names) all join; a fleet check stays quiet on
    clean traffic and catches the seeded shift (the classifier: a class mix of Fair and Good stones
    only, Good labelled Very Good; friedman: x4 shifted, targets + 1.0); both replicas serve the
    report and draw its page. A replica of another model on that database stops at start."""
    from tests.helpers import frame_payload

    name, path, split = other_model
    a, b = start_fleet(path, pg_url, 2, interval=0)      # --window 300 --label-window 300
    try:
        clean, clean_labels, drifted, drifted_labels = _drifting_stream(name, split, 300, 300)

        def stream(frame, labels):
            for start in range(0, len(frame), 100):
                status, answer = a.post("/predict", frame_payload(frame.iloc[start:start + 100]))
                assert status == 200 and len(answer["ids"]) == len(frame.iloc[start:start + 100])
                if name == "classifier":
                    assert set(answer["predictions"]) <= set(CUT_CLASSES) and len(answer["probabilities"][0]) == 5
                status, reply = b.post("/feedback", [{"id": i, "actual": v}
                                                     for i, v in zip(answer["ids"], labels[start:start + 100])])
                assert (status, reply) == (200, {"accepted": len(answer["ids"]), "unknown": []})

        stream(clean, clean_labels)
        status, quiet = b.post("/drift/check")
        assert status == 200, quiet
        assert quiet["scope"] == "fleet" and quiet["checked_by"] == b.name
        assert quiet["data_drift"]["window_size"] == quiet["concept_drift"]["labelled_size"] == 300
        assert quiet["data_drift"]["detected"] is False and quiet["concept_drift"]["detected"] is False, quiet
        stream(drifted, drifted_labels)
        status, caught = a.post("/drift/check")
        assert status == 200, caught
        assert caught["data_drift"]["detected"] is True and caught["concept_drift"]["detected"] is True
        if name == "classifier":
            assert caught["concept_drift"]["accuracy_drop"] > 0.2
        else:
            assert [f for f, d in caught["data_drift"]["features"].items() if d["detected"]] == ["x7"]
            assert 0.5 < caught["concept_drift"]["bias"] < 1.5
        wait_until(lambda: b.get("/drift") == caught, timeout=2.0, what="replica B to take up the report")
        status, _, page = request(b.url, "GET", "/drift/report")
        assert status == 200 and "Concept drift" in page and "300 labelled" in page.replace("\n", " ")
        # the stored rows: the model's own columns, a classifier's class as its index
        stored = sql(pg_url, "SELECT count(*), count(label_ts), min(prediction), max(prediction) FROM predictions")
        assert stored[0][:2] == (600, 600)
        if name == "classifier":
            assert 0 <= stored[0][2] <= stored[0][3] <= 4
        # a replica of another model (the diamond one) on this database stops at start, in one line
        other = subprocess.run([sys.executable, str(ROOT / "monitor.py"), "--model", str(small_artifact_path),
                                "--db", pg_url, "--port", "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert other.returncode == 2
        errors = [line for line in other.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "it records another model's features (" in errors[0], other.stderr
        assert "not this model's (carat, cut, color, clarity, depth, table)" in errors[0]
        assert sql(pg_url, "SELECT count(*) FROM predictions") == [(600,)]
    except BaseException:
        for r in (a, b):
            r.stop()
            print(f"--- {r.name}:\n" + "".join(r.log[-40:]))
        raise
    finally:
        for r in (a, b):
            r.stop()


# ------------------------------------------------------------------ the database's clock

def test_a_replica_whose_clock_is_an_hour_ahead_does_not_move_the_fleet_s_time(pg_url, small_artifact, heldout,
                                                                              monkeypatch):
    from prometheus_client import CollectorRegistry

    from monitor import MonitorConfig, start_monitor

    handle = start_monitor(MonitorConfig(model_path=Path("unused"), port=0, check_interval=0, db_path=pg_url,
                                         replica_id="ahead"), artifact=small_artifact, registry=CollectorRegistry())
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)      # this process's clock only
        status, _, answer = request(handle.url, "POST", "/predict", as_payload(heldout.iloc[:3]))
        assert status == 200
        assert request(handle.url, "POST", "/feedback", {"id": answer["ids"][0], "actual": 1.0})[0] == 200
        status, _, check = request(handle.url, "POST", "/drift/check")
        assert status == 200
    finally:
        monkeypatch.undo()
        handle.stop()
    now = db_now(pg_url)
    for ts, served_at, label_ts, replica in sql(pg_url, "SELECT ts, served_at, label_ts, replica FROM predictions"):
        assert now - 60 < ts <= now and replica == "ahead"            # the database's time orders
        assert abs(served_at - (ts + 3600)) < 60                        # the replica's, kept beside
        assert label_ts is None or now - 60 < label_ts <= now
    assert _iso(now - 60) <= check["checked_at"] <= _iso(now)


# ------------------------------------------------------------------ labels across the fleet

def test_labels_join_predictions_served_by_any_replica(pg_url, fleet_of, heldout):
    replicas = fleet_of(pg_url, 3, interval=0)
    rows = heldout.iloc[:90]
    served: dict[str, str] = {}      # id -> replica that served it
    for k in range(3):               # 30 rows on each replica, as 3 lists of 10
        for part in range(3):
            chunk = rows.iloc[30 * k + 10 * part:30 * k + 10 * (part + 1)]
            status, answer = replicas[k].post("/predict", as_payload(chunk))
            assert status == 200
            served.update({i: replicas[k].name for i in answer["ids"]})
    ids = list(served)
    actual = dict(zip(ids, rows["price"].astype(float)))
    # Each replica gets the labels of the predictions its neighbour served, in one list, plus an
    # id nobody served.
    for k in range(3):
        theirs = [i for i in ids if served[i] == replicas[(k + 1) % 3].name]
        status, answer = replicas[k].post("/feedback", [{"id": i, "actual": actual[i]} for i in theirs]
                                          + [{"id": "0" * 32, "actual": 1.0}])
        assert status == 200 and answer == {"accepted": 30, "unknown": ["0" * 32]}
    stored = sql(pg_url, "SELECT id, replica, label_replica, actual FROM predictions")
    assert len(stored) == 90
    for id_, replica, label_replica, value in stored:
        assert replica == served[id_]                            # who served it
        assert label_replica != replica and label_replica is not None   # labelled elsewhere
        assert value == actual[id_]
    # The fleet's labelled window is every label, whichever replica took it.
    status, check = replicas[1].post("/drift/check")
    assert status == 200 and check["concept_drift"]["labelled_size"] == 90
    assert check["data_drift"]["window_size"] == 90
    assert check["scope"] == "fleet" and check["checked_by"] == replicas[1].name
    # Another replica serves that report once its 0.2 s refresh throttle has passed (it started
    # with a refresh of its own, which may be that recent on a fast machine), and draws its page
    # from the fleet's windows in the store.
    wait_until(lambda: replicas[2].get("/drift") == check, timeout=2.0, what="replica 2 to take up the report")
    status, headers, page = request(replicas[2].url, "GET", "/drift/report")
    assert status == 200 and "feature-carat" in page and "90 labelled" in page.replace("\n", " ")
    assert replicas[2].get("/healthz")["replica"] == replicas[2].name


# ------------------------------------------------------------------ one check per interval

def test_one_check_per_interval_for_the_whole_fleet(pg_url, fleet_of, heldout):
    interval = 2.0                                   # the issue's: a minute at a 2 s interval
    replicas = fleet_of(pg_url, 3, interval=interval)
    payload = as_payload(heldout.iloc[:60])
    for r in replicas:
        assert r.post("/predict", payload)[0] == 200
    start = db_now(pg_url)
    duration = 60.0
    time.sleep(duration)
    end = db_now(pg_url)
    stored = [r for r in reports(pg_url) if start <= r[1] <= end]
    expected = (end - start) / interval              # 30 intervals
    assert abs(len(stored) - expected) <= 1.5, (len(stored), expected, stored)
    gaps = [b[1] - a[1] for a, b in zip(stored, stored[1:])]
    assert max(gaps) < 2 * interval + 0.5             # no interval went unchecked
    # The checks ran on the replicas, not thrice: their counters add up to the reports.
    runs = sum(metric_value(r.get("/metrics"), "drift_checks_total") for r in replicas)
    assert runs == pytest.approx(len(reports(pg_url)), abs=1)      # a check may end between reads
    # Every replica serves the fleet's latest report (or the one before, should a check end
    # between the reads) and sets its gauges from it.
    for r in replicas:
        seen = r.get("/drift")
        latest = [row[0] for row in sql(pg_url, "SELECT report FROM drift_reports ORDER BY id DESC LIMIT 2")]
        assert seen in latest
        assert seen["scope"] == "fleet" and seen["data_drift"]["window_size"] == 180
        assert seen["checked_by"] in {x.name for x in replicas}
        text = r.get("/metrics")
        # the windows of the fleet's report, not this replica's share of the traffic (60 rows)
        assert metric_value(text, "drift_window_samples", {"window": "inputs"}) == 180
        assert r.get("/healthz")["windows"]["inputs"] == 60
        assert metric_value(text, "drift_last_check_timestamp_seconds") >= start


def test_drift_spread_over_the_fleet_is_detected_as_fast_as_through_one_monitor(pg_url, fleet_of, heldout,
                                                                                  small_artifact_path, tmp_path):
    # The same stream (200 held-out stones, then only stones over 1 carat) through one monitor on SQLite and
    # spread over three replicas, 25 rows a request in turn; a check after every 50 rows on each side.
    # The fleet's window holds the same rows in the same order, so each check must decide the same.
    replicas = fleet_of(pg_url, 3, interval=0)
    alone = fleet_of(str(tmp_path / "alone.db"), 1, interval=0)[0]
    clean = heldout.iloc[:200]
    rest = heldout.iloc[200:]
    drifted = rest[rest["carat"] > 1.0].iloc[:250]
    stream = [part for rows in (clean, drifted) for part in (rows.iloc[k:k + 25] for k in range(0, len(rows), 25))]
    decisions = {"fleet": [], "alone": []}
    for k, part in enumerate(stream):
        assert replicas[k % 3].post("/predict", as_payload(part))[0] == 200
        assert alone.post("/predict", as_payload(part))[0] == 200
        if k % 2 == 1:
            for side, monitor in (("fleet", replicas[(k // 2) % 3]), ("alone", alone)):
                status, check = monitor.post("/drift/check")
                assert status == 200, check
                data = check["data_drift"]
                decisions[side].append((data["window_size"], data["detected"],
                                        {name: (round(f["p_value"], 12), f["detected"])
                                         for name, f in data["features"].items()}))
    assert decisions["fleet"] == decisions["alone"]
    detected_at = [size for size, detected, _ in decisions["alone"] if detected]
    assert detected_at and 200 < detected_at[0] <= 300     # caught within 100 drifted stones, on both


# ------------------------------------------------------------------ a checker killed, stopped, stuck

def _checking_replica(db: str, replicas: list[Replica]) -> Replica:
    """The replica that ran the latest fleet check."""
    last = wait_until(lambda: reports(db), 10, "a first fleet check")[-1]
    return next(r for r in replicas if r.name == last[2])


def _checks_go_on_without(db: str, gone: str, since: float, bound: float) -> list[tuple]:
    """Wait for two checks after `since`: none by `gone`, the first within `bound` seconds."""
    def two_later():
        later = [r for r in reports(db) if r[1] > since]
        return later if len(later) >= 2 else None

    later = wait_until(two_later, bound + 2 * INTERVAL + 5, "checks by the other replicas")
    assert later[0][1] - since <= bound, (later, since)
    assert all(r[2] != gone for r in later), later
    return later


def test_the_checking_replica_sigkilled_then_sigstopped(pg_url, fleet_of, heldout):
    replicas = fleet_of(pg_url, 3)
    for r in replicas:
        assert r.post("/predict", as_payload(heldout.iloc[:50]))[0] == 200

    killed = _checking_replica(pg_url, replicas)
    killed.signal(signal.SIGKILL)
    since = db_now(pg_url)
    # Not holding the lock when killed, or its session ended with it: the next interval is checked.
    _checks_go_on_without(pg_url, killed.name, since, bound=INTERVAL + DB_TIMEOUT + 1)

    alive = [r for r in replicas if r is not killed]
    stopped = _checking_replica(pg_url, alive)
    stopped.signal(signal.SIGSTOP)
    since = db_now(pg_url)
    try:
        # A stopped process keeps its TCP connections (its kernel still answers), so only the
        # server's timeouts can end a session it left inside a transaction: 2 x --db-timeout.
        _checks_go_on_without(pg_url, stopped.name, since, bound=INTERVAL + 2 * DB_TIMEOUT + 1)
        resumed_at = db_now(pg_url)
    finally:
        stopped.signal(signal.SIGCONT)
    # Woken up, it serves the fleet's reports again (those checked while it slept included), and
    # nothing it had under way landed late: the stored reports stay in time order.
    wait_until(lambda: stopped.get("/drift")["checked_at"] >= _iso(resumed_at), 4 * INTERVAL + 5,
               "the woken replica to serve a report checked while it slept")
    stored = reports(pg_url)
    assert [r[1] for r in stored] == sorted(r[1] for r in stored)
    assert stopped.get("/healthz")["status"] == "ok"


STUCK_CHECKER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from monitoring.pg_store import PgStore

store = PgStore(sys.argv[1], replica="stuck", timeout=float(sys.argv[3]))

def score(inputs, labelled, checked_at):
    print("holding", flush=True)      # inside the check's transaction, the lock held
    time.sleep(float(sys.argv[4]))     # hangs (and is SIGSTOPped meanwhile)
    return {"checked_at": "late", "scope": "fleet", "checked_by": "stuck"}, "v"

try:
    store.fleet_check(score, window=10, label_window=10, interval=1.0, force=True)
    print("stored", flush=True)
except Exception as exc:
    print("failed:", exc, flush=True)
"""


def test_a_stuck_checker_loses_the_lock_and_its_late_report(pg_url, fleet_of, heldout):
    replicas = fleet_of(pg_url, 2)
    assert replicas[0].post("/predict", as_payload(heldout.iloc[:50]))[0] == 200
    wait_until(lambda: reports(pg_url), 10, "a first fleet check")
    stuck = subprocess.Popen([sys.executable, "-c", STUCK_CHECKER, pg_url, str(ROOT), str(DB_TIMEOUT), "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert stuck.stdout.readline().strip() == "holding"
        held_at = db_now(pg_url)
        stuck.send_signal(signal.SIGSTOP)
        # The server ends the idle-in-transaction session after --db-timeout: the lock is free
        # and the replicas' checks resume.
        first = wait_until(lambda: [r for r in reports(pg_url) if r[1] > held_at] or None,
                           DB_TIMEOUT + 3 * INTERVAL + 5, "a check after the stuck one")[0]
        assert first[1] - held_at <= DB_TIMEOUT + INTERVAL + 1.5
        assert first[2] != "stuck"
        stuck.send_signal(signal.SIGCONT)
        out, _ = stuck.communicate(timeout=30)
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
    assert out.startswith("failed:"), out               # its transaction was gone
    assert "stuck" not in {r[2] for r in reports(pg_url)}
    assert replicas[1].get("/drift")["checked_by"] in {r.name for r in replicas}


# ------------------------------------------------------------------ the database goes away

def test_database_stopped_and_started_loses_nothing_acknowledged(small_artifact_path, heldout):
    server = PostgresServer.create()
    replicas: list[Replica] = []
    try:
        db = server.new_database()
        replicas = start_fleet(small_artifact_path, db, 2, interval=0)
        a, b = replicas
        acknowledged: list[str] = []
        rows = heldout.iloc[:200]
        status, answer = a.post("/predict", as_payload(rows.iloc[:20]))
        assert status == 200
        acknowledged += answer["ids"]

        server.stop()
        for k in range(1, 10):                          # predictions keep answering, both replicas
            replica = replicas[k % 2]
            status, answer = replica.post("/predict", as_payload(rows.iloc[20 * k:20 * (k + 1)]))
            assert status == 200
            acknowledged += answer["ids"]
        status, answer = b.post("/feedback", [{"id": acknowledged[0], "actual": 500.0}])
        assert status == 503 and "send them again" in answer["error"]
        for r in replicas:
            health = r.get("/healthz")
            assert health["status"] == "degraded" and health["store"]["healthy"] is False
            assert health["store"]["error"] and health["store"]["pending"] > 0
            assert server.password not in json.dumps(health)
        assert b.post("/drift/check")[0] == 500
        assert metric_value(b.get("/metrics"), "drift_check_failures_total") == 1

        server.start()
        for r in replicas:                               # caught up by itself, without traffic
            wait_until(lambda: r.get("/healthz")["status"] == "ok" and r.get("/healthz")["store"]["pending"] == 0,
                       15, f"{r.name} to recover")
        stored = {row[0] for row in sql(db, "SELECT id FROM predictions")}
        assert set(acknowledged) <= stored and len(acknowledged) == 200
        labels = [{"id": i, "actual": 1000.0} for i in acknowledged[::2]]
        assert b.post("/feedback", labels) == (200, {"accepted": 100, "unknown": []})
        status, check = a.post("/drift/check")
        assert status == 200 and check["data_drift"]["window_size"] == 200
        assert check["concept_drift"]["labelled_size"] == 100
    finally:
        for r in replicas:
            r.stop()
        server.destroy()


def _freeze(server: PostgresServer) -> list[int]:
    """SIGSTOP the whole server: the postmaster and every process it forked (each backend is a
    session leader of its own, so the postmaster's process group alone would leave them running).
    Its kernel still accepts connections and acknowledges packets: nobody answers."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    stopped = []
    for pid in [postmaster, *map(int, children)]:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
    return stopped


def _thaw(stopped: list[int]) -> None:
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_sigstopped_database_server_is_bounded_on_the_client_side(small_artifact_path, heldout):
    """README, "The database hangs": with the server's processes stopped, requests that need the
    database answer (503, 500, degraded) within their bounds instead of hanging; predictions keep
    answering and are buffered; woken up, the server gets every acknowledged prediction."""
    server = PostgresServer.create()
    replica = None
    try:
        db = server.new_database()
        replica = Replica(small_artifact_path, db, "a").wait_serving()
        _frozen_then_thawed(server, replica, db, heldout)
    finally:
        if replica is not None:
            replica.stop()
        server.destroy()


def _frozen_then_thawed(server: PostgresServer, replica: Replica, db: str, heldout) -> None:
    stopped = []
    try:
        rows = heldout.iloc[:60]
        status, answer = replica.post("/predict", as_payload(rows.iloc[:10]))
        assert status == 200
        acknowledged = list(answer["ids"])
        wait_until(lambda: reports(db), 10, "a first fleet check")     # the checker connection is open

        stopped = _freeze(server)
        # The first prediction waits for its commit at most --db-timeout + 4 s (README); the
        # others go straight to the retry buffer.
        (status, answer), first = _timed(lambda: replica.post("/predict", as_payload(rows.iloc[10:20])))
        assert status == 200 and first < DB_TIMEOUT + 4 + 1, first
        acknowledged += answer["ids"]
        for k in range(2, 6):
            (status, answer), took = _timed(lambda: replica.post("/predict", as_payload(rows.iloc[10 * k:10 * k + 10])))
            assert status == 200 and took < 1.0, took
            acknowledged += answer["ids"]
        (status, answer), took = _timed(lambda: replica.post("/feedback", {"id": acknowledged[0], "actual": 1.0}))
        assert status == 503 and took < DB_TIMEOUT + 4 + 1, took
        (status, answer), took = _timed(lambda: replica.post("/drift/check"))
        assert status == 500 and took < 2 * DB_TIMEOUT + 2 + 1, took     # a check's transaction bound
        (status, _, answer), took = _timed(lambda: request(replica.url, "GET", "/drift", timeout=30))
        assert status == 200 and answer["scope"] == "fleet" and took < DB_TIMEOUT + 2 + 1, took
        (status, _, answer), took = _timed(lambda: request(replica.url, "GET", "/drift", timeout=30))
        assert status == 200 and took < 0.5, took                        # the last report, at once
        health = replica.get("/healthz")
        assert health["status"] == "degraded" and health["store"]["pending"] == 50, health
        assert server.password not in json.dumps(health)
        # Nothing waits on the frozen server for ever: the replica still answers its own pages.
        (status, _, _), took = _timed(lambda: request(replica.url, "GET", "/metrics", timeout=30))
        assert status == 200 and took < 0.5, took
    finally:
        _thaw(stopped)
    wait_until(lambda: replica.get("/healthz")["status"] == "ok" and replica.get("/healthz")["store"]["pending"] == 0,
               30, "the replica to recover by itself")
    stored = {row[0] for row in sql(db, "SELECT id FROM predictions")}
    assert set(acknowledged) <= stored and len(acknowledged) == 60
    assert replica.post("/feedback", {"id": acknowledged[0], "actual": 1.0}) == (200, {"accepted": 1, "unknown": []})
    assert replica.post("/drift/check")[0] == 200


def test_a_label_racing_its_buffered_prediction_is_unknown_elsewhere_until_written(small_artifact_path, heldout):
    """README, "A label racing its prediction": a prediction answered while the database was down
    waits in its replica's memory; a label for it sent to another replica is `unknown` (200), sent
    to the serving replica it is refused with 503 (send again), until that replica writes its
    buffer; then it joins when resent, on any replica."""
    server = PostgresServer.create()
    replicas: list[Replica] = []
    try:
        db = server.new_database()
        # a's maintenance loop is slow: its buffer stays until it stops (a graceful stop writes it)
        a = Replica(small_artifact_path, db, "a", "--maintenance-interval", "600", interval=0)
        b = Replica(small_artifact_path, db, "b", interval=0)
        replicas = [a.wait_serving(), b.wait_serving()]
        server.stop()
        status, answer = a.post("/predict", as_payload(heldout.iloc[:2]))
        assert status == 200
        first, second = answer["ids"]
        server.start()
        wait_until(lambda: b.get("/healthz")["status"] == "ok", 15, "b to see the database again")
        assert b.post("/feedback", {"id": first, "actual": 900.0}) == (200, {"accepted": 0, "unknown": [first]})
        status, answer = a.post("/feedback", {"id": second, "actual": 800.0})
        assert status == 503 and "again" in answer["error"]    # not 'unknown': nothing is lost
        a.stop()                                               # writes its buffer on the way out
        assert a.proc.returncode == 0
        # The client resends after a moment: now both join, whichever replica takes them.
        assert b.post("/feedback", [{"id": first, "actual": 900.0}, {"id": second, "actual": 800.0}]) == (
            200, {"accepted": 2, "unknown": []})
        assert sorted(sql(db, "SELECT actual FROM predictions")) == [(800.0,), (900.0,)]
    finally:
        for r in replicas:
            r.stop()
        server.destroy()


def test_a_replica_started_without_its_database_stops_with_one_line(small_artifact_path, postgres_server):
    url = postgres_server.url().replace(f":{postgres_server.port}/", ":1/")      # nothing listens there
    proc = subprocess.run([sys.executable, str(ROOT / "monitor.py"), "--model", str(small_artifact_path), "--db", url,
                           "--port", "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot open the store postgresql://monitor:***@127.0.0.1:1/" in errors[0], proc.stderr
    assert postgres_server.password not in proc.stderr


# ------------------------------------------------------------------ SQLite: one writer process

def test_a_second_process_on_the_same_sqlite_file_is_refused(small_artifact_path, tmp_path):
    db = tmp_path / "monitor.db"
    first = Replica(small_artifact_path, str(db), "first", interval=0).wait_serving()
    try:
        second = subprocess.run(
            [sys.executable, str(ROOT / "monitor.py"), "--model", str(small_artifact_path), "--db", str(db),
             "--port", "0", "--check-interval", "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1, second.stderr
        assert str(db) in errors[0] and f"process {first.proc.pid}" in errors[0]
        assert first.get("/healthz")["status"] == "ok"          # the first one goes on
    finally:
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    # The lock went with the killed process: the file opens again, the lock file still beside it.
    again = Replica(small_artifact_path, str(db), "again", interval=0).wait_serving()
    try:
        assert (tmp_path / "monitor.db.lock").exists()
        assert again.get("/healthz")["status"] == "ok"
    finally:
        again.stop()
