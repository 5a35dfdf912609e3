"""Training, the artifact, loading it safely, and the fast prediction path (request validation:
test_validation.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

import train
from monitoring.model import FastPredictor, ModelLoadError, Schema, load_artifact
from tests.helpers import heldout_frame

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """The model `python train.py` makes, with its defaults, trained through the command line."""
    path = tmp_path_factory.mktemp("default") / "model.joblib"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--output", str(path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return path, out


def test_default_training_meets_the_quality_and_size_goals(default_model):
    path, out = default_model
    artifact = joblib.load(path)
    metrics = artifact["metrics"]
    assert metrics["mse"] <= 320_000, metrics  # the lab's pipeline: 379,334
    assert path.stat().st_size <= 100e6
    assert artifact["info"]["training_seconds"] <= 60
    assert f"MSE {metrics['mse']:,.0f}" in out and "R2" in out
    assert np.isclose(metrics["rmse"] ** 2, metrics["mse"])


def test_artifact_holds_what_monitoring_needs(small_artifact):
    assert len(small_artifact["reference_features"]) == 43_152  # training rows: the data-drift reference
    errors = small_artifact["reference_errors"]
    assert len(errors["actual"]) == len(errors["predicted"]) == 10_788  # held-out rows, not training rows
    schema = small_artifact["schema"]
    assert [f["name"] for f in schema["features"]] == train.FEATURES
    cut = next(f for f in schema["features"] if f["name"] == "cut")
    assert cut["categories"] == ["Fair", "Good", "Very Good", "Premium", "Ideal"]
    info = small_artifact["info"]
    assert info["data_sha256"] == train.data_sha256()
    assert {"sklearn", "numpy", "pandas", "python"} <= set(info["versions"])
    assert {"mse", "rmse", "mae", "r2"} <= set(small_artifact["metrics"])
    # the held-out errors, not the (much smaller) training errors, are the concept-drift reference
    assert small_artifact["metrics"]["train_mse"] < small_artifact["metrics"]["mse"]


def test_train_help_lists_its_options():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for option in ("--output", "--n-estimators", "--min-samples-leaf", "--seed"):
        assert option in out


def test_data_loads_offline_as_ordered_categoricals():
    diamonds = train.load_diamonds()
    assert diamonds.shape == (53_940, 10)
    # seaborn's order, best grade first
    assert list(diamonds["clarity"].cat.categories) == ["IF", "VVS1", "VVS2", "VS1", "VS2", "SI1", "SI2", "I1"]
    assert list(diamonds["cut"].cat.categories) == ["Ideal", "Premium", "Very Good", "Good", "Fair"]


def test_fast_path_equals_the_pipeline_on_the_whole_heldout_split(small_artifact):
    frame = heldout_frame()
    schema = Schema(small_artifact["schema"])
    fast = FastPredictor(small_artifact["pipeline"], schema)
    rows = [tuple(r) for r in frame[schema.names].astype(object).itertuples(index=False)]
    expected = small_artifact["pipeline"].predict(frame[schema.names])
    assert np.array_equal(fast.predict(rows), expected)
    # Every batch size the batcher may form, on both walking orders (all trees at once up to 64 rows)
    for n in (1, 2, 3, 7, 8, 9, 16, 33, 63, 64, 65, 100, 1000):
        for start in (0, 4321):
            assert np.array_equal(fast.predict(rows[start:start + n]), expected[start:start + n]), n


def test_fast_path_equals_the_default_pipeline(default_model):
    artifact = load_artifact(default_model[0])
    frame = heldout_frame()
    schema = Schema(artifact["schema"])
    rows = [tuple(r) for r in frame[schema.names].astype(object).itertuples(index=False)]
    fast = FastPredictor(artifact["pipeline"], schema)
    assert np.array_equal(fast.predict(rows), artifact["pipeline"].predict(frame[schema.names]))


# ------------------------------------------------------------------------------------ loading safely

def _copy_artifact(small_artifact_path, tmp_path) -> Path:
    target = tmp_path / "model.joblib"
    target.write_bytes(small_artifact_path.read_bytes())
    Path(str(target) + ".sha256").write_text(Path(str(small_artifact_path) + ".sha256").read_text())
    return target


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_artifact(tmp_path / "absent.joblib")


def test_truncated_model_fails_its_hash_check(small_artifact_path, tmp_path):
    path = _copy_artifact(small_artifact_path, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="does not match its recorded sha256"):
        load_artifact(path)


def test_truncated_model_without_hash_check_is_still_a_clear_error(small_artifact_path, tmp_path):
    path = _copy_artifact(small_artifact_path, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_artifact(path, verify_hash=False)


def test_model_from_another_sklearn_version_is_refused(small_artifact, tmp_path):
    artifact = dict(small_artifact, info=dict(small_artifact["info"], versions={"sklearn": "0.24.2"}))
    path = tmp_path / "old.joblib"
    train.save_artifact(artifact, path)
    with pytest.raises(ModelLoadError, match="trained with scikit-learn 0.24.2"):
        load_artifact(path)


def test_monitor_exits_non_zero_with_a_message_for_a_bad_model(small_artifact_path, tmp_path):
    path = _copy_artifact(small_artifact_path, tmp_path)
    Path(str(path) + ".sha256").write_text("0" * 64 + "  model.joblib\n")
    result = subprocess.run([sys.executable, str(ROOT / "monitor.py"), "--model", str(path), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "does not match its recorded sha256" in result.stderr
    assert "Traceback" not in result.stderr
