"""Sequential drift detection: CUSUMs updated with every served batch, between the windowed checks.

The window tests of drift.py decide at each check; a change that starts just after one waits for
the next. Page's (1954) cumulative sum watches every row as it arrives instead: for a stream x_t
that is standard normal without drift, the one-sided CUSUM

    S_0 = 0,   S_t = max(0, S_{t-1} + x_t - k)

stays near zero while the mean of x is below k, and climbs at rate (mean - k) once it is above; it
alarms when S_t > h. "Down" runs the same on -x. k (the allowance) is half the smallest shift in
standard deviations worth catching fast; h (the threshold) sets how often clean traffic alarms.
When it alarms, the change began about where S last left zero (`since`, Page's change-point estimate).

    SequentialDataDetector     two-sided CUSUMs of each numeric feature's reference normal score
                               (NormalScoreDetector's transform: Phi^-1 of the reference mid-rank CDF)
    SequentialConceptDetector  two-sided CUSUMs of the labels' PIT normal scores (ConceptDriftDetector's
                               transform), for every label and within each third of the predicted-price
                               bands (a price change confined to large stones dilutes in the whole)

Thresholds are calibrated by simulation at start (`calibrate`): streams of reference rows drawn with
replacement, whole rows at a time (the features are correlated), run through every CUSUM of the
detector; each CUSUM gets the same share of the budget, and the share is set so that at most
`budget` of the simulated 50-row intervals hold an alarm of any of them (the false-alarm unit of the
windowed checks, so the two add up). Seeded and cached per reference: ~0.5 s the first time.
The simulated CUSUMs are never restarted, so an excursion above h spans several intervals: the
calibration counts more alarm intervals than the restart policy below gives (conservative).

After an alarm the CUSUM that crossed restarts from zero (Page's scheme): a drift that persists
alarms again after about as many rows as it took the first time.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import threading
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import special

from monitoring.drift import mid_rank_pit

# Share of clean 50-row intervals allowed to hold a sequential alarm, per detector (data, concept).
# The windowed tests of a check flag 0.4-0.5% of clean checks (README); with this the two together
# stay under the 1% target. In evaluate_drift.py the data CUSUMs flag 0.33% of clean intervals, the
# concept ones 0.48% (0.5-0.7% at 0.004): its reference and its traffic are two fixed halves of the
# held-out rows, ~1,800 a third of the bands, whose chance differences the simulation sees only on
# average.
DEFAULT_BUDGET = 0.003
# Rows per false-alarm interval: a check every 50 rows is what evaluate_drift.py and issue #11 compare at.
INTERVAL = 50
# Allowances k in standard deviations. Data: table + 1.0 moves its normal score by 0.45 sd, carat^1.5
# weighted stones carat's by 0.8; k = 0.25 is the optimum for ~0.5 sd and still fast for 0.8.
DATA_ALLOWANCE = 0.25
# Concept: prices x1.15 move the PIT scores of the stones they touch by 1.4-1.6 sd.
CONCEPT_ALLOWANCE = 0.5


@dataclass
class CusumAlarm:
    """One CUSUM crossing its threshold."""
    subject: str  # the feature, or the concept segment ("all", "price 6,300+")
    direction: str  # "up" | "down"
    statistic: float  # the CUSUM when it crossed
    threshold: float
    row: int  # the row it crossed at: rows this detector has seen, 1 = its first
    since: int  # the first row after the CUSUM last left zero: where the change began
    since_time: float | None = None  # arrival time of that row, when known

    def to_dict(self) -> dict:
        return {"subject": self.subject, "direction": self.direction, "statistic": float(self.statistic),
                "threshold": float(self.threshold), "row": int(self.row), "since": int(self.since),
                "since_time": self.since_time}


@dataclass
class SequentialResult:
    """After an update: each subject's largest CUSUM now (`statistics`: subject -> (statistic,
    threshold, direction)), the alarms the update raised, and rows seen in total."""
    test: str
    rows: int
    alarm: bool
    alarms: list[CusumAlarm] = field(default_factory=list)
    statistics: dict[str, tuple[float, float, str]] = field(default_factory=dict)


class Cusum:
    """A bank of one-sided CUSUMs run over the rows of increment matrices: column j of a batch is
    x_j - k_j for the rows CUSUM j watches and 0 for the others (a label outside its segment leaves
    it where it was). Vectorised over a batch: S_t = C_t - min(-S_0, min_{s<=t} C_s), C the
    cumulative sum of the increments; a crossing restarts that CUSUM and the rest of the batch is
    run again from there (rare)."""

    def __init__(self, thresholds: np.ndarray):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.state = np.zeros(self.thresholds.size)
        self.rows = 0  # rows seen
        self.last_zero = np.zeros(self.thresholds.size, dtype=np.int64)  # the row each CUSUM last sat at zero

    def reset(self) -> None:
        self.state[:] = 0.0
        self.last_zero[:] = self.rows

    # Batches up to this many rows run the recursion row by row in Python: a served request is
    # often one row, where numpy's per-call overhead is most of the cost.
    SMALL = 16

    def update(self, increments: np.ndarray) -> list[tuple[int, int, float, int]]:
        """Run the rows of `increments` (rows x CUSUMs); returns the crossings as (CUSUM index,
        row, statistic, since), in row order."""
        y = np.asarray(increments, dtype=np.float64).reshape(-1, self.thresholds.size)
        if len(y) <= self.SMALL:
            return self._update_rows(y)
        crossings = []
        while len(y):
            s = np.cumsum(y, axis=0)
            s -= np.minimum(np.minimum.accumulate(s, axis=0), -self.state)
            over = s > self.thresholds
            hit = over.any(axis=1)
            end = int(np.argmax(hit)) + 1 if hit.any() else len(y)
            self._note_zeros(s[:end])
            if end == len(y) and not hit[-1]:
                self.state = s[-1].copy()
                self.rows += len(y)
                break
            row = self.rows + end
            fired = np.flatnonzero(over[end - 1])
            for j in fired:
                crossings.append((int(j), row, float(s[end - 1, j]), int(self.last_zero[j]) + 1))
            self.state = s[end - 1].copy()
            self.state[fired] = 0.0  # restart the CUSUMs that crossed
            self.rows = row
            self.last_zero[fired] = row
            y = y[end:]
        return crossings

    def _update_rows(self, y: np.ndarray) -> list[tuple[int, int, float, int]]:
        """`update`'s recursion one row at a time (the same decisions as the vectorised form)."""
        crossings = []
        state, last, h = self.state.tolist(), self.last_zero.tolist(), self.thresholds.tolist()
        row = self.rows
        for increments in y.tolist():
            row += 1
            for j, step in enumerate(increments):
                value = state[j] + step
                if value <= 0.0:
                    value, last[j] = 0.0, row
                elif value > h[j]:
                    crossings.append((j, row, value, last[j] + 1))
                    value, last[j] = 0.0, row  # restart
                state[j] = value
        self.rows = row
        self.state = np.array(state)
        self.last_zero = np.array(last, dtype=np.int64)
        return crossings

    def _note_zeros(self, s: np.ndarray) -> None:
        zero = s <= 0.0
        seen = zero.any(axis=0)
        last = len(s) - 1 - np.argmax(zero[::-1], axis=0)
        self.last_zero = np.where(seen, self.rows + last + 1, self.last_zero)


