"""The prediction store on both backends, a real SQLite file and a real PostgreSQL database (started
by the tests, tests/postgres.py): round trips, group commit under concurrency, labels, restart,
retention, export, failures and recovery, and a SIGKILL in the middle of writing. The `db` fixture
(and `store`, built on it) is parametrised by backend: a test marked `both_backends` runs once on
each; an unmarked one, on SQLite alone (its file format, locks and full disk). PostgreSQL's own
(schema versions, the database's clock) say so by name. A test marked `every_layout` runs for
each kind of model's columns (KINDS: the diamond model's, a friedman-like regression's with a
30-category column and names that need quoting, a classifier's): its `record()` and
`open_store()` are that kind's."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from monitoring import export as export_module
from monitoring import store as store_module
from monitoring import writer as writer_module
from monitoring.export import EXPORT_COLUMNS, export_labelled
from bench.store_bench import bench_store
from monitoring.pg_store import PgStore
from monitoring.store import DIAMONDS, MemoryStore, PredictionRecord, Store, StoreError, StoreLayout

ROOT = Path(__file__).resolve().parent.parent
GRADES = [("Ideal", "G", "VS1"), ("Premium", "D", "IF"), ("Fair", "J", "I1")]
# A CSV header longer than the 63 bytes PostgreSQL keeps of a name (it cuts it, in both the table
# and every statement), with a two-byte character across the cut.
LONG_NAME = "net price in dollars before tax, as the sales export header sa\u00efd"   # 65 bytes


class Kind:
    """A kind of model as the store sees it: its feature columns (layout), its records, and its
    stores (a classifier's answer every feature with a label: keep_features)."""

    def __init__(self, name: str, layout: StoreLayout, features, prediction, keep_features: bool = False):
        self.name, self.layout, self.keep_features = name, layout, keep_features
        self._features, self._prediction = features, prediction

    def features(self, i: int) -> tuple:
        return self._features(i)

    def record(self, i: int, ts: float | None = None, version: str = "v1") -> PredictionRecord:
        return PredictionRecord.create(self._features(i), self._prediction(i), version,
                                       ts=1_000.0 + i if ts is None else ts)

    def open(self, db, **options):
        return store_module.open_store(db, layout=self.layout, keep_features=self.keep_features, **options)

    @property
    def export_columns(self) -> list[str]:
        """The export's header: the features' names, but a feature named like one of the export's
        own columns (ts) keeps its column's name (ts_)."""
        names = [c if n == "ts" else n for n, c in zip(self.layout.names, self.layout.columns)]
        return ["id", "ts", *names, "prediction", "actual", "label_ts", "model_version"]


def _diamond(i: int) -> tuple:
    cut, color, clarity = GRADES[i % len(GRADES)]
    return (0.2 + i / 1000, cut, color, clarity, 60.0 + i % 5, 55.0 + i % 3)


KINDS = {
    "diamonds": Kind("diamonds", DIAMONDS, _diamond, lambda i: 500.0 + i),
    # friedman-like: 30 sites, negative predictions, names that are SQL keywords, the table's own
    # columns in another case, a double quote, and one longer than PostgreSQL keeps
    "sites": Kind("sites", StoreLayout([("site", True), ("level", False), ('x "1"', False), ("order", False),
                                        ("Seq", True), ("ts", False), (LONG_NAME, False)]),
                  lambda i: (f"s{i % 30:02d}", float(i % 5), 0.2 + i / 1000, -1.5 + i % 7, "ab"[i % 2], 3.0 * i,
                             55.0 + i % 3),
                  lambda i: -3.0 + i / 100),
    # the cut classifier's columns (diamonds.csv less the class); a prediction is a class's index
    "classifier": Kind("classifier", StoreLayout([("carat", False), ("color", True), ("clarity", True),
                                                  ("depth", False), ("table", False), ("price", False),
                                                  ("x", False), ("y", False), ("z", False)]),
                       lambda i: (0.2 + i / 1000, "GDJ"[i % 3], GRADES[i % 3][2], 60.0 + i % 5, 55.0 + i % 3,
                                  400.0 + i, 4.0, 4.1, 2.5),
                       lambda i: float(i % 5), keep_features=True),
}
_kind = KINDS["diamonds"]   # the running test's kind (the `kind` fixture sets it)


def record(i: int, ts: float | None = None, version: str = "v1") -> PredictionRecord:
    """A record of the running test's kind of model (the diamond model's unless every_layout)."""
    return _kind.record(i, ts, version)


def open_store(db, **options):
    """monitoring.store.open_store with the running test's kind of model's columns."""
    return _kind.open(db, **options)


def query(db, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of `sql` (placeholders written `?`) read straight from the store's database."""
    if isinstance(db, Path):
        with sqlite3.connect(db) as conn:
            return conn.execute(sql, args).fetchall()
    import psycopg

    with psycopg.connect(db) as conn:
        return conn.execute(sql.replace("?", "%s"), args).fetchall()


def stored_ids(db) -> list[str]:
    return [r[0] for r in query(db, "SELECT id FROM predictions")]


# The tests marked both_backends run once per backend; the others (SQLite's file format, locks and
# full disk) on SQLite only. A new test is SQLite's unless marked.
both_backends = pytest.mark.both_backends


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_backends") is not None
        metafunc.parametrize("backend", ["sqlite", "postgresql"] if both else ["sqlite"])
    if "kind_name" in metafunc.fixturenames:
        every = metafunc.definition.get_closest_marker("every_layout") is not None
        metafunc.parametrize("kind_name", list(KINDS) if every else ["diamonds"])


every_layout = pytest.mark.every_layout


@pytest.fixture(autouse=True)
def kind(kind_name):
    """The running test's kind of model: record() and open_store() make and open its records."""
    global _kind
    _kind = KINDS[kind_name]
    yield _kind
    _kind = KINDS["diamonds"]


@pytest.fixture
def db(backend, request, tmp_path):
    """Where a store lives: an SQLite file's path, or the URL of a new PostgreSQL database."""
    if backend == "sqlite":
        return tmp_path / "store" / "monitor.db"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def store(db):
    s = open_store(db)
    yield s
    s.close()


def cut_off(s, monkeypatch) -> None:
    """The database goes away under an open store: its writer connection is closed and every new
    one fails, until monkeypatch.undo()."""
    if isinstance(s, Store):
        error = sqlite3.OperationalError("disk I/O error")
    else:
        import psycopg

        error = psycopg.OperationalError("connection refused")

    def refuse(self, *args):
        raise error

    monkeypatch.setattr(type(s), "_connect", refuse)
    # Writes reconnect as soon as the database is back (PostgreSQL's 5 s pause between a failed
    # connect and the next one from a write is for servers that hang: test_fleet.py's SIGSTOP).
    monkeypatch.setattr(s, "reconnect_backoff", 0.0, raising=False)
    s._writer.close()
    s._writer = None


# ------------------------------------------------------------------ round trips

@both_backends
@every_layout
def test_round_trip_survives_reopen(db, kind):
    records = [record(i) for i in range(10)]
    with open_store(db) as s:
        s.add_predictions(records[:3])
        s.add_predictions(records[3:])
        assert s.counts() == {"predictions": 10, "labelled": 0}
        assert s.healthy and s.last_error is None
    with open_store(db) as s:
        assert s.counts() == {"predictions": 10, "labelled": 0}
        assert s.recent_inputs(100) == [r.features for r in records]
        assert all(isinstance(v, str if text else float) for f in s.recent_inputs(3)
                   for v, text in zip(f, kind.layout.is_text))
    if isinstance(db, Path):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = query(db, "SELECT id, ts, prediction, model_version FROM predictions WHERE id = ?", (records[4].id,))
    assert row == [(records[4].id, records[4].ts, records[4].prediction, "v1")]


def test_create_makes_uuid4_hex_ids_and_timestamps():
    a, b = PredictionRecord.create((1, "Ideal", "G", "VS1", 61, 57), 1.0, "v"), record(1)
    assert len(a.id) == 32 and int(a.id, 16) >= 0 and a.id != b.id
    assert a.ts > 1e9 and a.features == (1, "Ideal", "G", "VS1", 61, 57)


@both_backends
@every_layout
def test_malformed_record_fails_its_caller_only(store):
    bad = PredictionRecord("x", 1.0, (1.0, "Ideal"), 2.0, "v1")
    with pytest.raises(ValueError):
        store.add_predictions([record(1), bad])
    assert store.counts()["predictions"] == 0 and store.healthy
    store.add_predictions([record(2)])
    assert store.counts()["predictions"] == 1


@both_backends
@every_layout
def test_an_id_already_stored_is_ignored(store):
    first = record(1)
    store.add_predictions([first])
    store.add_predictions([PredictionRecord(first.id, 5.0, first.features, 9.9, "v2")])
    assert store.counts()["predictions"] == 1
    known, _ = store.add_labels([(first.id, 1.0, 2.0)])
    assert known[0][2] == first.prediction   # the first record with an id wins


@both_backends
def test_empty_calls_do_nothing(store):
    store.add_predictions([])
    assert store.add_labels([]) == ([], [])
    assert store.stats()["commits"] == 0
    assert store.recent_inputs(0) == [] and store.recent_labelled(-1) == []


# ------------------------------------------------------------------ concurrency

@both_backends
def test_concurrent_single_row_writers_lose_and_duplicate_nothing(db):
    threads, per_thread = 16, 500
    batches = [[record(k * per_thread + i) for i in range(per_thread)] for k in range(threads)]
    errors = []
    with open_store(db) as s:
        def work(mine):
            try:
                for r in mine:
                    s.add_predictions([r])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(b,)) for b in batches]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stats = s.stats()
        assert errors == []
        assert s.counts()["predictions"] == threads * per_thread
        assert stats["rows_written"] == threads * per_thread
        assert stats["commits"] <= threads * per_thread
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == threads * per_thread
    assert set(ids) == {r.id for b in batches for r in b}


