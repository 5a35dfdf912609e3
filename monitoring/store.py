"""Durable record of every served prediction and every received label, in one SQLite file; and the
same interface in memory (`MemoryStore`) when nothing is to be kept. `open_store` picks one.

Why SQLite: it is embedded (stdlib `sqlite3`, no server to start), its WAL mode lets readers run
while one writer commits, and a committed transaction survives a crash of the process.

Design, in short:

* One table, `predictions`, one row per served prediction; its label (`actual`, `label_ts`) lives
  in the same row. A label is 1:1 with a prediction and replaces an earlier one, so a separate
  labels table would only add a join to every read, a second index to every write and orphans to
  every prune. Rows keep their implicit rowid (no WITHOUT ROWID): new rows append at the end of the
  table b-tree, and only the small primary-key index takes the random uuid inserts (measured: the
  same file size, faster inserts and prunes; the README has the figures).
  An index on `ts` serves pruning and `recent_inputs`; a partial index on
  `label_ts` (labelled rows only, so unlabelled inserts never touch it) serves `recent_labelled`.
  The feature columns are the served model's features, in its schema's order (StoreLayout; the
  default is the diamond model's, diamonds.FEATURES): TEXT for categories, REAL for numbers, a
  name that is a keyword or one of the table's own columns with a trailing underscore (`table` is
  stored as `table_`). PostgreSQL's store (pg_store.py) builds its table from the same layout.
* One writer thread, group commit, per-job isolation of a refused record, a bounded retry buffer
  caught up in chunks: monitoring/writer.py's QueuedWriter, which PostgreSQL's store shares; this
  module gives it SQLite's connection and SQL. Each prune chunk is a job on the same queue, so only
  the writer thread writes and no lock is ever held around SQL.
  SQLite's automatic checkpoint (every 1,000 WAL pages) runs inside a commit now and then: it
  costs throughput and most of the p99 latency, and keeps the WAL bounded.
* Connections: one writer connection, used only by the writer thread (the constructor opens it, to
  refuse a bad file at once, hence `check_same_thread=False`), and a short-lived connection per
  read call, so readers in any thread never share a connection and never block the writer (WAL).
* Durability: `synchronous=NORMAL` (default) in WAL mode writes each commit to the WAL before the
  call returns, so it survives the process being killed (SIGKILL, OOM, crash): that is what the
  tests check. It does NOT fsync on each commit, so a power loss or kernel crash may lose the last
  commits (never corrupt the file). `synchronous="FULL"` fsyncs the WAL on every commit and survives
  power loss; it costs one fsync per group commit, which group commit shares among the rows of a
  commit, so concurrent writers lose far less than a lone one (`python bench/store_bench.py`).
* Failures (disk full, read-only file, locked too long, I/O error) raise `StoreError`, never a raw
  sqlite3 exception; `healthy` turns False with `last_error`, and the next successful write clears
  them. After an error other than "full" or "busy" the writer connection is closed and reopened on
  the next write, so a replaced or remounted file is picked up again without a restart.
* No acknowledged record lost: predictions whose commit failed are kept in a bounded in-memory
  buffer (`max_pending` rows, oldest dropped first and counted) and written by `flush()`, in
  chunks (writer.py). So when `add_predictions` raises, the caller may still answer
  its client: the rows will be written when the database can take them again, as long as the
  process lives and the buffer does not overflow. Ids are idempotent (INSERT OR IGNORE), so a
  caller that resends them anyway does no harm. Labels are not buffered: a failed `add_labels`
  should be answered with an error so that the sender retries.
* Retention: `prune()` deletes by age and by row count, oldest first, in chunks of PRUNE_CHUNK
  rows per transaction, each chunk a job on the writer's queue, so writes queued meanwhile go
  first and predictions never wait for more than one chunk. Each deleted row touches a random page
  of the uuid index, so a chunk costs more the more rows are stored: the chunk is small enough to
  stay short with millions of rows (README, "What is kept"). Expect about 180 bytes a row on disk,
  indexes included (the default max_rows of 5 M: about 0.9 GB).

One process owns the file (the counts are kept in memory); other processes may read it
(monitoring/export.py does). The benchmark is bench/store_bench.py.
"""
from __future__ import annotations

import contextlib
import math
import sqlite3
import sys
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from monitoring.diamonds import CATEGORICAL_FEATURES, FEATURES
from monitoring.writer import Job, QueuedWriter, StoreError, new_stats

