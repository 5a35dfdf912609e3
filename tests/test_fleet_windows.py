"""The fleet check's windows read incrementally (monitoring/pg_windows.py) are exactly the windows a
full read gives, on the real PostgreSQL the tests start (tests/postgres.py), after any interleaving
of: predictions stored with the database's clock or with explicit (old, new) times; labels and
relabels; transactions held open across checks that then commit (with clock times earlier than the
check that missed them) or roll back; retention and max-rows prunes cutting into the windows;
checks by other replicas (the lock moves); replicas restarted (a cold cache); the table emptied.

Each check compares, inside its own transaction, the windows it was given with a full read made on
another connection at the same moment (the test's own sessions are idle then: nothing commits in
between). The interleavings run for the diamond model's columns and, once each, for another
regression's (names that need quoting, one named "ts") and a classifier's (every feature read
with its label)."""
from __future__ import annotations

import random

import numpy as np
import psycopg
import pytest

from monitoring.pg_store import PgStore, _window_and_label_columns
from monitoring.pg_windows import TextColumn
from tests.test_store import KINDS, record

WINDOW, LABEL_WINDOW = 40, 25


def _same(given: dict, full: dict, what: str) -> None:
    assert given.keys() == full.keys(), what
    for name, values in full.items():
        if name == "features":   # the features by name, beside the window's own columns
            _same(given[name], values, f"{what}: features")
        elif isinstance(values, np.ndarray):
            assert isinstance(given[name], np.ndarray), (what, name)
            np.testing.assert_array_equal(given[name], values, err_msg=f"{what}: {name}")
        else:   # grades: a sequence of text (pg_windows.TextColumn), as the full read's list
            assert isinstance(given[name], TextColumn) and given[name] == values, (what, name)
            assert list(given[name]) == values and len(given[name]) == len(values), (what, name)