@both_backends
def test_concurrent_predictions_labels_and_prune(db):
    """Writers label their own predictions while a pruner deletes old rows: no error, and the
    in-memory counts agree with the table."""
    errors = []
    with open_store(db, retention_seconds=100, max_rows=None) as s:
        s.add_predictions([record(i, ts=0.0) for i in range(3_000)])  # all beyond retention

        def writer(k):
            try:
                for i in range(100):
                    r = record(10_000 + k * 100 + i, ts=1_000.0)
                    s.add_predictions([r])
                    known, unknown = s.add_labels([(r.id, 7.0, 2_000.0 + i)])
                    assert [k[0] for k in known] == [r.id] and unknown == []
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def pruner():
            try:
                while s.prune(now=1_050.0, chunk=100):
                    pass
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        workers = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        workers.append(threading.Thread(target=pruner))
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert s.counts() == {"predictions": 800, "labelled": 800}
    with open_store(db) as s:   # counted from the database on open
        assert s.counts() == {"predictions": 800, "labelled": 800}


# ------------------------------------------------------------------ labels

@both_backends
@every_layout
def test_labels_join_unknown_ids_and_relabel(store):
    a, b, c = record(1), record(2), record(3)
    store.add_predictions([a, b, c])
    known, unknown = store.add_labels([(a.id, 510.0, 2_000.0), ("f" * 32, 1.0, 2_000.0),
                                       (b.id, 520.0, 2_001.0)])
    assert unknown == ["f" * 32]
    assert known == [(a.id, 510.0, a.prediction, a.features, True), (b.id, 520.0, b.prediction, b.features, True)]
    assert store.counts() == {"predictions": 3, "labelled": 2}

    # Latest wins: a relabel replaces the value and the label time, and is not counted twice.
    known, unknown = store.add_labels([(a.id, 999.0, 2_005.0)])
    assert known == [(a.id, 999.0, a.prediction, a.features, False)] and unknown == []  # a relabel
    assert store.counts() == {"predictions": 3, "labelled": 2}
    assert store.recent_labelled(10) == [(520.0, b.prediction), (999.0, a.prediction)]

    # Within one call too, the later entry for an id wins, and the id is reported once.
    known, _ = store.add_labels([(c.id, 1.0, 2_010.0), (c.id, 2.0, 2_011.0)])
    assert known == [(c.id, 2.0, c.prediction, c.features, True)]
    assert store.counts()["labelled"] == 3


@both_backends
@every_layout
def test_many_labels_in_one_call(store):
    records = [record(i) for i in range(1_200)]   # more ids than one IN (...) holds
    store.add_predictions(records)
    labels = [(r.id, float(i), 5_000.0 + i) for i, r in enumerate(records)] + [("nope", 1.0, 1.0)]
    known, unknown = store.add_labels(labels)
    assert len(known) == 1_200 and unknown == ["nope"]
    assert store.counts()["labelled"] == 1_200


# ------------------------------------------------------------------ restart

@both_backends
@every_layout
def test_windows_rebuilt_in_order_after_restart(db):
    records = [record(i, ts=1_000.0 + i) for i in range(50)]
    with open_store(db) as s:
        s.add_predictions(records[25:])       # out of order on purpose: ts decides
        s.add_predictions(records[:25])
        s.add_labels([(records[i].id, 100.0 + i, 3_000.0 - i) for i in range(10)])  # newest label: 0
    with open_store(db) as s:
        assert s.recent_inputs(5) == [r.features for r in records[45:]]
        assert s.recent_inputs(1_000) == [r.features for r in records]
        assert s.recent_labelled(3) == [(102.0, records[2].prediction), (101.0, records[1].prediction),
                                        (100.0, records[0].prediction)]
        assert len(s.recent_labelled(100)) == 10
        # A label for a prediction made before the restart still joins.
        known, unknown = s.add_labels([(records[40].id, 1.5, 4_000.0)])
        assert known == [(records[40].id, 1.5, records[40].prediction, records[40].features, True)]
        assert s.recent_labelled(1) == [(1.5, records[40].prediction)]


