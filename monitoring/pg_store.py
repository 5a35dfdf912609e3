"""The prediction store on PostgreSQL, shared by a fleet of monitor replicas: `PgStore` has the
interface of store.Store (SQLite), and `open_store` picks it for a `postgresql://` URL.

What holds as for SQLite (store.py's docstring has the reasoning):

* One writer thread, group commit: callers queue their rows and wait; the writer takes everything
  queued and commits it in ONE transaction (one statement for all the predictions, one per list of
  labels), then wakes each caller. `add_predictions` returns once its rows are committed (with
  synchronous_commit on, PostgreSQL's default, flushed to its WAL): durable before the response.
* A bounded retry buffer: predictions whose commit failed stay in memory (`max_pending` rows,
  oldest dropped first and counted) and go first into the next commit, or `flush()` (the monitor
  calls it every few seconds, so a database that comes back is caught up without traffic). Labels
  are never buffered: a failed `add_labels` raises StoreError and the sender retries.
* Retention in short chunks, oldest first; `recent_inputs` / `recent_labelled` refill the windows.

What the fleet adds:

* Many replicas write one database. A prediction's id is its primary key (uuid4 hex: unique
  fleet-wide; a replayed id is ignored, ON CONFLICT DO NOTHING), and the row says which replica
  served it (`replica`) and which stored its label (`label_replica`).
* Time that orders the fleet's records is the DATABASE's clock, not the replicas' (whose clocks
  may disagree): a record handed over with `ts=None` (the monitor's always are) is stamped with
  `clock_timestamp()` when stored, a label with `label_ts=None` likewise; the replica's own clock
  is kept beside it (`served_at`) for information only. An explicit ts (tests, imports) is kept as
  given. Ties are broken by `seq` / `label_seq`, the order in which the database stored them.
* A label joins any replica's prediction, a whole list in one statement
  (UPDATE ... FROM unnest(ids, actuals) ... RETURNING): `unknown` means unknown to the fleet.
* Fleet drift checks (`fleet_check`): one transaction takes `pg_try_advisory_xact_lock`, decides
  on the database clock whether this interval's check is still to do, reads the fleet's newest
  inputs and labels, lets the caller score them, and stores the report, so each scheduled check
  runs once in the fleet whichever replica's timer fires first. Every session sets
  statement_timeout and idle_in_transaction_session_timeout (`timeout`) and TCP keepalives, so a
  replica that hangs or is stopped mid-check loses its session, its lock and its unwritten report
  within about twice `timeout` (the server ends the session; its transaction, report included, is
  rolled back), and a report is only ever inserted while holding the lock, never over a newer one.
* The schema is versioned: table `schema_version`, and MIGRATIONS, a list applied in order under an
  advisory lock by whichever replica starts first. A database whose version is newer than this code
  is refused.
* `counts()` is exact for this replica's own writes and refreshed from the database at open and at
  every prune (a COUNT(*) over the table: too dear for every scrape), so other replicas' rows show
  up within one prune interval.

Connections: one for the writer thread, one for fleet checks, one to ask for the latest report,
and a short-lived one per other read (the windows at start, a prune, export), each opened lazily
and again after a failure. No pool: those reads are rare, and a connection opens in a few ms.
"""
from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections import deque
from typing import Callable, Iterator, NamedTuple, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg

from monitoring.store import (FEATURE_COLUMNS, PRUNE_CHUNK, PredictionRecord, StoreError, _check_features,
                              _IS_TEXT, _new_stats, _num, _SQL_NAMES)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "FleetReport", "PgStore", "is_postgres_url", "redact_url"]

# Advisory lock keys (one 64-bit namespace per database): arbitrary constants, named here only.
CHECK_LOCK = 0x6D6F6E5F636865   # one fleet drift check at a time
PRUNE_LOCK = 0x6D6F6E5F707275   # one replica prunes at a time
MIGRATE_LOCK = 0x6D6F6E5F6D6967  # one replica migrates the schema

_COLS = [_SQL_NAMES.get(name, name) for name in FEATURE_COLUMNS]
_FEATURES_SQL = ", ".join(_COLS)
_PG_TYPES = ["text" if text else "float8" for text in _IS_TEXT]
_FEATURES_DDL = "".join(f"    {col:<13} {'text' if text else 'double precision'},\n"
                        for col, text in zip(_COLS, _IS_TEXT))