__all__ = ["FEATURE_COLUMNS", "MemoryStore", "PredictionRecord", "Store", "StoreError", "StoreLayout", "open_store"]

SCHEMA_VERSION = 1
FEATURE_COLUMNS = tuple(FEATURES)  # the diamond model's features, in this order (the default layout)
PRUNE_CHUNK = 1_000   # rows per prune transaction: short even with millions stored (README)
_MAX_SQL_VARIABLES = 500      # ids per `IN (...)`; well below every SQLite build's limit
# Errors after which the same connection will work again once the condition clears; any other
# error closes the writer connection and the next write opens a new one.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_KEEP_CONNECTION = {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL}

# The feature columns on disk: a feature named like an SQL keyword or like one of the table's own
# columns gets a trailing underscore. Own columns of either backend (PostgreSQL's table adds seq,
# replica, served_at, label_seq and label_replica, and has system columns such as xmin), so that a
# model's columns are named the same in an SQLite file and in a fleet's database.
_SQL_NAMES = {"table": "table_"}
_OWN_COLUMNS = {"id", "ts", "prediction", "model_version", "actual", "label_ts", "rowid", "oid", "_rowid_",
                "seq", "replica", "served_at", "label_seq", "label_replica",
                "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"}
_IS_TEXT = tuple(name in CATEGORICAL_FEATURES for name in FEATURE_COLUMNS)


def _column_name(feature: str) -> str:
    if feature in _SQL_NAMES:
        return _SQL_NAMES[feature]
    return feature + "_" if feature.lower() in _OWN_COLUMNS else feature


def feature_name(column: str) -> str:
    """The feature a column on disk records (_column_name undone): what export and errors show."""
    for name, on_disk in _SQL_NAMES.items():
        if column == on_disk:
            return name
    return column[:-1] if column.endswith("_") and column[:-1].lower() in _OWN_COLUMNS else column


def _quoted(column: str) -> str:
    """An SQL identifier in double quotes: a CSV column may be named anything ("price ($)", "order")."""
    return '"' + column.replace('"', '""') + '"'


class StoreLayout:
    """Which feature columns a store's table has: one per feature of the served model's schema, in
    its order, TEXT for categories and REAL for numbers. A file written for other features is
    refused when opened. `StoreLayout.from_schema(schema)` for a Schema; the default is the
    diamond model's."""

    def __init__(self, features: Sequence[tuple[str, bool]]):
        self.names = tuple(str(name) for name, _ in features)
        self.is_text = tuple(bool(text) for _, text in features)
        self.columns = tuple(_column_name(name) for name in self.names)
        self.features_sql = ", ".join(_quoted(c) for c in self.columns)
        ddl = "".join(f"    {_quoted(c):<15} {'TEXT' if text else 'REAL'},\n"
                      for c, text in zip(self.columns, self.is_text))
        self.schema_sql = f"""
CREATE TABLE IF NOT EXISTS predictions (
    id            TEXT PRIMARY KEY,
    ts            REAL NOT NULL,
{ddl}    prediction    REAL,
    model_version TEXT,
    actual        REAL,
    label_ts      REAL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_label_ts ON predictions (label_ts) WHERE label_ts IS NOT NULL;
"""
        self.all_columns = ("id", "ts", *self.columns, "prediction", "model_version", "actual", "label_ts")
        self.insert = (f"INSERT OR IGNORE INTO predictions (id, ts, {self.features_sql}, prediction, model_version) "
                       f"VALUES ({', '.join('?' * (len(self.names) + 4))})")
        # PostgreSQL's form of the same columns (monitoring/pg_store.py builds its statements from it)
        self.quoted = tuple(_quoted(c) for c in self.columns)
        self.pg_types = tuple("text" if text else "float8" for text in self.is_text)
        self.pg_ddl = "".join(f"    {q:<15} {'text' if text else 'double precision'},\n"
                              for q, text in zip(self.quoted, self.is_text))
        self.categorical = tuple(name for name, text in zip(self.names, self.is_text) if text)

    @classmethod
    def from_schema(cls, schema) -> "StoreLayout":
        """The layout of a monitoring.model.Schema's features."""
        return cls([(f.name, f.kind == "categorical") for f in schema.features])

    def __eq__(self, other) -> bool:
        return isinstance(other, StoreLayout) and (self.names, self.is_text) == (other.names, other.is_text)

    def refusal(self, stored: Sequence[tuple[str, bool]], as_stored=lambda column: column) -> str | None:
        """Why a table whose feature columns are `stored` ((column, is text), in table order) cannot
        record this layout's rows, as one line naming both feature lists; None when it can. The same
        words for an SQLite file and a fleet's database. as_stored: a column's name as the database
        keeps it (PostgreSQL cuts long ones)."""
        stored = [(str(c), bool(t)) for c, t in stored]
        if stored == [(as_stored(c), t) for c, t in zip(self.columns, self.is_text)]:
            return None
        theirs, ours = [feature_name(c) for c, _ in stored], list(self.names)
        if theirs == [feature_name(as_stored(c)) for c in self.columns]:   # the same names, other kinds: say which
            theirs = [f"{n} ({'text' if t else 'number'})" for n, (_, t) in zip(theirs, stored)]
            ours = [f"{n} ({'text' if t else 'number'})" for n, t in zip(ours, self.is_text)]
        return (f"it records another model's features ({', '.join(theirs) or 'none'}), not this model's "
                f"({', '.join(ours)}); give this model its own --db")

    def check(self, features) -> None:
        if len(features) != len(self.names):
            raise ValueError(f"a record has {len(self.names)} features ({', '.join(self.names)}), "
                             f"not {len(features)}")

    def row(self, record) -> tuple:
        """A record as the tuple bound to `insert`. Converting here, before the record is queued,
        means a malformed record fails its own caller (ValueError/TypeError) and can never poison a
        group commit or the retry buffer."""
        return (str(record.id), float(record.ts), *self.values(record.features),
                float(record.prediction), str(record.model_version))

    def values(self, features) -> list:
        """A record's features as stored: text for categories, floats for numbers (ValueError or
        TypeError for a record that does not fit, raised to its own caller)."""
        self.check(features)
        return [str(v) if text else float(v) for v, text in zip(features, self.is_text)]

    def features(self, row) -> tuple:
        return tuple(v if text else _num(v) for v, text in zip(row, self.is_text))


