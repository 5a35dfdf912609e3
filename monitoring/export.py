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

from monitoring.store import FEATURES_SQL, FEATURE_COLUMNS, SCHEMA_VERSION, StoreError

__all__ = ["EXPORT_COLUMNS", "export_labelled"]

EXPORT_COLUMNS = ("id", "ts", *FEATURE_COLUMNS, "prediction", "actual", "label_ts", "model_version")
_CHUNK = 100_000   # rows read at a time


def export_labelled(db_path: str | Path, target: str | Path, fmt: str | None = None) -> int:
    """Write every labelled prediction stored at `db_path` (an SQLite file, or a postgresql:// URL)
    to `target`, oldest served first; returns the rows written. Columns: EXPORT_COLUMNS (times are unix seconds).
    fmt: "csv" or "parquet"; None: parquet for a .parquet target, else csv. The file appears whole
    or not at all (written beside it, then renamed).

    Raises ValueError for another fmt; ImportError (name "pyarrow") for parquet without pyarrow,
    which is not a dependency of this project, before anything is read; StoreError if db_path is
    missing or is not a store."""
    import pandas as pd

    target = Path(target)
    fmt = ("parquet" if target.suffix.lower() == ".parquet" else "csv") if fmt is None else fmt.lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError("fmt must be 'csv' or 'parquet'")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ImportError("Parquet export needs pyarrow, which is not installed (pip install pyarrow)",
                          name="pyarrow")
    query = (f"SELECT id, ts, {FEATURES_SQL}, prediction, actual, label_ts, model_version "
             f"FROM predictions WHERE label_ts IS NOT NULL ORDER BY ts, rowid")
    tmp = target.with_name(target.name + ".tmp")
    written = 0
    try:
        with _chunks(db_path, query) as chunks:
            if fmt == "csv":
                for i, frame in enumerate(chunks):
                    frame.columns = list(EXPORT_COLUMNS)
                    frame.to_csv(tmp, mode="w" if i == 0 else "a", header=i == 0, index=False)
                    written += len(frame)
                if written == 0:
                    pd.DataFrame(columns=list(EXPORT_COLUMNS)).to_csv(tmp, index=False)
            else:
                frames = list(chunks)
                frame = (pd.concat(frames, ignore_index=True) if frames
                         else pd.DataFrame(columns=list(EXPORT_COLUMNS)))
                frame.columns = list(EXPORT_COLUMNS)
                frame.to_parquet(tmp, index=False)
                written = len(frame)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return written


@contextlib.contextmanager
def _chunks(db_path: str | Path, query: str):
    """DataFrames of at most _CHUNK labelled rows, all from one snapshot of the store: an SQLite
    file, or a PostgreSQL database (a postgresql:// URL)."""
    import pandas as pd

    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from monitoring.pg_store import labelled_rows

        yield (pd.DataFrame(rows, columns=list(EXPORT_COLUMNS)) for rows in labelled_rows(db_path, _CHUNK))
        return
    with _read_only(db_path) as conn:
        conn.execute("BEGIN")  # one snapshot across all chunks
        yield pd.read_sql_query(query, conn, chunksize=_CHUNK)


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