def block_maxima(increments: np.ndarray, warmup: int, interval: int = INTERVAL) -> np.ndarray:
    """For simulated streams (streams x rows x CUSUMs of increments), each CUSUM's largest value
    within each `interval`-row block after the first `warmup` rows, never restarted:
    (blocks, CUSUMs)."""
    s = np.cumsum(increments, axis=1)
    s -= np.minimum(np.minimum.accumulate(s, axis=1), 0.0)
    s = s[:, warmup:]
    p, n, j = s.shape
    n -= n % interval
    return s[:, :n].reshape(p, n // interval, interval, j).max(axis=2).reshape(-1, j)


def thresholds_for(maxima: np.ndarray, budget: float) -> np.ndarray:
    """Thresholds, one per CUSUM, each at the same upper quantile of its block maxima, that quantile
    chosen (bisection on the rank) so that at most a share `budget` of the blocks hold any crossing."""
    ordered = np.sort(maxima, axis=0)
    n = len(ordered)
    lo, hi = 0, int(np.ceil(budget * n))  # blocks above each threshold, per CUSUM
    while lo < hi:  # the most blocks above each CUSUM's threshold with the family within budget
        mid = (lo + hi + 1) // 2
        if (maxima > ordered[n - 1 - mid]).any(axis=1).mean() <= budget:
            lo = mid
        else:
            hi = mid - 1
    return ordered[n - 1 - lo].astype(np.float64)


_CACHE: dict[str, np.ndarray] = {}
_CACHE_LOCK = threading.Lock()


def calibrate(rows, increments, budget: float, seed: int = 0, streams: int = 2000,
              length: int = 1300, warmup: int = 300, chunk: int = 250) -> np.ndarray:
    """Thresholds for the CUSUMs that `increments(rows) -> (rows x CUSUMs)` defines, by simulation:
    `streams` streams of `length` reference rows drawn with replacement (whole rows), the block
    maxima after `warmup` rows, `thresholds_for` at `budget`. `rows`: the reference rows, or a
    function (rng) -> rows giving each `chunk` of streams its own (a reference resampled, so that
    the simulation sees the reference's own noise). Seeded; cached by the reference's bytes and the
    settings, so monitors started on one artifact in one process calibrate once."""
    source = rows if callable(rows) else None
    fixed = None if source else np.ascontiguousarray(rows, dtype=np.float64)
    ident = getattr(source, "key", None) if source else (hashlib.sha256(fixed.tobytes()).hexdigest(), fixed.shape)
    key = hashlib.sha256(repr((ident, budget, seed, streams, length, warmup, chunk,
                               getattr(increments, "key", None))).encode()).hexdigest()
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key].copy()
    rng = np.random.default_rng(seed)
    maxima = []
    for start in range(0, streams, chunk):
        p = min(chunk, streams - start)
        # float32: half the memory traffic; rounding is far below the thresholds' own noise
        reference = (fixed if source is None else source(rng)).astype(np.float32)
        idx = rng.integers(0, len(reference), size=p * length)
        y = increments(reference[idx]).reshape(p, length, -1)
        maxima.append(block_maxima(y, warmup))
    h = thresholds_for(np.concatenate(maxima), budget)
    with _CACHE_LOCK:
        _CACHE[key] = h
    return h.copy()