@both_backends
@every_layout
def test_window_rows_after_restart_carry_predictions_times_and_features(db, kind):
    """What the windows keep besides the values: each input's prediction and time, each label's
    time and its input's features (the grades for the concept segments), in the windows' order."""
    records = [record(i, ts=1_000.0 + i) for i in range(20)]
    with open_store(db) as s:
        s.add_predictions(records[10:])
        s.add_predictions(records[:10])
        s.add_labels([(records[i].id, 100.0 + i, 3_000.0 - i) for i in range(6)])   # newest label: 0
    with open_store(db) as s:
        assert s.recent_input_rows(3) == [(r.features, r.prediction, r.ts) for r in records[17:]]
        assert s.recent_input_rows(100) == [(r.features, r.prediction, r.ts) for r in records]
        assert s.recent_input_rows(0) == [] and s.recent_labelled_rows(-1) == []
        assert s.recent_labelled_rows(2) == [(101.0, records[1].prediction, 2_999.0, records[1].features),
                                             (100.0, records[0].prediction, 3_000.0, records[0].features)]
        assert [row[:2] for row in s.recent_labelled_rows(100)] == s.recent_labelled(100)
        assert [row[0] for row in s.recent_input_rows(100)] == s.recent_inputs(100)
    with MemoryStore(capacity=10, layout=kind.layout) as m:   # nothing survives a restart in memory
        m.add_predictions(records[:2])
        assert m.recent_input_rows(5) == [] and m.recent_labelled_rows(5) == []


def test_a_restarted_monitor_refills_its_windows_as_they_were(tmp_path, small_artifact):
    """A monitor restarted on its SQLite file gets back the windows a check scores: the inputs with
    their arrival times (so "since when" stays right), the labels with their times and grades (the
    concept segments by grade), not the restart's time and unknown grades."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from monitor import Monitor, MonitorConfig
    from tests.helpers import as_payload, heldout_frame

    heldout = heldout_frame()
    config = MonitorConfig(model_path=Path("unused"), check_interval=0, window=100, label_window=50,
                           db_path=tmp_path / "monitor.db")
    first = Monitor(config, small_artifact, CollectorRegistry())
    first.start()
    try:
        rows = [first.schema.parse_row(r) for r in as_payload(heldout.iloc[:120])]
        ids = first.predict(rows[:60])[1]
        ids += first.predict(rows[60:])[1]
        assert first.record_labels([(i, 1000.0 + k) for k, i in enumerate(ids[:70])])[0] == 70
        before = first.inputs.snapshot_all(), first.labelled.snapshot_all()
    finally:
        first.stop()
    second = Monitor(config, small_artifact, CollectorRegistry())
    try:
        (inputs, predictions, times), (actual, predicted, grades, label_times) = before
        again_inputs, again_predictions, again_times = second.inputs.snapshot_all()
        assert len(again_times) == 100 and list(again_inputs) == list(inputs)
        for name in inputs:
            assert np.array_equal(again_inputs[name], inputs[name])
        np.testing.assert_allclose(again_predictions, predictions, rtol=1e-12)
        np.testing.assert_allclose(again_times, times, rtol=0, atol=1e-3)   # the stored times, not now
        a, p, g, t = second.labelled.snapshot_all()
        assert len(a) == 50 and np.array_equal(a, actual) and np.array_equal(p, predicted)
        np.testing.assert_allclose(t, label_times, rtol=0, atol=1e-3)
        assert list(g) == list(grades) == ["cut", "color", "clarity"]
        for name in grades:
            assert np.array_equal(g[name], grades[name]) and np.isfinite(g[name]).all()
    finally:
        second.stop()


@both_backends
@every_layout
def test_equal_timestamps_keep_insertion_order(store):
    records = [record(i, ts=5.0) for i in range(6)]
    store.add_predictions(records[:3])
    store.add_predictions(records[3:])
    assert store.recent_inputs(4) == [r.features for r in records[2:]]


@both_backends
@every_layout
def test_nan_comes_back_as_nan(store, kind):
    j = kind.layout.is_text.index(False)    # the first number
    features = list(kind.features(1))
    features[j] = float("nan")
    store.add_predictions([PredictionRecord("a" * 32, 1.0, tuple(features), 3.0, "v")])
    value = store.recent_inputs(1)[0][j]
    assert isinstance(value, float) and value != value


def test_a_foreign_or_newer_file_is_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(junk)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(newer)


# The schema every file so far was written with, spelled out: the columns built from
# diamonds.FEATURES must keep reading and writing these files.
SCHEMA_V1 = """
CREATE TABLE predictions (id TEXT PRIMARY KEY, ts REAL NOT NULL, carat REAL, cut TEXT, color TEXT,
    clarity TEXT, depth REAL, table_ REAL, prediction REAL, model_version TEXT, actual REAL, label_ts REAL);
