"""Train the diamond-price model and save it with what monitoring needs.

The artifact is one joblib file holding a dict:
  pipeline            the fitted scikit-learn Pipeline (ColumnTransformer + RandomForestRegressor)
  schema              feature names, kinds and ordered category lists, target name
  reference_features  the training features (data-drift reference)
  reference_errors    held-out actual prices and predictions (concept-drift reference), and the
                      held-out rows' grades as schema codes (concept drift per grade)
  error_model         the expected squared error by predicted-price band, fitted on the held-out rows
                      (the performance estimate before labels: monitoring/performance.py)
  metrics             held-out MSE, RMSE, MAE, R2 (and training-set MSE, for contrast)
  info                model version, training date and time taken, data hash, parameters, library versions

Beside it, `<path>.sha256` records the file's hash; the monitor checks it before unpickling.

    python train.py                      # writes model.joblib
    python train.py --n-estimators 20    # a smaller, faster model
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import platform
import sys
import time
from pathlib import Path

try:
    import joblib
    import numpy as np
    import pandas as pd
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    from monitoring.diamonds import (CATEGORICAL_FEATURES, DATA_DIR, FEATURES, NUMERIC_FEATURES,
                                     SPLIT_RANDOM_STATE, TARGET, TEST_SIZE, data_sha256, load_diamonds, split)
    from monitoring.model import DEFAULT_MODEL_PATH, SUPPORTED_FORMAT as ARTIFACT_FORMAT
    from monitoring.performance import ErrorModel
except ModuleNotFoundError as missing:  # e.g. the system Python, with the libraries in .venv
    from monitoring.environment import run_in_project_environment

    run_in_project_environment(missing)


def feature_schema(diamonds: pd.DataFrame) -> dict:
    """Names, kinds and category lists in order from worst to best grade."""
    features = []
    for name in FEATURES:
        if name in CATEGORICAL_FEATURES:
            categories = [str(c) for c in diamonds[name].cat.categories[::-1]]
            features.append({"name": name, "kind": "categorical", "categories": categories})
        else:
            features.append({"name": name, "kind": "numeric"})
    return {"features": features, "target": TARGET}


def grade_codes(frame: pd.DataFrame, schema: dict) -> dict[str, np.ndarray]:
    """Each categorical feature of `frame` as schema codes (worst grade = 0; -1 if unknown)."""
    out = {}
    for f in schema["features"]:
        if f["kind"] == "categorical":
            lookup = {c: i for i, c in enumerate(f["categories"])}
            out[f["name"]] = frame[f["name"]].astype(str).map(lambda g: lookup.get(g, -1)).to_numpy(dtype=np.int64)
    return out


def build_pipeline(schema: dict, n_estimators: int = 100, min_samples_leaf: int = 4,
                   max_features: float = 0.5, random_state: int = 42, n_jobs: int = -1) -> Pipeline:
    """Grades are ordered, so they are encoded as ranks (worst = 0): one split on a rank separates
    'this grade or better', which one-hot columns can only do one category at a time. Trees need
    no scaling, so numeric features pass through unchanged."""
    grades = [f["categories"] for f in schema["features"] if f["kind"] == "categorical"]
    preprocessor = ColumnTransformer(
        [
            ("grades", OrdinalEncoder(categories=grades), CATEGORICAL_FEATURES),
            ("numeric", "passthrough", NUMERIC_FEATURES),
        ],
        verbose_feature_names_out=False,
    )
    forest = RandomForestRegressor(
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        max_features=max_features,
        random_state=random_state,
        n_jobs=n_jobs,
    )
    return Pipeline([("preprocessor", preprocessor), ("regressor", forest)])


def _regression_metrics(y_true, y_pred) -> dict:
    mse = float(mean_squared_error(y_true, y_pred))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def train(n_estimators: int = 100, min_samples_leaf: int = 4, max_features: float = 0.5,
          random_state: int = 42, n_jobs: int = -1, data_dir: Path = DATA_DIR) -> dict:
    """Fit the pipeline and return the artifact (nothing is written)."""
    started = time.perf_counter()
    diamonds = load_diamonds(data_dir)
    schema = feature_schema(diamonds)
    X_train, X_test, y_train, y_test = split(diamonds)

    pipeline = build_pipeline(schema, n_estimators, min_samples_leaf, max_features, random_state, n_jobs)
    pipeline.fit(X_train, y_train)
    # Serving predicts one small batch at a time; forest threads would only add overhead there.
    pipeline.named_steps["regressor"].set_params(n_jobs=1)

    test_pred = pipeline.predict(X_test)
    metrics = _regression_metrics(y_test, test_pred)
    metrics["train_mse"] = float(mean_squared_error(y_train, pipeline.predict(X_train)))
    metrics["n_train"], metrics["n_test"] = len(X_train), len(X_test)
    training_seconds = time.perf_counter() - started

    trained_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    digest = data_sha256(data_dir)
    return {
        "format": ARTIFACT_FORMAT,
        "pipeline": pipeline,
        "schema": schema,
        "reference_features": X_train.reset_index(drop=True),
        # Held-out, never training errors: the forest nearly memorises its training rows.
        "reference_errors": {
            "actual": y_test.to_numpy(dtype=np.float64),
            "predicted": np.asarray(test_pred, dtype=np.float64),
            "grades": grade_codes(X_test, schema),
        },
        "error_model": ErrorModel.fit(y_test.to_numpy(dtype=np.float64), test_pred).to_dict(),
        "metrics": metrics,
        "info": {
            "model_version": f"rf-{trained_at:%Y%m%dT%H%M%SZ}-{digest[:8]}",
            "trained_at": trained_at.isoformat(),
            "training_seconds": round(training_seconds, 2),
            "data_sha256": digest,
            "params": {"n_estimators": n_estimators, "min_samples_leaf": min_samples_leaf,
                       "max_features": max_features, "random_state": random_state,
                       "test_size": TEST_SIZE, "split_random_state": SPLIT_RANDOM_STATE},
            "versions": {"python": platform.python_version(), "sklearn": sklearn.__version__,
                         "numpy": np.__version__, "pandas": pd.__version__,
                         "joblib": joblib.__version__},
        },
    }


def save_artifact(artifact: dict, path: Path) -> str:
    """Write the artifact atomically, uncompressed (it loads fast and its size on disk is its size in
    memory), and record its sha256 beside it. Returns the hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    joblib.dump(artifact, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    Path(str(path) + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the diamond-price model and save it with its monitoring reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path,
                        default=Path(os.environ.get("MONITOR_MODEL", DEFAULT_MODEL_PATH)),
                        help="where to write the artifact (env MONITOR_MODEL)")
    parser.add_argument("--n-estimators", type=int, default=100, help="trees in the forest")
    parser.add_argument("--min-samples-leaf", type=int, default=4,
                        help="smallest leaf; larger leaves mean a smaller, smoother model")
    parser.add_argument("--max-features", type=float, default=0.5,
                        help="fraction of features tried at each split")
    parser.add_argument("--seed", type=int, default=42, help="random_state of the forest")
    parser.add_argument("--jobs", type=int, default=-1, help="cores used for fitting (-1: all)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder holding diamonds.csv")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    artifact = train(args.n_estimators, args.min_samples_leaf, args.max_features, args.seed,
                     args.jobs, args.data_dir)
    save_artifact(artifact, args.output)
    m, info = artifact["metrics"], artifact["info"]
    print(f"held-out ({m['n_test']} rows): MSE {m['mse']:,.0f}  RMSE {m['rmse']:,.1f}  "
          f"MAE {m['mae']:,.1f}  R2 {m['r2']:.4f}   (training-set MSE {m['train_mse']:,.0f})")
    size_mb = args.output.stat().st_size / 1e6
    print(f"trained in {info['training_seconds']:.1f} s; saved {args.output} ({size_mb:.1f} MB), "
          f"version {info['model_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
