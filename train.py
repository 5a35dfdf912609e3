"""Train a model and save it with what monitoring needs: the diamond-price model by default, or a
regressor or classifier on any CSV.

The artifact (monitoring/artifact.py describes it) is one joblib file holding the fitted Pipeline
(a ColumnTransformer, then a random forest), the feature schema, the training features (data-drift
reference), held-out truth and predictions (concept-drift reference), held-out metrics and the
model's info. Beside it, `<path>.sha256` records the file's hash; the monitor checks it before
unpickling.

    python train.py                      # the diamond model: writes model.joblib
    python train.py --n-estimators 20    # a smaller, faster model
    python train.py --data my.csv --target churned --output churn.joblib
    python train.py --data diamonds.csv --target cut --ordered "color=J,I,H,G,F,E,D"
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import joblib  # noqa: F401  (a library check: the artifact is written with it)
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    from monitoring.artifact import ArtifactError, build_artifact, grade_codes, save_artifact
    from monitoring.diamonds import (CATEGORICAL_FEATURES, DATA_DIR, FEATURES, MODEL_NAME, NUMERIC_FEATURES,
                                     SPLIT_RANDOM_STATE, TARGET, TEST_SIZE, data_sha256, load_diamonds, split)
    from monitoring.model import DEFAULT_MODEL_PATH
except ModuleNotFoundError as missing:  # e.g. the system Python, with the libraries in .venv
    from monitoring.environment import run_in_project_environment

    run_in_project_environment(missing)

__all__ = ["CsvSplit", "TrainingError", "build_pipeline", "feature_schema", "grade_codes", "save_artifact", "split_csv",
           "train", "train_csv"]

# A held-out split of TEST_SIZE needs this many rows to leave the concept-drift reference 20 rows.
MIN_ROWS = 100
# An integer target with at most this many distinct values is taken for classes (said so; --task overrides).
MAX_INFERRED_CLASSES = 10


class TrainingError(Exception):
    """Bad training input, told in one line (train.py exits 2 with it, never a traceback)."""


def feature_schema(diamonds: pd.DataFrame) -> dict:
    """Names, kinds and category lists in order from worst to best grade."""
    features = []
    for name in FEATURES:
        if name in CATEGORICAL_FEATURES:
            categories = [str(c) for c in diamonds[name].cat.categories[::-1]]
            features.append({"name": name, "kind": "categorical", "categories": categories})
        else:
            # Weights and proportions of a stone: a value <= 0 is a mistake, refused at /predict.
            features.append({"name": name, "kind": "numeric", "positive": True})
    return {"task": "regression", "features": features, "target": TARGET, "target_positive": True}


def build_pipeline(schema: dict, n_estimators: int = 100, min_samples_leaf: int = 4,
                   max_features: float = 0.5, random_state: int = 42, n_jobs: int = -1) -> Pipeline:
    """Categories are encoded as ranks in the schema's order (for the diamond grades, worst = 0): one
    split on a rank separates 'this grade or better', which one-hot columns can only do one
    category at a time; unordered categories cost a forest a few more splits. Trees need no
    scaling, so numeric features pass through unchanged. A forest regressor or classifier by the
    schema's task."""
    categorical = [f for f in schema["features"] if f["kind"] == "categorical"]
    numeric = [f["name"] for f in schema["features"] if f["kind"] != "categorical"]
    steps = []
    if categorical:
        steps.append(("grades", OrdinalEncoder(categories=[f["categories"] for f in categorical]),
                      [f["name"] for f in categorical]))
    if numeric:
        steps.append(("numeric", "passthrough", numeric))
    preprocessor = ColumnTransformer(steps, verbose_feature_names_out=False)
    params = dict(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, max_features=max_features,
                  random_state=random_state, n_jobs=n_jobs)
    if schema.get("task", "regression") == "classification":
        return Pipeline([("preprocessor", preprocessor), ("classifier", RandomForestClassifier(**params))])
    return Pipeline([("preprocessor", preprocessor), ("regressor", RandomForestRegressor(**params))])


def _serving_threads(pipeline: Pipeline) -> None:
    # Serving predicts one small batch at a time; forest threads would only add overhead there.
    pipeline.steps[-1][1].set_params(n_jobs=1)


def train(n_estimators: int = 100, min_samples_leaf: int = 4, max_features: float = 0.5,
          random_state: int = 42, n_jobs: int = -1, data_dir: Path = DATA_DIR) -> dict:
    """Fit the diamond pipeline and return the artifact (nothing is written)."""
    started = time.perf_counter()
    diamonds = load_diamonds(data_dir)
    schema = feature_schema(diamonds)
    X_train, X_test, y_train, y_test = split(diamonds)

    pipeline = build_pipeline(schema, n_estimators, min_samples_leaf, max_features, random_state, n_jobs)
    pipeline.fit(X_train, y_train)
    _serving_threads(pipeline)
    digest = data_sha256(data_dir)
    params = {"n_estimators": n_estimators, "min_samples_leaf": min_samples_leaf, "max_features": max_features,
              "random_state": random_state, "test_size": TEST_SIZE, "split_random_state": SPLIT_RANDOM_STATE}
    artifact = build_artifact(pipeline, X_train, y_train, X_test, y_test, task="regression", schema=schema,
                              model_name=MODEL_NAME, params=params, data_sha256=digest, version_prefix="rf")
    artifact["info"]["training_seconds"] = round(time.perf_counter() - started, 2)
    return artifact


