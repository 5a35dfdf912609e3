"""The training artifact of any tabular scikit-learn model: what it holds, how it is built and saved.

train.py builds one for the diamond model or for any CSV; a user who trains elsewhere builds the
same from their own fitted Pipeline:

    from monitoring.artifact import build_artifact, save_artifact
    artifact = build_artifact(pipeline, X_train, y_train, X_heldout, y_heldout,
                              ordered={"size": ["S", "M", "L"]})
    save_artifact(artifact, "my-model.joblib")      # then: python monitor.py --model my-model.joblib

The artifact is one joblib file holding a dict:
  pipeline            the fitted Pipeline (anything with predict, and predict_proba for a classifier)
  schema              task, feature names, kinds (numeric or categorical), category lists, target name,
                      and for a classifier its classes
  reference_features  the training features (data-drift reference)
  reference_errors    held-out truth and predictions (concept-drift reference): for a regression
                      `actual`, `predicted` and `error` (how an error is measured: "log_ratio" when
                      every target is positive, else "residual"); for a classification `actual` and `predicted` as class
                      codes (indices into schema["classes"]) and `probabilities` (rows x classes);
                      for both, `grades`: the held-out rows' categories as schema codes
  error_model         a regression with positive targets: its expected squared error by predicted
                      band (the label-free performance estimate, monitoring/performance.py)
  metrics             held-out figures: MSE, RMSE, MAE, R2 (regression); accuracy, log loss and per-class
                      counts (classification); n_train, n_test
  info                model version, training date and time taken, data hash, parameters, library versions

Beside it, `<path>.sha256` records the file's hash; the monitor checks it before unpickling.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from monitoring.model import SUPPORTED_FORMAT

__all__ = ["ArtifactError", "build_artifact", "infer_schema", "save_artifact"]


class ArtifactError(ValueError):
    """The data or the model cannot make an artifact; the message says why in one line."""


def infer_schema(X: pd.DataFrame, target: str, task: str, classes: Sequence | None = None,
                 ordered: Mapping[str, Sequence[str]] | None = None,
                 positive: Sequence[str] = (), target_positive: bool = False) -> dict:
    """The request contract from the training features: numeric columns as numbers, anything else
    (text, pandas categoricals, booleans) as categories. Category order: `ordered[name]` when given
    (every value seen must be in it), a pandas categorical's own order, else sorted. `positive`
    names numeric features that must be > 0 (the diamond model's; any finite number otherwise)."""
    ordered = dict(ordered or {})
    unknown = [name for name in ordered if name not in X.columns]
    if unknown:
        raise ArtifactError(f"--ordered names {unknown[0]!r}, which is not a feature "
                            f"(features: {', '.join(map(str, X.columns))})")
    features = []
    for name in X.columns:
        column = X[name]
        if name in ordered or not _is_numeric(column):
            seen = [str(v) for v in pd.unique(column.dropna())]
            if name in ordered:
                categories = [str(c) for c in ordered[name]]
                missing = sorted(set(seen) - set(categories))
                if missing:
                    raise ArtifactError(f"--ordered {name}: the data also has {', '.join(map(repr, missing[:5]))}; "
                                        "list every category")
            elif isinstance(column.dtype, pd.CategoricalDtype):
                categories = [str(c) for c in column.cat.categories]
            else:
                categories = sorted(seen)
            features.append({"name": str(name), "kind": "categorical", "categories": categories})
        else:
            features.append({"name": str(name), "kind": "numeric", "positive": name in positive})
    schema = {"task": task, "features": features, "target": str(target)}
    if task == "classification":
        schema["classes"] = [_plain(c) for c in classes]
    else:
        schema["target_positive"] = bool(target_positive)
    return schema


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _plain(value):
    """A class as JSON has it: numpy integers and floats become Python ones, anything else text."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


def grade_codes(frame: pd.DataFrame, schema: dict) -> dict[str, np.ndarray]:
    """Each categorical feature of `frame` as schema codes (worst grade = 0; -1 if unknown)."""
    out = {}
    for f in schema["features"]:
        if f["kind"] == "categorical":
            lookup = {c: i for i, c in enumerate(f["categories"])}
            out[f["name"]] = frame[f["name"]].astype(str).map(lambda g: lookup.get(g, -1)).to_numpy(dtype=np.int64)
    return out


def _regression_metrics(y_true, y_pred) -> dict:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(y_true, y_pred))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred))}


def _class_codes(y, classes: list) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[_plain(v)] for v in y], dtype=np.int64)
    except KeyError as exc:
        raise ArtifactError(f"held-out label {exc.args[0]!r} is not one of the model's classes "
                            f"{', '.join(map(str, classes))}") from None


def build_artifact(pipeline, X_train: pd.DataFrame, y_train, X_heldout: pd.DataFrame, y_heldout, *,
                   task: str | None = None, ordered: Mapping[str, Sequence[str]] | None = None,
                   schema: dict | None = None, model_name: str | None = None, params: dict | None = None,
                   data_sha256: str | None = None, training_seconds: float | None = None,
                   version_prefix: str = "model") -> dict:
    """The monitoring artifact of an already fitted Pipeline, from its training rows (the data-drift
    reference) and held-out rows it never saw (the concept-drift reference: never training rows,
    which a forest nearly memorises). Nothing is written; `save_artifact` writes it.

    task: "regression" or "classification"; by default a classifier (it has predict_proba and
    classes_) is a classification. ordered: category lists in order, by feature. schema: a ready
    schema (train.py's), instead of one inferred from X_train. Raises ArtifactError with a one-line
    message when the data or the model do not fit."""
    import joblib
    import sklearn

    if not isinstance(X_train, pd.DataFrame) or not isinstance(X_heldout, pd.DataFrame):
        raise ArtifactError("X_train and X_heldout must be pandas DataFrames (their columns are the request fields)")
    if list(X_train.columns) != list(X_heldout.columns):
        raise ArtifactError("X_train and X_heldout have different columns")
    if len(X_heldout) < 20:
        raise ArtifactError(f"{len(X_heldout)} held-out rows; at least 20 are needed for a concept-drift reference")
    is_classifier = hasattr(pipeline, "predict_proba") and hasattr(pipeline, "classes_")
    task = task or ("classification" if is_classifier else "regression")
    if task not in ("regression", "classification"):
        raise ArtifactError(f"task {task!r}: expected regression or classification")
    if task == "classification" and not is_classifier:
        raise ArtifactError("task classification needs a fitted classifier (predict_proba and classes_)")
    target = str(getattr(y_train, "name", None) or "target")
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    y_train = pd.Series(np.asarray(y_train), name=target)
    y_heldout = pd.Series(np.asarray(y_heldout), name=target)

    if task == "classification":
        classes = [_plain(c) for c in pipeline.classes_]
        if schema is None:
            schema = infer_schema(X_train, target, task, classes, ordered)
        probabilities = np.asarray(pipeline.predict_proba(X_heldout), dtype=np.float64)
        actual = _class_codes(y_heldout, classes)
        predicted = probabilities.argmax(axis=1)
        eps = 1e-15
        p_true = np.clip(probabilities[np.arange(len(actual)), actual], eps, 1.0)
        counts = np.bincount(actual, minlength=len(classes))
        train_codes = _class_codes(y_train, classes)
        train_pred = np.asarray(pipeline.predict_proba(X_train)).argmax(axis=1)
        metrics = {"accuracy": float(np.mean(predicted == actual)), "log_loss": float(-np.log(p_true).mean()),
                   "class_counts": {str(c): int(n) for c, n in zip(classes, counts)},
                   "train_accuracy": float(np.mean(train_pred == train_codes))}
        reference_errors = {"actual": actual, "predicted": predicted, "probabilities": probabilities}
    else:
        if schema is None:
            schema = infer_schema(X_train, target, task, ordered=ordered,
                                  target_positive=bool((y_train > 0).all()))
        predicted = np.asarray(pipeline.predict(X_heldout), dtype=np.float64)
        actual = y_heldout.to_numpy(dtype=np.float64)
        metrics = _regression_metrics(actual, predicted)
        metrics["train_mse"] = float(np.mean((y_train.to_numpy(dtype=np.float64)
                                              - np.asarray(pipeline.predict(X_train), dtype=np.float64)) ** 2))
        # How concept drift measures an error: the log ratio actual/predicted where every target is
        # positive (the diamond model's prices: errors grow with the price), else the plain residual
        # actual - predicted (a target that may be zero or negative has no ratio).
        positive = bool((y_train > 0).all() and (y_heldout > 0).all())
        reference_errors = {"actual": actual, "predicted": predicted, "error": "log_ratio" if positive else "residual"}
    # the held-out rows' categories as schema codes: concept drift per category (drift.py's segments)
    reference_errors["grades"] = grade_codes(X_heldout, schema)
    metrics["n_train"], metrics["n_test"] = len(X_train), len(X_heldout)
    digest = data_sha256 or _frame_sha256(X_train, y_train)
    artifact = {
        "format": SUPPORTED_FORMAT,
        "pipeline": pipeline,
        "schema": schema,
        "reference_features": X_train.reset_index(drop=True),
        "reference_errors": reference_errors,
        "metrics": metrics,
        "info": {
            "model_version": f"{version_prefix}-{started:%Y%m%dT%H%M%SZ}-{digest[:8]}",
            "model_name": model_name or target,
            "task": task,
            "trained_at": started.isoformat(),
            "training_seconds": None if training_seconds is None else round(training_seconds, 2),
            "data_sha256": digest,
            "params": dict(params or {}),
            "versions": {"python": platform.python_version(), "sklearn": sklearn.__version__,
                         "numpy": np.__version__, "pandas": pd.__version__, "joblib": joblib.__version__},
        },
    }
    if task == "regression" and reference_errors["error"] == "log_ratio":
        # The label-free performance estimate (monitoring/performance.py) scales the expected error
        # with the predicted value squared: meaningful for positive targets only.
        from monitoring.performance import ErrorModel

        artifact["error_model"] = ErrorModel.fit(actual, predicted).to_dict()
    return artifact


def _frame_sha256(X: pd.DataFrame, y: pd.Series) -> str:
    """A hash of the training data, for the model version, when the caller has no file to hash."""
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(y, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def save_artifact(artifact: dict, path: str | Path) -> str:
    """Write the artifact atomically, uncompressed (it loads fast and its size on disk is its size in
    memory), and record its sha256 beside it. Returns the hash."""
    import joblib

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