class _Fleet:
    """Three replicas' stores on one database, a session of the test's own for full reads, and the
    transactions it holds open."""

    def __init__(self, url: str, rng: random.Random, kind=KINDS["diamonds"]):
        self.url, self.rng, self.kind = url, rng, kind
        self.stores = [self._open(k) for k in range(3)]
        self.reader = psycopg.connect(url, autocommit=True)
        self.open_transactions: list[tuple[psycopg.Connection, set[str], int]] = []   # (conn, ids, checks left)
        self.pending_ids: dict[int, list[str]] = {}   # the predictions each open transaction stores
        self.ids: list[str] = []        # committed predictions' ids
        self.n = 0
        self.checks = 0
        self.retired: list[dict] = []   # window_reads of the stores restarted

    def _open(self, k: int) -> PgStore:
        return PgStore(self.url, replica=f"replica-{k}", retention_seconds=None, max_rows=None,
                       layout=self.kind.layout, keep_features=self.kind.keep_features)

    def _records(self, count: int) -> list:
        out = []
        for _ in range(count):
            self.n += 1
            ts = self.rng.choice([None, None, None, 1_000.0 + self.rng.random() * 100, 4e9 + self.n])
            out.append(self.kind.record(self.n, ts=ts)._replace(ts=ts))
        return out

    def _labels(self, count: int, locked: set[str]) -> list[tuple]:
        free = [i for i in self.ids if i not in locked]
        picked = self.rng.sample(free, min(count, len(free)))
        return [(i, self.rng.random() * 1e4, self.rng.choice([None, None, 500.0 + self.rng.random(), 5e9]))
                for i in picked]

    def _locked(self) -> set[str]:
        return set().union(*(ids for _, ids, _ in self.open_transactions)) if self.open_transactions else set()

    def predict(self) -> None:
        records = self._records(self.rng.randint(1, 12))
        self.rng.choice(self.stores).add_predictions(records)
        self.ids.extend(r.id for r in records)

    def label(self) -> None:
        labels = self._labels(self.rng.randint(1, 10), self._locked())
        if labels:
            self.rng.choice(self.stores).add_labels(labels)

    def hold_open(self) -> None:
        """A transaction of another writer that stays open across 1-3 checks: predictions stamped
        by the clock now (earlier than the checks it will miss), labels, maybe both."""
        store = self.stores[0]
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("BEGIN")
        records = self._records(self.rng.randint(0, 6))
        ids = {r.id for r in records}
        if records:
            store._insert(conn, [store._row(r) for r in records])
        labels = self._labels(self.rng.randint(0, 5), self._locked())
        if labels:
            store._join_labels(conn, store._label_entries(labels))
            ids |= {i for i, _, _ in labels}
        self.open_transactions.append((conn, ids, self.rng.randint(1, 3)))
        self.pending_ids[id(conn)] = [r.id for r in records]

    def _end_due_transactions(self) -> None:
        still = []
        for conn, ids, left in self.open_transactions:
            if left > 1:
                still.append((conn, ids, left - 1))
                continue
            if self.rng.random() < 0.8:
                conn.execute("COMMIT")
                self.ids.extend(self.pending_ids.pop(id(conn)))
            else:
                conn.execute("ROLLBACK")
                self.pending_ids.pop(id(conn))
            conn.close()
        self.open_transactions = still

    def prune(self) -> None:
        """Retention or max-rows cutting into the windows (rows locked by an open transaction are
        skipped, as PgStore.prune does)."""
        store = self.rng.choice(self.stores)
        total = self.reader.execute("SELECT count(*) FROM predictions").fetchone()[0]
        if self.rng.random() < 0.5:
            store.retention_seconds, store.max_rows = None, max(0, total - self.rng.randint(1, 30))
            store.prune()
        else:
            cutoff = self.rng.choice([1_050.0, self.reader.execute(
                "SELECT extract(epoch FROM clock_timestamp()) - 0.05").fetchone()[0]])
            store.retention_seconds, store.max_rows = 0.0, None
            store.prune(now=cutoff)
        store.retention_seconds, store.max_rows = None, None

    def empty(self) -> None:
        if not self.open_transactions:
            self.reader.execute("TRUNCATE predictions")

    def restart(self) -> None:
        k = self.rng.randrange(3)
        self.retired.append(self.stores[k].window_reads)
        self.stores[k].close()
        self.stores[k] = self._open(k)

    def check(self) -> None:
        store = self.rng.choice(self.stores)
        seen = {}

        def score(columns, labelled, checked_at):
            full = _window_and_label_columns(self.reader, store.layout, WINDOW, LABEL_WINDOW,
                                             label_features=store.label_features)
            _same(columns, full[0], f"check {self.checks}: inputs")
            _same(labelled, full[1], f"check {self.checks}: labelled")
            seen["sizes"] = (len(columns["ts"]), len(labelled["actual"]))
            return {"check": self.checks}, "v1"

        assert store.fleet_check(score, window=WINDOW, label_window=LABEL_WINDOW, interval=1, force=True) is not None
        assert "sizes" in seen
        self.checks += 1
        self._end_due_transactions()

    def close(self) -> None:
        for conn, _, _ in self.open_transactions:
            conn.close()
        for store in self.stores:
            store.close()
        self.reader.close()


@pytest.mark.parametrize("kind_name, seed", [("diamonds", 1), ("diamonds", 2), ("diamonds", 3),
                                             ("sites", 4), ("classifier", 5)])
def test_incremental_windows_equal_a_full_read_after_any_interleaving(pg_url, kind_name, seed):
    rng = random.Random(seed)
    fleet = _Fleet(pg_url, rng, KINDS[kind_name])
    try:
        actions = [(fleet.predict, 30), (fleet.label, 20), (fleet.check, 25), (fleet.hold_open, 8),
                   (fleet.prune, 6), (fleet.restart, 2), (fleet.empty, 0.5)]
        for _ in range(400):
            rng.choices([a for a, _ in actions], weights=[w for _, w in actions])[0]()
        while fleet.open_transactions:
            fleet.check()
        fleet.check()
        reads = fleet.retired + [s.window_reads for s in fleet.stores]
        full = sum(r["full"] for r in reads)
        incremental = sum(r["incremental"] for r in reads)
        assert full + incremental == fleet.checks >= 60
        # the checks compared were mostly incremental (the cache is used, not bypassed), and some
        # were full (first checks, restarts, prunes into a window, the table emptied)
        assert incremental >= fleet.checks // 2 and full >= 3, (fleet.checks, reads)
        print(fleet.checks, "checks:", full, "full,", incremental, "incremental")
    finally:
        fleet.close()


