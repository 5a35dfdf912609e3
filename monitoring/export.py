"""Export the labelled predictions of a store for retraining: CSV, or Parquet with pyarrow.

It reads through its own read-only connection, so it may run beside serving monitors: an SQLite
file in WAL mode is seen as of the first read, a PostgreSQL database (postgresql:// URL) through a
read-only repeatable-read transaction; neither blocks a writer.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sqlite3
from pathlib import Path

from monitoring.store import FEATURE_COLUMNS, SCHEMA_VERSION, StoreError, _quoted, feature_name

__all__ = ["EXPORT_COLUMNS", "export_labelled"]

EXPORT_COLUMNS = ("id", "ts", *FEATURE_COLUMNS, "prediction", "actual", "label_ts", "model_version")  # the diamond model's
_CHUNK = 100_000   # rows read at a time


def export_labelled(db_path: str | Path, target: str | Path, fmt: str | None = None,
                    schema: dict | None = None) -> int:
    """Write every labelled prediction stored at `db_path` (an SQLite file, or a postgresql:// URL)
    to `target`, oldest served first; returns the rows written. Columns: EXPORT_COLUMNS for the diamond
    model, the served model's features in their place for another (times are unix seconds).
    `schema`: the served model's (the artifact's "schema"); the store must hold its features, and a
    classifier's prediction and actual are written as its class labels, as /predict answers them
    (the store keeps class indices; without a schema they are written as those indices).
    fmt: "csv" or "parquet"; None: parquet for a .parquet target, else csv. The file appears whole
    or not at all (written beside it, then renamed).

    Raises ValueError for another fmt; ImportError (name "pyarrow") for parquet without pyarrow,
    which is not a dependency of this project, before anything is read; StoreError if db_path is
    missing or is not a store, or holds other features than `schema`'s."""
    import pandas as pd

    target = Path(target)
    fmt = ("parquet" if target.suffix.lower() == ".parquet" else "csv") if fmt is None else fmt.lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError("fmt must be 'csv' or 'parquet'")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ImportError("Parquet export needs pyarrow, which is not installed (pip install pyarrow)",
                          name="pyarrow")
    tmp = target.with_name(target.name + ".tmp")
    written = 0
    try:
        with _chunks(db_path) as (columns, chunks):
            label = _labeller(columns, schema, db_path)
            chunks = (label(frame) for frame in chunks)
            if fmt == "csv":
                for i, frame in enumerate(chunks):
                    frame.to_csv(tmp, mode="w" if i == 0 else "a", header=i == 0, index=False)
                    written += len(frame)
                if written == 0:
                    pd.DataFrame(columns=columns).to_csv(tmp, index=False)
            else:
                frames = list(chunks)
                frame = (pd.concat(frames, ignore_index=True) if frames
                         else pd.DataFrame(columns=columns))
                frame.to_parquet(tmp, index=False)
                written = len(frame)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return written


def _labeller(columns: list[str], schema: dict | None, db_path):
    """What each chunk goes through: its column names set and, for a classifier's schema, the class
    indices of prediction and actual replaced by the classes (an index that is none of them, which
    the monitor never writes, is left empty rather than guessed)."""
    import numpy as np

    if schema is not None:
        features = [f["name"] for f in schema["features"]]
        stored = [feature_name(c) for c in columns[2:-4]]  # the header: id, ts, features..., 4 own columns
        if stored != features:
            raise StoreError(f"the store {db_path} holds other features ({', '.join(stored)}) than the model's "
                             f"({', '.join(features)}); give the --model that served it")
    classes = schema.get("classes") if schema is not None and schema.get("task") == "classification" else None

    def label(frame):
        frame.columns = columns
        if classes:
            lookup = np.array([*classes, None], dtype=object)  # the trailing None: not a class index
            for name in ("prediction", "actual"):
                index = frame[name].to_numpy(dtype=np.float64)
                valid = (index == np.round(index)) & (index >= 0) & (index < len(classes))  # NaN: not equal
                frame[name] = lookup[np.where(valid, index, len(classes)).astype(np.int64)]
        return frame

    return label


def _columns(features: list[str]) -> list[str]:
    """The export's header for a table whose feature columns are `features`: each named as its
    feature (table_ -> table), unless that is one of the export's own columns (a feature named ts
    keeps its column's name, ts_)."""
    own = ("id", "ts", "prediction", "actual", "label_ts", "model_version")
    names = [feature_name(c) for c in features]
    return ["id", "ts", *[c if n in own else n for c, n in zip(features, names)], *own[2:]]


@contextlib.contextmanager
def _chunks(db_path: str | Path):
    """(column names, DataFrames of at most _CHUNK labelled rows), all from one snapshot of the
    store: an SQLite file or a PostgreSQL database (a postgresql:// URL), whatever model's features
    it records."""
    import pandas as pd

    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from monitoring.pg_store import labelled_rows

        with labelled_rows(db_path, _CHUNK) as (features, chunks):
            columns = _columns(features)
            yield columns, (pd.DataFrame(rows, columns=columns) for rows in chunks)
        return
    with _read_only(db_path) as conn:
        conn.execute("BEGIN")  # one snapshot across all chunks
        # The feature columns are those between ts and prediction, as the store's layout made them.
        on_disk = [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
        features = on_disk[on_disk.index("ts") + 1:on_disk.index("prediction")]
        columns = _columns(features)
        query = (f"SELECT id, ts, {', '.join(_quoted(c) for c in features)}, prediction, actual, label_ts, "
                 f"model_version FROM predictions WHERE label_ts IS NOT NULL ORDER BY ts, rowid")
        yield columns, pd.read_sql_query(query, conn, chunksize=_CHUNK)


@contextlib.contextmanager
def _read_only(db_path: str | Path):
    """A read-only connection to a store file (never creates one), with SQLite errors as StoreError."""
    path = Path(db_path)
    if not path.is_file():
        raise StoreError(f"no prediction store at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from exc
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path} is not a prediction store of schema version {SCHEMA_VERSION} "
                             f"(user_version {version})")
        yield conn
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from exc
    finally:
        conn.close()
