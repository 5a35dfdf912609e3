"""Shared fixtures: one small model trained once per test session (fast to train and load).

Loaded as a plugin by pytest.ini (`-p tests.fixtures`), so that both tests/ and the top-level
test_monitor.py see them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

import train


@functools.cache
def _small_model() -> dict:
    """Trained once per process: `make mutate` runs the suite hundreds of times in forks of one
    process (mutmut), and training would otherwise be most of each run. Nothing modifies it: the
    tests get the copy written to disk and loaded back."""
    return train.train(n_estimators=20, n_jobs=2)


@pytest.fixture(scope="session")
def small_artifact_path(tmp_path_factory) -> Path:
    """A 20-tree model: same pipeline, schema and references as the default, trained in ~1 s."""
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    train.save_artifact(_small_model(), path)
    return path


@pytest.fixture(scope="session")
def small_artifact(small_artifact_path):
    import joblib

    return joblib.load(small_artifact_path)


# A real PostgreSQL for the fleet store's tests: one server per session, a database per test.
from tests.postgres import pg_url, postgres_server  # noqa: E402,F401