_EPOCH_NOW = "extract(epoch FROM clock_timestamp())"

# Each migration: (version, what it does, statements). Applied in order, in one transaction each,
# and recorded in schema_version. The next schema change appends an entry here; never edit one
# that has shipped.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "predictions with their labels; fleet drift reports", [
        f"""CREATE TABLE predictions (
    id            text PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    ts            double precision NOT NULL,
{_FEATURES_DDL}    prediction    double precision,
    model_version text,
    replica       text,
    served_at     double precision,
    actual        double precision,
    label_ts      double precision,
    label_seq     bigint,
    label_replica text
)""",
        "CREATE INDEX predictions_ts ON predictions (ts, seq)",
        "CREATE INDEX predictions_label_ts ON predictions (label_ts, label_seq) WHERE label_ts IS NOT NULL",
        "CREATE SEQUENCE label_order",
        """CREATE TABLE drift_reports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at    timestamptz NOT NULL,
    slot          bigint,
    checked_by    text NOT NULL,
    model_version text,
    report        jsonb NOT NULL
)""",
        "CREATE INDEX drift_reports_checked_at ON drift_reports (checked_at, id)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_INSERT = (f"INSERT INTO predictions (id, ts, {_FEATURES_SQL}, prediction, model_version, replica, served_at) "
           f"SELECT r.id, COALESCE(r.ts, {_EPOCH_NOW}), {', '.join('r.' + c for c in _COLS)}, r.prediction, "
           f"r.model_version, %s, r.served_at "
           f"FROM unnest(%s::text[], %s::float8[], {', '.join(f'%s::{t}[]' for t in _PG_TYPES)}, %s::float8[], "
           f"%s::text[], %s::float8[]) AS r(id, ts, {_FEATURES_SQL}, prediction, model_version, served_at) "
           f"ON CONFLICT (id) DO NOTHING")
# One statement joins a whole list of labels: lock the known rows in id order (two replicas joining
# overlapping lists cannot deadlock), note which had no label yet, update them, return them.
_JOIN_LABELS = (f"WITH l AS (SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS l(id, actual, ts)), "
                f"old AS (SELECT p.id, p.label_ts IS NULL AS first FROM predictions p JOIN l ON p.id = l.id "
                f"ORDER BY p.id FOR UPDATE OF p) "
                f"UPDATE predictions p SET actual = l.actual, label_ts = COALESCE(l.ts, {_EPOCH_NOW}), "
                f"label_seq = nextval('label_order'), label_replica = %s "
                f"FROM l JOIN old ON old.id = l.id WHERE p.id = l.id "
                f"RETURNING p.id, p.prediction, old.first, {', '.join('p.' + c for c in _COLS)}")