CREATE INDEX predictions_ts ON predictions (ts);
CREATE INDEX predictions_label_ts ON predictions (label_ts) WHERE label_ts IS NOT NULL;
PRAGMA user_version = 1;
"""


@both_backends
@every_layout
def test_feature_columns_come_from_the_model_s_features(db, kind):
    """One column per feature, in the model's order, text for categories; named as the layout names
    them on both backends (a keyword or one of the table's own columns gets a trailing underscore;
    PostgreSQL keeps 63 bytes of a longer name)."""
    from monitoring.diamonds import FEATURES

    assert store_module.FEATURE_COLUMNS == tuple(FEATURES) == DIAMONDS.names
    expected = {"diamonds": ["carat", "cut", "color", "clarity", "depth", "table_"],
                "sites": ["site", "level", 'x "1"', "order", "Seq_", "ts_", LONG_NAME],
                "classifier": ["carat", "color", "clarity", "depth", "table_", "price", "x", "y", "z"]}[kind.name]
    kinds = [text for text in kind.layout.is_text]
    open_store(db).close()
    if isinstance(db, Path):
        with sqlite3.connect(db) as conn:
            table = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(predictions)")]
        assert table == [("id", "TEXT"), ("ts", "REAL"), *[(c, "TEXT" if text else "REAL")
                                                           for c, text in zip(expected, kinds)],
                         ("prediction", "REAL"), ("model_version", "TEXT"), ("actual", "REAL"), ("label_ts", "REAL")]
    else:   # the fleet's columns besides: insertion order, replica, the replica's clock, label order,
        # the transaction that last changed the row (monitoring/pg_windows.py)
        expected = [c.replace(LONG_NAME, LONG_NAME[:62]) for c in expected]
        table = query(db, "SELECT column_name, data_type FROM information_schema.columns WHERE "
                          "table_name = 'predictions' ORDER BY ordinal_position")
        assert table == [("id", "text"), ("seq", "bigint"), ("ts", "double precision"),
                         *[(c, "text" if text else "double precision") for c, text in zip(expected, kinds)],
                         ("prediction", "double precision"), ("model_version", "text"), ("replica", "text"),
                         ("served_at", "double precision"), ("actual", "double precision"),
                         ("label_ts", "double precision"), ("label_seq", "bigint"), ("label_replica", "text"),
                         ("changed", "xid8")]


def test_a_file_written_with_the_first_schema_is_read_and_written(db):
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V1)
        conn.execute("INSERT INTO predictions VALUES ('old', 5.0, 0.3, 'Ideal', 'E', 'SI1', 61.0, 56.0, "
                     "400.0, 'v0', NULL, NULL)")
    r = record(1, ts=6.0)
    with Store(db) as s:
        assert s.counts() == {"predictions": 1, "labelled": 0}
        s.add_predictions([r])
        assert s.recent_inputs(2) == [(0.3, "Ideal", "E", "SI1", 61.0, 56.0), r.features]
        known, _ = s.add_labels([("old", 410.0, 7.0)])
        assert known == [("old", 410.0, 400.0, (0.3, "Ideal", "E", "SI1", 61.0, 56.0), True)]


def test_a_file_without_a_feature_column_is_refused(db):
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V1.replace("clarity TEXT, ", ""))
    with pytest.raises(StoreError, match=r"another model's features \(carat, cut, color, depth, table\), not this "
                                         r"model's \(carat, cut, color, clarity, depth, table\)"):
        Store(db)


@both_backends
def test_a_store_written_for_another_model_s_features_is_refused_naming_both(db):
    """A file or a fleet's database keeps the columns of the model that created it: another model
    (other features, or the same names with other kinds) is refused at open, in one line naming
    both feature lists, and nothing is written."""
    KINDS["sites"].open(db).close()
    with pytest.raises(StoreError) as caught:
        KINDS["classifier"].open(db)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot open the store ")
    long = LONG_NAME if isinstance(db, Path) else LONG_NAME[:62]
    assert (f"it records another model's features (site, level, x \"1\", order, Seq, ts, {long}), not this "
            f"model's (carat, color, clarity, depth, table, price, x, y, z); give this model its own --db") in message
    other_kinds = StoreLayout([("site", False), ("level", False), ('x "1"', False), ("order", False), ("Seq", True),
                               ("ts", False), (LONG_NAME, False)])
    with pytest.raises(StoreError, match=r"features \(site \(text\), level \(number\), .*not this model's "
                                         r"\(site \(number\), level \(number\)"):
        store_module.open_store(db, layout=other_kinds)
    with KINDS["sites"].open(db) as s:   # its own model still opens it, nothing written meanwhile
        assert s.counts() == {"predictions": 0, "labelled": 0}


# ------------------------------------------------------------------ retention

@both_backends
@every_layout
def test_prune_by_age_in_chunks(db):
    with open_store(db, retention_seconds=100.0, max_rows=None) as s:
        s.add_predictions([record(i, ts=float(i)) for i in range(1_000)])
        s.add_labels([(r, 1.0, 2.0) for r in stored_ids(db)])
        before = s.stats()["prune_chunks"]
        assert s.prune(now=1_000.0 + 100.0 - 250.0, chunk=100) == 750   # keeps ts >= 750
        assert s.stats()["prune_chunks"] - before >= 8                    # 750 rows, 100 at a time
        assert s.counts() == {"predictions": 250, "labelled": 250}
        assert s.recent_inputs(1_000)[0] == record(750, ts=750.0).features
        assert s.prune(now=850.0) == 0
    assert query(db, "SELECT MIN(ts), COUNT(*) FROM predictions") == [(750.0, 250)]


@both_backends
@every_layout
def test_prune_by_count_keeps_the_newest(db):
    records = [record(i, ts=float(i)) for i in range(350)]
    with open_store(db, retention_seconds=None, max_rows=100) as s:
        s.add_predictions(records[200:])
        s.add_predictions(records[:200])
        assert s.prune(chunk=40) == 250
        assert s.counts()["predictions"] == 100
        assert s.stats()["prune_chunks"] >= 7
        assert s.recent_inputs(1_000) == [r.features for r in records[250:]]
        assert s.prune() == 0


@both_backends
def test_prune_without_limits_deletes_nothing(store, db):
    unlimited = open_store(db, retention_seconds=None, max_rows=None)
    try:
        unlimited.add_predictions([record(i, ts=0.0) for i in range(10)])
        assert unlimited.prune(now=1e12) == 0
    finally:
        unlimited.close()
    with pytest.raises(ValueError):
        store.prune(chunk=0)


# ------------------------------------------------------------------ export

@both_backends
@every_layout
def test_export_labelled_csv(store, db, tmp_path, kind):
    """The model's own columns, named as its features (whatever the table calls them), read from
    the store itself: export needs no model."""
    import pandas as pd

    a, b, c = record(1, ts=10.0), record(2, ts=20.0), record(3, ts=30.0)
    store.add_predictions([a, b, c])
    out = tmp_path / "labelled.csv"
    assert export_labelled(db, out) == 0
    header = [c.replace(LONG_NAME, LONG_NAME[:62]) for c in kind.export_columns] if not isinstance(db, Path) \
        else kind.export_columns   # PostgreSQL keeps 63 bytes of a name
    assert list(pd.read_csv(out).columns) == header
    if kind.name == "diamonds":
        assert out.read_text().strip() == ",".join(EXPORT_COLUMNS)

    store.add_labels([(c.id, 3.5, 40.0), (a.id, 1.5, 41.0)])
    assert export_labelled(db, out, fmt="csv") == 2     # beside the open store
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == header
    assert [r["id"] for r in rows] == [a.id, c.id]             # ordered by serving time
    first = rows[0]
    for name, value, text in zip(header[2:], a.features, kind.layout.is_text):
        assert (first[name] if text else float(first[name])) == value, name
    assert float(first["actual"]) == 1.5
    assert float(first["prediction"]) == a.prediction and float(first["label_ts"]) == 41.0
    assert first["model_version"] == "v1"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):
        export_labelled(db, tmp_path / "x.json", fmt="json")


@both_backends
@every_layout
def test_export_reads_a_closed_store_in_chunks_and_never_writes_it(db, tmp_path, monkeypatch):
    records = [record(i, ts=float(i)) for i in range(25)]
    with open_store(db) as s:
        s.add_predictions(records)
        s.add_labels([(r.id, float(i), 100.0 + i) for i, r in enumerate(records) if i % 2 == 0])
    before = db.read_bytes() if isinstance(db, Path) else query(db, "SELECT * FROM predictions ORDER BY id")
    monkeypatch.setattr(export_module, "_CHUNK", 4)         # several chunks, one header
    out = tmp_path / "out" / "labelled.csv"
    out.parent.mkdir()
    assert export_labelled(db, out) == 13
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [r.id for r in records[::2]]
    assert [float(r["actual"]) for r in rows] == [float(i) for i in range(0, 25, 2)]
    assert (db.read_bytes() if isinstance(db, Path) else query(db, "SELECT * FROM predictions ORDER BY id")) == before


def test_export_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no prediction store"):
        export_labelled(tmp_path / "missing.db", tmp_path / "x.csv")
    assert not (tmp_path / "missing.db").exists()            # not created by looking
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a prediction store"):
        export_labelled(other, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob("*.tmp"))


@both_backends
@every_layout
def test_export_labelled_parquet_or_a_clear_error_without_pyarrow(store, db, tmp_path, kind):
    """pyarrow is optional: with it the export round-trips, without it the error says what to install.
    Either way this test runs (and can fail). The format follows the file name unless fmt says."""
    import pandas as pd

    r = record(1)
    store.add_predictions([r])
    store.add_labels([(r.id, 2.0, 3.0)])
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ImportError, match="pyarrow") as caught:
            export_labelled(db, tmp_path / "x.parquet")
        assert caught.value.name == "pyarrow"
        assert not (tmp_path / "x.parquet").exists()
        return
    assert export_labelled(db, tmp_path / "x.parquet") == 1
    frame = pd.read_parquet(tmp_path / "x.parquet")
    assert list(frame.columns)[:3] == ["id", "ts", kind.layout.names[0]] and frame["id"][0] == r.id


@both_backends
@every_layout
def test_the_command_line_export_names_a_csv_file_when_parquet_cannot_be_written(store, db, tmp_path, caplog,
                                                                                   monkeypatch):
    import monitor

    r = record(1)
    store.add_predictions([r])
    store.add_labels([(r.id, 2.0, 3.0)])
    # no --model, and no default model.joblib (a checkout where `make run` trained one has it: the
    # diamond model's features would then be refused for this layout's store, as they should be)
    monkeypatch.setattr(monitor, "DEFAULT_MODEL_PATH", tmp_path / "model.joblib")
    config = monitor.MonitorConfig(db_path=db, model_path=tmp_path / "model.joblib")
    code = monitor._export_labelled(config, tmp_path / "x.parquet")
    if importlib.util.find_spec("pyarrow") is None:
        assert code == 2
        message = " ".join(rec.getMessage() for rec in caplog.records)
        assert "pip install pyarrow" in message and ".csv file" in message and "fmt=" not in message
    else:
        assert code == 0 and (tmp_path / "x.parquet").exists()
    assert monitor._export_labelled(config, tmp_path / "x.csv") == 0
    assert r.id in (tmp_path / "x.csv").read_text()


# ------------------------------------------------------------------ failures and recovery

def fill_until_full(s: Store, start: int) -> tuple[list[PredictionRecord], int]:
    """Cap the file at its current size (the writer connection's max_page_count) and write until
    SQLite reports "database or disk is full". Returns the records given and the index that failed."""
    pages = s._writer.execute("PRAGMA page_count").fetchone()[0]
    s._writer.execute(f"PRAGMA max_page_count = {pages}")
    given = []
    for i in range(start, start + 10_000):
        batch = [record(i * 10 + k) for k in range(10)]
        given.extend(batch)
        try:
            s.add_predictions(batch)
        except StoreError:
            return given, i
    raise AssertionError("the capped database never filled up")


def test_disk_full_raises_keeps_rows_and_recovers(db):
    with Store(db) as s:
        s.add_predictions([record(0)])
        given, _ = fill_until_full(s, start=1)
        assert not s.healthy
        assert "full" in s.last_error.lower()
        assert s.stats()["write_errors"] == 1 and s.stats()["pending"] > 0
        buffered = s.stats()["pending"]
        another = record(999_999)
        with contextlib.suppress(StoreError):    # one row may still fit a page; if not, it is kept
            s.add_predictions([another])
        given.append(another)
        assert not s.healthy

        s._writer.execute("PRAGMA max_page_count = 1073741823")   # space again
        late = record(1_000_001)
        s.add_predictions([late])                # a write tries its own rows, not the whole buffer
        assert s.stats()["pending"] >= buffered
        assert s.flush() >= buffered             # the buffer is caught up in chunks, then healthy
        assert s.healthy and s.last_error is None and s.stats()["pending"] == 0
    ids = set(stored_ids(db))
    assert {r.id for r in given} <= ids and late.id in ids
    assert len(ids) == len(given) + 2


@both_backends
@every_layout
def test_a_label_joins_a_prediction_buffered_while_the_database_was_away(store, monkeypatch):
    cut_off(store, monkeypatch)
    waiting = record(1)
    with pytest.raises(StoreError):
        store.add_predictions([waiting])
    with pytest.raises(StoreError):             # labels are never buffered: the sender retries
        store.add_labels([(waiting.id, 1.0, 2.0)])
    assert store.stats()["pending"] == 1 and not store.healthy
    monkeypatch.undo()
    # The database is back, but the buffer is not caught up yet: the label is not answered
    # 'unknown' (it would be lost) but refused, and the sender told to send it again.
    with pytest.raises(StoreError, match="send the labels again"):
        store.add_labels([(waiting.id, 1.0, 2.0)])
    other = record(2)
    store.add_predictions([other])              # a write tries its own rows only
    assert store.stats()["pending"] == 1 and not store.healthy
    assert store.add_labels([(other.id, 3.0, 2.0)])[0][0][0] == other.id   # other labels join
    assert store.flush() == 1                   # the maintenance loop's catch-up, done here at once
    known, unknown = store.add_labels([(waiting.id, 1.0, 2.0)])
    assert [k[0] for k in known] == [waiting.id] and unknown == []
    assert store.healthy and store.stats()["pending"] == 0


@both_backends
def test_the_retry_buffer_is_caught_up_by_flush_in_chunks(db, monkeypatch):
    """After an outage the buffer is written FLUSH_CHUNK rows per transaction by flush(), not by
    the next request: a request's latency never carries the whole buffer."""
    with open_store(db) as s:
        cut_off(s, monkeypatch)
        buffered = [record(i) for i in range(25)]
        for r in buffered:
            with pytest.raises(StoreError):
                s.add_predictions([r])
        monkeypatch.undo()
        monkeypatch.setattr(writer_module, "FLUSH_CHUNK", 10)
        late = record(100)
        before = s.stats()["commits"]
        s.add_predictions([late])
        assert s.stats()["commits"] == before + 1 and s.stats()["pending"] == 25
        assert s.flush() == 25
        assert s.stats()["commits"] == before + 1 + 3     # 10 + 10 + 5
        assert s.healthy and s.stats()["pending"] == 0 and s.counts()["predictions"] == 26
    assert set(stored_ids(db)) == {r.id for r in buffered} | {late.id}


def test_unwritable_database_recovers_by_reopening(db, monkeypatch):
    s = Store(db)
    try:
        s.add_predictions([record(0)])
        # The file turns read-only under the store (root ignores chmod, so swap the connection),
        # and reopening fails too for a while.
        s._writer.close()
        s._writer = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None,
                                    check_same_thread=False)
        lost = [record(1), record(2)]
        with pytest.raises(StoreError, match="readonly|read-only|READONLY"):
            s.add_predictions(lost[:1])
        assert not s.healthy and s._writer is None      # dropped, to be reopened

        real_connect = Store._connect

        def refuse(self):
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(Store, "_connect", refuse)
        with pytest.raises(StoreError, match="unable to open"):
            s.add_predictions(lost[1:])
        with pytest.raises(StoreError):
            s.flush()
        assert not s.healthy and s.stats()["pending"] == 2

        monkeypatch.setattr(Store, "_connect", real_connect)
        assert s.flush() == 2
        assert s.healthy and s.last_error is None
        assert {r.id for r in lost} <= set(stored_ids(db))
    finally:
        s.close()


