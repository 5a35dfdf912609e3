"""The fleet check's two windows kept between checks by the replica that ran them, so that a check
reads from PostgreSQL only what changed since that replica's last read, not 10,000 rows twice
(README, "Running several replicas": reading both windows was most of a fleet check's time).

Exact, not approximate: the windows a replica scores are always the ones a full read would give
in the same snapshot, whatever the other replicas, other sessions, late commits and retention did
in between. How:

* What changed is found by TRANSACTION, not by time. Every row carries `changed`, the id (xid8) of
  the transaction that inserted it or last updated it (a column default, and a BEFORE UPDATE
  trigger for labels and relabels), indexed; every deleted row is logged by an AFTER DELETE
  trigger in `predictions_gone` with the deleting transaction's id (schema migration 2 in
  pg_store.py). Each read records its snapshot's xmin, `pg_snapshot_xmin(pg_current_snapshot())`:
  every transaction below it had ended when the read was made, so whatever the read could not see
  (a transaction still open, however long, or one that commits later with an earlier clock time)
  has an id >= xmin. The next read asks, in one statement and so one snapshot, for the rows with
  `changed >= xmin` and the rows gone with `xid >= xmin`: a superset of what changed (rows seen
  again are harmless), with no bound on how late a transaction may commit.
* A row is known by `seq` (its identity, unique per stored row: a relabel keeps it, an id stored
  again after a prune gets a new one), so a relabel replaces its old entry and a logged deletion
  removes exactly the row that was deleted.
* Each window keeps its newest n rows and a boundary: every row at or above the boundary (in the
  window's order: (ts, seq), or (label_ts, label_seq)) is known, nothing below it is. Changed rows
  below the boundary are ignored; if deletions leave fewer than n rows above it, nothing tells
  which rows below come next, and the check does the full read instead (as it does the first
  time, after a restart, on a replica that never checked, when the table was emptied or recreated
  (its relfilenode changed), when the deletion log was trimmed past the cached read, and when more
  rows changed than both windows hold, where a full read is the cheaper one).

Independent of which features the table holds: the caller gives the feature columns (SQL name,
name, text or not) and which of them the labelled window carries (default: the grades; a
classifier's fleet check asks for every feature, to score its labels again). Inside, a feature is
keyed by its position, not its name: a feature may be named "ts", "prediction" or "_seq", the
windows' own keys; the windows handed out put features under "features", as
pg_store._window_and_label_columns does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, NamedTuple

import numpy as np

_SEPARATOR = "\x1f"   # ASCII unit separator: no grade contains it (pg_store._SEPARATOR)
_MAX_SEQ = 2 ** 63 - 1
GONE_RETENTION = 3600.0   # seconds the deletion log keeps an entry (pg_store.prune trims it)


class Feature(NamedTuple):
    sql: str      # the column in the predictions table (quoted as needed)
    name: str     # the name under the windows' "features"
    text: bool    # a grade (text) rather than a number


class _Side(NamedTuple):
    """One window: `columns` oldest first (including the hidden order keys "_k1", "_k2" and the
    rows' "_seq"), and `bound`, the key (k1, k2) of its oldest row when rows below it may exist
    that it does not hold (None: it holds every row there is)."""
    columns: dict
    bound: tuple[float, float] | None

    def __len__(self) -> int:
        return len(self.columns["_seq"])


def _text_agg(column: str) -> str:
    return f"string_agg(COALESCE({column}, ''), E'\\x1f')"


class TextColumn(Sequence):
    """A window's grades as codes into a vocabulary of the distinct texts (None for none): reads as
    a sequence of text, as a list would, and lets monitoring/fleet.py map each distinct text to
    its schema code once instead of each row (and the windows move int32 codes, not Python objects,
    when they merge)."""
    __slots__ = ("codes", "vocab")

    def __init__(self, codes: np.ndarray, vocab: np.ndarray):
        self.codes, self.vocab = codes, vocab   # vocab: an object array, indexed by the codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        return self.vocab[self.codes[i]].tolist() if isinstance(i, slice) else self.vocab[self.codes[i]]

    def __iter__(self):
        return iter(self.tolist())

    def tolist(self) -> list:
        return self.vocab[self.codes].tolist()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and self.tolist() == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"TextColumn({self.tolist()!r})"


class _Vocabulary:
    """The distinct texts of one feature seen by a cache, in the order first seen ('' read back as
    None: the aggregate's stand-in for NULL)."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.texts: list[str | None] = []
        self.array = np.empty(0, dtype=object)

    def codes(self, value: str | None, n: int) -> np.ndarray:
        """A string_agg of n texts read back as codes."""
        if not n:
            return np.empty(0, dtype=np.int32)
        parts = value.split(_SEPARATOR)
        new = [v for v in set(parts) if v not in self.index]
        if new:
            for v in new:
                self.index[v] = len(self.texts)
                self.texts.append(v or None)
            self.array = np.empty(len(self.texts), dtype=object)
            self.array[:] = self.texts
        return np.fromiter(map(self.index.__getitem__, parts), dtype=np.int32, count=n)


def _floats(value, n: int) -> np.ndarray:
    return np.empty(0) if value is None else np.asarray(value, dtype=np.float64)[:n]


def _frozen(columns: dict) -> dict:
    """The cached arrays are handed to the check as they are (no copy): read-only, so that nothing
    downstream can change the cache by accident."""
    for values in columns.values():
        values.setflags(write=False)
    return columns


def _order(k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """Indices sorting (k1, k2) ascending as PostgreSQL orders them: NaN above every number (and
    equal to NaN), -0.0 equal to 0.0."""
    nan = np.isnan(k1)
    return np.lexsort((k2, np.where(nan, 0.0, k1), nan))


def _below(k1: np.ndarray, k2: np.ndarray, bound: tuple[float, float]) -> np.ndarray:
    """(k1, k2) < bound, element by element, in PostgreSQL's order (_order)."""
    b1, b2 = bound
    nan, bnan = np.isnan(k1), math.isnan(b1)
    v, bv = np.where(nan, 0.0, k1), 0.0 if bnan else b1
    return (nan < bnan) | ((nan == bnan) & ((v < bv) | ((v == bv) & (k2 < b2))))


def _merge(side: _Side, rows: dict, candidate: np.ndarray, replaced: np.ndarray, n: int) -> _Side | None:
    """`side` with the rows whose seq is in `replaced` (changed or gone) taken out and the
    `candidate` changed rows at or above its boundary put in, cut to the newest n. None when fewer
    than n rows are known above a boundary: only a full read can tell what comes next."""
    keep = ~np.isin(side.columns["_seq"], replaced)
    take = candidate if side.bound is None else candidate & ~_below(rows["_k1"], rows["_k2"], side.bound)
    if keep.all() and not take.any():
        return side   # nothing of this window changed
    columns = {name: np.concatenate([values[keep], rows[name][take]]) for name, values in side.columns.items()}
    order = _order(columns["_k1"], columns["_k2"])
    bound = side.bound
    if len(order) < n and bound is not None:
        return None
    if len(order) > n:
        order = order[len(order) - n:]
        bound = (float(columns["_k1"][order[0]]), float(columns["_k2"][order[0]])) if n else None
    return _Side(_frozen({name: values[order] for name, values in columns.items()}), bound)


def _side_from_rows(columns: dict, n: int, count: int) -> _Side:
    """A window read in full (LIMIT n gave `count` rows), sorted here: an aggregate's order is not
    promised, the LIMIT's rows are."""
    order = _order(columns["_k1"], columns["_k2"])
    columns = _frozen({name: values[order] for name, values in columns.items()})
    bound = None
    if count >= n and count:   # the LIMIT was reached: older rows may exist
        bound = (float(columns["_k1"][0]), float(columns["_k2"][0]))
    return _Side(columns, bound)


class WindowCache:
    """The windows of this replica's last fleet check and the snapshot they were read in.
    `read(conn, n, m)` gives the windows now, as pg_store._window_and_label_columns would
    (numbers float64 arrays, grades lists, oldest first), reading only what changed when it can.
    Not thread-safe: PgStore calls it under its check lock."""

    def __init__(self, features: Sequence[Feature], cursor: Callable, label_features: Sequence[str] | None = None):
        features = list(features)
        self._names = [f.name for f in features]
        # keyed by position (an int): no feature name can clash with the string keys of the windows
        self._features = [Feature(f.sql, k, f.text) for k, f in enumerate(features)]
        if label_features is None:
            label_features = [f.name for f in features if f.text]
        self._labelled = [self._features[self._names.index(name)] for name in label_features]
        self._cursor = cursor   # a binary cursor loading float8[] as numpy (pg_store._columns_cursor)
        self._state: tuple | None = None   # (n, m, xmin, filenode, inputs, labels)
        self._vocabulary: dict[str, _Vocabulary] = {}   # by feature name, both windows'
        self.reads = {"full": 0, "incremental": 0, "changed_rows": 0}
        feature_sql = ", ".join(f.sql for f in self._features)
        aggs = ", ".join(_text_agg(f.sql) if f.text else f"array_agg({f.sql})" for f in self._features)
        grade_sql = "".join(f", {g.sql}" for g in self._labelled)
        grade_aggs = "".join(f", {_text_agg(g.sql) if g.text else f'array_agg({g.sql})'}" for g in self._labelled)
        snapshot = ("pg_snapshot_xmin(pg_current_snapshot())::text, pg_relation_filenode('predictions')::text, "
                    "(SELECT xid::text FROM predictions_gone_horizon)")
        self._full_sql = (
            f"SELECT {snapshot}, w.*, l.* FROM "
            f"(SELECT count(*), array_agg(ts), array_agg(seq::float8), {aggs}, array_agg(prediction) FROM "
            f"(SELECT seq, ts, {feature_sql}, prediction FROM predictions "
            f"ORDER BY ts DESC, seq DESC LIMIT %s) i) w, "
            f"(SELECT count(*), array_agg(label_ts), array_agg(label_seq::float8), array_agg(seq::float8), "
            f"array_agg(actual), array_agg(prediction){grade_aggs} FROM "
            f"(SELECT seq, label_ts, label_seq, actual, prediction{grade_sql} FROM predictions "
            f"WHERE label_ts IS NOT NULL ORDER BY label_ts DESC, label_seq DESC LIMIT %s) j) l")
        # the changed rows (any order) and the rows gone that either window may hold
        self._changed_sql = (
            f"SELECT {snapshot}, c.*, g.* FROM "
            f"(SELECT count(*), array_agg(seq::float8), array_agg(ts), {aggs}, array_agg(prediction), "
            # NaN rather than NULL for rows without a label: the array loader's fast path (no
            # label has a NaN label_seq; actual and label_ts are read only where one is set)
            f"array_agg(COALESCE(actual, 'NaN')), array_agg(COALESCE(label_ts, 'NaN')), "
            f"array_agg(COALESCE(label_seq::float8, 'NaN')) FROM "
            f"(SELECT seq, ts, {feature_sql}, prediction, actual, label_ts, label_seq FROM predictions "
            # Bounded on both sides: without statistics on `changed` (a new column, a table not
            # analysed yet) PostgreSQL estimates `changed >= x` at a third of the table and scans
            # it all; a range gets its 0.5% default, and the index. Every row this snapshot sees
            # was changed below its xmax.
            f"WHERE changed >= %s::xid8 AND changed < pg_snapshot_xmax(pg_current_snapshot()) LIMIT %s) r) c, "
            f"(SELECT array_agg(seq::float8) FROM predictions_gone WHERE xid >= %s::xid8 "
            f"AND ((ts, seq) >= (%s, %s) OR seq >= %s)) g")

    def read(self, conn, n: int, m: int) -> tuple[dict, dict]:
        n, m = max(0, int(n)), max(0, int(m))
        state = self._state
        self._state = None   # a read that fails half way leaves no cache: the next one is in full
        # a vocabulary only grows: past a few texts per row held, start afresh (a full read)
        fresh = all(len(v.texts) <= 4 * (n + m) + 64 for v in self._vocabulary.values())
        if state is not None and state[:2] == (n, m) and fresh:
            done = self._incremental(conn, state)
            if done is not None:
                self.reads["incremental"] += 1
                return done
        self.reads["full"] += 1
        return self._full(conn, n, m)

    # ------------------------------------------------------------------ reads

    def _full(self, conn, n: int, m: int) -> tuple[dict, dict]:
        row = self._cursor(conn).execute(self._full_sql, (n, m), prepare=False).fetchone()
        self._vocabulary = {f.name: _Vocabulary() for f in self._features if f.text}
        xmin, filenode, _ = row[:3]
        values = iter(row[3:])
        count = next(values)
        inputs = {"_k1": _floats(next(values), count)}
        inputs["_k2"] = inputs["_seq"] = _floats(next(values), count)
        for f in self._features:
            inputs[f.name] = self._codes(f, next(values), count) if f.text else _floats(next(values), count)
        inputs["prediction"] = _floats(next(values), count)
        inputs["ts"] = inputs["_k1"]
        count = next(values)
        labels = {"_k1": _floats(next(values), count), "_k2": _floats(next(values), count),
                  "_seq": _floats(next(values), count), "actual": _floats(next(values), count),
                  "prediction": _floats(next(values), count)}
        labels["label_ts"] = labels["_k1"]
        for g in self._labelled:
            labels[g.name] = self._codes(g, next(values), count) if g.text else _floats(next(values), count)
        state = (n, m, int(xmin), filenode, _side_from_rows(inputs, n, len(inputs["_seq"])),
                 _side_from_rows(labels, m, len(labels["_seq"])))
        self._state = state
        return self._windows(state)

    def _incremental(self, conn, state: tuple) -> tuple[dict, dict] | None:
        n, m, xmin, filenode, inputs, labels = state
        cap = n + m   # more changed rows than both windows hold: the full read costs less
        in_bound = (float("nan"), _MAX_SEQ) if not len(inputs) else (
            (-math.inf, -_MAX_SEQ - 1) if inputs.bound is None else inputs.bound)
        label_seq = int(labels.columns["_seq"].min()) if len(labels) else _MAX_SEQ
        row = self._cursor(conn).execute(
            self._changed_sql, (str(xmin), cap + 1, str(xmin), in_bound[0], int(in_bound[1]), label_seq),
            prepare=False).fetchone()
        new_xmin, new_filenode, horizon = row[:3]
        if new_filenode != filenode or (horizon is not None and int(horizon) >= xmin):
            return None   # emptied or recreated, or the deletion log no longer reaches back to xmin
        values = iter(row[3:])
        count = next(values)
        if count > cap:
            return None
        seq = _floats(next(values), count)
        rows = {"_seq": seq, "ts": _floats(next(values), count)}
        for f in self._features:
            rows[f.name] = self._codes(f, next(values), count) if f.text else _floats(next(values), count)
        rows["prediction"] = _floats(next(values), count)
        rows["actual"] = _floats(next(values), count)
        rows["label_ts"] = _floats(next(values), count)
        label_seq = _floats(next(values), count)
        gone = _floats(next(values), 1 << 62)
        self.reads["changed_rows"] += count
        replaced = np.concatenate([seq, gone])
        inputs = _merge(inputs, {**rows, "_k1": rows["ts"], "_k2": seq}, np.ones(count, dtype=bool), replaced, n)
        if inputs is None:
            return None
        labels = _merge(labels, {**rows, "_k1": rows["label_ts"], "_k2": label_seq},
                        ~np.isnan(label_seq), replaced, m)
        if labels is None:
            return None
        state = (n, m, int(new_xmin), new_filenode, inputs, labels)
        self._state = state
        return self._windows(state)

    def _codes(self, feature: Feature, value: str | None, n: int) -> np.ndarray:
        return self._vocabulary[feature.name].codes(value, n)

    def _windows(self, state: tuple) -> tuple[dict, dict]:
        """The windows as pg_store._window_and_label_columns gives them (grades as TextColumn
        sequences rather than lists); the arrays are the cache's own, read-only."""
        def out(side: _Side, features: list[Feature], names: list[str]) -> dict:
            columns = {"features": {self._names[f.name]: TextColumn(side.columns[f.name], self._vocabulary[f.name].array)
                                    if f.text else side.columns[f.name] for f in features}}
            return {**columns, **{name: side.columns[name] for name in names}}

        inputs, labels = state[4], state[5]
        return (out(inputs, self._features, ["prediction", "ts"]),
                out(labels, self._labelled, ["actual", "prediction", "label_ts"]))