def is_postgres_url(location) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password (for logs, /healthz and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _features(values) -> tuple:
    return tuple(v if text else _num(v) for v, text in zip(values, _IS_TEXT))


class FleetReport(NamedTuple):
    """One stored fleet drift check."""
    id: int
    checked_at: float         # unix seconds, the database's clock
    checked_by: str
    model_version: str | None
    report: dict


class _Job:
    __slots__ = ("kind", "rows", "labels", "error", "result", "done")

    def __init__(self, kind: str = "write", rows=None, labels=None):
        self.kind, self.rows, self.labels = kind, rows, labels
        self.error: StoreError | None = StoreError("the commit did not complete")
        self.result = None
        self.done = threading.Lock()
        self.done.acquire()


class PgStore:
    """Predictions and labels in the PostgreSQL database at `url` (postgresql://user:pw@host/db; a
    password may also come from PGPASSWORD or ~/.pgpass, as libpq reads them).

    retention_seconds / max_rows: what `prune()` keeps. max_pending: failed prediction rows kept
    for the next commit. replica: this replica's name, recorded with what it writes (settable until
    the first write). timeout: seconds any statement may run, and a session may sit idle inside a
    transaction, before the server ends it; also how long a caller waits for its commit before it
    is told the database is not answering (predictions are then kept for retry).

    Raises StoreError if the database cannot be reached or holds a newer schema. Starts the writer
    thread; `close()` stops it.
    """

    shared = True   # several processes write it: the fleet's store

    def __init__(self, url: str, *, retention_seconds: float | None = 30 * 86400,
                 max_rows: int | None = 5_000_000, max_pending: int = 50_000, replica: str = "",
                 timeout: float = 5.0, connect_timeout: float = 3.0):
        if not is_postgres_url(url):
            raise ValueError("a PostgreSQL store needs a postgresql:// URL")
        self.url = url
        self.path = redact_url(url)   # where it stores, as /healthz shows it
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.max_pending = int(max_pending)
        self.replica = replica
        self.timeout = float(timeout)
        self.connect_timeout = max(2, int(math.ceil(connect_timeout)))   # libpq: whole seconds, >= 2

        self._mutex = threading.Lock()
        self._closed = False
        self._last_error: str | None = None
        self._stats = _new_stats()
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._busy_since: float | None = None   # when the writer's current commit started
        self._pending: deque[tuple] = deque()   # owned by the writer thread
        self._writer: psycopg.Connection | None = None
        self._checker: psycopg.Connection | None = None
        self._checker_lock = threading.Lock()
        self._watch: psycopg.Connection | None = None   # latest_report's
        self._watch_lock = threading.Lock()

        try:
            self._writer = self._connect("writer")
            self._migrate(self._writer)
            self._refresh_counts(self._writer)
        except (psycopg.Error, OSError) as exc:
            if self._writer is not None:
                self._writer.close()
            raise StoreError(f"cannot open the store {self.path}: {_describe(exc)}") from exc
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        return f"PostgreSQL database {self.path}"

    # ---------------------------------------------------------------- connections and schema

    def _connect(self, role: str) -> psycopg.Connection:
        """A connection in autocommit mode (transactions are explicit) whose server side ends it
        when a statement runs, or the session idles inside a transaction, longer than `timeout`,
        and notices a vanished client by TCP keepalives; the client side likewise gives up on a
        server that stopped answering."""
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=self.connect_timeout,
            application_name=f"monitor {self.replica or '?'} {role}"[:63],
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            tcp_user_timeout=int(1000 * max(self.timeout, 5.0)))
        try:
            ms = int(1000 * self.timeout)
            conn.execute(f"SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}; "
                         f"SET lock_timeout = {ms * 4 // 5}; SET tcp_keepalives_idle = 5; "
                         f"SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: psycopg.Connection) -> None:
        """Create or upgrade the schema (MIGRATIONS), one replica at a time."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            # Created only when missing: a role that may write the tables but not create any can
            # run on a database that an owner's first start set up.
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                             "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            current = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise psycopg.DataError(f"schema version {current}, this code knows up to {SCHEMA_VERSION}")
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                             (version, description))

    def _refresh_counts(self, conn: psycopg.Connection) -> None:
        with conn.transaction():   # counting millions of rows may take a while
            conn.execute("SET LOCAL statement_timeout = '10min'")
            n, labelled = conn.execute("SELECT count(*), count(label_ts) FROM predictions").fetchone()
        with self._mutex:
            self._n_predictions, self._n_labelled = n, labelled

    @contextlib.contextmanager
    def _reader(self, what: str = "read the store") -> Iterator[psycopg.Connection]:
        """A fresh connection for one read, never shared between threads."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = self._connect("reader")
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot {what}: {_describe(exc)}") from exc
        try:
            yield conn
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot {what}: {_describe(exc)}") from exc
        finally:
            conn.close()

    # ---------------------------------------------------------------- the writer thread

    def _submit(self, job: _Job):
        with self._mutex:
            if self._closed:
                raise StoreError("the store is closed")
            stuck = self._busy_since is not None and time.monotonic() - self._busy_since > self.timeout
            self._queue.put(job)
        if stuck and job.kind == "write" and job.labels is None:
            # The writer has been waiting on the database for longer than `timeout`: do not hold
            # the caller (the batcher, hence every prediction). The rows are queued all the same
            # and go into the next commit, or into the retry buffer if it fails.
            raise StoreError(self._last_error or f"the database has not answered for {self.timeout:g} s; "
                                                  "predictions kept for retry")
        if not job.done.acquire(timeout=self.timeout + self.connect_timeout + 1):
            message = f"the database did not answer within {self.timeout + self.connect_timeout + 1:g} s"
            with self._mutex:
                self._last_error = message
            # The job stays queued: its rows are written when the database answers (or buffered if
            # it fails); labels may be stored late too, so the sender resends them (harmless).
            raise StoreError(message + ("; predictions kept for retry" if job.rows else ""))
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            writes, other = ([job], None) if job.kind == "write" else ([], job)
            while other is None:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job.kind == "write":
                    writes.append(job)
                else:
                    other = job
            try:
                buffered = len(self._pending)
                with self._mutex:
                    self._busy_since = time.monotonic()
                self._commit_group(writes, ping=other is not None and other.kind == "flush")
                if other is not None:
                    self._do(other, buffered)
            except Exception as exc:   # a bug, not the database: the jobs keep their failure
                self._fail(exc, "the store's writer failed")
            finally:
                with self._mutex:
                    self._busy_since = None
                for job in writes:
                    job.done.release()
                if other is not None:
                    other.done.release()
            if other is not None and other.kind == "close":
                return

    def _do(self, job: _Job, buffered: int) -> None:
        if job.kind == "flush":
            if self._pending or self._last_error is not None:
                job.error = StoreError(self._last_error or "the retry buffer could not be written")
            else:
                job.error, job.result = None, buffered
        elif job.kind == "count":   # here, between commits, so that no write of ours is counted twice
            try:
                self._refresh_counts(self._writer_conn())
                job.error = None
            except Exception as exc:
                job.error = self._fail(exc, "cannot count the store's rows")
        elif job.kind == "close":
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
                self._writer = None
            job.error = None

    def _writer_conn(self) -> psycopg.Connection:
        if self._writer is None or self._writer.closed:
            conn = self._connect("writer")
            try:
                self._migrate(conn)   # a database recreated while we were away gets its tables back
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return self._writer

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        """Record a failure; drop the writer connection (the next write opens a new one)."""
        if self._writer is not None:
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

    def _commit_group(self, jobs: list[_Job], ping: bool = False) -> None:
        """The retry buffer and every queued job in one transaction, rows before labels. `ping`:
        touch the database even with nothing to write (a flush notices an outage and a recovery)."""
        rows = list(self._pending)
        for job in jobs:
            if job.rows:
                rows.extend(job.rows)
        label_jobs = [job for job in jobs if job.labels]
        if not rows and not label_jobs and not ping:
            for job in jobs:
                job.error = None
            return
        started = time.perf_counter()
        try:
            for attempt in (1, 2):
                reused = self._writer is not None and not self._writer.closed
                conn = self._writer_conn()
                try:
                    with conn.transaction():
                        inserted = self._insert(conn, rows) if rows else 0
                        new_labels = labels_written = 0
                        for job in label_jobs:
                            job.result, newly = self._join_labels(conn, job.labels)
                            new_labels += newly
                            labels_written += len(job.result[0])
                        if not rows and not label_jobs:
                            conn.execute("SELECT 1")
                    break
                except psycopg.OperationalError:
                    # A connection that served before and broke meanwhile (the server restarted, a
                    # proxy dropped it): try once more on a new one rather than fail this commit.
                    # Idempotent if the lost commit went through: ids are ignored when present,
                    # labels set to the same values.
                    if attempt == 2 or not reused or not conn.broken:
                        raise
                    with contextlib.suppress(Exception):
                        conn.close()
                    self._writer = None
        except Exception as exc:   # psycopg.Error, OSError, or anything unforeseen: never lose rows
            error = self._fail(exc, "cannot write to the store")
            for job in jobs:
                job.error, job.result = error, None
            self._keep_pending(rows)
            return
        elapsed = time.perf_counter() - started
        self._pending.clear()
        for job in jobs:
            job.error = None
        with self._mutex:
            self._last_error = None
            self._n_predictions += inserted
            self._n_labelled += new_labels
            s = self._stats
            if rows or label_jobs:
                s["commits"] += 1
            s["rows_written"] += inserted
            s["labels_written"] += labels_written
            s["commit_seconds_sum"] += elapsed
            s["commit_seconds_max"] = max(s["commit_seconds_max"], elapsed)

    def _keep_pending(self, rows: list[tuple]) -> None:
        dropped = max(0, len(rows) - self.max_pending)
        self._pending = deque(rows[dropped:])
        if dropped:
            with self._mutex:
                self._stats["dropped"] += dropped

    def _insert(self, conn: psycopg.Connection, rows: list[tuple]) -> int:
        columns = list(zip(*rows))   # id, ts, features..., prediction, model_version, served_at
        return conn.execute(_INSERT, (self.replica, *[list(c) for c in columns])).rowcount

    def _join_labels(self, conn: psycopg.Connection, labels: dict) -> tuple[tuple[list, list[str]], int]:
        ids = list(labels)
        actuals = [a for a, _ in labels.values()]
        times = [t for _, t in labels.values()]
        found = {row[0]: row for row in conn.execute(_JOIN_LABELS, (ids, actuals, times, self.replica))}
        known, unknown, newly = [], [], 0
        for id_, (actual, _) in labels.items():
            row = found.get(id_)
            if row is None:
                unknown.append(id_)
                continue
            first = bool(row[2])
            known.append((id_, actual, _num(row[1]), _features(row[3:]), first))
            newly += first
        return (known, unknown), newly

    # ---------------------------------------------------------------- writes

    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Record served predictions; committed when this returns (see Store.add_predictions). A
        record whose ts is None is stamped with the database's clock when stored."""
        rows = [_row(r) for r in records]
        if rows:
            self._submit(_Job(rows=rows))

    def add_labels(self, labels: Sequence[tuple[str, float, float | None]]) -> tuple[list, list[str]]:
        """Join ground truth to any replica's predictions (see Store.add_labels). received_ts None:
        the database's clock when stored."""
        joined = _labels_by_id_or_now(labels)
        if not joined:
            return [], []
        return self._submit(_Job(labels=joined))

    def flush(self) -> int:
        """Write the retry buffer now and check that the database answers; returns the rows written,
        raises StoreError if the database cannot be written."""
        return self._submit(_Job("flush"))

    def prune(self, now: float | None = None, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete rows older than retention_seconds (against `now`, by default the database's
        clock), then the oldest beyond max_rows, `chunk` rows per transaction. One replica of the
        fleet prunes at a time (an advisory lock; the others return 0). On its own connection:
        PostgreSQL lets it run beside the writer. Also refreshes counts() from the table."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        deleted = 0
        with self._reader("prune the store") as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK,)).fetchone()[0]:
                return 0
            try:
                if self.retention_seconds is not None:
                    if now is None:
                        now = conn.execute(f"SELECT {_EPOCH_NOW}").fetchone()[0]
                    cutoff = float(now) - self.retention_seconds
                    while True:
                        n = self._prune_chunk(conn, "WHERE ts < %s", (cutoff,), chunk)
                        deleted += n
                        if n < chunk:
                            break
                if self.max_rows is not None:
                    with conn.transaction():   # counting millions of rows may take a while
                        conn.execute("SET LOCAL statement_timeout = '10min'")
                        total = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
                    excess = total - self.max_rows
                    while excess > 0:
                        n = self._prune_chunk(conn, "", (), min(chunk, excess))
                        deleted += n
                        excess -= n
                        if n == 0:
                            break
                with conn.transaction():   # a report per check: keep a day's worth at 1-s checks
                    conn.execute("DELETE FROM drift_reports WHERE id < (SELECT max(id) - 100000 FROM drift_reports)")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
        self._submit(_Job("count"))   # other replicas' rows show in counts() from here on
        return deleted

    def _prune_chunk(self, conn: psycopg.Connection, where: str, args: tuple, limit: int) -> int:
        with conn.transaction():
            victims = conn.execute(
                f"WITH v AS (SELECT id FROM predictions {where} ORDER BY ts, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"DELETE FROM predictions p USING v WHERE p.id = v.id RETURNING p.label_ts IS NOT NULL",
                (*args, limit)).fetchall()
        with self._mutex:
            self._n_predictions -= len(victims)
            self._n_labelled -= sum(1 for v in victims if v[0])
            self._stats["prune_chunks"] += 1
            self._stats["pruned_rows"] += len(victims)
        return len(victims)

    # ---------------------------------------------------------------- reads

    def recent_inputs(self, n: int, *, until: float | None = None) -> list[tuple]:
        """Feature tuples of the fleet's newest n predictions (by the database's clock), oldest
        first; `until`: as of that time (unix seconds)."""
        if n <= 0:
            return []
        with self._reader() as conn:
            return _recent_inputs(conn, n, until)

    def recent_labelled(self, n: int, *, until: float | None = None) -> list[tuple[float, float]]:
        """(actual, prediction) of the fleet's newest n labelled predictions, oldest label first."""
        if n <= 0:
            return []
        with self._reader() as conn:
            return _recent_labelled(conn, n, until)

    def recent_input_rows(self, n: int) -> list[tuple[tuple, float, float]]:
        """(features, prediction, ts) of the fleet's newest n predictions, oldest first."""
        if n <= 0:
            return []
        with self._reader() as conn:
            columns = _window_columns(conn, n)
        features = list(zip(*(columns[name] for name in FEATURE_COLUMNS)))
        return [(_features(f), _num(p), float(t)) for f, p, t in zip(features, columns["prediction"], columns["ts"])]

    def recent_labelled_rows(self, n: int) -> list[tuple[float, float, float, tuple]]:
        """(actual, prediction, label_ts, features) of the fleet's newest n labelled predictions,
        oldest label first."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT actual, prediction, label_ts, {_FEATURES_SQL} FROM predictions "
                                f"WHERE label_ts IS NOT NULL ORDER BY label_ts DESC, label_seq DESC LIMIT %s",
                                (int(n),)).fetchall()
        return [(_num(r[0]), _num(r[1]), float(r[2]), _features(r[3:])) for r in reversed(rows)]

    # ---------------------------------------------------------------- fleet drift checks

    def fleet_check(self, score: Callable[[dict[str, list], dict[str, list], float], tuple[dict, str | None]],
                    *, window: int, label_window: int, interval: float, force: bool = False,
                    checked_by: str | None = None) -> FleetReport | None:
        """Run this interval's fleet drift check here, unless another replica is running one or has
        run it. In one transaction: take the check lock (`force`: wait for it, up to `timeout`;
        otherwise try once and return None if it is held), and unless forced, return None when the
        latest report already belongs to this interval (intervals are `interval`-second slots of
        the database's clock, so each slot gets one check whichever replica's timer fires first);
        read the fleet's newest `window` inputs and `label_window` labelled predictions; call
        `score(columns, labelled, checked_at)` -> (report dict, model_version): the two windows'
        columns, oldest first, as `windows()` gives them, checked_at the database's time of
        the check (unix seconds, the report's time); store the report. Returns the
        stored report. Raises StoreError if the database fails (nothing is stored then)."""
        with self._checker_lock:
            try:
                conn = self._checker_conn()
                with conn.transaction():
                    if force:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHECK_LOCK,))
                    elif not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (CHECK_LOCK,)).fetchone()[0]:
                        return None
                    now, slot, last_slot = conn.execute(
                        "SELECT extract(epoch FROM now()), floor(extract(epoch FROM now()) / %s)::bigint, "
                        "(SELECT slot FROM drift_reports ORDER BY checked_at DESC, id DESC LIMIT 1)",
                        (max(float(interval), 1e-3),)).fetchone()
                    if not force and last_slot is not None and last_slot >= slot:
                        return None
                    columns = _window_columns(conn, window)
                    labelled = _label_columns(conn, label_window)
                    report, model_version = score(columns, labelled, float(now))
                    by = checked_by or self.replica
                    stored = conn.execute(
                        "INSERT INTO drift_reports (checked_at, slot, checked_by, model_version, report) "
                        "SELECT now(), %s, %s, %s, %s::jsonb "
                        "WHERE NOT EXISTS (SELECT 1 FROM drift_reports WHERE checked_at > now()) "
                        "RETURNING id, extract(epoch FROM checked_at)",
                        (slot, by, model_version, json.dumps(report, allow_nan=False))).fetchone()
                    if stored is None:   # a newer report is there: ours is stale, drop it
                        return None
                    return FleetReport(stored[0], float(stored[1]), by, model_version, report)
            except (psycopg.Error, OSError) as exc:
                if self._checker is not None:
                    with contextlib.suppress(Exception):
                        self._checker.close()
                    self._checker = None
                raise StoreError(f"fleet drift check failed: {_describe(exc)}") from exc

    def _checker_conn(self) -> psycopg.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        if self._checker is None or self._checker.closed:
            self._checker = self._connect("checker")
        return self._checker

    def windows(self, window: int, label_window: int, until: float | None = None) -> tuple[dict, dict]:
        """The fleet's windows by columns, oldest first: ({feature: values, "prediction", "ts"} of the
        newest `window` predictions, {"actual", "prediction", "label_ts", grade: values} of the newest
        `label_window` labelled ones), as of
        `until` (unix seconds, the database's clock) if given. Read column-wise, in binary: at
        10,000 rows, building a tuple per row cost more than the query."""
        with self._reader("read the fleet's windows") as conn:
            return _window_columns(conn, window, until), _label_columns(conn, label_window, until)

    def latest_report(self, newer_than: int = 0) -> FleetReport | None:
        """The fleet's latest stored drift report, if its id is above `newer_than` (only then is
        the report itself sent). On a connection kept for it: every replica asks after every check."""
        with self._watch_lock:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                if self._watch is None or self._watch.closed:
                    self._watch = self._connect("watch")
                row = self._watch.execute(
                    "SELECT id, extract(epoch FROM checked_at), checked_by, model_version, "
                    "CASE WHEN id > %s THEN report END FROM drift_reports "
                    "ORDER BY checked_at DESC, id DESC LIMIT 1", (newer_than,)).fetchone()
            except (psycopg.Error, OSError) as exc:
                if self._watch is not None:
                    with contextlib.suppress(Exception):
                        self._watch.close()
                    self._watch = None
                raise StoreError(f"cannot read the latest drift report: {_describe(exc)}") from exc
        if row is None or row[0] <= newer_than:
            return None
        return FleetReport(row[0], float(row[1]), row[2], row[3], row[4])

    # ---------------------------------------------------------------- state

    def counts(self) -> dict:
        """{"predictions", "labelled"}: rows in the table as of the last refresh (open, prune) plus
        those this replica wrote or labelled since."""
        with self._mutex:
            return {"predictions": self._n_predictions, "labelled": self._n_labelled}

    def stats(self) -> dict:
        with self._mutex:
            stats = dict(self._stats)
            stats["pending"] = len(self._pending)
            return stats

    @property
    def healthy(self) -> bool:
        with self._mutex:
            return self._last_error is None and not self._closed

    @property
    def last_error(self) -> str | None:
        with self._mutex:
            return self._last_error

    def close(self) -> None:
        """Write what is queued and buffered (one try), then close the connections and stop the
        writer thread. Idempotent; any later call raises StoreError."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            job = _Job("close")
            self._queue.put(job)
        job.done.acquire()
        self._thread.join()
        for lock, name in ((self._checker_lock, "_checker"), (self._watch_lock, "_watch")):
            with lock:
                conn = getattr(self, name)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    setattr(self, name, None)

    def __enter__(self) -> "PgStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _row(record) -> tuple:
    """A record as the columns bound to _INSERT (id, ts, features, prediction, model_version,
    served_at), converted before it is queued so that a malformed record fails its own caller."""
    features = record.features
    _check_features(features)
    ts = None if record.ts is None else float(record.ts)
    return (str(record.id), ts, *[str(v) if text else float(v) for v, text in zip(features, _IS_TEXT)],
            float(record.prediction), str(record.model_version), time.time())


