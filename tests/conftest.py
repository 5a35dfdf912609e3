"""Shared fixtures: one small model trained once per test session (fast to train and load)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402


@pytest.fixture(scope="session")
def small_artifact_path(tmp_path_factory) -> Path:
    """A 20-tree model: same pipeline, schema and references as the default, trained in ~1 s."""
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    train.save_artifact(train.train(n_estimators=20, n_jobs=2), path)
    return path


@pytest.fixture(scope="session")
def small_artifact(small_artifact_path):
    import joblib

    return joblib.load(small_artifact_path)
