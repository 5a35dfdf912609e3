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
  The feature columns are diamonds.FEATURES, in that order; `table` is stored as `table_`.
* One writer thread, group commit. A commit costs the same for 1 row as for 100, so callers of
  `add_predictions` and `add_labels` put their rows on a queue and wait; the writer thread takes
  everything queued, writes it in ONE transaction and then wakes each caller. A caller returns only
  once the transaction holding its rows is committed, so "returned" means "durable". A lone job is
  committed at once (no timer, no added latency but the thread hand-off); under load, jobs queue
  behind the commit in progress and share the next one, so the slower commits get, the more rows
  each carries. Flush, each prune chunk and close are jobs on the same queue, done in their turn
  by the same thread: only that thread writes, so no lock is ever held around SQL.
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
  buffer (`max_pending` rows, oldest dropped first and counted) and written first by the next
  successful commit (or `flush()`). So when `add_predictions` raises, the caller may still answer
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
import logging
import math
import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from monitoring.diamonds import CATEGORICAL_FEATURES, FEATURES

log = logging.getLogger("monitor.store")

__all__ = ["FEATURE_COLUMNS", "MemoryStore", "PredictionRecord", "Store", "StoreError", "open_store"]

SCHEMA_VERSION = 1
FLUSH_CHUNK = 1_000  # retry-buffer rows per transaction when catching up after a failure
FEATURE_COLUMNS = tuple(FEATURES)  # a record's features, in this order
PRUNE_CHUNK = 1_000   # rows per prune transaction: short even with millions stored (README)
_MAX_SQL_VARIABLES = 500      # ids per `IN (...)`; well below every SQLite build's limit
# Errors after which the same connection will work again once the condition clears; any other
# error closes the writer connection and the next write opens a new one.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_KEEP_CONNECTION = {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL}