def _labels_by_id_or_now(labels) -> dict[str, tuple[float, float | None]]:
    joined: dict[str, tuple[float, float | None]] = {}
    for id_, actual, received_ts in labels:
        joined[str(id_)] = (float(actual), None if received_ts is None else float(received_ts))
    return joined


def _recent_inputs(conn: psycopg.Connection, n: int, until: float | None = None) -> list[tuple]:
    where, args = ("WHERE ts <= %s", (until,)) if until is not None else ("", ())
    rows = conn.execute(f"SELECT {_FEATURES_SQL} FROM predictions {where} ORDER BY ts DESC, seq DESC LIMIT %s",
                        (*args, int(n))).fetchall()
    return [_features(r) for r in reversed(rows)]


def _recent_labelled(conn: psycopg.Connection, n: int, until: float | None = None) -> list[tuple[float, float]]:
    where = "AND label_ts <= %s" if until is not None else ""
    args = (until,) if until is not None else ()
    rows = conn.execute(f"SELECT actual, prediction FROM predictions WHERE label_ts IS NOT NULL {where} "
                        f"ORDER BY label_ts DESC, label_seq DESC LIMIT %s", (*args, int(n))).fetchall()
    return [(_num(a), _num(p)) for a, p in reversed(rows)]


def labelled_rows(url: str, chunk: int = 100_000) -> Iterator[list[tuple]]:
    """Every labelled prediction in the database at `url`, oldest served first, in lists of `chunk`
    rows (id, ts, features, prediction, actual, label_ts, model_version), all from one snapshot (a
    read-only, repeatable-read transaction; the writers go on). Creates nothing: raises StoreError
    when the database cannot be read or holds no prediction store. monitoring/export.py writes them."""
    where = redact_url(url)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5, application_name="monitor export")
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the store {where}: {_describe(exc)}") from exc
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                raise StoreError(f"{where} holds no prediction store (no schema_version table)")
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version is None or version > SCHEMA_VERSION:
                raise StoreError(f"{where} is not a prediction store this code reads (schema version {version}, "
                                 f"this code knows up to {SCHEMA_VERSION})")
            with conn.cursor(name="export") as cursor:
                cursor.execute(f"SELECT id, ts, {_FEATURES_SQL}, prediction, actual, label_ts, model_version "
                               f"FROM predictions WHERE label_ts IS NOT NULL ORDER BY ts, seq")
                while True:
                    rows = cursor.fetchmany(chunk)
                    if not rows:
                        break
                    yield rows
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the store {where}: {_describe(exc)}") from exc
    finally:
        conn.close()