def lock_table(db):
    """Another connection holding the table's write lock (SQLite: the database's), and its release."""
    if isinstance(db, Path):
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        blocker = psycopg.connect(db)
        blocker.execute("LOCK TABLE predictions IN EXCLUSIVE MODE")

    def release():
        if isinstance(db, Path):
            blocker.execute("ROLLBACK")
        else:
            blocker.rollback()
        blocker.close()
    return release


def quick_to_give_up(db) -> dict:
    """Options under which a store gives up on a held lock within a fraction of a second."""
    return {"busy_timeout": 0.1} if isinstance(db, Path) else {"timeout": 0.3}


@both_backends
def test_locked_too_long_raises_then_recovers(db):
    with open_store(db, **quick_to_give_up(db)) as s:
        release = lock_table(db)                      # another process holding the write lock
        r = record(1)
        try:
            with pytest.raises(StoreError, match="locked|lock timeout"):
                s.add_predictions([r])
            assert not s.healthy
            with pytest.raises(StoreError):
                s.add_labels([(r.id, 1.0, 1.0)])    # labels are not buffered: sender retries
        finally:
            release()
        assert s.flush() == 1 and s.healthy
        assert s.add_labels([(r.id, 1.0, 1.0)])[0][0][0] == r.id


@both_backends
def test_retry_buffer_is_bounded_and_keeps_the_newest(db, monkeypatch):
    with open_store(db, max_pending=5) as s:
        cut_off(s, monkeypatch)
        records = [record(i) for i in range(8)]
        for r in records:
            with pytest.raises(StoreError):
                s.add_predictions([r])
        assert s.stats()["pending"] == 5 and s.stats()["dropped"] == 3
        monkeypatch.undo()
        s.flush()
        assert s.counts()["predictions"] == 5
    assert set(stored_ids(db)) == {r.id for r in records[3:]}