DIAMONDS = StoreLayout(list(zip(FEATURE_COLUMNS, _IS_TEXT)))


class PredictionRecord(NamedTuple):
    """One served prediction. A named tuple, not a dataclass: the batcher makes one per row, and a
    frozen dataclass takes about three times as long to build."""
    id: str            # uuid4 hex
    ts: float          # unix time served
    features: tuple    # the layout's features in order: numbers as float, categories as str
    prediction: float  # a classifier's: the predicted class's index in the schema's classes
    model_version: str

    @classmethod
    def create(cls, features: Sequence, prediction: float, model_version: str,
               ts: float | None = None) -> "PredictionRecord":
        """A record with a fresh uuid4 hex id, served now unless `ts` is given."""
        return cls(uuid.uuid4().hex, time.time() if ts is None else float(ts), tuple(features),
                   float(prediction), str(model_version))


def _num(value) -> float:
    """SQLite stores NaN as NULL; give it back as NaN so windows get floats only."""
    return math.nan if value is None else float(value)


def _labels_by_id(labels) -> dict[str, tuple[float, float]]:
    """{id: (actual, received_ts)} in arrival order; a later entry for an id replaces an earlier one."""
    joined: dict[str, tuple[float, float]] = {}
    for id_, actual, received_ts in labels:
        joined[str(id_)] = (float(actual), float(received_ts))
    return joined


