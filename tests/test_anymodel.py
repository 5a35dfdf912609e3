"""Any tabular model, end to end: trained by train.py from the command line on a CSV the project
ships, served by a real monitor on port 0 (loaded from its file, hash checked), predicted, labelled
and checked for drift. Two models besides the diamond regressor (test_monitor.py), the
`classifier` and `friedman` fixtures (tests/fixtures.py):

  classifier  data/diamonds.csv with `cut` as the class (5 classes, text features and numbers)
  friedman    data/friedman.csv, a regression whose target is negative half the time, with a
              30-category column and an integer column of five values

Plus a user's own Pipeline (not a forest) made into an artifact with build_artifact, and
train.py's one-line errors.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from monitoring.artifact import build_artifact, save_artifact
from monitoring.model import FastPredictor, PipelinePredictor, load_artifact
from tests.fixtures import CUT_CLASSES, ROOT
from tests.helpers import frame_payload as _payload
from tests.helpers import metric_value, request



def _serve(path: Path, tmp_path: Path, **overrides):
    settings = {"port": 0, "check_interval": 0, "window": 500, "label_window": 500, "db_path": tmp_path / "monitor.db",
                **overrides}
    config = MonitorConfig(model_path=path, **settings)
    return start_monitor(config, registry=CollectorRegistry())




# ------------------------------------------------------------------------------------------ classifier

def test_classifier_artifact_records_the_concept_reference(classifier):
    path, split = classifier
    artifact = load_artifact(path)
    assert artifact["schema"]["task"] == "classification" and artifact["schema"]["classes"] == CUT_CLASSES
    assert "cut" not in [f["name"] for f in artifact["schema"]["features"]]
    m = artifact["metrics"]
    assert 0.6 < m["accuracy"] < 0.95 and 0.2 < m["log_loss"] < 1.5
    assert sum(m["class_counts"].values()) == m["n_test"] == len(split.X_test)
    probabilities = artifact["reference_errors"]["probabilities"]
    assert probabilities.shape == (len(split.X_test), 5) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert artifact["info"]["task"] == "classification" and artifact["info"]["model_name"] == "diamonds-cut"


def test_classifier_serves_classes_with_probabilities(classifier, tmp_path):
    path, split = classifier
    pipeline = load_artifact(path)["pipeline"]
    handle = _serve(path, tmp_path)
    try:
        assert isinstance(handle.monitor.predictor, PipelinePredictor)
        rows = split.X_test.iloc[:20]
        status, _, one = request(handle.url, "POST", "/predict", _payload(rows.iloc[:1])[0])
        assert status == 200
        expected = pipeline.predict_proba(rows)
        assert one["prediction"] == pipeline.predict(rows.iloc[:1])[0]
        assert one["probabilities"] == dict(zip(CUT_CLASSES, expected[0].tolist()))
        status, _, many = request(handle.url, "POST", "/predict", _payload(rows))
        assert status == 200
        assert many["predictions"] == pipeline.predict(rows).tolist()
        assert [list(p.values()) for p in many["probabilities"]] == expected.tolist()
        assert len(set(many["ids"])) == 20
        # the true class as `actual`; an unknown class names the accepted ones
        labels = [{"id": i, "actual": c} for i, c in zip(many["ids"], split.y_test.iloc[:20])]
        status, _, reply = request(handle.url, "POST", "/feedback", labels)
        assert (status, reply) == (200, {"accepted": 20, "unknown": []})
        status, _, bad = request(handle.url, "POST", "/feedback", [{"id": many["ids"][0], "actual": "Excellent"}])
        assert status == 400
        assert bad["error"] == ("[0].actual: unknown class 'Excellent'; accepted: Fair, Good, Ideal, Premium, "
                                "Very Good")
        status, _, bad = request(handle.url, "POST", "/feedback", {"id": many["ids"][0], "actual": 3})
        assert status == 400 and "unknown class '3'" in bad["error"]
        status, _, bad = request(handle.url, "POST", "/predict", {**_payload(rows.iloc[:1])[0], "color": "Z"})
        assert status == 400 and bad["error"] == "color: unknown category 'Z'; accepted: J, I, H, G, F, E, D"
        status, _, bad = request(handle.url, "POST", "/predict", {"carat": 1.0})
        assert status == 400 and bad["error"].startswith("color: missing; every row needs carat, color, clarity")
        # the window holds (correct, log loss) of each label, from the probabilities served
        correct, loss = handle.monitor.labelled.snapshot()
        truth = [CUT_CLASSES.index(c) for c in split.y_test.iloc[:20]]
        p_true = expected[np.arange(20), truth]
        assert np.array_equal(correct, (expected.argmax(axis=1) == truth).astype(float))
        assert np.allclose(loss, -np.log(np.clip(p_true, 1e-15, 1)))
        text = request(handle.url, "GET", "/metrics")[2]
        assert metric_value(text, "model_info", {"task": "classification", "name": "diamonds-cut"}) == 1
        assert metric_value(text, "labels_received_total") == 20
        served = pd.Series([one["prediction"], *many["predictions"]]).value_counts()
        for name in CUT_CLASSES:
            assert metric_value(text, "predictions_by_class_total", {"class": name}) == served.get(name, 0)
        assert metric_value(text, "predicted_value_count") == 0  # a regression's histogram stays empty
        assert metric_value(text, "model_heldout_accuracy") == pytest.approx(load_artifact(path)["metrics"]["accuracy"])
        status, _, index = request(handle.url, "GET", "/")
        assert index["task"] == "classification" and index["service"] == "diamonds-cut model monitor"
    finally:
        handle.stop()


def test_classifier_export_writes_the_class_labels_as_served(classifier, friedman, tmp_path, caplog):
    path, split = classifier
    db = tmp_path / "monitor.db"
    handle = _serve(path, tmp_path)
    try:
        body = request(handle.url, "POST", "/predict", _payload(split.X_test.iloc[:30]))[2]
        truth = dict(zip(body["ids"][:25], split.y_test.iloc[:25]))
        assert request(handle.url, "POST", "/feedback", [{"id": i, "actual": c} for i, c in truth.items()])[0] == 200
    finally:
        handle.stop()
    served = dict(zip(body["ids"], body["predictions"]))
    target = tmp_path / "labelled.csv"
    out = subprocess.run([sys.executable, "monitor.py", "--model", str(path), "--db", str(db), "--export-labelled",
                          str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"wrote 25 labelled predictions to {target}\n"
    exported = pd.read_csv(target, keep_default_na=False)
    assert list(exported.columns) == ["id", "ts", *split.X_test.columns, "prediction", "actual", "label_ts",
                                      "model_version"]
    assert dict(zip(exported["id"], exported["actual"])) == truth
    assert dict(zip(exported["id"], exported["prediction"])) == {i: served[i] for i in truth}
    assert set(exported["prediction"]) <= set(CUT_CLASSES) and len(set(exported["actual"])) > 1
    # without the model the store's class indices are all there is
    import monitor
    from monitoring.export import export_labelled
    from monitoring.store import StoreError

    assert export_labelled(db, tmp_path / "indices.csv") == 25
    indices = pd.read_csv(tmp_path / "indices.csv")
    assert dict(zip(indices["id"], indices["actual"])) == {i: float(CUT_CLASSES.index(c)) for i, c in truth.items()}
    # an index that is no class (the monitor never writes one) is left empty, not guessed
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE predictions SET prediction = 5 WHERE id = ?", (body["ids"][0],))
        conn.execute("UPDATE predictions SET prediction = 1.5 WHERE id = ?", (body["ids"][1],))
        conn.execute("UPDATE predictions SET prediction = -1 WHERE id = ?", (body["ids"][2],))
    schema = load_artifact(path)["schema"]
    export_labelled(db, target, schema=schema)
    exported = pd.read_csv(target, keep_default_na=False).set_index("id")
    assert exported.loc[body["ids"][:3], "prediction"].tolist() == ["", "", ""]
    assert exported.loc[body["ids"][3], "prediction"] == served[body["ids"][3]]
    # another model's store, or a model that is not there: one line, exit status 2
    with pytest.raises(StoreError, match=r"^the store .*monitor.db holds other features \(carat, color, clarity, "
                                         r"depth, table, price, x, y, z\) than the model's \(site, level, x1, "):
        export_labelled(db, target, schema=load_artifact(friedman[0])["schema"])
    config = monitor.MonitorConfig(model_path=friedman[0], db_path=db)
    assert monitor._export_labelled(config, target) == 2 and "give the --model that served it" in caplog.text
    config = monitor.MonitorConfig(model_path=tmp_path / "gone.joblib", db_path=db)
    assert monitor._export_labelled(config, target) == 2
    assert f"export failed: no model artifact at {tmp_path / 'gone.joblib'} (--model)" in caplog.text


def _stream(handle, X: pd.DataFrame, y) -> None:
    """Held-out rows through /predict, their true values through /feedback, 250 at a time."""
    for start in range(0, len(X), 250):
        status, _, body = request(handle.url, "POST", "/predict", _payload(X.iloc[start:start + 250]))
        assert status == 200
        labels = [{"id": i, "actual": (v if isinstance(v, str) else float(v))}
                  for i, v in zip(body["ids"], list(y[start:start + 250]))]
        status, _, reply = request(handle.url, "POST", "/feedback", labels)
        assert status == 200 and reply["accepted"] == len(labels)


def test_classifier_drift_quiet_on_clean_traffic_and_caught_when_one_class_is_mislabelled(classifier, tmp_path):
    path, split = classifier
    X, y = split.X_test.iloc[:500], split.y_test.iloc[:500]
    handle = _serve(path, tmp_path)
    try:
        _stream(handle, X, y)
        clean = request(handle.url, "POST", "/drift/check")[2]
        assert clean["data_drift"]["detected"] is False and clean["concept_drift"]["detected"] is False
        assert clean["concept_drift"]["test"] == "loss-accuracy"
        assert abs(clean["concept_drift"]["accuracy_drop"]) < 0.05
        # Premium stones labelled Ideal: the model's mistakes change, not its inputs
        flipped = split.y_test.iloc[500:750].replace({"Premium": "Ideal"})
        _stream(handle, split.X_test.iloc[500:750], flipped)
        drifted = request(handle.url, "POST", "/drift/check")[2]
        concept = drifted["concept_drift"]
        assert concept["detected"] is True and drifted["data_drift"]["detected"] is False
        assert concept["accuracy_drop"] > 0.05 and concept["score"] > 0.2
        text = request(handle.url, "GET", "/metrics")[2]
        assert metric_value(text, "concept_drift_detected") == 1
        assert metric_value(text, "concept_drift") == pytest.approx(concept["score"])
        assert metric_value(text, "concept_drift_window_accuracy") == pytest.approx(concept["accuracy"])
        assert metric_value(text, "concept_drift_reference_log_loss") == pytest.approx(concept["reference_log_loss"])
        page = request(handle.url, "GET", "/drift/report")[2]
        assert "Concept drift" in page and "accuracy drop" in page
    finally:
        handle.stop()


def test_classifier_window_is_refilled_after_a_restart(classifier, tmp_path):
    path, split = classifier
    handle = _serve(path, tmp_path)
    try:
        _stream(handle, split.X_test.iloc[:60], split.y_test.iloc[:60])
        before = handle.monitor.labelled.snapshot()
    finally:
        handle.stop()
    again = _serve(path, tmp_path)
    try:
        after = again.monitor.labelled.snapshot()
        assert len(after[0]) == 60
        assert np.array_equal(before[0], after[0]) and np.allclose(before[1], after[1])
    finally:
        again.stop()


def test_classifier_in_memory_store_joins_labels(classifier, tmp_path):
    path, split = classifier
    handle = _serve(path, tmp_path, db_path=None)
    try:
        _stream(handle, split.X_test.iloc[:40], split.y_test.iloc[:40])
        assert len(handle.monitor.labelled) == 40
    finally:
        handle.stop()


# -------------------------------------------------------------------------------------------- friedman

def test_friedman_serves_negative_values_through_the_exact_fast_path(friedman, tmp_path):
    path, split = friedman
    artifact = load_artifact(path)
    assert artifact["schema"]["target_positive"] is False and (split.y_test < 0).mean() > 0.3
    site = next(f for f in artifact["schema"]["features"] if f["name"] == "site")
    assert len(site["categories"]) == 30
    assert next(f for f in artifact["schema"]["features"] if f["name"] == "level")["kind"] == "numeric"
    handle = _serve(path, tmp_path)
    try:
        assert isinstance(handle.monitor.predictor, FastPredictor)
        rows = split.X_test.iloc[:300]
        status, _, body = request(handle.url, "POST", "/predict", _payload(rows))
        assert status == 200
        assert body["predictions"] == artifact["pipeline"].predict(rows).tolist()
        assert min(body["predictions"]) < 0
        status, _, one = request(handle.url, "POST", "/predict", {**_payload(rows.iloc[:1])[0], "x1": -0.5})
        assert status == 200 and isinstance(one["prediction"], float)
        status, _, bad = request(handle.url, "POST", "/predict", {**_payload(rows.iloc[:1])[0], "site": "s99"})
        assert status == 400 and bad["error"].startswith("site: unknown category 's99'; accepted: s00, s01")
        status, _, bad = request(handle.url, "POST", "/predict", [_payload(rows.iloc[:1])[0], {**_payload(rows.iloc[:1])[0], "x1": "a"}])
        assert status == 400 and bad["error"] == "[1].x1: expected a number, got the string 'a'"
        status, _, reply = request(handle.url, "POST", "/feedback", {"id": body["ids"][0], "actual": -3.5})
        assert (status, reply) == (200, {"accepted": 1, "unknown": []})
        status, _, bad = request(handle.url, "POST", "/feedback", {"id": body["ids"][0]})
        assert status == 400 and bad["error"] == "actual: missing; the true y"
    finally:
        handle.stop()
    # the labelled rows export with this model's columns
    from monitoring.export import export_labelled

    assert export_labelled(tmp_path / "monitor.db", tmp_path / "labelled.csv") == 1
    exported = pd.read_csv(tmp_path / "labelled.csv")
    assert list(exported.columns) == ["id", "ts", *split.X_test.columns, "prediction", "actual", "label_ts",
                                      "model_version"]
    assert exported["actual"].tolist() == [-3.5] and exported["site"][0] == split.X_test["site"].iloc[0]


def test_friedman_data_drift_quiet_on_clean_traffic_and_caught_on_a_shifted_feature(friedman, tmp_path):
    path, split = friedman
    handle = _serve(path, tmp_path)
    try:
        X, y = split.X_test.iloc[:500], split.y_test.iloc[:500]
        _stream(handle, X, y)
        clean = request(handle.url, "POST", "/drift/check")[2]
        assert clean["data_drift"]["detected"] is False
        shifted = split.X_test.iloc[500:1000].copy()
        shifted["x4"] = shifted["x4"] + 0.15  # half a standard deviation of a uniform feature
        _stream(handle, shifted, split.y_test.iloc[500:1000])
        drifted = request(handle.url, "POST", "/drift/check")[2]["data_drift"]
        assert drifted["detected"] is True
        assert [n for n, f in drifted["features"].items() if f["detected"]] == ["x4"]
        status, _, page = request(handle.url, "GET", "/drift/report")
        assert status == 200 and "x4" in page and "site" in page
    finally:
        handle.stop()


def test_friedman_concept_drift_reads_residuals_quiet_on_clean_traffic_and_caught_when_targets_rise(friedman,
                                                                                                       tmp_path):
    """Half the targets are negative: no log ratio; the artifact chose the residual, and today's
    log-ratio test would read every clean window as drifted."""
    path, split = friedman
    assert load_artifact(path)["reference_errors"]["error"] == "residual"
    handle = _serve(path, tmp_path)
    try:
        X, y = split.X_test.iloc[:500], split.y_test.iloc[:500]
        _stream(handle, X, y)
        clean = request(handle.url, "POST", "/drift/check")[2]["concept_drift"]
        assert clean["error"] == "residual" and clean["detected"] is False
        assert clean["bias_pct"] is None and abs(clean["bias"]) < 0.5
        _stream(handle, split.X_test.iloc[500:800], split.y_test.iloc[500:800] + 1.0)
        drifted = request(handle.url, "POST", "/drift/check")[2]["concept_drift"]
        assert drifted["detected"] is True and 0.3 < drifted["bias"] < 1.2
        status, _, page = request(handle.url, "GET", "/drift/report")
        assert status == 200 and "errors: live values are" in page and "actual minus predicted" in page
        assert "chart-concept-errors" not in page  # no % error on a log scale for a target of any sign
    finally:
        handle.stop()


# ------------------------------------------------------------------------------ a user's own Pipeline

def test_build_artifact_serves_a_users_own_pipeline(friedman, tmp_path):
    """Not a forest: the pipeline itself predicts, and what it predicts is what is served."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    _, split = friedman
    numeric = [c for c in split.X_train.columns if c != "site"]
    pipeline = make_pipeline(ColumnTransformer([("site", OneHotEncoder(handle_unknown="ignore"), ["site"]),
                                                ("num", StandardScaler(), numeric)]), Ridge())
    pipeline.fit(split.X_train, split.y_train)
    artifact = build_artifact(pipeline, split.X_train, split.y_train, split.X_test, split.y_test)
    assert artifact["schema"]["task"] == "regression" and artifact["metrics"]["r2"] > 0.5
    save_artifact(artifact, tmp_path / "ridge.joblib")
    handle = _serve(tmp_path / "ridge.joblib", tmp_path)
    try:
        assert isinstance(handle.monitor.predictor, PipelinePredictor)
        rows = split.X_test.iloc[:25]
        body = request(handle.url, "POST", "/predict", _payload(rows))[2]
        assert body["predictions"] == pytest.approx(pipeline.predict(rows).tolist(), rel=1e-12, abs=1e-12)
    finally:
        handle.stop()