@both_backends
def test_close_writes_the_buffer_and_later_calls_fail(db):
    s = open_store(db, **quick_to_give_up(db))
    release = lock_table(db)
    r = record(1)
    with pytest.raises(StoreError):
        s.add_predictions([r])
    release()
    s.close()
    s.close()                                    # idempotent
    assert not s.healthy
    for call in (lambda: s.add_predictions([record(2)]), lambda: s.add_labels([(r.id, 1.0, 1.0)]),
                 lambda: s.recent_inputs(1), s.flush, s.prune):
        with pytest.raises(StoreError, match="closed"):
            call()
    assert stored_ids(db) == [r.id]


# ------------------------------------------------------------------ PostgreSQL only: the fleet's store

def test_postgresql_schema_is_versioned_and_a_newer_one_refused(pg_url):
    PgStore(pg_url).close()
    PgStore(pg_url).close()                     # a second start migrates nothing
    assert query(pg_url, "SELECT version, description FROM schema_version ORDER BY version") == [
        (1, "predictions with their labels; fleet drift reports"),
        (2, "change tracking for fleet checks that read only what changed")]
    query_write(pg_url, "INSERT INTO schema_version (version, description) VALUES (99, 'from the future')")
    with pytest.raises(StoreError, match="schema version 99"):
        PgStore(pg_url)


def test_postgresql_the_next_migration_is_applied_once_in_order(pg_url, monkeypatch):
    """The path for the next schema change: append to MIGRATIONS; a database at the current
    version is brought to the next by the first replica that starts, rows kept."""
    from monitoring import pg_store

    with PgStore(pg_url) as s:
        s.add_predictions([record(1)])
    current = pg_store.SCHEMA_VERSION
    monkeypatch.setattr(pg_store, "MIGRATIONS", pg_store.MIGRATIONS + [
        (current + 1, "predictions get a note", ["ALTER TABLE predictions ADD COLUMN note text"])])
    monkeypatch.setattr(pg_store, "SCHEMA_VERSION", current + 1)
    with PgStore(pg_url) as s:
        assert s.counts()["predictions"] == 1
    with PgStore(pg_url):
        pass
    assert [r[0] for r in query(pg_url, "SELECT version FROM schema_version ORDER BY version")] == [
        *range(1, current + 2)]
    assert query(pg_url, "SELECT count(note) FROM predictions") == [(0,)]


def test_postgresql_records_without_a_time_get_the_database_clock(pg_url):
    """The monitor hands records with ts=None and labels with received_ts=None: the database stamps
    them, so the fleet's order does not depend on any replica's clock. The replica is recorded."""
    with PgStore(pg_url, replica="replica-a:5000") as s:
        first = record(1)._replace(ts=None)
        s.add_predictions([first])
        second = record(2)._replace(ts=None)
        s.add_predictions([second])
        s.add_labels([(second.id, 7.0, None)])
        s.replica = "replica-b:5000"
        s.add_labels([(first.id, 8.0, None)])
        assert s.recent_inputs(2) == [first.features, second.features]
        assert s.recent_labelled(2) == [(7.0, second.prediction), (8.0, first.prediction)]
    rows = query(pg_url, "SELECT id, ts, label_ts, replica, label_replica, served_at, "
                         "extract(epoch FROM clock_timestamp()) FROM predictions ORDER BY seq")
    (id1, ts1, label1, replica1, by1, served1, db_now), (id2, ts2, label2, _, by2, _, _) = rows
    assert (id1, id2) == (first.id, second.id)
    assert db_now - 60 < ts1 <= ts2 < label2 <= label1 <= db_now
    assert (replica1, by1, by2) == ("replica-a:5000", "replica-b:5000", "replica-a:5000")
    assert abs(served1 - ts1) < 60                 # the replica's own clock, kept beside


def test_postgresql_float_arrays_load_into_numpy_with_nulls_and_specials(pg_url):
    import math

    import psycopg

    from monitoring.pg_store import _columns_cursor

    with psycopg.connect(pg_url, autocommit=True) as conn:
        cursor = _columns_cursor(conn)
        plain, holes, empty = cursor.execute(
            "SELECT ARRAY[1.5, -2.25e300, 'Infinity', 'NaN']::float8[], ARRAY[NULL, 3, NULL]::float8[], "
            "'{}'::float8[]").fetchone()
    assert plain.dtype == "float64" and plain[:3].tolist() == [1.5, -2.25e300, math.inf] and math.isnan(plain[3])
    assert math.isnan(holes[0]) and holes[1] == 3.0 and math.isnan(holes[2]) and len(holes) == 3
    assert len(empty) == 0


