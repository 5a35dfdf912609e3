"""The diamonds data set, the monitor's default: its features, where it ships, and how rows of it
become /predict requests. Every other module takes these facts from here."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
NUMERIC_FEATURES = ["carat", "depth", "table"]
CATEGORICAL_FEATURES = ["cut", "color", "clarity"]
FEATURES = ["carat", "cut", "color", "clarity", "depth", "table"]  # the request's field order
TARGET = "price"
MODEL_NAME = "diamond-price"  # model_info's name, and the artifact's
# The lab's split: everything that needs "the held-out rows" takes them from split().
TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 42


def load_diamonds(data_dir: Path = DATA_DIR) -> pd.DataFrame:
    """The seaborn diamonds table, read from the copy shipped in data/ (no network).

    seaborn turns cut, color and clarity into ordered categoricals; they are listed best grade
    first (cut Ideal..Fair, color D..J, clarity IF..I1).
    """
    csv = Path(data_dir) / "diamonds.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} is missing; the project ships it (see data/README.md)")
    import seaborn as sns  # deferred: only training and the offline tools read the table

    return sns.load_dataset("diamonds", data_home=str(data_dir), cache=True)


def data_sha256(data_dir: Path = DATA_DIR) -> str:
    return hashlib.sha256((Path(data_dir) / "diamonds.csv").read_bytes()).hexdigest()


def split(diamonds: pd.DataFrame):
    """(X_train, X_test, y_train, y_test) as the lab splits them: test_size=0.2, random_state=42."""
    from sklearn.model_selection import train_test_split

    return train_test_split(diamonds[FEATURES], diamonds[TARGET], test_size=TEST_SIZE,
                            random_state=SPLIT_RANDOM_STATE)


def as_payload(frame: pd.DataFrame) -> list[dict]:
    """Rows of features as /predict JSON objects: grades as plain strings, numbers as floats."""
    columns = {name: (frame[name].astype(str).tolist() if name in CATEGORICAL_FEATURES
                      else frame[name].astype(float).tolist()) for name in FEATURES}
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


# How the drift report (monitoring/report.py) names each feature's values and their changes: the
# unit after a number, the axis label, and what "higher" and "lower" mean for these stones. A feature
# not listed here gets plain words ("live table is higher").
FEATURE_WORDS = {
    "carat": {"unit": "ct", "axis": "weight (carat)", "higher": "live stones are larger",
              "lower": "live stones are smaller"},
    "depth": {"unit": "%", "axis": "total depth (% of mean diameter)", "higher": "live stones are deeper",
              "lower": "live stones are shallower"},
    "table": {"unit": "%", "axis": "table width (% of widest point)", "higher": "live tables are wider",
              "lower": "live tables are narrower"},
    "cut": {"axis": "cut grade"},
    "color": {"axis": "colour grade"},
    "clarity": {"axis": "clarity grade"},
}
TARGET_UNIT = "$"
