"""The prediction store on PostgreSQL, shared by a fleet of monitor replicas: `PgStore` has the
interface of store.Store (SQLite), and `open_store` picks it for a `postgresql://` URL.

What holds as for SQLite: the same writer machinery, monitoring/writer.py's QueuedWriter (group
commit on one writer thread, a refused record failing only its own caller, the bounded retry
buffer caught up by `flush()` in chunks, "send again" for a label whose prediction is still
buffered); this module gives it PostgreSQL's connection and SQL. `add_predictions` returns once its
rows are committed (with synchronous_commit on, PostgreSQL's default, flushed to its WAL): durable
before the response. Retention in short chunks, oldest first; `recent_inputs` / `recent_labelled`
refill the windows.

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
  inputs and labels (only what changed since this replica's last read: pg_windows.py, exact),
  lets the caller score them, and stores the report, so each scheduled check
  runs once in the fleet whichever replica's timer fires first. Every session sets
  statement_timeout and idle_in_transaction_session_timeout (`timeout`) and TCP keepalives, so a
  replica that hangs or is stopped mid-check loses its session, its lock and its unwritten report
  within about twice `timeout` (the server ends the session; its transaction, report included, is
  rolled back), and a report is only ever inserted while holding the lock, never over a newer one.
* The schema is versioned: table `schema_version`, and MIGRATIONS, a list applied in order under an
  advisory lock by whichever replica starts first. A database whose version is newer than this code
  is refused.
* Any model: the table's feature columns are the served model's (store.StoreLayout, as in an SQLite
  file: text for categories, double precision for numbers, quoted names), taken from the replica
  that creates the table; a replica of another model is refused at start, naming both feature
  lists. A classifier's prediction and label are class indices (double precision), as in SQLite;
  its fleet check reads every feature of each labelled row, to predict its probabilities again.
* A server that stops answering without going away (SIGSTOP, a paused VM) is bounded on this side
  too: its kernel still acknowledges every packet, so neither the server's timeouts nor TCP
  keepalives end a call; a watchdog thread cuts the socket of any call that waited past its bound
  (`timeout` + 2 s for one statement, twice `timeout` + 2 s for a transaction of several).
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
import os
import socket
import threading
import time
import weakref
from typing import Callable, Iterator, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg.adapt import Loader

from monitoring.pg_windows import GONE_RETENTION, Feature, WindowCache
from monitoring.store import DIAMONDS, PRUNE_CHUNK, StoreLayout, _num, _quoted
from monitoring.writer import Job, QueuedWriter, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "FleetReport", "PgStore", "is_postgres_url", "redact_url"]

# Advisory lock keys (one 64-bit namespace per database): arbitrary constants, named here only.
CHECK_LOCK = 0x6D6F6E5F636865   # one fleet drift check at a time
PRUNE_LOCK = 0x6D6F6E5F707275   # one replica prunes at a time
MIGRATE_LOCK = 0x6D6F6E5F6D6967  # one replica migrates the schema

_EPOCH_NOW = "extract(epoch FROM clock_timestamp())"
_COUNT = "count"      # a job of PostgreSQL's own: refresh counts() from the table
_COUNT_SECONDS = 600  # a COUNT(*) over millions of rows may take minutes
_MAX_IDENTIFIER = 63  # bytes of a name PostgreSQL keeps (NAMEDATALEN - 1); it cuts longer ones

# Each migration: (version, what it does, statements). Applied in order, in one transaction each,
# and recorded in schema_version. A statement may be a function of the served model's StoreLayout
# (the feature columns of `predictions`: each model's database has its own), called when applied.
# The next schema change appends an entry here; never edit one that has shipped.
MIGRATIONS: list[tuple[int, str, list]] = [
    (1, "predictions with their labels; fleet drift reports", [
        lambda layout: f"""CREATE TABLE predictions (
    id            text PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    ts            double precision NOT NULL,
{layout.pg_ddl}    prediction    double precision,
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
    # monitoring/pg_windows.py: which rows each transaction changed or deleted, so that a fleet
    # check reads only those. Rows stored before this migration have no `changed` (NULL, outside
    # the partial index): a replica's first check reads them in full, and a label sets it.
    (2, "change tracking for fleet checks that read only what changed", [
        "ALTER TABLE predictions ADD COLUMN changed xid8",
        "ALTER TABLE predictions ALTER COLUMN changed SET DEFAULT pg_current_xact_id()",
        "CREATE INDEX predictions_changed ON predictions (changed) WHERE changed IS NOT NULL",
        # any UPDATE (a label, a relabel) marks the row, whoever's SQL runs it
        "CREATE FUNCTION predictions_mark_changed() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.changed := pg_current_xact_id(); RETURN NEW; END$$",
        "CREATE TRIGGER predictions_mark_changed BEFORE UPDATE ON predictions "
        "FOR EACH ROW EXECUTE FUNCTION predictions_mark_changed()",
        """CREATE TABLE predictions_gone (
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at        double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
    seq       bigint NOT NULL,
    ts        double precision,
    label_ts  double precision,
    label_seq bigint
)""",
        "CREATE INDEX predictions_gone_xid ON predictions_gone (xid)",
        "CREATE FUNCTION predictions_log_gone() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO predictions_gone (seq, ts, label_ts, label_seq) "
        "SELECT seq, ts, label_ts, label_seq FROM gone; RETURN NULL; END$$",
        "CREATE TRIGGER predictions_log_gone AFTER DELETE ON predictions REFERENCING OLD TABLE AS gone "
        "FOR EACH STATEMENT EXECUTE FUNCTION predictions_log_gone()",
        # the newest transaction whose log entries were trimmed: a cache read before it is stale
        "CREATE TABLE predictions_gone_horizon (xid xid8)",
        "INSERT INTO predictions_gone_horizon VALUES (NULL)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
# A model's columns as the database holds them: those of `predictions` between ts and prediction
# (every migration so far adds columns after them), with whether each is text.
_STORED_FEATURES = ("SELECT column_name, data_type = 'text' FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'predictions' ORDER BY ordinal_position")


def _insert_sql(layout: StoreLayout) -> str:
    """A group commit's rows, one array per column, in one statement."""
    features = ", ".join(layout.quoted)
    return (f"INSERT INTO predictions (id, ts, {features}, prediction, model_version, replica, served_at) "
            f"SELECT r.id, COALESCE(r.ts, {_EPOCH_NOW}), {', '.join('r.' + c for c in layout.quoted)}, "
            f"r.prediction, r.model_version, %s, r.served_at "
            f"FROM unnest(%b::text[], %b::float8[], {', '.join(f'%b::{t}[]' for t in layout.pg_types)}, "
            f"%b::float8[], %b::text[], %b::float8[]) AS r(id, ts, {features}, prediction, model_version, served_at) "
            f"ON CONFLICT (id) DO NOTHING")


def _join_labels_sql(layout: StoreLayout) -> str:
    """One statement joins a whole list of labels: lock the known rows in id order (two replicas
    joining overlapping lists cannot deadlock), note which had no label yet, update them, return
    them with their features (a classifier's monitor needs them all)."""
    return (f"WITH l AS (SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS l(id, actual, ts)), "
            f"old AS (SELECT p.id, p.label_ts IS NULL AS first FROM predictions p JOIN l ON p.id = l.id "
            f"ORDER BY p.id FOR UPDATE OF p) "
            f"UPDATE predictions p SET actual = l.actual, label_ts = COALESCE(l.ts, {_EPOCH_NOW}), "
            f"label_seq = nextval('label_order'), label_replica = %s "
            f"FROM l JOIN old ON old.id = l.id WHERE p.id = l.id "
            f"RETURNING p.id, p.prediction, old.first, {', '.join('p.' + c for c in layout.quoted)}")


def _stored_features(conn: psycopg.Connection) -> list[tuple[str, bool]] | None:
    """(column, is text) of the feature columns of the database's predictions table; None if it has none."""
    table = [(name, bool(text)) for name, text in conn.execute(_STORED_FEATURES).fetchall()]
    names = [name for name, _ in table]
    if "ts" not in names or "prediction" not in names:
        return None
    return table[names.index("ts") + 1:names.index("prediction")]


def _as_stored(column: str) -> str:
    """A column name as PostgreSQL keeps it: cut to 63 bytes (a CSV header may be longer)."""
    return column.encode()[:_MAX_IDENTIFIER].decode(errors="ignore")


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


class _AnotherModel(psycopg.NotSupportedError):
    """The database records another model's features (a psycopg error: on a reconnect, the writer
    treats it as the database failing, not as a refused record)."""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, _AnotherModel) else f"{type(exc).__name__}: {text}"


class FleetReport(NamedTuple):
    """One stored fleet drift check."""
    id: int
    checked_at: float         # unix seconds, the database's clock
    checked_by: str
    model_version: str | None
    report: dict


class _Watchdog:
    """Cuts the socket of a connection whose call has waited on the server longer than its bound.

    The server's own timeouts (statement_timeout and the rest) end what the server runs, and TCP
    keepalives a peer whose kernel is gone; neither helps when the server's processes are stopped
    (SIGSTOP, a VM paused, a frozen disk): its kernel still acknowledges every packet and nobody
    answers, so a call would wait for ever. libpq has no per-call timeout, and a cancel request
    goes to the postmaster, which is stopped too. So one thread per store watches the calls in
    flight and, past its bound, shuts the connection's socket down: the call fails at once with an
    OperationalError (connection lost), and the connection is replaced. Registering a call is a
    dict insert under a lock: cheap enough for every commit."""

    _TICK = 0.1   # seconds between looks: the cut comes at most this late

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[object, tuple[float, psycopg.Connection]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cut: weakref.WeakSet = weakref.WeakSet()   # connections cut: not worth a retry

    @contextlib.contextmanager
    def bound(self, conn: psycopg.Connection, seconds: float) -> Iterator[psycopg.Connection]:
        token = object()
        with self._lock:
            self._calls[token] = (time.monotonic() + seconds, conn)
            if self._thread is None:   # started on first use: a store that never waits needs none
                self._thread = threading.Thread(target=self._run, name="store-watchdog", daemon=True)
                self._thread.start()
        try:
            yield conn
        finally:
            with self._lock:
                self._calls.pop(token, None)

    def _run(self) -> None:
        while not self._stop.wait(self._TICK):
            now = time.monotonic()
            with self._lock:   # held while cutting: a call still registered has not returned
                for token, (deadline, conn) in list(self._calls.items()):
                    if now >= deadline:
                        del self._calls[token]
                        self._cut.add(conn)
                        _cut(conn)

    def was_cut(self, conn: psycopg.Connection) -> bool:
        with self._lock:
            return conn in self._cut

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


def _cut(conn: psycopg.Connection) -> None:
    """Shut the connection's socket down (both ways) under libpq: its pending read returns at once."""
    with contextlib.suppress(Exception):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class PgStore(QueuedWriter):
    """Predictions and labels in the PostgreSQL database at `url` (postgresql://user:pw@host/db; a
    password may also come from PGPASSWORD or ~/.pgpass, as libpq reads them).

    retention_seconds / max_rows: what `prune()` keeps. max_pending: failed prediction rows kept
    for the next flush. replica: this replica's name, recorded with what it writes (settable until
    the first write). timeout: seconds any statement may run, and a session may sit idle inside a
    transaction, before the server ends it; the client cuts a call that waited `timeout` + 2 s on a
    server that does not answer at all (twice `timeout` + 2 s for a transaction of several
    statements: a group commit, a fleet check); a caller waits for its commit at most `timeout` +
    connect_timeout + 1 s before it is told the database is not answering (predictions are then
    kept for retry).

    layout: the served model's feature columns (store.StoreLayout, as for SQLite; default: the
    diamond model's). The first replica to start creates the table with them; a database created
    for other features is refused. keep_features: a fleet check reads every feature of each
    labelled prediction, not only its categories (a classifier's monitor predicts their
    probabilities again, as it does for the labels it takes).

    Raises StoreError if the database cannot be reached, holds a newer schema or another model's
    features. Starts the writer thread (monitoring/writer.py, shared with SQLite); `close()` stops it.
    """

    shared = True   # several processes write it: the fleet's store
    ping_on_flush = True   # the maintenance loop's flush shows an outage even without traffic
    reconnect_backoff = 5.0   # a stopped server costs connect_timeout per connect: not every write's

    def __init__(self, url: str, *, retention_seconds: float | None = 30 * 86400,
                 max_rows: int | None = 5_000_000, max_pending: int = 50_000, replica: str = "",
                 timeout: float = 5.0, connect_timeout: float = 3.0, layout: StoreLayout | None = None,
                 keep_features: bool = False):
        if not is_postgres_url(url):
            raise ValueError("a PostgreSQL store needs a postgresql:// URL")
        self.url = url
        self.layout = layout or DIAMONDS
        # the features a fleet check reads with each label: the grades (concept segments), or all
        self.label_features = self.layout.names if keep_features else self.layout.categorical
        self._insert_sql = _insert_sql(self.layout)
        self._join_labels_sql = _join_labels_sql(self.layout)
        self.path = redact_url(url)   # where it stores, as /healthz shows it
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.replica = replica
        self.timeout = float(timeout)
        self.connect_timeout = max(2, int(math.ceil(connect_timeout)))   # libpq: whole seconds, >= 2
        self.answer_within = self.timeout + self.connect_timeout + 1
        self._call_bound = self.timeout + 2            # one statement, cut client-side past this
        self._block_bound = 2 * self.timeout + 2       # a transaction of several statements
        self._watchdog = _Watchdog()
        self._init_writer(max_pending)
        self._checker: psycopg.Connection | None = None
        self._checker_lock = threading.Lock()
        # the windows of this replica's last fleet check, used under _checker_lock
        self._window_cache = WindowCache(
            [Feature(q, name, text) for q, name, text in zip(self.layout.quoted, self.layout.names, self.layout.is_text)],
            _columns_cursor, self.label_features)
        self._watch: psycopg.Connection | None = None   # latest_report's
        self._watch_lock = threading.Lock()
        self._connect_failed: dict[str, tuple[float, Exception]] = {}   # role: (when, error)

        try:
            self._writer = self._connect_writer()
            self._refresh_counts(self._writer)
        except (psycopg.Error, OSError) as exc:
            if self._writer is not None:
                self._writer.close()
            self._watchdog.stop()
            raise StoreError(f"cannot open the store {self.path}: {_describe(exc)}") from exc
        self._start_writer()

    def describe(self) -> str:
        return f"PostgreSQL database {self.path}"

    # ---------------------------------------------------------------- connections and schema

    def _connect(self, role: str) -> psycopg.Connection:
        """A connection in autocommit mode (transactions are explicit) whose server side ends it
        when a statement runs, or the session idles inside a transaction, longer than `timeout`,
        and notices a vanished client by TCP keepalives; the client side likewise gives up on a
        server that stopped answering (connect_timeout, keepalives, tcp_user_timeout, and the
        watchdog for a server that is stopped rather than gone)."""
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=self.connect_timeout,
            application_name=f"monitor {self.replica or '?'} {role}"[:63],
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            tcp_user_timeout=int(1000 * max(self.timeout, 5.0)))
        try:
            ms = int(1000 * self.timeout)
            with self._watchdog.bound(conn, self._call_bound):
                conn.execute(f"SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}; "
                             f"SET lock_timeout = {ms * 4 // 5}; SET tcp_keepalives_idle = 5; "
                             f"SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Create or upgrade the schema (MIGRATIONS), one replica at a time, then check that the
        table records this model's features (the first replica to start created it with its own)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            # Created only when missing: a role that may write the tables but not create any can
            # run on a database that an owner's first start set up.
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                             "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            current = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                # not DataError: that would read as a refused record, not as a database to refuse
                raise psycopg.NotSupportedError(f"schema version {current}, this code knows up to {SCHEMA_VERSION}")
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement(self.layout) if callable(statement) else statement)
                conn.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                             (version, description))
            refusal = self.layout.refusal(_stored_features(conn) or [], as_stored=_as_stored)
            if refusal is not None:
                raise _AnotherModel(f"the predictions table: {refusal}")

    def _refresh_counts(self, conn: psycopg.Connection) -> None:
        # counting millions of rows may take a while: the server's and the client's bound say so
        with self._watchdog.bound(conn, _COUNT_SECONDS + self._call_bound), conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{_COUNT_SECONDS}s'")
            n, labelled = conn.execute("SELECT count(*), count(label_ts) FROM predictions").fetchone()
        with self._mutex:
            self._n_predictions, self._n_labelled = n, labelled

    @contextlib.contextmanager
    def _reader(self, what: str = "read the store", bound: float | None = None) -> Iterator[psycopg.Connection]:
        """A fresh connection for one read, never shared between threads; cut after `bound`
        seconds (by default a block's) if the server stops answering."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = self._connect("reader")
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot {what}: {_describe(exc)}") from exc
        bound = self._block_bound if bound is None else bound
        try:
            with contextlib.nullcontext() if math.isinf(bound) else self._watchdog.bound(conn, bound):
                yield conn
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot {what}: {_describe(exc)}") from exc
        finally:
            conn.close()

    # ---------------------------------------------------------------- the writer's PostgreSQL part

    def _connect_writer(self) -> psycopg.Connection:
        conn = self._connect("writer")
        try:
            with self._watchdog.bound(conn, self._block_bound):
                self._migrate(conn)   # a database recreated while we were away gets its tables back
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_transaction(self, work, single_statement: bool = False):
        for attempt in (1, 2):
            reused = self._writer is not None and not self._writer.closed
            conn = self._writer_conn()
            try:
                if single_statement:
                    # One statement in autocommit is its own transaction, as atomic and durable
                    # (synchronous_commit) as with BEGIN and COMMIT around it, in one round trip
                    # instead of three: most group commits hold predictions only.
                    with self._watchdog.bound(conn, self._call_bound):
                        return work(conn)
                with self._watchdog.bound(conn, self._block_bound), conn.transaction():
                    return work(conn)
            except psycopg.OperationalError:
                # A connection that served before and broke meanwhile (the server restarted, a
                # proxy dropped it): try once more on a new one rather than fail this commit.
                # Idempotent if the lost commit went through: ids are ignored when present,
                # labels set to the same values. Not after a cut by the watchdog: the server did
                # not answer for the whole bound, and the caller waits already.
                if attempt == 2 or not reused or not conn.broken or self._cut_by_watchdog(conn):
                    raise
                self._drop_writer()
        raise AssertionError("unreachable")

    @staticmethod
    def _touch(conn: psycopg.Connection) -> None:
        conn.execute("SELECT 1")

    def _cut_by_watchdog(self, conn: psycopg.Connection) -> bool:
        return self._watchdog.was_cut(conn)

    def _refused_record(self, exc: BaseException) -> bool:
        """A value PostgreSQL cannot store (a NUL in a text, text that is not valid UTF-8), not the
        database failing: the same rows would fail again, and other callers' rows are not to blame."""
        return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, UnicodeError, ValueError,
                                TypeError, OverflowError))

    _describe = staticmethod(_describe)

    def _row(self, record) -> tuple:
        """A record as the columns bound to the insert (id, ts, features, prediction, model_version,
        served_at), converted before it is queued so that a malformed record fails its own caller."""
        ts = None if record.ts is None else float(record.ts)
        return (str(record.id), ts, *self.layout.values(record.features), float(record.prediction),
                str(record.model_version), time.time())

    def _label_entries(self, labels) -> dict:
        return _labels_by_id_or_now(labels)

    def _insert(self, conn: psycopg.Connection, rows: list[tuple]) -> int:
        columns = list(zip(*rows))   # id, ts, features..., prediction, model_version, served_at
        return conn.execute(self._insert_sql, (self.replica, *[list(c) for c in columns])).rowcount

    def _join_labels(self, conn: psycopg.Connection, labels: dict) -> tuple[tuple[list, list[str]], int]:
        ids = list(labels)
        actuals = [a for a, _ in labels.values()]
        times = [t for _, t in labels.values()]
        found = {row[0]: row for row in conn.execute(self._join_labels_sql, (ids, actuals, times, self.replica))}
        known, unknown, newly = [], [], 0
        for id_, (actual, _) in labels.items():
            row = found.get(id_)
            if row is None:
                unknown.append(id_)
                continue
            first = bool(row[2])
            known.append((id_, actual, _num(row[1]), self.layout.features(row[3:]), first))
            newly += first
        return (known, unknown), newly

    def _do_other(self, job: Job) -> None:
        """Recount the table, here between commits, so that no write of ours is counted twice."""
        assert job.kind == _COUNT, job.kind
        try:
            self._refresh_counts(self._writer_conn())
            job.error = None
        except Exception as exc:
            job.error = self._fail(exc, "cannot count the store's rows")

    # ---------------------------------------------------------------- retention

    def prune(self, now: float | None = None, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete rows older than retention_seconds (against `now`, by default the database's
        clock), then the oldest beyond max_rows, `chunk` rows per transaction. One replica of the
        fleet prunes at a time (an advisory lock; the others return 0). On its own connection:
        PostgreSQL lets it run beside the writer. Also refreshes counts() from the table."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        deleted = 0
        bound = self._watchdog.bound
        # A prune may run for long (many chunks): each statement is bounded, not the whole.
        with self._reader("prune the store", bound=math.inf) as conn:
            with bound(conn, self._call_bound):
                if not conn.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK,)).fetchone()[0]:
                    return 0
            try:
                if self.retention_seconds is not None:
                    if now is None:
                        with bound(conn, self._call_bound):
                            now = conn.execute(f"SELECT {_EPOCH_NOW}").fetchone()[0]
                    cutoff = float(now) - self.retention_seconds
                    while True:
                        n = self._prune_chunk(conn, "WHERE ts < %s", (cutoff,), chunk)
                        deleted += n
                        if n < chunk:
                            break
                if self.max_rows is not None:
                    # counting millions of rows may take a while
                    with bound(conn, _COUNT_SECONDS + self._call_bound), conn.transaction():
                        conn.execute(f"SET LOCAL statement_timeout = '{_COUNT_SECONDS}s'")
                        total = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
                    excess = total - self.max_rows
                    while excess > 0:
                        n = self._prune_chunk(conn, "", (), min(chunk, excess))
                        deleted += n
                        excess -= n
                        if n == 0:
                            break
                # a report per check: keep a day's worth at 1-s checks
                with bound(conn, self._call_bound), conn.transaction():
                    conn.execute("DELETE FROM drift_reports WHERE id < (SELECT max(id) - 100000 FROM drift_reports)")
                    # The deletion log serves fleet checks' caches (pg_windows.py): an hour of it is
                    # plenty at any check interval under an hour; a cache read before the newest
                    # transaction trimmed is read in full (the horizon says which).
                    conn.execute(f"WITH d AS (DELETE FROM predictions_gone WHERE at < {_EPOCH_NOW} - %s "
                                 f"RETURNING xid) UPDATE predictions_gone_horizon "
                                 f"SET xid = greatest(xid, (SELECT max(xid) FROM d)) WHERE EXISTS (SELECT FROM d)",
                                 (GONE_RETENTION,))
            finally:
                with bound(conn, self._call_bound):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
        self._submit(Job(_COUNT))   # other replicas' rows show in counts() from here on
        return deleted

    def _prune_chunk(self, conn: psycopg.Connection, where: str, args: tuple, limit: int) -> int:
        with self._watchdog.bound(conn, self._call_bound), conn.transaction():
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
            return _recent_inputs(conn, self.layout, n, until)

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
            rows = conn.execute(f"SELECT {', '.join(self.layout.quoted)}, prediction, ts FROM predictions "
                                f"ORDER BY ts DESC, seq DESC LIMIT %s", (int(n),)).fetchall()
        return [(self.layout.features(r[:-2]), _num(r[-2]), float(r[-1])) for r in reversed(rows)]

    def recent_labelled_rows(self, n: int) -> list[tuple[float, float, float, tuple]]:
        """(actual, prediction, label_ts, features) of the fleet's newest n labelled predictions,
        oldest label first."""
        if n <= 0:
            return []
        with self._reader() as conn:
            rows = conn.execute(f"SELECT actual, prediction, label_ts, {', '.join(self.layout.quoted)} FROM predictions "
                                f"WHERE label_ts IS NOT NULL ORDER BY label_ts DESC, label_seq DESC LIMIT %s",
                                (int(n),)).fetchall()
        return [(_num(r[0]), _num(r[1]), float(r[2]), self.layout.features(r[3:])) for r in reversed(rows)]

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
        columns, oldest first, as `windows()` gives them (grades as pg_windows.TextColumn
        sequences; read only what changed since this replica's last check, see pg_windows.py),
        checked_at the database's time of the check (unix seconds, the report's time); store the
        report. Returns the stored report. Raises StoreError if the database fails (nothing is stored then)."""
        with self._held(self._checker_lock, "another fleet check on this replica"):
            try:
                conn = self._checker_conn()
                with self._watchdog.bound(conn, self._block_bound), conn.transaction():
                    # A report can be computed again: its commit need not wait for a WAL flush
                    # (a crash may lose the latest report, never a prediction or a label).
                    # (in the lock's statement: each round trip waits for the server's turn on
                    # a busy machine; the slot is read after it, in a snapshot taken once locked)
                    take = "pg_advisory_xact_lock" if force else "pg_try_advisory_xact_lock"
                    _, locked = conn.execute(f"SELECT set_config('synchronous_commit', 'off', true), {take}(%s)",
                                             (CHECK_LOCK,)).fetchone()
                    if not force and not locked:
                        return None
                    now, slot, last_slot = conn.execute(
                        "SELECT extract(epoch FROM now()), floor(extract(epoch FROM now()) / %s)::bigint, "
                        "(SELECT slot FROM drift_reports ORDER BY checked_at DESC, id DESC LIMIT 1)",
                        (max(float(interval), 1e-3),)).fetchone()
                    if not force and last_slot is not None and last_slot >= slot:
                        return None
                    columns, labelled = self._window_cache.read(conn, window, label_window)
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

    @contextlib.contextmanager
    def _held(self, lock: threading.Lock, holder: str) -> Iterator[None]:
        """`lock`, waited for no longer than a call on the database may last: its holder may be
        stuck on a server that does not answer, and this caller is then told so in time."""
        if not lock.acquire(timeout=self._block_bound):
            raise StoreError(f"the database did not answer within {self._block_bound:g} s ({holder} waits on it)")
        try:
            yield
        finally:
            lock.release()

    def _checker_conn(self) -> psycopg.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        if self._checker is None or self._checker.closed:
            self._checker = self._connect_again("checker")
        return self._checker

    def _connect_again(self, role: str) -> psycopg.Connection:
        """A connection for a read that keeps one (checks, the latest report); within
        reconnect_backoff of this role's last failed connect, and while the writer has not seen
        the database back (not healthy), fails at once as that one did: a server that hangs would
        cost every scheduled check and GET /drift a connect timeout."""
        failed = self._connect_failed.get(role)
        if failed is not None and time.monotonic() - failed[0] < self.reconnect_backoff and not self.healthy:
            raise failed[1]
        try:
            conn = self._connect(role)
        except (psycopg.Error, OSError) as exc:
            self._connect_failed[role] = (time.monotonic(), exc)
            raise
        self._connect_failed.pop(role, None)
        return conn

    @property
    def window_reads(self) -> dict:
        """How this replica's fleet checks read their windows: {"full": reads of both windows in
        full, "incremental": reads of what changed only, "changed_rows": rows those read}."""
        with self._checker_lock:
            return dict(self._window_cache.reads)

    def windows(self, window: int, label_window: int, until: float | None = None) -> tuple[dict, dict]:
        """The fleet's windows by columns, oldest first, as _window_and_label_columns gives them: the
        newest `window` predictions and the newest `label_window` labelled ones, as of `until` (unix
        seconds, the database's clock) if given: numbers as float64 arrays, categories as lists of
        text. Read as one row of arrays, in binary, numbers straight into numpy: at 10,000 rows,
        building a tuple per row cost more than the query."""
        with self._reader("read the fleet's windows") as conn:
            return _window_and_label_columns(conn, self.layout, window, label_window, until,
                                             label_features=self.label_features)

    def latest_report(self, newer_than: int = 0) -> FleetReport | None:
        """The fleet's latest stored drift report, if its id is above `newer_than` (only then is
        the report itself sent). On a connection kept for it: every replica asks after every check."""
        with self._held(self._watch_lock, "another read of the latest report"):
            if self._closed:
                raise StoreError("the store is closed")
            try:
                if self._watch is None or self._watch.closed:
                    self._watch = self._connect_again("watch")
                with self._watchdog.bound(self._watch, self._call_bound):
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

    # counts(): rows in the table as of the last refresh (open, prune) plus those this replica
    # wrote or labelled since (a COUNT(*) is too dear for every scrape).

    def close(self) -> None:
        """Write what is queued and buffered (one try), then close the connections and stop the
        writer thread. Idempotent; any later call raises StoreError."""
        super().close()
        for lock, name in ((self._checker_lock, "_checker"), (self._watch_lock, "_watch")):
            with lock:
                conn = getattr(self, name)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    setattr(self, name, None)
        self._watchdog.stop()


def _labels_by_id_or_now(labels) -> dict[str, tuple[float, float | None]]:
    joined: dict[str, tuple[float, float | None]] = {}
    for id_, actual, received_ts in labels:
        joined[str(id_)] = (float(actual), None if received_ts is None else float(received_ts))
    return joined


def _recent_inputs(conn: psycopg.Connection, layout: StoreLayout, n: int, until: float | None = None) -> list[tuple]:
    where, args = ("WHERE ts <= %s", (until,)) if until is not None else ("", ())
    rows = conn.execute(f"SELECT {', '.join(layout.quoted)} FROM predictions {where} "
                        f"ORDER BY ts DESC, seq DESC LIMIT %s", (*args, int(n))).fetchall()
    return [layout.features(r) for r in reversed(rows)]


def _recent_labelled(conn: psycopg.Connection, n: int, until: float | None = None) -> list[tuple[float, float]]:
    where = "AND label_ts <= %s" if until is not None else ""
    args = (until,) if until is not None else ()
    rows = conn.execute(f"SELECT actual, prediction FROM predictions WHERE label_ts IS NOT NULL {where} "
                        f"ORDER BY label_ts DESC, label_seq DESC LIMIT %s", (*args, int(n))).fetchall()
    return [(_num(a), _num(p)) for a, p in reversed(rows)]


@contextlib.contextmanager
def labelled_rows(url: str, chunk: int = 100_000) -> Iterator[tuple[list[str], Iterator[list[tuple]]]]:
    """(features, chunks): the stored model's feature columns, as the table names them (whichever
    model's), and every labelled prediction in the database at `url` (id, ts, features,
    prediction, actual, label_ts, model_version), oldest served first, in lists of `chunk` rows,
    all from one snapshot (a read-only, repeatable-read transaction; the writers go on). Creates
    nothing: raises StoreError when the database cannot be read or holds no prediction store.
    monitoring/export.py writes them."""
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
            features = _stored_features(conn)
            if version is None or version > SCHEMA_VERSION or features is None:
                raise StoreError(f"{where} is not a prediction store this code reads (schema version {version}, "
                                 f"this code knows up to {SCHEMA_VERSION})")
            quoted = ", ".join(_quoted(c) for c, _ in features)

            def chunks() -> Iterator[list[tuple]]:
                with conn.cursor(name="export") as cursor:
                    cursor.execute(f"SELECT id, ts, {quoted}, prediction, actual, label_ts, model_version "
                                   f"FROM predictions WHERE label_ts IS NOT NULL ORDER BY ts, seq")
                    while True:
                        rows = cursor.fetchmany(chunk)
                        if not rows:
                            break
                        yield rows

            yield [c for c, _ in features], chunks()
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the store {where}: {_describe(exc)}") from exc
    finally:
        conn.close()


class _Float8Array(Loader):
    """float8[] in PostgreSQL's binary array format straight into a numpy array (NULL as NaN):
    a fleet check reads 10,000 values per column, and a Python float per value cost more than
    the query (README, "Running several replicas")."""
    format = psycopg.pq.Format.BINARY
    _ELEMENT = np.dtype([("length", ">i4"), ("value", ">f8")])   # each element: its length, then it

    def load(self, data) -> np.ndarray:
        buf = memoryview(data)
        if int.from_bytes(buf[0:4], "big") == 0:   # no dimension: an empty array
            return np.empty(0)
        n = int.from_bytes(buf[12:16], "big")     # one dimension: its size, then its lower bound
        body = buf[20:]
        if len(body) == 12 * n:   # no NULL: fixed-size elements
            return np.frombuffer(body, dtype=self._ELEMENT)["value"].astype(np.float64)
        values, at = np.empty(n), 0
        for i in range(n):        # some NULL (length -1, no bytes)
            length = int.from_bytes(body[at:at + 4], "big", signed=True)
            at += 4
            values[i] = np.nan if length < 0 else np.frombuffer(body[at:at + 8], dtype=">f8")[0]
            at += max(length, 0)
        return values


_FLOAT8_ARRAY_OID = psycopg.postgres.types["float8"].array_oid


def _columns_cursor(conn: psycopg.Connection) -> psycopg.Cursor:
    cursor = conn.cursor(binary=True)
    cursor.adapters.register_loader(_FLOAT8_ARRAY_OID, _Float8Array)
    return cursor


_SEPARATOR = "\x1f"   # ASCII unit separator: no grade contains it (the schema's categories)


def _text_agg(column: str) -> str:
    return f"string_agg(COALESCE({column}, ''), E'\\x1f')"


def _aggregate(column: str, text: bool) -> str:
    return _text_agg(column) if text else f"array_agg({column})"


def _window_and_label_columns(conn: psycopg.Connection, layout: StoreLayout, n: int, m: int,
                              until: float | None = None, label_features: tuple | None = None) -> tuple:
    """({"features": {feature: values}, "prediction", "ts"} of the fleet's newest n inputs,
    {"features": {feature: values}, "actual", "prediction", "label_ts"} of its newest m labelled
    predictions, the features `label_features` (default: the layout's categories)), oldest first,
    as of `until` if given (the features apart: a CSV column may be named "ts" or "actual"): what
    a replica's own windows hold (each input's prediction and arrival time, each label's time and
    its input's grades; a classifier's monitor asks for all its features), numbers as float64
    arrays, categories as lists of text (None for none). One statement, one row: numbers as arrays,
    categories as one separated string each. Building a tuple per row cost more than the query,
    decoding a text[] element by element too, and each round trip waits for the server's turn on a
    busy machine. No ORDER BY inside the aggregates (one sort per column cost 6 times the query):
    they take the rows in the order the sorted, limited subqueries give them (newest first, which
    PostgreSQL documents as what "usually works" and tests/test_store.py checks against the rows
    read one by one), reversed here."""
    label_features = layout.categorical if label_features is None else tuple(label_features)
    by_name = {name: (quoted, text) for name, quoted, text in zip(layout.names, layout.quoted, layout.is_text)}
    labels = [by_name[name] for name in label_features]
    where, args = ("WHERE ts <= %s", (until,)) if until is not None else ("", ())
    label_where = "AND label_ts <= %s" if until is not None else ""
    aggregates = ", ".join(_aggregate(q, text) for q, text in zip(layout.quoted, layout.is_text))
    label_aggregates = "".join(f", {_aggregate(q, text)}" for q, text in labels)
    label_columns = "".join(f", {q}" for q, _ in labels)
    row = _columns_cursor(conn).execute(
        f"SELECT w.*, l.* FROM (SELECT {aggregates}, array_agg(prediction), array_agg(ts) FROM "
        f"(SELECT {', '.join(layout.quoted)}, prediction, ts FROM predictions {where} "
        f"ORDER BY ts DESC, seq DESC LIMIT %s) i) w, "
        f"(SELECT array_agg(actual), array_agg(prediction), array_agg(label_ts){label_aggregates} FROM "
        f"(SELECT actual, prediction, label_ts{label_columns} FROM predictions "
        f"WHERE label_ts IS NOT NULL {label_where} ORDER BY label_ts DESC, label_seq DESC LIMIT %s) j) l",
        (*args, max(0, int(n)), *args, max(0, int(m)))).fetchone()
    kinds = [*layout.is_text, False, False, False, False, False, *[text for _, text in labels]]
    values = []
    for text, column in zip(kinds, row):
        if text:
            values.append([v or None for v in column.split(_SEPARATOR)][::-1] if column is not None else [])
        else:
            values.append(column[::-1].copy() if column is not None else np.empty(0))
    k, f = len(layout.names), len(layout.names) + 5
    return ({"features": dict(zip(layout.names, values[:k])), "prediction": values[k], "ts": values[k + 1]},
            {"features": dict(zip(label_features, values[f:])), "actual": values[k + 2], "prediction": values[k + 3],
             "label_ts": values[k + 4]})