def _refused_record(exc: BaseException) -> bool:
    """An error about what was written (a value the database cannot store), not about the database:
    the same rows would fail again anywhere, and other callers' rows are not to blame."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                        sqlite3.ProgrammingError)):
        return True
    return isinstance(exc, (UnicodeError, ValueError, TypeError, OverflowError))


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else f"{type(exc).__name__}: {exc}"


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


_PRUNE = "prune"   # a job of SQLite's own: one chunk of prune()


class Store(QueuedWriter):
    """Predictions and labels in an SQLite file at `path` (created with its folder if missing).

    retention_seconds / max_rows: what `prune()` keeps (None: no limit by age / by count).
    busy_timeout: seconds a write waits for a lock held by another connection before failing.
    synchronous: "NORMAL" (survives a process crash) or "FULL" (also survives power loss, one fsync
    per commit). max_pending: failed prediction rows kept in memory for the next flush (0: none).

    Raises StoreError if the file cannot be opened or is not a store of this schema version. Starts
    the writer thread (monitoring/writer.py, shared with PostgreSQL); `close()` stops it.
    """

    def __init__(self, path: str | Path, *, retention_seconds: float | None = 30 * 86400,
                 max_rows: int | None = 5_000_000, busy_timeout: float = 5.0,
                 synchronous: str = "NORMAL", max_pending: int = 50_000, layout: StoreLayout | None = None):
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.layout = layout or DIAMONDS  # the served model's feature columns
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self._init_writer(max_pending)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._init_schema(self._writer)
            self._n_predictions = self._writer.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            self._n_labelled = self._writer.execute(
                "SELECT COUNT(*) FROM predictions WHERE label_ts IS NOT NULL").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            if self._writer is not None:
                self._writer.close()
            raise StoreError(f"cannot open the store {self.path}: {_describe(exc)}") from exc
        self._start_writer()

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    # ---------------------------------------------------------------- connections and schema

    def _connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are explicit), WAL, our pragmas.
        check_same_thread=False: the constructor opens the writer connection that the writer
        thread then uses; a read connection never leaves its call."""
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA cache_size = -32000")  # 32 MB: keeps the id index's hot pages
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, this code knows {SCHEMA_VERSION}")
        if version == 0:
            conn.executescript(f"BEGIN IMMEDIATE; {self.layout.schema_sql} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        table = [(row[1], str(row[2]).upper()) for row in conn.execute("PRAGMA table_info(predictions)")]
        names = [name for name, _ in table]
        missing = [c for c in ("id", "ts", "prediction", "model_version", "actual", "label_ts") if c not in names]
        if missing:
            raise sqlite3.DatabaseError(f"the predictions table has no column {', '.join(missing)}")
        # The feature columns are those between ts and prediction (as the layout made them). A file
        # written for other features: refuse it now, not at the first insert.
        features = table[names.index("ts") + 1:names.index("prediction")]
        refusal = self.layout.refusal([(name, kind == "TEXT") for name, kind in features])
        if refusal:
            raise sqlite3.DatabaseError(f"the predictions table: {refusal}")

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection for one read: cheap to open, never shared between threads."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store: {_describe(exc)}") from exc
        try:
            conn.execute("PRAGMA query_only = ON")
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store: {_describe(exc)}") from exc
        finally:
            conn.close()

    # ---------------------------------------------------------------- the writer's SQLite part

    def _connect_writer(self) -> sqlite3.Connection:
        """A new writer connection after a failure dropped the last (and the schema made again,
        should the file have been replaced by an empty one)."""
        conn = self._connect()
        try:
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_transaction(self, work, single_statement: bool = False):
        # Always BEGIN IMMEDIATE: executemany in autocommit would commit (and sync) row by row.
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _touch(conn: sqlite3.Connection) -> None:
        """Nothing: BEGIN IMMEDIATE itself takes the write lock, which is what a ping checks."""

    def _keeps_connection(self, exc: BaseException) -> bool:
        # busy, locked, full: the same connection works again once the condition clears
        return _primary_code(exc) in _KEEP_CONNECTION

    _refused_record = staticmethod(_refused_record)
    _describe = staticmethod(_describe)
    def _row(self, record) -> tuple:
        return self.layout.row(record)
    _label_entries = staticmethod(_labels_by_id)

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple]) -> int:
        return conn.executemany(self.layout.insert, rows).rowcount

    def _join_labels(self, conn: sqlite3.Connection, labels: dict) -> tuple[tuple[list, list[str]], int]:
        """Set the labels of the ids that exist; returns ((known, unknown_ids), newly labelled)."""
        ids = list(labels)
        found = {}
        for i in range(0, len(ids), _MAX_SQL_VARIABLES):
            part = ids[i:i + _MAX_SQL_VARIABLES]
            marks = ",".join("?" * len(part))
            for row in conn.execute(f"SELECT id, prediction, label_ts IS NULL, {self.layout.features_sql} "
                                    f"FROM predictions WHERE id IN ({marks})", part):
                found[row[0]] = row
        known, unknown, updates, newly = [], [], [], 0
        for id_, (actual, label_ts) in labels.items():
            row = found.get(id_)
            if row is None:
                unknown.append(id_)
                continue
            first = bool(row[2])
            known.append((id_, actual, _num(row[1]), self.layout.features(row[3:]), first))
            updates.append((actual, label_ts, id_))
            newly += first
        if updates:
            conn.executemany("UPDATE predictions SET actual = ?, label_ts = ? WHERE id = ?", updates)
        return (known, unknown), newly

    def _do_other(self, job: Job) -> None:
        """A prune chunk: a job on the writer's queue like any write, so writes queued meanwhile
        go first and predictions never wait for more than one chunk."""
        assert job.kind == _PRUNE, job.kind
        try:
            job.result = self._prune_chunk(*job.args)
            job.error = None
        except StoreError as exc:
            job.error = exc

    def _prune_chunk(self, where: str, args: tuple, limit: int) -> int:
        try:
            def work(conn):
                victims = conn.execute(
                    f"SELECT id, label_ts IS NOT NULL FROM predictions {where} "
                    f"ORDER BY ts LIMIT ?", (*args, limit)).fetchall()
                conn.executemany("DELETE FROM predictions WHERE id = ?", [(v[0],) for v in victims])
                return victims
            victims = self._write_transaction(work)
        except (sqlite3.Error, OSError) as exc:
            raise self._fail(exc, "cannot prune the store") from exc
        with self._mutex:
            self._last_error = None if not self._pending else self._last_error
            self._n_predictions -= len(victims)
            self._n_labelled -= sum(v[1] for v in victims)
            self._stats["prune_chunks"] += 1
            self._stats["pruned_rows"] += len(victims)
        return len(victims)

    # ---------------------------------------------------------------- retention

    def prune(self, now: float | None = None, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete rows older than retention_seconds, then the oldest rows beyond max_rows; returns
        the rows deleted. Each chunk of `chunk` rows is its own short transaction and its own job
        on the writer's queue, so writes queued meanwhile go first and predictions never wait for
        more than one chunk. Freed pages are reused by new rows; the file does not shrink."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        now = time.time() if now is None else float(now)
        deleted = 0
        if self.retention_seconds is not None:
            cutoff = now - self.retention_seconds
            while True:
                n = self._submit(Job(_PRUNE, args=("WHERE ts < ?", (cutoff,), chunk)))
                deleted += n
                if n < chunk:
                    break
        if self.max_rows is not None:
            while True:
                with self._mutex:
                    excess = self._n_predictions - self.max_rows
                if excess <= 0:
                    break
                n = self._submit(Job(_PRUNE, args=("", (), min(chunk, excess))))
                deleted += n
                if n == 0:
                    break
        return deleted

    # ---------------------------------------------------------------- reads

    def recent_inputs(self, n: int) -> list[tuple]:
        """Feature tuples of the newest n served predictions, oldest first (to refill the input
        window after a restart). Ties in ts keep insertion order."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT {self.layout.features_sql} FROM predictions "
                                f"ORDER BY ts DESC, rowid DESC LIMIT ?", (int(n),)).fetchall()
        return [self.layout.features(r) for r in reversed(rows)]

    def recent_labelled(self, n: int) -> list[tuple[float, float]]:
        """(actual, prediction) of the newest n labelled predictions, oldest label first."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute("SELECT actual, prediction FROM predictions WHERE label_ts IS NOT NULL "
                                "ORDER BY label_ts DESC, rowid DESC LIMIT ?", (int(n),)).fetchall()
        return [(_num(a), _num(p)) for a, p in reversed(rows)]

    def recent_input_rows(self, n: int) -> list[tuple[tuple, float, float]]:
        """(features, prediction, ts) of the newest n served predictions, oldest first: what the
        input window keeps (the arrival time dates a change; the prediction feeds the estimate)."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT {self.layout.features_sql}, prediction, ts FROM predictions "
                                f"ORDER BY ts DESC, rowid DESC LIMIT ?", (int(n),)).fetchall()
        return [(self.layout.features(r[:-2]), _num(r[-2]), float(r[-1])) for r in reversed(rows)]

    def recent_labelled_rows(self, n: int) -> list[tuple[float, float, float, tuple]]:
        """(actual, prediction, label_ts, features) of the newest n labelled predictions, oldest
        label first: what the labelled window keeps (the grades for the concept segments)."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT actual, prediction, label_ts, {self.layout.features_sql} FROM predictions "
                                f"WHERE label_ts IS NOT NULL ORDER BY label_ts DESC, rowid DESC LIMIT ?",
                                (int(n),)).fetchall()
        return [(_num(r[0]), _num(r[1]), float(r[2]), self.layout.features(r[3:])) for r in reversed(rows)]