def _read_csv(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise TrainingError(f"--data {path}: no such file")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise TrainingError(f"--data {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise TrainingError(f"--data {path}: no rows")
    return frame


def _infer_task(y: pd.Series) -> tuple[str, str]:
    """(task, why) from the target's values."""
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification", f"target {y.name!r} is text"
    distinct = y.nunique()
    if pd.api.types.is_integer_dtype(y) and distinct <= MAX_INFERRED_CLASSES:
        return "classification", f"target {y.name!r} has {distinct} integer values"
    return "regression", f"target {y.name!r} is numeric with {distinct} distinct values"


def _parse_ordered(items) -> dict[str, list[str]]:
    ordered = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        categories = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not categories:
            raise TrainingError(f"--ordered {item!r}: expected COLUMN=a,b,c (categories in order)")
        ordered[name.strip()] = categories
    return ordered


@dataclass
class CsvSplit:
    """A CSV's rows as train_csv splits them (tests and the evaluation stream its held-out rows)."""
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    task: str
    features: list[str]
    ordered: dict


def split_csv(data: Path, target: str, features: list[str] | None = None, ordered: dict | None = None,
              task: str | None = None, say=print) -> CsvSplit:
    """Read and check a CSV, infer the task if not given (and say so), and split it as the diamond
    model is split (test_size 0.2, random_state 42; stratified by class for a classifier, so that
    every class is in both parts). Raises TrainingError with a one-line message."""
    frame = _read_csv(data)
    if target not in frame.columns:
        raise TrainingError(f"--target {target!r}: no such column; columns: {', '.join(map(str, frame.columns))}")
    features = list(features) if features else [c for c in frame.columns if c != target]
    unknown = [f for f in features if f not in frame.columns]
    if unknown:
        raise TrainingError(f"--features: no column {unknown[0]!r}; columns: {', '.join(map(str, frame.columns))}")
    if target in features:
        raise TrainingError(f"--features includes the target {target!r}")
    if not features:
        raise TrainingError("no feature columns: the CSV has only the target")
    for name in [*features, target]:
        if frame[name].isna().all():
            raise TrainingError(f"column {name!r} is empty in every row")
    frame = frame[[*features, target]]
    complete = frame.dropna()
    if len(complete) < len(frame):
        say(f"left out {len(frame) - len(complete):,} of {len(frame):,} rows with an empty value")
    if len(complete) < MIN_ROWS:
        raise TrainingError(f"{len(complete)} complete rows; at least {MIN_ROWS} are needed for a held-out "
                            f"split of {TEST_SIZE:.0%}")
    ordered = dict(ordered or {})
    X, y = complete[features].copy(), complete[target]
    for name in features:  # text and categories as plain strings, the form /predict receives
        if name in ordered or not pd.api.types.is_numeric_dtype(X[name]) or pd.api.types.is_bool_dtype(X[name]):
            X[name] = X[name].astype(str)
    if task is None:
        task, why = _infer_task(y)
        say(f"task: {task} (inferred: {why}; --task sets it)")
    elif task not in ("regression", "classification"):
        raise TrainingError(f"--task {task!r}: expected regression or classification")
    stratify = None
    if task == "classification":
        if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
            y = y.astype(str)
        counts = y.value_counts()
        if len(counts) < 2:
            raise TrainingError(f"target {target!r} has one class ({str(counts.index[0])!r}); a classifier needs two or more")
        rare = counts[counts < 2]
        if len(rare):
            raise TrainingError(f"class {str(rare.index[0])!r} of {target!r} has {int(rare.iloc[0])} row; every class "
                                "needs at least 2 (one for training, one held out)")
        stratify = y
    elif not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        raise TrainingError(f"target {target!r} is not numeric; a regression needs numbers (or --task classification)")
    else:
        y = y.astype(np.float64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SIZE, random_state=SPLIT_RANDOM_STATE,
                                                        stratify=stratify)
    return CsvSplit(X_train, X_test, y_train, y_test, task, features, ordered)


def train_csv(data: Path, target: str, features: list[str] | None = None, ordered: dict | None = None,
              task: str | None = None, n_estimators: int = 100, min_samples_leaf: int = 4,
              max_features: float = 0.5, random_state: int = 42, n_jobs: int = -1,
              say=print) -> dict:
    """Fit a forest on a CSV and return the artifact (nothing is written): split_csv's split, the
    same held-out evaluation and artifact contents as the diamond model. Raises TrainingError with
    a one-line message for input it cannot train on."""
    started = time.perf_counter()
    part = split_csv(data, target, features, ordered, task, say)
    X_train, X_test, y_train, y_test = part.X_train, part.X_test, part.y_train, part.y_test
    task, features, ordered = part.task, part.features, part.ordered
    X = pd.concat([X_train, X_test])
    y = pd.concat([y_train, y_test])
    try:
        from monitoring.artifact import infer_schema

        classes = sorted(y.unique().tolist()) if task == "classification" else None
        schema = infer_schema(X_train, target, task, classes, ordered,
                              target_positive=task == "regression" and bool((y > 0).all()))
    except ArtifactError as exc:
        raise TrainingError(str(exc)) from None
    # Every category of the data, not only those that fell in the training part, is one /predict accepts.
    for f in schema["features"]:
        if f["kind"] == "categorical" and f["name"] not in ordered:
            f["categories"] = sorted(set(f["categories"]) | set(X[f["name"]].unique().tolist()))
    pipeline = build_pipeline(schema, n_estimators, min_samples_leaf, max_features, random_state, n_jobs)
    pipeline.fit(X_train, y_train)
    _serving_threads(pipeline)
    digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    params = {"n_estimators": n_estimators, "min_samples_leaf": min_samples_leaf, "max_features": max_features,
              "random_state": random_state, "test_size": TEST_SIZE, "split_random_state": SPLIT_RANDOM_STATE,
              "data": str(data), "target": target, "features": features, "ordered": ordered}
    try:
        artifact = build_artifact(pipeline, X_train, y_train, X_test, y_test, task=task, schema=schema,
                                  model_name=f"{Path(data).stem}-{target}", params=params, data_sha256=digest,
                                  version_prefix="rf")
    except ArtifactError as exc:
        raise TrainingError(str(exc)) from None
    artifact["info"]["training_seconds"] = round(time.perf_counter() - started, 2)
    return artifact


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a model and save it with its monitoring reference: the diamond-price model, or "
                    "with --data and --target a forest on any CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path,
                        default=Path(os.environ.get("MONITOR_MODEL", DEFAULT_MODEL_PATH)),
                        help="where to write the artifact (env MONITOR_MODEL)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a CSV to train on (with --target); without it, the shipped diamonds table")
    parser.add_argument("--target", default=None, help="the CSV column to predict")
    parser.add_argument("--features", nargs="+", default=None, metavar="COLUMN",
                        help="the columns to predict from (default: every column but the target)")
    parser.add_argument("--ordered", action="append", default=None, metavar="COLUMN=a,b,c",
                        help="a text column's categories in order (repeatable); other text columns are "
                             "sorted categories")
    parser.add_argument("--task", choices=("regression", "classification"), default=None,
                        help="inferred from the target when omitted (text or few integers: classification)")
    parser.add_argument("--n-estimators", type=int, default=100, help="trees in the forest")
    parser.add_argument("--min-samples-leaf", type=int, default=4,
                        help="smallest leaf; larger leaves mean a smaller, smoother model")
    parser.add_argument("--max-features", type=float, default=0.5,
                        help="fraction of features tried at each split")
    parser.add_argument("--seed", type=int, default=42, help="random_state of the forest")
    parser.add_argument("--jobs", type=int, default=-1, help="cores used for fitting (-1: all)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder holding diamonds.csv")
    args = parser.parse_args(argv)
    if (args.data is None) != (args.target is None):
        parser.error("--data and --target go together")
    if args.data is None and (args.features or args.ordered or args.task):
        parser.error("--features, --ordered and --task apply to --data")
    return args


def _summary(artifact: dict) -> str:
    m = artifact["metrics"]
    if artifact["schema"].get("task") == "classification":
        return (f"held-out ({m['n_test']} rows): accuracy {m['accuracy']:.4f}  log loss {m['log_loss']:.4f}   "
                f"(training-set accuracy {m['train_accuracy']:.4f}); classes "
                + ", ".join(f"{c} {n}" for c, n in m["class_counts"].items()))
    def num(x, decimals):  # dollars as today; a target of a few units keeps four significant digits
        return f"{x:,.{decimals}f}" if abs(x) >= 100 else f"{x:.4g}"

    return (f"held-out ({m['n_test']} rows): MSE {num(m['mse'], 0)}  RMSE {num(m['rmse'], 1)}  "
            f"MAE {num(m['mae'], 1)}  R2 {m['r2']:.4f}   (training-set MSE {num(m['train_mse'], 0)})")


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        if args.data is None:
            artifact = train(args.n_estimators, args.min_samples_leaf, args.max_features, args.seed,
                             args.jobs, args.data_dir)
        else:
            artifact = train_csv(args.data, args.target, args.features, _parse_ordered(args.ordered), args.task,
                                 args.n_estimators, args.min_samples_leaf, args.max_features, args.seed, args.jobs)
    except TrainingError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    save_artifact(artifact, args.output)
    info = artifact["info"]
    print(_summary(artifact))
    size_mb = args.output.stat().st_size / 1e6
    print(f"trained in {info['training_seconds']:.1f} s; saved {args.output} ({size_mb:.1f} MB), "
          f"version {info['model_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
