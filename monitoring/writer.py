"""The queued writer that both prediction stores share: SQLite's `store.Store` and PostgreSQL's
`pg_store.PgStore` differ in their SQL and their connections, not in how writes reach the database.
One copy of this machinery, so that a defence added for one backend holds for the other (the two
copies it replaces had already diverged: PostgreSQL lacked issue #9's per-job isolation, chunked
catch-up and "send again" for labels of buffered predictions).

* One writer thread, group commit. A commit costs about the same for 1 row as for 100, so callers
  put their rows (`add_predictions`) or labels (`add_labels`) on a queue and wait; the writer takes
  everything queued, writes it in ONE transaction (rows before labels, so a label can join a
  prediction of the same group) and then wakes each caller. A caller returns only once the
  transaction holding its rows is committed: "returned" means "durable". A lone job is committed at
  once; under load, jobs queue behind the commit in progress and share the next one. Flush, close
  and a backend's own jobs (`_do_other`: SQLite's prune chunks, PostgreSQL's recount) are done
  alone, in their turn, by the same thread: only that thread writes, so no lock is held around SQL.
* One caller's bad record never fails the others': when a group commit fails on a record (the
  backend's `_refused_record` says the error is about a value, not the database), each job is
  committed alone and only the one that fails again is refused (counted as `rejected`).
* A bounded retry buffer: predictions whose commit failed stay in memory (`max_pending` rows, the
  oldest dropped first and counted) and are written by `flush()` (the monitor's maintenance loop)
  FLUSH_CHUNK rows per transaction, oldest first. While the buffer waits for a database that
  failed, a write tries its own rows only: catching up 50,000 rows is not put on one request's
  latency, and a chunk that fits frees a little space when a full disk frees a little. A label for
  a prediction still in the buffer is refused with "send the labels again", not answered "unknown".
  Labels themselves are never buffered: a failed `add_labels` raises and the sender retries.
* Bounded waits (`answer_within`, PostgreSQL's): a caller waits at most that long for its commit;
  its job stays queued and is written (or buffered) when the database answers. While the writer is
  on one job past that bound, or busy while the database fails, a prediction does not wait at all.
  After a failed connect, writes do not connect again for `reconnect_backoff` (flush does), and a
  flush whose caller gave up is skipped: a server that hangs costs a connect timeout per try.

A backend subclass provides: `_connect_writer()` (a writer connection, schema checked),
`_write_transaction(work, single_statement)` (run work(conn) in one transaction on the writer
connection; `single_statement`: work runs one statement, which a backend may run as its own
implicit transaction, saving the round trips of BEGIN and COMMIT), `_touch(conn)` (a ping's statement),
`_insert(conn, rows)`, `_join_labels(conn, labels)`, `_row(record)`, `_label_entries(labels)`,
`_refused_record(exc)`, `_keeps_connection(exc)`, `_describe(exc)`, and optionally `_do_other(job)`.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from typing import Sequence

log = logging.getLogger("monitor.store")

FLUSH_CHUNK = 1_000  # retry-buffer rows per transaction when catching up after a failure


class StoreError(Exception):
    """The database could not be written or read (full, read-only, locked too long, I/O error,
    unreachable, not answering)."""


def new_stats() -> dict:
    return {"commits": 0, "rows_written": 0, "labels_written": 0, "write_errors": 0,
            "commit_seconds_sum": 0.0, "commit_seconds_max": 0.0,
            "prune_chunks": 0, "pruned_rows": 0, "dropped": 0, "rejected": 0}


# What a job asks of the writer thread: rows and/or labels to commit (a write, coalesced with the
# other writes queued), or something done alone, in its turn, after the writes queued before it.
WRITE, FLUSH, CLOSE = "write", "flush", "close"


class _RefusedRecord(Exception):
    """A group commit failed on a record rather than on the database: commit its jobs one by one."""


class _NotReconnecting(Exception):
    """A write during reconnect_backoff: fails at once, as the last connect did."""


class Job:
    """One caller's request to the writer thread. `done` is taken at birth; the writer releases it
    once the job is finished, which wakes the caller waiting on it."""
    __slots__ = ("kind", "rows", "labels", "args", "error", "result", "done", "queued")

    def __init__(self, kind: str = WRITE, rows=None, labels=None, args=None):
        self.kind = kind
        self.rows = rows          # validated prediction rows, or None
        self.labels = labels      # {id: (actual, label_ts)} in arrival order, or None
        self.args = args          # what a backend's own job needs (a prune chunk's bounds)
        # Failed until the writer says otherwise: a job cut short by anything unforeseen must
        # never look like success to the caller waiting for it.
        self.error: StoreError | None = StoreError("the commit did not complete")
        self.result = None
        self.done = threading.Lock()
        self.done.acquire()
        self.queued = time.monotonic()


class QueuedWriter:
    """The writer thread, its queue and the state both stores report. Subclasses call
    `_start_writer()` at the end of their constructor, once the writer connection is open."""

    answer_within: float | None = None   # seconds a caller waits for its commit (None: until done)
    ping_on_flush = False                # flush() touches the database even when nothing waits
    # After a failed connect, writes do not connect again for this long (flush and close always
    # try): a server that hangs instead of refusing costs a connect timeout per attempt, and the
    # rows of the writes in between go to the retry buffer at once instead of waiting for it.
    reconnect_backoff = 0.0

    def _init_writer(self, max_pending: int) -> None:
        self.max_pending = int(max_pending)
        self._mutex = threading.Lock()   # guards the state below; held only to read or update it
        self._closed = False
        self._last_error: str | None = None
        self._stats = new_stats()
        self._n_predictions = self._n_labelled = 0
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._busy_since: float | None = None   # when the writer's current job started
        # Owned by the writer thread:
        self._pending: deque[tuple] = deque()
        self._writer = None
        self._reconnect_not_before = 0.0   # monotonic time; see reconnect_backoff
        self._flushing = False             # flush or close in progress: connect whatever the backoff

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the backend's part

    def _connect_writer(self):
        raise NotImplementedError

    def _write_transaction(self, work, single_statement: bool = False):
        raise NotImplementedError

    def _touch(self, conn) -> None:
        raise NotImplementedError

    def _insert(self, conn, rows: list[tuple]) -> int:
        raise NotImplementedError

    def _join_labels(self, conn, labels: dict) -> tuple[tuple[list, list[str]], int]:
        raise NotImplementedError

    def _row(self, record) -> tuple:
        raise NotImplementedError

    def _label_entries(self, labels) -> dict:
        raise NotImplementedError

    def _refused_record(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _keeps_connection(self, exc: BaseException) -> bool:
        return False

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def _do_other(self, job: Job) -> None:
        raise AssertionError(f"unknown job {job.kind!r}")

    # ---------------------------------------------------------------- the writer thread

    def _submit(self, job: Job):
        """Queue `job` for the writer thread and wait until it is done (at most `answer_within`):
        returns its result or raises its StoreError."""
        with self._mutex:   # never queued after close()'s job: everything queued gets done
            if self._closed:
                raise StoreError("the store is closed")
            bound = self.answer_within
            # Stuck: the writer has been on one job for longer than the bound, or is busy while
            # the database is failing (each try may then cost a connect timeout).
            stuck = (bound is not None and self._busy_since is not None
                     and (time.monotonic() - self._busy_since > bound or self._last_error is not None))
            self._queue.put(job)
        if bound is None:
            job.done.acquire()   # released by the writer thread
        else:
            if stuck and job.kind == WRITE and job.labels is None:
                # Do not hold the caller (the batcher, hence every prediction) behind a writer
                # that waits on a failing database: the rows are queued all the same and go into
                # the next commit, or into the retry buffer if it fails.
                raise StoreError(self.last_error or f"the database has not answered for {bound:g} s; "
                                                    "predictions kept for retry")
            if not job.done.acquire(timeout=bound):
                message = f"the database did not answer within {bound:g} s"
                with self._mutex:
                    self._last_error = message
                # The job stays queued: its rows are written when the database answers (or
                # buffered if it fails); labels may be stored late too, so the sender resends
                # them (harmless: the same value again).
                raise StoreError(message + ("; predictions kept for retry" if job.rows else ""))
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        """The writer thread: take every write queued, up to the first other job; commit them in
        one transaction; then do that other job; then wake their callers."""
        while True:
            job = self._queue.get()
            writes, other = ([job], None) if job.kind == WRITE else ([], job)
            while other is None:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job.kind == WRITE:
                    writes.append(job)
                else:
                    other = job
            try:
                with self._mutex:
                    self._busy_since = time.monotonic()
                buffered = len(self._pending)
                self._commit_group(writes)
                if other is not None:
                    self._do(other, buffered)
            except Exception as exc:  # a bug, not the database: the jobs keep their failure
                self._fail(exc, "the store's writer failed")
            finally:
                with self._mutex:
                    self._busy_since = None
                for job in writes:
                    job.done.release()
                if other is not None:
                    other.done.release()
            if other is not None and other.kind == CLOSE:
                return

    def _do(self, job: Job, buffered: int) -> None:
        """A flush, close or backend job, once the writes queued before it are committed (along
        with the `buffered` rows of the retry buffer, if they could be)."""
        self._flushing = job.kind in (FLUSH, CLOSE)
        try:
            self._do_job(job, buffered)
        finally:
            self._flushing = False

    def _do_job(self, job: Job, buffered: int) -> None:
        if job.kind == FLUSH and self.answer_within is not None and \
                time.monotonic() - job.queued > self.answer_within:
            # Its caller gave up waiting (the maintenance loop, while the database hangs): a
            # later flush is queued already, and each try may cost a connect timeout.
            job.error = StoreError("flush abandoned: the database did not answer in time")
        elif job.kind == FLUSH:
            try:
                written = buffered - len(self._pending) + self._flush_chunks()
                if not written and (self.ping_on_flush or self._last_error is not None):
                    self._ping()
                job.result, job.error = written, None
            except StoreError as exc:
                job.error = exc
        elif job.kind == CLOSE:
            with contextlib.suppress(StoreError):  # one last try for the retry buffer
                self._flush_chunks()
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
                self._writer = None
            job.error = None
        else:
            self._do_other(job)

    def _writer_conn(self):
        """The writer connection, reopened after a failure dropped it (by a write only once
        reconnect_backoff has passed since the last failed connect)."""
        if self._writer is None:
            if not self._flushing and time.monotonic() < self._reconnect_not_before:
                raise _NotReconnecting()
            try:
                self._writer = self._connect_writer()
            except BaseException:
                self._reconnect_not_before = time.monotonic() + self.reconnect_backoff
                raise
        return self._writer

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        """Record a write failure; drop the writer connection unless the error is one it outlives."""
        if isinstance(exc, _NotReconnecting):   # the last error still stands: neither count nor wrap it
            with self._mutex:
                message = self._last_error or "the database failed; waiting to reconnect"
            error = StoreError(message + " (kept for retry)")
            error.__cause__ = exc
            return error
        if not self._keeps_connection(exc):
            self._drop_writer()
        message = f"{what}: {self._describe(exc)}"
        with self._mutex:
            self._last_error = message
            self._stats["write_errors"] += 1
        error = StoreError(message)
        error.__cause__ = exc
        return error

    def _ping(self) -> None:
        """An empty transaction: notices an outage, and a recovery (which clears the error)."""
        try:
            self._write_transaction(self._touch, single_statement=True)
        except Exception as exc:
            raise self._fail(exc, "the store does not answer") from exc
        with self._mutex:
            self._last_error = None

    def _commit_group(self, jobs: list[Job]) -> None:
        """Write every queued job in one transaction. Sets each job's outcome; never raises.

        One caller's record that the database refuses must not fail the others': when the group
        fails on a record, each job is committed alone, and only the one that fails again is
        refused (its predictions set aside and counted as rejected, its labels not acknowledged)."""
        try:
            self._commit_together(jobs, refuse=False)
        except _RefusedRecord:
            for job in jobs:
                self._commit_together([job], refuse=True)

    def _commit_together(self, jobs: list[Job], refuse: bool) -> None:
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

        def work(conn) -> tuple[int, int, int]:
            inserted = self._insert(conn, rows) if rows else 0
            new_labels = labels_written = 0
            for job in label_jobs:
                job.result, newly = self._join_labels(conn, job.labels)
                new_labels += newly
                labels_written += len(job.result[0])
            return inserted, new_labels, labels_written

        started = time.perf_counter()
        try:
            inserted, new_labels, labels_written = self._write_transaction(work, single_statement=not label_jobs)
        except Exception as exc:  # a database error, OSError, or anything unforeseen: never lose rows
            if self._refused_record(exc):
                if not refuse:
                    raise _RefusedRecord from exc
                message = f"the store refused this record: {self._describe(exc)}"
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

    def _hold_labels_of_pending(self, jobs: list[Job]) -> list[Job]:
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
                inserted = self._write_transaction(lambda conn, chunk=chunk: self._insert(conn, chunk),
                                                   single_statement=True)
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

    # ---------------------------------------------------------------- writes

    def add_predictions(self, records: Sequence) -> None:
        """Record served predictions; committed (durable) when this returns. Thread-safe: calls
        from many threads are coalesced into one transaction (group commit).

        Raises ValueError/TypeError for a malformed record (nothing of that call is queued) and
        StoreError if the database cannot be written: then the rows are kept in memory (up to
        max_pending) and written by `flush()`. An id already stored is ignored (the first record
        with an id wins), so resending is harmless."""
        rows = [self._row(r) for r in records]
        if rows:
            self._submit(Job(rows=rows))

    def add_labels(self, labels: Sequence[tuple]) -> tuple[list, list[str]]:
        """Join ground truth to served predictions; durable when this returns.

        labels: (id, actual, received_ts). Returns (known, unknown_ids): known holds
        (id, actual, prediction, features, first) for each id found in the store, `first` False
        when the prediction had a label already (a correction, or a sender's retry); unknown_ids
        the others; each id appears once. Latest wins: a label for an id that already has one
        replaces it, and within one call a later entry for the same id replaces an earlier one.
        Labels are not kept for retry: on StoreError nothing of the call was written (a label for
        a prediction still in the retry buffer is refused that way too: "send the labels again")."""
        joined = self._label_entries(labels)
        if not joined:
            return [], []
        return self._submit(Job(labels=joined))

    def flush(self) -> int:
        """Write the retry buffer now, in chunks (at shutdown, or from the periodic maintenance
        task so that a recovered database is caught up without waiting for traffic); with nothing
        buffered after a failure (or always, `ping_on_flush`), check that the database answers.
        Returns the rows it wrote; raises StoreError if they could not be written (they stay
        buffered) or the database does not answer."""
        return self._submit(Job(FLUSH))

    # ---------------------------------------------------------------- state

    def counts(self) -> dict:
        """{"predictions": rows stored, "labelled": rows with a label}; kept in memory, O(1)."""
        with self._mutex:
            return {"predictions": self._n_predictions, "labelled": self._n_labelled}

    def stats(self) -> dict:
        """Counters for metrics: commits, rows_written, labels_written, write_errors,
        commit_seconds_sum/max (time inside a group commit), prune_chunks, pruned_rows, pending
        (rows in the retry buffer), dropped (rows the full retry buffer had to drop), rejected
        (records the database refused as values)."""
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
            job = Job(CLOSE)
            self._queue.put(job)
        job.done.acquire()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