# The feature columns on disk: a feature named like an SQL keyword gets a trailing underscore.
_SQL_NAMES = {"table": "table_"}
_IS_TEXT = tuple(name in CATEGORICAL_FEATURES for name in FEATURE_COLUMNS)
FEATURES_SQL = ", ".join(_SQL_NAMES.get(name, name) for name in FEATURE_COLUMNS)
_FEATURES_DDL = "".join(f"    {_SQL_NAMES.get(name, name):<13} {'TEXT' if text else 'REAL'},\n"
                        for name, text in zip(FEATURE_COLUMNS, _IS_TEXT))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS predictions (
    id            TEXT PRIMARY KEY,
    ts            REAL NOT NULL,
{_FEATURES_DDL}    prediction    REAL,
    model_version TEXT,
    actual        REAL,
    label_ts      REAL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_label_ts ON predictions (label_ts) WHERE label_ts IS NOT NULL;
"""
_COLUMNS = ("id", "ts", *FEATURES_SQL.split(", "), "prediction", "model_version", "actual", "label_ts")
_INSERT = (f"INSERT OR IGNORE INTO predictions (id, ts, {FEATURES_SQL}, prediction, model_version) "
           f"VALUES ({', '.join('?' * (len(FEATURE_COLUMNS) + 4))})")


class PredictionRecord(NamedTuple):
    """One served prediction. A named tuple, not a dataclass: the batcher makes one per row, and a
    frozen dataclass takes about three times as long to build."""
    id: str            # uuid4 hex
    ts: float          # unix time served
    features: tuple    # FEATURE_COLUMNS' values: numbers as float, grades as str
    prediction: float
    model_version: str

    @classmethod
    def create(cls, features: Sequence, prediction: float, model_version: str,
               ts: float | None = None) -> "PredictionRecord":
        """A record with a fresh uuid4 hex id, served now unless `ts` is given."""
        return cls(uuid.uuid4().hex, time.time() if ts is None else float(ts), tuple(features),
                   float(prediction), str(model_version))


class StoreError(Exception):
    """The database could not be written or read (full, read-only, locked too long, I/O error)."""


def _new_stats() -> dict:
    return {"commits": 0, "rows_written": 0, "labels_written": 0, "write_errors": 0,
            "commit_seconds_sum": 0.0, "commit_seconds_max": 0.0,
            "prune_chunks": 0, "pruned_rows": 0, "dropped": 0, "rejected": 0}


def _check_features(features) -> None:
    if len(features) != len(FEATURE_COLUMNS):
        raise ValueError(f"a record has {len(FEATURE_COLUMNS)} features ({', '.join(FEATURE_COLUMNS)}), "
                         f"not {len(features)}")


def _row(record) -> tuple:
    """A record as the tuple bound to _INSERT. Converting here, before the record is queued, means
    a malformed record fails its own caller (ValueError/TypeError) and can never poison a group
    commit or the retry buffer."""
    features = record.features
    _check_features(features)
    return (str(record.id), float(record.ts),
            *[str(v) if text else float(v) for v, text in zip(features, _IS_TEXT)],
            float(record.prediction), str(record.model_version))


def _num(value) -> float:
    """SQLite stores NaN as NULL; give it back as NaN so windows get floats only."""
    return math.nan if value is None else float(value)


def _features(row) -> tuple:
    return tuple(v if text else _num(v) for v, text in zip(row, _IS_TEXT))


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


# What a job asks of the writer thread: rows and/or labels to commit (a write, coalesced with the
# other writes queued), or something done alone, in its turn, after the writes queued before it.
_WRITE, _FLUSH, _PRUNE, _CLOSE = "write", "flush", "prune", "close"


class _RefusedRecord(Exception):
    """A group commit failed on a record rather than on the database: commit its jobs one by one."""


class _Job:
    """One caller's request to the writer thread. `done` is taken at birth; the writer releases it
    once the job is finished, which wakes the caller waiting on it."""
    __slots__ = ("kind", "rows", "labels", "prune", "error", "result", "done")

    def __init__(self, kind: str = _WRITE, rows=None, labels=None, prune=None):
        self.kind = kind
        self.rows = rows          # validated prediction rows, or None
        self.labels = labels      # {id: (actual, label_ts)} in arrival order, or None
        self.prune = prune        # (where, args, limit) of one prune chunk
        # Failed until the writer says otherwise: a job cut short by anything unforeseen must
        # never look like success to the caller waiting for it.
        self.error: StoreError | None = StoreError("the commit did not complete")
        self.result = None
        self.done = threading.Lock()
        self.done.acquire()


class Store:
    """Predictions and labels in an SQLite file at `path` (created with its folder if missing).

    retention_seconds / max_rows: what `prune()` keeps (None: no limit by age / by count).
    busy_timeout: seconds a write waits for a lock held by another connection before failing.
    synchronous: "NORMAL" (survives a process crash) or "FULL" (also survives power loss, one fsync
    per commit). max_pending: failed prediction rows kept in memory for the next commit (0: none).

    Raises StoreError if the file cannot be opened or is not a store of this schema version. Starts
    the writer thread; `close()` stops it.
    """

    def __init__(self, path: str | Path, *, retention_seconds: float | None = 30 * 86400,
                 max_rows: int | None = 5_000_000, busy_timeout: float = 5.0,
                 synchronous: str = "NORMAL", max_pending: int = 50_000):
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self.max_pending = int(max_pending)

        self._mutex = threading.Lock()   # guards the state below; held only to read or update it
        self._closed = False
        self._last_error: str | None = None
        self._stats = _new_stats()
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # Owned by the writer thread:
        self._pending: deque[tuple] = deque()
        self._writer: sqlite3.Connection | None = None

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
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

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

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, this code knows {SCHEMA_VERSION}")
        if version == 0:
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
        missing = [c for c in _COLUMNS if c not in have]
        if missing:   # a file written for other features: refuse it now, not at the first insert
            raise sqlite3.DatabaseError(f"the predictions table has no column {', '.join(missing)}")

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

    # ---------------------------------------------------------------- the writer thread

    def _submit(self, job: _Job):
        """Queue `job` for the writer thread and wait until it is done: returns its result or
        raises its StoreError."""
        with self._mutex:   # never queued after close()'s job: everything queued gets done
            if self._closed:
                raise StoreError("the store is closed")
            self._queue.put(job)
        job.done.acquire()   # released by the writer thread
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        """The writer thread: take every write queued, up to the first other job; commit them and
        the retry buffer in one transaction; then do that other job; then wake their callers."""
        while True:
            job = self._queue.get()
            writes, other = ([job], None) if job.kind is _WRITE else ([], job)
            while other is None:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job.kind is _WRITE:
                    writes.append(job)
                else:
                    other = job
            try:
                buffered = len(self._pending)
                self._commit_group(writes)
                if other is not None:
                    self._do(other, buffered)
            except Exception as exc:  # a bug, not the database: the jobs keep their failure
                self._fail(exc, "the store's writer failed")
            finally:
                for job in writes:
                    job.done.release()
                if other is not None:
                    other.done.release()
            if other is not None and other.kind is _CLOSE:
                return

    def _do(self, job: _Job, buffered: int) -> None:
        """A flush, prune chunk or close, once the writes queued before it are committed (along
        with the `buffered` rows of the retry buffer, if they could be)."""
        if job.kind is _FLUSH:
            try:
                job.result, job.error = buffered - len(self._pending) + self._flush_chunks(), None
            except StoreError as exc:
                job.error = exc
        elif job.kind is _PRUNE:
            try:
                job.result = self._prune_chunk(*job.prune)
                job.error = None
            except StoreError as exc:
                job.error = exc
        elif job.kind is _CLOSE:
            with contextlib.suppress(StoreError):  # one last try for the retry buffer
                self._flush_chunks()
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
                self._writer = None
            job.error = None

    def _writer_conn(self) -> sqlite3.Connection:
        """The writer connection, reopened after a failure dropped it (and the schema made again,
        should the file have been replaced by an empty one)."""
        if self._writer is None:
            conn = self._connect()
            try:
                self._init_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return self._writer

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        """Record a write failure; drop the writer connection unless the error is one it outlives."""
        if self._writer is not None and _primary_code(exc) not in _KEEP_CONNECTION:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        message = f"{what}: {_describe(exc)}"
        with self._mutex:
            self._last_error = message
            self._stats["write_errors"] += 1
        error = StoreError(message)
        error.__cause__ = exc
        return error

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            raise

    def _commit_group(self, jobs: list[_Job]) -> None:
        """Write the retry buffer and every queued job in one transaction (rows before labels, so
        a label can join a prediction of the same group). Sets each job's outcome; never raises.

        One caller's record that the database refuses must not fail the others': when the group
        fails on a record, each job is committed alone, and only the one that fails again is
        refused (its predictions set aside and counted as rejected, its labels not acknowledged)."""
        try:
            self._commit_together(jobs, refuse=False)
        except _RefusedRecord:
            for job in jobs:
                self._commit_together([job], refuse=True)

    def _commit_together(self, jobs: list[_Job], refuse: bool) -> None:
        # While the database fails, each write tries only its own rows: the retry buffer (up to
        # max_pending rows) is written by flush() in bounded chunks, not by every request.
        catching_up = bool(self._pending) and self._last_error is not None
        if catching_up:
            jobs = self._hold_labels_of_pending(jobs)
        pending = [] if catching_up else list(self._pending)
        rows = list(pending)
        for job in jobs:
            if job.rows:
                rows.extend(job.rows)
        label_jobs = [job for job in jobs if job.labels]
        if not rows and not label_jobs:   # nothing to commit
            for job in jobs:
                job.error = None
            return
        started = time.perf_counter()
        try:
            with self._transaction() as conn:
                inserted = conn.executemany(_INSERT, rows).rowcount if rows else 0
                new_labels = labels_written = 0
                for job in label_jobs:
                    job.result, newly = self._join_labels(conn, job.labels)
                    new_labels += newly
                    labels_written += len(job.result[0])
        except Exception as exc:  # sqlite3.Error, OSError, or anything unforeseen: never lose rows
            if _refused_record(exc):
                if not refuse:
                    raise _RefusedRecord from exc
                message = f"the store refused this record: {_describe(exc)}"
                log.warning("%s (%d predictions set aside, %d labels refused)", message,
                            sum(len(job.rows or ()) for job in jobs), sum(len(job.labels or ()) for job in jobs))
                with self._mutex:
                    self._stats["rejected"] += sum(len(job.rows or ()) + len(job.labels or ()) for job in jobs)
                for job in jobs:
                    job.error, job.result = StoreError(message), None
                return
            error = self._fail(exc, "cannot write to the store")
            for job in jobs:
                job.error, job.result = error, None
            self._keep_pending(rows[len(pending):])
            return
        elapsed = time.perf_counter() - started
        if not catching_up:
            self._pending.clear()
        for job in jobs:
            job.error = None
        with self._mutex:
            if not catching_up:  # healthy again once the retry buffer is written too (flush)
                self._last_error = None
            self._n_predictions += max(inserted, 0)
            self._n_labelled += new_labels
            s = self._stats
            s["commits"] += 1
            s["rows_written"] += max(inserted, 0)
            s["labels_written"] += labels_written
            s["commit_seconds_sum"] += elapsed
            s["commit_seconds_max"] = max(s["commit_seconds_max"], elapsed)

    def _keep_pending(self, rows: list[tuple]) -> None:
        """After a failed commit: add its prediction rows to the retry buffer, keeping the newest
        max_pending rows (the dropped ones are counted)."""
        self._pending.extend(rows)
        dropped = max(0, len(self._pending) - self.max_pending)
        for _ in range(dropped):
            self._pending.popleft()
        if dropped:
            with self._mutex:
                self._stats["dropped"] += dropped

    def _hold_labels_of_pending(self, jobs: list[_Job]) -> list[_Job]:
        """Label jobs naming a prediction still in the retry buffer fail for now (their caller is
        told to send them again) rather than be answered 'unknown'; returns the other jobs."""
        waiting = {row[0] for row in self._pending}
        kept = []
        for job in jobs:
            if job.labels and not waiting.isdisjoint(job.labels):
                job.error = StoreError("some of these predictions are not written yet (the store is catching "
                                       "up after a failure); send the labels again shortly")
            else:
                kept.append(job)
        return kept

    def _flush_chunks(self) -> int:
        """Write the retry buffer FLUSH_CHUNK rows per transaction, oldest first, until it is empty
        or a chunk fails: freeing a little space lets it catch up a little."""
        written = 0
        while self._pending:
            chunk = [self._pending[i] for i in range(min(FLUSH_CHUNK, len(self._pending)))]
            try:
                with self._transaction() as conn:
                    inserted = conn.executemany(_INSERT, chunk).rowcount
            except Exception as exc:
                raise self._fail(exc, "cannot write the retry buffer") from exc
            for _ in chunk:
                self._pending.popleft()
            written += len(chunk)
            with self._mutex:
                self._last_error = None if not self._pending else self._last_error
                self._n_predictions += max(inserted, 0)
                self._stats["rows_written"] += max(inserted, 0)
                self._stats["commits"] += 1
        return written

    @staticmethod
    def _join_labels(conn: sqlite3.Connection, labels: dict) -> tuple[tuple[list, list[str]], int]:
        """Set the labels of the ids that exist; returns ((known, unknown_ids), newly labelled)."""
        ids = list(labels)
        found = {}
        for i in range(0, len(ids), _MAX_SQL_VARIABLES):
            part = ids[i:i + _MAX_SQL_VARIABLES]
            marks = ",".join("?" * len(part))
            for row in conn.execute(f"SELECT id, prediction, label_ts IS NULL, {FEATURES_SQL} "
                                    f"FROM predictions WHERE id IN ({marks})", part):
                found[row[0]] = row
        known, unknown, updates, newly = [], [], [], 0
        for id_, (actual, label_ts) in labels.items():
            row = found.get(id_)
            if row is None:
                unknown.append(id_)
                continue
            first = bool(row[2])
            known.append((id_, actual, _num(row[1]), _features(row[3:]), first))
            updates.append((actual, label_ts, id_))
            newly += first
        if updates:
            conn.executemany("UPDATE predictions SET actual = ?, label_ts = ? WHERE id = ?", updates)
        return (known, unknown), newly

    def _prune_chunk(self, where: str, args: tuple, limit: int) -> int:
        try:
            with self._transaction() as conn:
                victims = conn.execute(
                    f"SELECT id, label_ts IS NOT NULL FROM predictions {where} "
                    f"ORDER BY ts LIMIT ?", (*args, limit)).fetchall()
                conn.executemany("DELETE FROM predictions WHERE id = ?", [(v[0],) for v in victims])
        except (sqlite3.Error, OSError) as exc:
            raise self._fail(exc, "cannot prune the store") from exc
        with self._mutex:
            self._last_error = None
            self._n_predictions -= len(victims)
            self._n_labelled -= sum(v[1] for v in victims)
            self._stats["prune_chunks"] += 1
            self._stats["pruned_rows"] += len(victims)
        return len(victims)

    # ---------------------------------------------------------------- writes

    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Record served predictions; committed (durable) when this returns. Thread-safe: calls
        from many threads are coalesced into one transaction (group commit).

        Raises ValueError/TypeError for a malformed record (nothing of that call is queued) and
        StoreError if the database cannot be written: then the rows are kept in memory (up to
        max_pending) and written by the next successful commit or `flush()`. An id already stored
        is ignored (the first record with an id wins), so resending is harmless."""
        rows = [_row(r) for r in records]
        if rows:
            self._submit(_Job(rows=rows))

    def add_labels(self, labels: Sequence[tuple[str, float, float]]) -> tuple[list, list[str]]:
        """Join ground truth to served predictions; durable when this returns.

        labels: (id, actual, received_ts). Returns (known, unknown_ids): known holds
        (id, actual, prediction, features, first) for each id found in the store (including rows
        still in the retry buffer, which are written first), `first` False when the prediction had
        a label already (a correction, or a sender's retry); unknown_ids the others; each id
        appears once. Latest wins: a label for an id that already has one replaces it (actual and
        label_ts), and within one call a later entry for the same id replaces an earlier one.
        Labels are not kept for retry: on StoreError nothing of the call was written."""
        joined = _labels_by_id(labels)
        if not joined:
            return [], []
        return self._submit(_Job(labels=joined))

    def flush(self) -> int:
        """Write the retry buffer now (at shutdown, or from a periodic task so that a recovered
        database is caught up without waiting for traffic). Returns the rows it wrote; raises
        StoreError if they could not be written (they stay buffered)."""
        return self._submit(_Job(_FLUSH))

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
                n = self._submit(_Job(_PRUNE, prune=("WHERE ts < ?", (cutoff,), chunk)))
                deleted += n
                if n < chunk:
                    break
        if self.max_rows is not None:
            while True:
                with self._mutex:
                    excess = self._n_predictions - self.max_rows
                if excess <= 0:
                    break
                n = self._submit(_Job(_PRUNE, prune=("", (), min(chunk, excess))))
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
            rows = conn.execute(f"SELECT {FEATURES_SQL} FROM predictions "
                                f"ORDER BY ts DESC, rowid DESC LIMIT ?", (int(n),)).fetchall()
        return [_features(r) for r in reversed(rows)]

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
            rows = conn.execute(f"SELECT {FEATURES_SQL}, prediction, ts FROM predictions "
                                f"ORDER BY ts DESC, rowid DESC LIMIT ?", (int(n),)).fetchall()
        return [(_features(r[:-2]), _num(r[-2]), float(r[-1])) for r in reversed(rows)]

    def recent_labelled_rows(self, n: int) -> list[tuple[float, float, float, tuple]]:
        """(actual, prediction, label_ts, features) of the newest n labelled predictions, oldest
        label first: what the labelled window keeps (the grades for the concept segments)."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT actual, prediction, label_ts, {FEATURES_SQL} FROM predictions "
                                f"WHERE label_ts IS NOT NULL ORDER BY label_ts DESC, rowid DESC LIMIT ?",
                                (int(n),)).fetchall()
        return [(_num(r[0]), _num(r[1]), float(r[2]), _features(r[3:])) for r in reversed(rows)]

    # ---------------------------------------------------------------- state

    def counts(self) -> dict:
        """{"predictions": rows stored, "labelled": rows with a label}; kept in memory, O(1)."""
        with self._mutex:
            return {"predictions": self._n_predictions, "labelled": self._n_labelled}

    def stats(self) -> dict:
        """Counters for metrics: commits, rows_written, labels_written, write_errors,
        commit_seconds_sum/max (time inside a group commit), prune_chunks, pruned_rows, pending
        (rows in the retry buffer), dropped (rows the full retry buffer had to drop)."""
        with self._mutex:
            stats = dict(self._stats)
            stats["pending"] = len(self._pending)
            return stats

    @property
    def healthy(self) -> bool:
        """False after a failed write, until the next successful one."""
        with self._mutex:
            return self._last_error is None and not self._closed

    @property
    def last_error(self) -> str | None:
        with self._mutex:
            return self._last_error

    def close(self) -> None:
        """Write what is queued and buffered (one try), then close and stop the writer thread.
        Idempotent; any later call raises StoreError."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            job = _Job(_CLOSE)
            self._queue.put(job)
        job.done.acquire()
        self._thread.join()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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

    def __init__(self, capacity: int = 200_000):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, tuple[float, tuple]] = OrderedDict()  # id -> (prediction, grades), oldest first
        self._labelled: set[str] = set()
        self._closed = False
        self._stats = _new_stats()

    def describe(self) -> str:
        return f"memory only, the newest {self.capacity:,} predictions"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        for r in records:
            _check_features(r.features)
        with self._lock:
            self._check_open()
            by_id, added = self._by_id, 0
            for r in records:
                if r.id not in by_id:
                    grades = tuple(sys.intern(v) if text else None for v, text in zip(r.features, _IS_TEXT))
                    by_id[r.id] = (float(r.prediction), grades)
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


def open_store(db_path: str | Path | None, *, memory_capacity: int = 200_000,
               **options) -> Store | MemoryStore:
    """A Store on the SQLite file `db_path` (options: Store's keyword arguments); a
    monitoring.pg_store.PgStore, shared by a fleet of replicas, when db_path is a postgresql:// URL
    (options: PgStore's); or, when db_path is None or "", a MemoryStore joining labels to the newest
    `memory_capacity` predictions."""
    if db_path is None or db_path == "":
        return MemoryStore(memory_capacity)
    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from monitoring.pg_store import PgStore   # psycopg is imported only by those who use it

        return PgStore(db_path, **options)
    return Store(db_path, **options)