class MemoryStore:
    """Store's interface with nothing written anywhere: the newest `capacity` predictions are kept
    by id, so that late labels join them as they would join a Store's rows (unknown ids, a resent
    label answered with first=False, the latest value of an id within one call, the first record of
    an id kept). Beyond capacity the oldest prediction is forgotten (counted as pruned_rows).

    Only what the join and the concept-drift segments need is kept: the prediction and the grades
    (interned, so each row costs one small tuple); add_labels answers the features with None for the
    numbers. Nothing
    survives a restart, so recent_inputs and recent_labelled are empty; there is nothing to flush,
    prune or retry, and it is always healthy until closed. Thread-safe; no I/O."""

    path = None   # where it stores: nowhere

    def __init__(self, capacity: int = 200_000, *, layout: StoreLayout | None = None, keep_features: bool = False):
        """keep_features: keep each prediction's features too, and answer them in add_labels (a
        classifier's monitor needs them to give the probability of the true class)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.layout = layout or DIAMONDS
        self.keep_features = bool(keep_features)
        self._lock = threading.Lock()
        # id -> (prediction, features: all of them with keep_features, else the categories only), oldest first
        self._by_id: OrderedDict[str, tuple[float, tuple]] = OrderedDict()
        self._labelled: set[str] = set()
        self._closed = False
        self._stats = new_stats()

    def describe(self) -> str:
        return f"memory only, the newest {self.capacity:,} predictions"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        for r in records:
            self.layout.check(r.features)
        keep, is_text = self.keep_features, self.layout.is_text
        with self._lock:
            self._check_open()
            by_id, added = self._by_id, 0
            for r in records:
                if r.id not in by_id:
                    if keep:
                        features = tuple(r.features)
                    else:  # the grades, interned so that each row costs one small tuple
                        features = tuple(sys.intern(v) if text else None for v, text in zip(r.features, is_text))
                    by_id[r.id] = (float(r.prediction), features)
                    added += 1
            evicted = 0
            while len(by_id) > self.capacity:
                self._labelled.discard(by_id.popitem(last=False)[0])
                evicted += 1
            self._stats["rows_written"] += added
            self._stats["pruned_rows"] += evicted

    def add_labels(self, labels: Sequence[tuple[str, float, float]]) -> tuple[list, list[str]]:
        joined = _labels_by_id(labels)
        known, unknown = [], []
        with self._lock:
            self._check_open()
            for id_, (actual, _) in joined.items():
                found = self._by_id.get(id_)
                if found is None:
                    unknown.append(id_)
                    continue
                known.append((id_, actual, found[0], found[1], id_ not in self._labelled))
                self._labelled.add(id_)
            self._stats["labels_written"] += len(known)
        return known, unknown

    def flush(self) -> int:
        self._check_open()
        return 0

    def prune(self, now: float | None = None, *, chunk: int = PRUNE_CHUNK) -> int:
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self._check_open()
        return 0

    def recent_inputs(self, n: int) -> list[tuple]:
        self._check_open()
        return []

    def recent_labelled(self, n: int) -> list[tuple[float, float]]:
        self._check_open()
        return []

    def recent_input_rows(self, n: int) -> list[tuple[tuple, float, float]]:
        self._check_open()
        return []

    def recent_labelled_rows(self, n: int) -> list[tuple[float, float, float, tuple]]:
        self._check_open()
        return []

    def counts(self) -> dict:
        """{"predictions": predictions held, "labelled": those of them with a label}."""
        with self._lock:
            return {"predictions": len(self._by_id), "labelled": len(self._labelled)}

    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "pending": 0}

    @property
    def healthy(self) -> bool:
        return not self._closed

    @property
    def last_error(self) -> str | None:
        return None

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_store(db_path: str | Path | None, *, memory_capacity: int = 200_000, keep_features: bool = False,
               **options) -> Store | MemoryStore:
    """A Store on the SQLite file `db_path` (options: Store's keyword arguments); a
    monitoring.pg_store.PgStore, shared by a fleet of replicas, when db_path is a postgresql:// URL
    (options: PgStore's); or, when db_path is None or "", a MemoryStore joining labels to the newest
    `memory_capacity` predictions. `layout`: the served model's feature columns (default: the
    diamond model's); keep_features: add_labels answers each prediction's features, all of them
    (a classifier's monitor needs them to give the probability of the true class; a file answers
    them anyway), and a fleet's check reads them with each label."""
    layout = options.pop("layout", None)
    if db_path is None or db_path == "":
        return MemoryStore(memory_capacity, layout=layout, keep_features=keep_features)
    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from monitoring.pg_store import PgStore   # psycopg is imported only by those who use it

        return PgStore(db_path, layout=layout, keep_features=keep_features, **options)
    return Store(db_path, layout=layout, **options)