def test_a_check_reads_only_the_rows_changed_since_the_last(pg_url):
    """After a full first read, a check reads the rows stored or labelled since (and the same
    transaction's rows again only while an older transaction was still open)."""
    with PgStore(pg_url, replica="a") as a, PgStore(pg_url, replica="b") as b:
        a.add_predictions([record(i)._replace(ts=None) for i in range(300)])

        def check(store):
            store.fleet_check(lambda c, l, t: ({}, "v1"), window=200, label_window=100, interval=1, force=True)
            return store.window_reads

        assert check(a) == {"full": 1, "incremental": 0, "changed_rows": 0}
        new = [record(1000 + i)._replace(ts=None) for i in range(7)]
        b.add_predictions(new)
        b.add_labels([(r.id, 1.0, None) for r in new[:3]])
        assert check(a) == {"full": 1, "incremental": 1, "changed_rows": 7}
        assert check(a) == {"full": 1, "incremental": 2, "changed_rows": 7}
        assert check(b)["full"] == 1           # b never checked: its first read is in full
        assert check(b) == {"full": 1, "incremental": 1, "changed_rows": 0}


def test_a_database_of_schema_version_1_is_migrated_and_its_rows_read(pg_url, monkeypatch):
    """Rows stored before change tracking (no `changed`) are read by the first full read, and a
    label on one of them marks it changed."""
    from monitoring import pg_store

    with monkeypatch.context() as m:
        m.setattr(pg_store, "MIGRATIONS", pg_store.MIGRATIONS[:1])
        m.setattr(pg_store, "SCHEMA_VERSION", 1)
        with PgStore(pg_url) as old:
            records = [record(i)._replace(ts=None) for i in range(30)]
            old.add_predictions(records)
    with PgStore(pg_url) as s, psycopg.connect(pg_url, autocommit=True) as reader:
        def check():
            got = {}

            def score(columns, labelled, checked_at):
                full = _window_and_label_columns(reader, s.layout, 20, 10)
                _same(columns, full[0], "inputs")
                _same(labelled, full[1], "labelled")
                got["n"] = (len(columns["ts"]), len(labelled["actual"]))
                return {}, "v1"

            s.fleet_check(score, window=20, label_window=10, interval=1, force=True)
            return got["n"]

        assert check() == (20, 0)
        s.add_labels([(records[3].id, 5.0, None)])
        assert check() == (20, 1)
        assert s.window_reads["incremental"] == 1


def test_a_cache_older_than_the_trimmed_deletion_log_reads_in_full(pg_url, monkeypatch):
    """Retention trims the deletion log (an hour of it); a replica whose last read is older than
    the newest trimmed entry cannot know what was deleted since: it reads in full, and exactly."""
    from monitoring import pg_store

    monkeypatch.setattr(pg_store, "GONE_RETENTION", -60.0)   # trim every entry at once
    with PgStore(pg_url, retention_seconds=None, max_rows=None) as s, \
            psycopg.connect(pg_url, autocommit=True) as reader:
        s.add_predictions([record(i)._replace(ts=None) for i in range(50)])

        def check():
            def score(columns, labelled, checked_at):
                _same(columns, _window_and_label_columns(reader, s.layout, 30, 30)[0], "inputs")
                return {}, "v1"

            s.fleet_check(score, window=30, label_window=30, interval=1, force=True)
            return s.window_reads

        assert check()["full"] == 1
        reader.execute("DELETE FROM predictions WHERE seq IN (SELECT seq FROM predictions ORDER BY seq DESC LIMIT 3)")
        s.prune()   # deletes nothing of its own (no retention), trims the log past the cached read
        assert reader.execute("SELECT count(*), (SELECT xid FROM predictions_gone_horizon) IS NOT NULL "
                              "FROM predictions_gone").fetchone() == (0, True)
        assert check() == {"full": 2, "incremental": 0, "changed_rows": 0}
        assert check()["incremental"] == 1