_WINDOW_NAMES = (*FEATURE_COLUMNS, "prediction", "ts")
_GRADES = [name for name, text in zip(FEATURE_COLUMNS, _IS_TEXT) if text]
_LABEL_NAMES = ("actual", "prediction", "label_ts", *_GRADES)


def _columns(rows: list[tuple], names: Sequence[str]) -> dict[str, list]:
    rows.reverse()   # read newest first (LIMIT), given oldest first
    columns = list(zip(*rows)) if rows else [()] * len(names)
    return {name: list(values) for name, values in zip(names, columns)}


def _window_columns(conn: psycopg.Connection, n: int, until: float | None = None) -> dict[str, list]:
    """{feature: values, "prediction": ..., "ts": ...} of the newest n predictions: what a replica's
    InputWindow holds (the prediction for the performance estimate, the arrival time for when a
    change began)."""
    where, args = ("WHERE ts <= %s", (until,)) if until is not None else ("", ())
    rows = conn.cursor(binary=True).execute(
        f"SELECT {_FEATURES_SQL}, prediction, ts FROM predictions {where} ORDER BY ts DESC, seq DESC LIMIT %s",
        (*args, max(0, int(n)))).fetchall()
    return _columns(rows, _WINDOW_NAMES)


def _label_columns(conn: psycopg.Connection, n: int, until: float | None = None) -> dict[str, list]:
    """{"actual", "prediction", "label_ts", grade: values} of the newest n labelled predictions: what
    a replica's LabelledWindow holds (the grades for the concept segments)."""
    where = "AND label_ts <= %s" if until is not None else ""
    args = (until,) if until is not None else ()
    grades = "".join(f", {_SQL_NAMES.get(name, name)}" for name in _GRADES)
    rows = conn.cursor(binary=True).execute(
        f"SELECT actual, prediction, label_ts{grades} FROM predictions WHERE label_ts IS NOT NULL {where} "
        f"ORDER BY label_ts DESC, label_seq DESC LIMIT %s", (*args, max(0, int(n)))).fetchall()
    columns = _columns(rows, _LABEL_NAMES)
    for name in ("actual", "prediction"):
        columns[name] = [_num(v) for v in columns[name]]
    return columns