class _Increments:
    """x_j - k for up, -x_j - k for down, per CUSUM; 0 outside the CUSUM's rows (mask column)."""

    def __init__(self, column: np.ndarray, sign: np.ndarray, allowance: float, mask_column: np.ndarray | None = None,
                 mask_value: np.ndarray | None = None):
        self.column, self.sign, self.allowance = column, sign, float(allowance)
        self.mask_column, self.mask_value = mask_column, mask_value
        self.key = (column.tolist(), sign.tolist(), self.allowance,
                    None if mask_column is None else (mask_column.tolist(), mask_value.tolist()))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        x = rows[:, self.column]
        y = np.multiply(x, self.sign.astype(x.dtype))
        y -= x.dtype.type(self.allowance)
        off = ~np.isfinite(x)
        if self.mask_column is not None:
            off |= (self.mask_value >= 0) & (rows[:, self.mask_column] != self.mask_value.astype(x.dtype))
        y[off] = 0.0
        return y


class _SequentialDetector:
    test = "cusum"

    def __init__(self, subjects: list[str], reference_rows: np.ndarray, increments: _Increments, budget: float,
                 seed: int):
        self.subjects = subjects  # per CUSUM
        self.directions = ["up" if s > 0 else "down" for s in increments.sign]
        self.increments = increments
        self.budget = float(budget)
        self.thresholds = calibrate(reference_rows, increments, budget, seed=seed)
        self.cusum = Cusum(self.thresholds)
        self._lock = threading.Lock()

    def _run(self, rows: np.ndarray, times=None) -> SequentialResult:
        y = self.increments(rows)
        with self._lock:
            first = self.cusum.rows
            crossings = self.cusum.update(y)
            state = self.cusum.state.copy()
            rows_seen = self.cusum.rows
        alarms = self._alarms(crossings, first, times)
        return SequentialResult(self.test, rows_seen, bool(alarms), alarms, self._statistics(state))

    def _alarms(self, crossings, first: int, times) -> list[CusumAlarm]:
        alarms = []
        for j, row, stat, since in crossings:
            at = since - first - 1  # the row's index in this batch (negative: an earlier batch)
            when = float(times[at]) if times is not None and 0 <= at < len(times) else None
            alarms.append(CusumAlarm(self.subjects[j], self.directions[j], stat, float(self.thresholds[j]), row,
                                     since, when))
        return alarms

    def _statistics(self, state: np.ndarray) -> dict[str, tuple[float, float, str]]:
        """Each subject's CUSUM nearest its threshold: (statistic, threshold, direction); the up
        one when both are as near (both at zero)."""
        out: dict[str, tuple[float, float, str]] = {}
        values, thresholds = state.tolist(), self.thresholds.tolist()
        # A threshold of 0 is a feature constant in the reference: its scores are all 0, so its
        # CUSUMs never leave 0 (nor alarm) and count as at 0 of their way
        share = [v / h if h > 0 else 0.0 for v, h in zip(values, thresholds)]
        nearest: dict[str, int] = {}
        for j, subject in enumerate(self.subjects):
            if subject not in nearest or share[j] > share[nearest[subject]]:
                nearest[subject] = j
        for subject, j in nearest.items():
            out[subject] = (values[j], thresholds[j], self.directions[j])
        return out

    def statistics(self) -> dict[str, tuple[float, float, str]]:
        with self._lock:
            return self._statistics(self.cusum.state.copy())

    def scan(self, rows: np.ndarray, times: np.ndarray, after: float) -> SequentialResult:
        """Fresh CUSUMs run over `rows` (transformed, in arrival order; `times` theirs), keeping the
        alarms raised on rows that arrived after `after`: a fleet check's, over its window's rows."""
        cusum = Cusum(self.thresholds)
        crossings = cusum.update(self.increments(rows))
        times = np.asarray(times, dtype=np.float64)
        alarms = [a for a in self._alarms(crossings, 0, times) if times[a.row - 1] > after]
        return SequentialResult(self.test, cusum.rows, bool(alarms), alarms, self._statistics(cusum.state))

    def fresh(self) -> "_SequentialDetector":
        """A copy of this detector (same thresholds, no second calibration) with its CUSUMs at zero."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.cusum = Cusum(self.thresholds)
        copy._lock = threading.Lock()
        return copy

    def reset(self) -> None:
        with self._lock:
            self.cusum.reset()

    @property
    def rows(self) -> int:
        return self.cusum.rows


class SequentialDataDetector(_SequentialDetector):
    """Two-sided CUSUMs (Page 1954) of each numeric feature's normal score, standardised by the
    reference's mean and sd of scores (NormalScoreDetector: z = Phi^-1 of the value's reference
    mid-rank CDF), allowance `allowance`; thresholds by `calibrate` on bootstrapped reference rows,
    so that all of them together alarm in at most `budget` of clean 50-row intervals.
    `scorers`: feature -> the NormalScoreDetector built on its reference values (DataDriftDetector's)."""

    def __init__(self, scorers: Mapping[str, object], reference: Mapping[str, np.ndarray],
                 budget: float = DEFAULT_BUDGET, allowance: float = DATA_ALLOWANCE, seed: int = 0):
        self.features = list(scorers)
        if not self.features:
            raise ValueError("SequentialDataDetector needs at least one numeric feature")
        self.scorers = dict(scorers)
        values = np.column_stack([np.asarray(reference[name], dtype=np.float64).ravel() for name in self.features])
        values = values[np.isfinite(values).all(axis=1)]
        f = len(self.features)
        increments = _Increments(np.tile(np.arange(f), 2), np.repeat([1.0, -1.0], f), allowance)
        super().__init__(self.features * 2, _resampled_scores(values), increments, budget, seed)

    @classmethod
    def of(cls, data_detector, reference_features, **options) -> "SequentialDataDetector | None":
        """The CUSUMs of a DataDriftDetector's numeric features, on the same normal scores; None
        when it has none."""
        scorers = data_detector._scorers
        if not scorers:
            return None
        return cls(scorers, {name: np.asarray(reference_features[name], dtype=np.float64) for name in scorers},
                   **options)

    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rows x features of standardised normal scores; NaN for a missing value."""
        if len(columns[self.features[0]]) <= Cusum.SMALL:
            return self._transform_rows(columns)
        out = []
        for name in self.features:
            scorer = self.scorers[name]
            values = np.asarray(columns[name], dtype=np.float64).ravel()
            z = (scorer.scores(values) - scorer.mean) / scorer.sd if scorer.sd > 0 else np.zeros(values.size)
            out.append(np.where(np.isfinite(values), z, np.nan))
        return np.column_stack(out)

    def _transform_rows(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """`transform` of a few rows in Python (a served request is often one row): the scorers'
        lookup (NormalScoreDetector.scores) by bisection on lists made once."""
        if not hasattr(self, "_lists"):
            self._lists = [(s.values.tolist(), s._at_value.tolist(), s._between.tolist(), s.mean, s.sd)
                           for s in (self.scorers[name] for name in self.features)]
        out = []
        for name, (values, at_value, between, mean, sd) in zip(self.features, self._lists):
            row = []
            for v in np.asarray(columns[name], dtype=np.float64).ravel().tolist():
                if not math.isfinite(v):
                    row.append(math.nan)
                    continue
                i = bisect.bisect_left(values, v)
                z = at_value[i] if i < len(values) and values[i] == v else between[i]
                row.append((z - mean) / sd if sd > 0 else 0.0)
            out.append(row)
        return np.array(out, dtype=np.float64).T.reshape(-1, len(self.features))

    def update(self, columns: Mapping[str, np.ndarray], times=None) -> SequentialResult:
        """Run a batch of inputs (feature -> values, in arrival order; other features ignored)."""
        return self._run(self.transform(columns), times)


class SequentialConceptDetector(_SequentialDetector):
    """Two-sided CUSUMs (Page 1954) of the labels' PIT normal scores z = Phi^-1(u), u the mid-rank of
    a label's error among the held-out errors of its predicted-price band (ConceptDriftDetector's
    `pit`): one pair over every label and one pair within each third of the bands (cheap, middle,
    dear stones), where a label outside the third leaves that pair as it was. Allowance `allowance`;
    thresholds by `calibrate` on bootstrapped held-out (z, band) rows, all pairs together alarming in
    at most `budget` of clean 50-label intervals."""

    def __init__(self, concept, reference_actual: np.ndarray, reference_predicted: np.ndarray,
                 budget: float = DEFAULT_BUDGET, allowance: float = CONCEPT_ALLOWANCE, seed: int = 0):
        self.concept = concept
        groups = [g for g in np.array_split(np.arange(concept.n_bins), 3) if g.size]
        self._third = np.zeros(concept.n_bins, dtype=np.int64)
        for i, g in enumerate(groups):
            self._third[g] = i
        self.segments = ["all"] + [_band_name(concept, g) for g in groups]
        actual, predicted = _finite(reference_actual, reference_predicted)
        k = len(self.segments)
        mask_value = np.tile(np.arange(-1, k - 1), 2).astype(np.float64)  # -1: every label
        increments = _Increments(np.zeros(2 * k, dtype=np.int64), np.repeat([1.0, -1.0], k), allowance,
                                 mask_column=np.ones(2 * k, dtype=np.int64), mask_value=mask_value)
        rows = _resampled_pit(concept._error(actual, predicted), np.searchsorted(concept.edges, predicted, side="right"),
                              concept._sorted, self._third)
        super().__init__(self.segments * 2, rows, increments, budget, seed)

    def transform(self, actual, predicted) -> np.ndarray:
        """Rows of (z, third of the bands); NaN for a pair with a non-finite value."""
        actual = np.asarray(actual, dtype=np.float64).ravel()
        predicted = np.asarray(predicted, dtype=np.float64).ravel()
        ok = np.isfinite(actual) & np.isfinite(predicted)
        out = np.full((actual.size, 2), np.nan)
        if ok.any():
            u, bins = self.concept.pit(actual[ok], predicted[ok])
            out[ok, 0] = special.ndtri(u)
            out[ok, 1] = self._third[bins]
        return out

    def update(self, actual, predicted, times=None) -> SequentialResult:
        """Run a batch of labelled predictions, in arrival order."""
        return self._run(self.transform(actual, predicted), times)


def _finite(actual, predicted) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    ok = np.isfinite(actual) & np.isfinite(predicted)
    return actual[ok], predicted[ok]


def _resampled_scores(values: np.ndarray):
    """Calibration rows for SequentialDataDetector: (rng) -> the reference rows' standardised normal
    scores against a resample of the reference (rows drawn with replacement). Served traffic is
    scored against the one reference the artifact holds, a sample itself; scoring the reference
    against its own resamples puts that sample's noise into the simulation."""
    from monitoring.drift import NormalScoreDetector

    def rows(rng: np.random.Generator) -> np.ndarray:
        resample = values[rng.integers(0, len(values), size=len(values))]
        out = np.empty_like(values)
        for j in range(values.shape[1]):
            scorer = NormalScoreDetector(resample[:, j])
            out[:, j] = (scorer.scores(values[:, j]) - scorer.mean) / scorer.sd if scorer.sd > 0 else 0.0
        return out[rng.integers(0, len(values), size=len(values))]  # the traffic: a sample too

    rows.key = ("scores", hashlib.sha256(values.tobytes()).hexdigest(), values.shape)
    return rows