def test_another_models_store_is_refused_with_a_clear_message(friedman, classifier, tmp_path):
    handle = _serve(friedman[0], tmp_path)
    handle.stop()
    from monitoring.store import StoreError

    with pytest.raises(StoreError, match=r"it records another model's features \(site, level, x1, .*\), not this "
                                         r"model's \(carat, color, clarity, .*\); give this model its own --db"):
        _serve(classifier[0], tmp_path)


# --------------------------------------------------------------------------------- train.py's errors

@pytest.mark.parametrize("csv, args, message", [
    ("a,b\n" + "1,2\n" * 200, ["--target", "c"], "--target 'c': no such column; columns: a, b"),
    ("a,b,c\n" + "1,,3\n" * 200, ["--target", "c"], "column 'b' is empty in every row"),
    ("a,c\n" + "1,x\n" * 200, ["--target", "c"], "target 'c' has one class ('x'); a classifier needs two or more"),
    ("a,c\n" + "".join(f"{i},{i % 7}.5\n" for i in range(50)), ["--target", "c"],
     "50 complete rows; at least 100 are needed for a held-out split of 20%"),
    ("a,c\n" + "1,2\n", ["--target", "c", "--task", "regression", "--ordered", "a"],
     "--ordered 'a': expected COLUMN=a,b,c (categories in order)"),
])
def test_train_refuses_bad_input_in_one_line(tmp_path, csv, args, message):
    data = tmp_path / "data.csv"
    data.write_text(csv)
    done = subprocess.run([sys.executable, "train.py", "--data", str(data), *args, "--output", str(tmp_path / "m.joblib")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"train.py: error: {message}\n"
    assert not (tmp_path / "m.joblib").exists()