@every_layout
def test_postgresql_windows_read_as_arrays_keep_the_row_order(pg_url, kind):
    """PgStore.windows reads each window as one row of aggregates in the order of a sorted,
    limited subquery: the same values, in the same order, as the rows read one by one (ties in
    ts broken by the order stored; `until` cuts by time)."""
    import numpy as np

    with open_store(pg_url) as s:
        records = [record(i, ts=1_000.0 + i // 3) for i in range(3_000)]      # three rows per ts
        for k in range(0, len(records), 500):
            s.add_predictions(records[k:k + 500])
        s.add_labels([(r.id, 10.0 + i, 5_000.0 + i // 2) for i, r in enumerate(records[::7])])
        for n, until in ((2_500, None), (5_000, None), (100, 1_500.0), (0, None)):
            columns, labels = s.windows(n, n, until)
            where = "" if until is None else f"WHERE ts <= {until}"
            layout = kind.layout
            rows = query(pg_url, f"SELECT {', '.join(layout.quoted)}, prediction, ts FROM predictions {where} "
                                 f"ORDER BY ts DESC, seq DESC LIMIT {n}")[::-1]
            # the features apart from the other columns: a feature may be named ts (kind "sites")
            assert list(columns) == ["features", "prediction", "ts"] and list(columns["features"]) == list(layout.names)
            read = [*columns["features"].values(), columns["prediction"], columns["ts"]]
            for j, (values, text) in enumerate(zip(read, [*layout.is_text, False, False])):
                assert list(values) == [row[j] for row in rows], (j, n, until)
                assert isinstance(values, list if text else np.ndarray)
            # with each label: its input's categories (the concept segments), or, for a
            # classifier, every feature (its probabilities are predicted again from them)
            with_labels = layout.names if kind.keep_features else layout.categorical
            assert list(labels) == ["features", "actual", "prediction", "label_ts"]
            assert list(labels["features"]) == list(with_labels)
            label_where = "" if until is None else f"AND label_ts <= {until}"
            quoted = [q for name, q in zip(layout.names, layout.quoted) if name in with_labels]
            labelled = query(pg_url, f"SELECT actual, prediction, label_ts, {', '.join(quoted)} FROM predictions "
                                     f"WHERE label_ts IS NOT NULL {label_where} "
                                     f"ORDER BY label_ts DESC, label_seq DESC LIMIT {n}")[::-1]
            read = [labels["actual"], labels["prediction"], labels["label_ts"], *labels["features"].values()]
            for j, values in enumerate(read):
                assert list(values) == [row[j] for row in labelled], (j, n, until)
        assert len(s.windows(2_500, 2_500)[1]["actual"]) == len(records[::7])


def test_postgresql_export_refuses_a_database_without_a_store(pg_url, tmp_path):
    with pytest.raises(StoreError, match="holds no prediction store"):
        export_labelled(pg_url, tmp_path / "x.csv")
    assert query(pg_url, "SELECT to_regclass('predictions')") == [(None,)]   # not created by looking
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob("*.tmp"))


def test_postgresql_an_unreachable_database_is_refused_at_open(postgres_server):
    url = postgres_server.url().replace(str(postgres_server.port), "1")
    with pytest.raises(StoreError, match="cannot open the store") as caught:
        PgStore(url, connect_timeout=2)
    assert postgres_server.password not in str(caught.value)


def query_write(db: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(db) as conn:
        conn.execute(sql)


# ------------------------------------------------------------------ in memory (--db '')

def join_scenario(s, a, b, c) -> list:
    """The same calls on any store; returns everything it answered."""
    out = [s.add_predictions([a, b]), s.add_predictions([c, PredictionRecord(a.id, 9.0, c.features, 1.0, "v9")])]
    out.append(s.add_labels([(a.id, 510.0, 2_000.0), ("f" * 32, 1.0, 2_000.0), (b.id, 520.0, 2_001.0)]))
    out.append(s.add_labels([(a.id, 999.0, 2_005.0)]))                             # resent: first=False
    out.append(s.add_labels([(c.id, 1.0, 2_010.0), (c.id, 2.0, 2_011.0)]))         # within a call: latest wins
    out.append(s.add_labels([]))
    out.append(s.counts())
    return out


def without_features(answers: list) -> list:
    """add_labels answers with the features left out (MemoryStore keeps only the grades)."""
    return [([k[:3] + k[4:] for k in a[0]], a[1]) if isinstance(a, tuple) else a for a in answers]


def grades_only(features: tuple, layout: StoreLayout = DIAMONDS) -> tuple:
    """The features as MemoryStore answers them: the grades (the concept segments need them), None
    for the numbers (200,000 rows of them as Python tuples would cost ~65 MB)."""
    return tuple(v if text else None for v, text in zip(features, layout.is_text))


@both_backends
@every_layout
def test_memory_store_answers_as_the_stores_do(db, kind):
    records = [record(1), record(2), record(3)]
    # what the monitor opens without a store: a classifier's keeps every feature
    memory = store_module.open_store(None, memory_capacity=10, layout=kind.layout, keep_features=kind.keep_features)
    kept = (lambda f: f) if kind.keep_features else (lambda f: grades_only(f, kind.layout))
    with open_store(db) as on_disk, memory as in_memory:
        from_memory, from_disk = join_scenario(in_memory, *records), join_scenario(on_disk, *records)
        assert len(from_memory[2][0]) == 2 and without_features(from_memory) == without_features(from_disk)
        assert [k[3] for answer in from_memory[2:6] for k in answer[0]] == [
            kept(k[3]) for answer in from_disk[2:6] for k in answer[0]]
        assert [k[3] for k in from_memory[2][0]] == [kept(records[0].features), kept(records[1].features)]
        assert in_memory.counts() == on_disk.counts() == {"predictions": 3, "labelled": 3}
        for key in ("rows_written", "labels_written", "pending", "dropped", "write_errors"):
            assert in_memory.stats()[key] == on_disk.stats()[key], key


def test_memory_store_join_answers():
    s = MemoryStore(capacity=10)
    a, b, c = record(1), record(2), record(3)
    s.add_predictions([a, b])
    s.add_predictions([c, PredictionRecord(a.id, 9.0, c.features, 1.0, "v9")])   # an id again: ignored
    known, unknown = s.add_labels([(a.id, 510.0, 2_000.0), ("f" * 32, 1.0, 2_000.0), (b.id, 520.0, 2_001.0)])
    assert unknown == ["f" * 32]
    ga, gb, gc = (grades_only(r.features) for r in (a, b, c))
    assert ga[1:4] == a.features[1:4] and ga[0] is None    # the grades kept, the numbers not
    assert known == [(a.id, 510.0, a.prediction, ga, True), (b.id, 520.0, b.prediction, gb, True)]
    assert s.add_labels([(a.id, 999.0, 2_005.0)]) == ([(a.id, 999.0, a.prediction, ga, False)], [])
    assert s.add_labels([(c.id, 1.0, 2_010.0), (c.id, 2.0, 2_011.0)]) == (
        [(c.id, 2.0, c.prediction, gc, True)], [])
    assert s.add_labels([]) == ([], [])
    assert s.counts() == {"predictions": 3, "labelled": 3}
    assert s.stats()["labels_written"] == 4 and s.stats()["rows_written"] == 3


def test_memory_store_forgets_the_oldest_beyond_capacity():
    s = MemoryStore(capacity=3)
    records = [record(i) for i in range(5)]
    s.add_predictions(records[:2])
    s.add_labels([(records[0].id, 1.0, 1.0), (records[1].id, 1.0, 1.0)])
    s.add_predictions(records[2:])                        # 5 held 3: records 0 and 1 are forgotten
    assert s.counts() == {"predictions": 3, "labelled": 0}
    assert s.stats()["pruned_rows"] == 2
    known, unknown = s.add_labels([(r.id, 2.0, 2.0) for r in records])
    assert unknown == [records[0].id, records[1].id]
    assert [(k[0], k[4]) for k in known] == [(r.id, True) for r in records[2:]]
    s.add_predictions([records[2]])                       # an id held already keeps its place
    s.add_predictions([record(5)])
    assert s.add_labels([(records[2].id, 3.0, 3.0)])[1] == [records[2].id]


def test_memory_store_has_the_rest_of_the_interface():
    s = MemoryStore(capacity=5)
    assert s.path is None and "memory" in s.describe()
    assert s.recent_inputs(10) == [] and s.recent_labelled(10) == []
    assert s.flush() == 0 and s.prune(now=1e12) == 0
    assert s.healthy and s.last_error is None
    assert s.stats() == {**zero_stats(), "pending": 0}
    with pytest.raises(ValueError):
        s.add_predictions([record(1), PredictionRecord("x", 1.0, (1.0, "Ideal"), 2.0, "v1")])
    assert s.counts()["predictions"] == 0
    with pytest.raises(ValueError):
        MemoryStore(capacity=0)
    s.close()
    s.close()
    assert not s.healthy
    for call in (lambda: s.add_predictions([record(2)]), lambda: s.add_labels([("x", 1.0, 1.0)]),
                 lambda: s.recent_inputs(1), s.flush, s.prune):
        with pytest.raises(StoreError, match="closed"):
            call()


def zero_stats() -> dict:
    return {"commits": 0, "rows_written": 0, "labels_written": 0, "write_errors": 0, "commit_seconds_sum": 0.0,
            "commit_seconds_max": 0.0, "prune_chunks": 0, "pruned_rows": 0, "dropped": 0, "rejected": 0}


@both_backends
def test_open_store_picks_the_file_the_database_or_memory(db):
    assert isinstance(open_store(None), MemoryStore) and isinstance(open_store(""), MemoryStore)
    assert open_store(None, memory_capacity=7).capacity == 7
    with open_store(db, max_rows=10, retention_seconds=None) as s:
        assert s.max_rows == 10
        if isinstance(db, Path):
            assert isinstance(s, Store) and s.path == db
            assert str(db) in s.describe()
        else:   # the password never shows: not in /healthz's path, not in the log line
            assert isinstance(s, PgStore) and s.url == db
            password = db.split(":")[2].split("@")[0]
            assert password not in s.path and password not in s.describe()
            assert s.path == db.replace(password, "***") and s.path in s.describe()


@both_backends
def test_close_stops_the_writer_thread(db):
    before = threading.active_count()
    s = open_store(db)
    own = 2 if isinstance(s, PgStore) else 1      # the writer; PostgreSQL's watchdog too
    assert s._thread.is_alive() and threading.active_count() == before + own
    s.add_predictions([record(1)])
    s.close()
    assert not s._thread.is_alive() and threading.active_count() == before


def test_the_monitor_shows_a_memory_store_in_healthz_and_metrics(small_artifact_path, small_artifact):
    from prometheus_client import CollectorRegistry

    from monitor import MonitorConfig, start_monitor
    from tests.helpers import metric_value, request

    config = MonitorConfig(model_path=small_artifact_path, port=0, check_interval=0, db_path=None,
                           max_tracked_predictions=2)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        row = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}
        ids = request(handle.url, "POST", "/predict", [row] * 3)[2]["ids"]
        assert request(handle.url, "POST", "/feedback", [{"id": i, "actual": 1700.0} for i in ids])[2] == {
            "accepted": 2, "unknown": ids[:1]}                 # the oldest of 3 was forgotten
        status, _, health = request(handle.url, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok"
        assert health["store"] == {"path": None, "healthy": True, "error": None, "pending": 0,
                                   "acknowledged_not_recorded": 0, "predictions": 2, "labelled": 2}
        text = request(handle.url, "GET", "/metrics")[2]
        assert metric_value(text, "store_healthy") == 1
        assert metric_value(text, "store_rows", {"kind": "predictions"}) == 2
        assert metric_value(text, "store_pending_records") == 0
    finally:
        handle.stop()


# ------------------------------------------------------------------ crash

CHILD = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, sys.argv[2])
    from monitoring.store import PredictionRecord, open_store

    store = open_store(sys.argv[1] if "://" in sys.argv[1] else __import__("pathlib").Path(sys.argv[1]))
    out = threading.Lock()

    def work(k):
        i = 0
        while True:
            r = PredictionRecord.create((0.5, "Ideal", "G", "VS1", 61.0, 57.0), float(i), "crash")
            store.add_predictions([r])
            with out:                      # acknowledged only once add_predictions returned
                sys.stdout.write(r.id + "\\n")
                sys.stdout.flush()
            i += 1

    for k in range(4):
        threading.Thread(target=work, args=(k,), daemon=True).start()
    threading.Event().wait()
""")


@both_backends
def test_sigkill_loses_no_acknowledged_prediction(db):
    if isinstance(db, Path):
        db.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        while len(acked) < 2_000:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err
    acked += [x for x in rest.split("\n") if len(x) == 32]   # complete lines only
    assert len(acked) >= 2_000
    with open_store(db) as s:                                # WAL recovery on open
        assert s.counts()["predictions"] >= len(acked)
    assert set(acked) <= set(stored_ids(db))


# ------------------------------------------------------------------ measurement

def test_bench_store_reports_rates(tmp_path):
    result = bench_store(tmp_path / "bench.db", threads=4, n=50)
    assert result["rows"] == 200 and result["calls"] == 200
    assert result["rows_per_s"] > 0 and result["commits_per_s"] > 0
    assert 1 <= result["rows_per_commit"] <= 4


def test_store_bench_runs_as_a_script(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "store_bench.py"), "--threads", "2", "-n", "20",
                           "--sync", "NORMAL", "--dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    serial, concurrent = (json.loads(line) for line in proc.stdout.splitlines())
    assert (serial["threads"], serial["rows"]) == (1, 20) and serial["rows_per_commit"] == 1.0
    assert (concurrent["threads"], concurrent["rows"]) == (2, 40) and concurrent["synchronous"] == "NORMAL"
    assert list(tmp_path.iterdir()) == []                   # the scratch database is gone


@both_backends
def test_one_callers_refused_record_does_not_fail_the_group_it_shares(store):
    """A record the database refuses (a lone surrogate cannot be encoded as UTF-8) sent while 16
    other threads write: only its own call fails; every other row and label is committed and the
    store stays healthy."""
    base = [record(i) for i in range(400)]
    store.add_predictions(base)
    poisoned = record(10_000)._replace(id="bad\ud800id")
    errors, refusals = [], []
    start = threading.Barrier(18)

    def writer(k: int) -> None:
        start.wait()
        try:
            for i in range(25):
                store.add_predictions([record(1_000 + 25 * k + i)])
                store.add_labels([(base[(25 * k + i) % 400].id, 100.0 + k, 2_000.0)])
        except StoreError as exc:
            errors.append(exc)

    def poisoner() -> None:
        start.wait()
        for _ in range(10):
            for call in (lambda: store.add_predictions([poisoned]),
                         lambda: store.add_labels([("\ud800", 1.0, 2_000.0)])):
                try:
                    call()
                except StoreError as exc:
                    refusals.append(str(exc))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
    threads += [threading.Thread(target=poisoner), threading.Thread(target=poisoner)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [], errors[:3]
    assert len(refusals) == 40 and all("refused this record" in r for r in refusals)
    assert store.healthy and store.last_error is None
    assert store.stats()["rejected"] == 40
    assert store.counts()["predictions"] == 400 + 16 * 25
    assert store.counts()["labelled"] == 400


def test_bench_store_measures_postgresql_too(pg_url):
    result = bench_store(pg_url, threads=4, n=50)
    assert result["synchronous"] == "POSTGRESQL" and result["rows"] == 200 and result["calls"] == 200
    assert result["rows_per_s"] > 0 and 1 <= result["rows_per_commit"] <= 4