def _resampled_pit(q: np.ndarray, bins: np.ndarray, sorted_errors: list[np.ndarray], third: np.ndarray):
    """Calibration rows for SequentialConceptDetector: (rng) -> (z, third of the bands) of every
    held-out error, z its PIT normal score among a resample of its band's held-out errors (as
    ConceptDriftDetector.pit ranks a label among the band's errors). As `_resampled_scores`: the
    held-out errors are a sample too (~1,000 a band), and a label is ranked against that sample."""
    def rows(rng: np.random.Generator) -> np.ndarray:
        z = np.zeros(q.size)
        for b, ref in enumerate(sorted_errors):
            mask = bins == b
            if not mask.any() or ref.size == 0:
                continue
            resample = np.sort(ref[rng.integers(0, ref.size, size=ref.size)])
            z[mask] = special.ndtri(mid_rank_pit(resample, q[mask]))
        # the traffic is a sample too: the rows streamed are a resample of the held-out rows
        drawn = rng.integers(0, q.size, size=q.size)
        return np.column_stack((z, third[bins]))[drawn]

    rows.key = ("pit", hashlib.sha256(q.tobytes() + bins.tobytes()).hexdigest(), [r.size for r in sorted_errors])
    return rows


def _band_name(concept, group: np.ndarray) -> str:
    """A third of the predicted-price bands named by its range, as the bands' own names read."""
    first, last = concept.bin_names[group[0]], concept.bin_names[group[-1]]
    if len(group) == 1:
        return first
    if concept.error == "residual":
        lo = f"{concept.edges[group[0] - 1]:.3g}" if group[0] > 0 else None
        hi = f"{concept.edges[group[-1]]:.3g}" if group[-1] < len(concept.edges) else None
        return ("predicted < " + hi if lo is None else "predicted >= " + lo if hi is None
                else f"predicted {lo} to {hi}")
    start = first.split(" ", 1)[1].split("-")[0]
    end = last.rsplit("-", 1)[1] if not last.endswith("+") else None
    return f"price {start}+" if end is None else f"price {start}-{end}"


