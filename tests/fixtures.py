"""Shared fixtures: one small model trained once per test session (fast to train and load).

Loaded as a plugin by pytest.ini (`-p tests.fixtures`), so that both tests/ and the top-level
test_monitor.py see them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import train


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
