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


# Two models besides the diamond one, trained by train.py from the command line on CSVs the project
# ships, once per session (tests/test_anymodel.py serves them, tests/test_fleet.py runs fleets of them):
#   classifier  data/diamonds.csv with `cut` as the class (5 classes, text features and numbers)
#   friedman    data/friedman.csv, a regression whose target is negative half the time, with a
#               30-category column and an integer column of five values
ROOT = Path(__file__).resolve().parent.parent
DIAMONDS_CSV = ROOT / "data" / "diamonds.csv"
FRIEDMAN_CSV = ROOT / "data" / "friedman.csv"
CUT_ORDERED = ["--ordered", "color=J,I,H,G,F,E,D", "--ordered", "clarity=I1,SI2,SI1,VS2,VS1,VVS2,VVS1,IF"]
CUT_CLASSES = ["Fair", "Good", "Ideal", "Premium", "Very Good"]


def _train_cli(tmp_path_factory, name: str, *args: str):
    """train.py as a user runs it, with 10 trees on one core (a few seconds)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp(name) / f"{name}.joblib"
    done = subprocess.run([sys.executable, "train.py", *args, "--n-estimators", "10", "--jobs", "1",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="session")
def classifier(tmp_path_factory):
    """(artifact path, train.split_csv's split) of the cut classifier."""
    path, done = _train_cli(tmp_path_factory, "cut", "--data", str(DIAMONDS_CSV), "--target", "cut", *CUT_ORDERED)
    assert "task: classification (inferred: target 'cut' is text" in done.stdout
    assert "held-out (10788 rows): accuracy" in done.stdout
    split = train.split_csv(DIAMONDS_CSV, "cut", ordered={"color": list("JIHGFED")}, say=lambda _: None)
    return path, split


@pytest.fixture(scope="session")
def friedman(tmp_path_factory):
    """(artifact path, train.split_csv's split) of the friedman regression."""
    path, done = _train_cli(tmp_path_factory, "friedman", "--data", str(FRIEDMAN_CSV), "--target", "y")
    assert "task: regression (inferred" in done.stdout
    return path, train.split_csv(FRIEDMAN_CSV, "y", say=lambda _: None)


# A real PostgreSQL for the fleet store's tests: one server per session, a database per test.
from tests.postgres import pg_url, postgres_server  # noqa: E402,F401