def report(result: SequentialResult, new_alarms: Sequence[CusumAlarm], recent: Sequence[CusumAlarm]) -> dict:
    """A check's `sequential` entry (data_drift.sequential, concept_drift.sequential): per subject its
    CUSUM nearest the threshold now and whether it alarmed since the previous check (with the
    statistic it crossed at and since when), and the newest alarms (`alarms`, row numbers counted
    from the monitor's start)."""
    subjects = {}
    for subject, (statistic, threshold, direction) in result.statistics.items():
        mine = [a for a in new_alarms if a.subject == subject]
        entry = {"statistic": statistic, "threshold": threshold, "direction": direction, "alarm": bool(mine),
                 "since": None, "since_row": None}
        if mine:  # the first alarm since the previous check: when the change began
            first = mine[0]
            entry.update(statistic=first.statistic, direction=first.direction, since=first.since_time,
                         since_row=first.since)
        subjects[subject] = entry
    return {"test": result.test, "rows": int(result.rows), "alarm": bool(new_alarms), "subjects": subjects,
            "alarms": [a.to_dict() for a in recent]}


class Watch:
    """A sequential detector as the monitor runs it: updated with every served batch (or labels),
    its newest alarms kept, and each check's `report` saying which came since the previous regular
    check. One lock orders updates and reports, so an alarm is reported by exactly one regular check
    (and by the check it triggered, if any, before that)."""

    KEEP = 32  # newest alarms listed in a report
    TIMES = 4096  # rows whose arrival time is kept, to date an alarm's `since`

    def __init__(self, detector: _SequentialDetector):
        self.detector = detector
        self._lock = threading.Lock()
        self._recent: list[CusumAlarm] = []
        self._reported = 0  # rows seen at the previous report
        self._times = np.full(self.TIMES, np.nan)

    def update(self, *batch, now: float | None = None) -> SequentialResult:
        with self._lock:
            first = self.detector.rows
            result = self.detector.update(*batch)
            # An undated batch still takes its rows' slots (as NaN): they hold the times of the rows
            # TIMES before, which would otherwise date a change that began in this batch
            stamp = math.nan if now is None else now
            if result.rows - first <= Cusum.SMALL:
                for row in range(first, result.rows):
                    self._times[row % self.TIMES] = stamp
            else:
                self._times[np.arange(max(first, result.rows - self.TIMES), result.rows) % self.TIMES] = stamp
            for alarm in result.alarms:
                if alarm.since_time is None and result.rows - alarm.since < self.TIMES:
                    alarm.since_time = _finite_or_none(self._times[(alarm.since - 1) % self.TIMES])
            self._recent = (self._recent + result.alarms)[-self.KEEP:]
            return result

    def report(self, consume: bool = True) -> dict:
        """`consume=False` (the check an alarm triggers): the alarms are reported again by the next
        check, so that the regular checks (and whoever asks for one) see every alarm too."""
        with self._lock:
            rows = self.detector.rows
            new = [a for a in self._recent if a.row > self._reported]
            if consume:
                self._reported = rows
            result = SequentialResult(self.detector.test, rows, bool(new), [], self.detector.statistics())
            return report(result, new, list(self._recent))


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
