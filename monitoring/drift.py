"""Drift detection: pure statistics (numpy and scipy), no HTTP, no metrics.

A detector is built once from its reference, which is where all the work that does not depend on
the traffic is done (sorting, counting, binning); its `score(...)` then costs a sort of the window
and a few searchsorted calls, whatever the size of the reference. Each `score` returns one plain
dataclass.

    KSDetector            one numeric feature: two-sample Kolmogorov-Smirnov against the reference
    ChiSquareDetector     one categorical feature: chi-square test of homogeneity of the 2 x k table
                          (reference counts vs window counts), rare cells pooled, unseen codes counted
    DataDriftDetector     every input feature of the schema, Holm-Bonferroni across features
    ConceptDriftDetector  labelled predictions: probability-integral transform of the log price ratio
                          against held-out errors of similar predicted price, then a KS test of
                          uniformity

The family-wise correction lives in one place, `holm_bonferroni`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

# False-alarm level of one check, for data drift (family-wise, over all features) and concept drift
# alike. evaluate_drift.py, windows of 500: at 0.005 clean checks flagged 0.36-0.70% (data) and
# 0.15-0.78% (concept) over four reference/stream splits, under the 1% target, while half a
# standard deviation of depth or prices 20% higher are still caught within 75-300 samples; at 0.01,
# 0.74% and 0.80% with 95% intervals reaching 1.0% and 1.1%: too close to the target.
DEFAULT_ALPHA = 0.005

NOT_ENOUGH_DATA = "not enough data: {n} {what} in the window, at least {need} needed"


# --------------------------------------------------------------------------------------------------
# Shared helpers


def holm_bonferroni(p_values: Sequence[float | None], alpha: float) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses to reject at family-wise error rate `alpha`.

    Sort the k p-values ascending and reject p_(1) <= alpha/k, p_(2) <= alpha/(k-1), ... up to the
    first one that fails; everything from there on is kept. Controls the chance of any false alarm
    across the k tests at `alpha` whatever their dependence, and is uniformly more powerful than
    plain Bonferroni. A missing p-value (None or NaN) is never rejected.
    """
    p = np.array([np.nan if v is None else v for v in p_values], dtype=np.float64)
    p = np.where(np.isnan(p), np.inf, p)
    k = p.size
    rejected = np.zeros(k, dtype=bool)
    if k == 0:
        return rejected
    order = np.argsort(p, kind="stable")
    passed = p[order] <= alpha / (k - np.arange(k))
    n_rejected = k if passed.all() else int(np.argmin(passed))
    rejected[order[:n_rejected]] = True
    return rejected


def ks_p_value(statistic: float, n_effective: float) -> float:
    """Two-sided Kolmogorov-Smirnov p-value for sup-distance `statistic` at effective sample size
    `n_effective` (n*m/(n+m) for two samples), as scipy.stats.ks_2samp's asymptotic mode does:
    the one-sample Kolmogorov distribution `kstwo` at round(n_effective)."""
    n = max(1, int(round(n_effective)))
    return float(np.clip(stats.kstwo.sf(statistic, n), 0.0, 1.0))


@dataclass
class TestResult:
    """One test on one window: statistic, p-value and a distance (magnitude, in [0, 1])."""

    test: str
    statistic: float | None
    p_value: float | None
    distance: float | None
    window_size: int


def _finite_pairs(actual, predicted, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(actual, predicted) as float arrays, pairs with a non-finite value dropped."""
    actual = np.asarray(actual, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if actual.shape != predicted.shape:
        raise ValueError(f"{what} differ in length")
    ok = np.isfinite(actual) & np.isfinite(predicted)
    return actual[ok], predicted[ok]


def _none_if_nan(value):
    return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value


# --------------------------------------------------------------------------------------------------
# Per-feature tests


class KSDetector:
    """Two-sample Kolmogorov-Smirnov test of a numeric feature against its reference sample.

    Reference: the training values of the feature. D = sup_x |F_ref(x) - F_win(x)| over both
    empirical CDFs (right-continuous), evaluated exactly at every jump point of either: the
    reference's sorted unique values (their ECDF precomputed here) and the window's values. The
    result equals scipy.stats.ks_2samp's statistic, ties included; the p-value is its asymptotic
    one (Kolmogorov distribution at n*m/(n+m)). With ties (carat to 0.01, depth to 0.1, table
    mostly whole numbers) the test is conservative. Distance = D.
    """

    test = "ks"

    def __init__(self, reference: np.ndarray):
        ref = np.asarray(reference, dtype=np.float64).ravel()
        ref = ref[np.isfinite(ref)]
        if ref.size == 0:
            raise ValueError("KSDetector needs a non-empty finite reference")
        self.n = int(ref.size)
        self.values, counts = np.unique(ref, return_counts=True)
        # cumulative counts with a leading 0: cum[i] = #reference values <= values[i-1]
        self._cum = np.concatenate(([0], np.cumsum(counts)))
        self._ref_cdf_at_values = self._cum[1:] / self.n

    def statistic(self, window: np.ndarray) -> tuple[float, int]:
        """(D, m) for the finite values of `window`; D is None-free only when m > 0."""
        win = np.asarray(window, dtype=np.float64).ravel()
        win = np.sort(win[np.isfinite(win)])
        m = int(win.size)
        if m == 0:
            return float("nan"), 0
        # at the reference's jump points
        d_ref = np.abs(self._ref_cdf_at_values - np.searchsorted(win, self.values, side="right") / m)
        # at the window's jump points
        win_cdf = np.searchsorted(win, win, side="right") / m
        ref_cdf = self._cum[np.searchsorted(self.values, win, side="right")] / self.n
        d_win = np.abs(ref_cdf - win_cdf)
        return float(max(d_ref.max(), d_win.max())), m

    def score(self, window: np.ndarray) -> TestResult:
        d, m = self.statistic(window)
        if m == 0:
            return TestResult(self.test, None, None, None, 0)
        p = ks_p_value(d, self.n * m / (self.n + m))
        return TestResult(self.test, d, p, d, m)


class ChiSquareDetector:
    """Chi-square test of homogeneity of a categorical feature against its reference counts.

    Reference: the training counts of each category. The window's values are integer codes into
    `categories`; any other code (negative, too large, not an integer) is an unseen category and is
    counted in an extra "unseen" cell, whose reference count is 0. On the 2 x k table (reference
    row, window row), cells whose expected window count is below 5 are pooled into one cell (the
    unseen cell always is) so that rare grades and small windows do not make the chi-square
    approximation fire on noise; if the pooled cell itself expects fewer than 5 it joins the
    smallest remaining cell. statistic = Pearson's chi-square, dof = cells - 1, p from the
    chi-square distribution. Distance = total variation distance between the window's and the
    reference's category frequencies (unseen included), in [0, 1].
    """

    test = "chi2"
    min_expected = 5.0

    def __init__(self, reference_codes: np.ndarray, categories: Sequence[str]):
        self.categories = [str(c) for c in categories]
        self.k = len(self.categories)
        if self.k == 0:
            raise ValueError("ChiSquareDetector needs at least one category")
        self.reference_counts = self.counts(reference_codes)
        self.n = int(self.reference_counts.sum())
        if self.n == 0:
            raise ValueError("ChiSquareDetector needs a non-empty reference")
        self._reference_freq = self.reference_counts / self.n

    def counts(self, codes: np.ndarray) -> np.ndarray:
        """Counts per category, plus the unseen cell last (length k + 1)."""
        codes = np.asarray(codes).ravel()
        if codes.dtype.kind == "f":
            ok = np.isfinite(codes) & (codes == np.round(codes))
            codes = np.where(ok, codes, -1).astype(np.int64)
        elif codes.dtype.kind not in "iub":
            raise TypeError(f"categorical codes must be integers, got dtype {codes.dtype}")
        codes = codes.astype(np.int64, copy=False)
        codes = np.where((codes >= 0) & (codes < self.k), codes, self.k)
        return np.bincount(codes, minlength=self.k + 1)

    def score(self, window_codes: np.ndarray) -> TestResult:
        win = self.counts(window_codes)
        m = int(win.sum())
        if m == 0:
            return TestResult(self.test, None, None, None, 0)
        distance = float(0.5 * np.abs(win / m - self._reference_freq).sum())
        statistic, dof = self._chi2(self.reference_counts, win)
        p = float(special.chdtrc(dof, statistic)) if dof > 0 else 1.0  # = stats.chi2.sf, without its overhead
        return TestResult(self.test, statistic, float(np.clip(p, 0.0, 1.0)), distance, m)

    def _chi2(self, ref: np.ndarray, win: np.ndarray) -> tuple[float, int]:
        n, m = ref.sum(), win.sum()
        total = ref + win
        expected_win = m * total / (n + m)
        pooled = expected_win < self.min_expected
        pooled[-1] = True  # the unseen cell
        keep = ~pooled & (total > 0)
        ref_cells, win_cells = list(ref[keep]), list(win[keep])
        pooled_ref, pooled_win = ref[pooled].sum(), win[pooled].sum()
        if pooled_ref + pooled_win > 0:
            pooled_expected = m * (pooled_ref + pooled_win) / (n + m)
            if pooled_expected < self.min_expected and ref_cells:
                smallest = int(np.argmin(np.add(ref_cells, win_cells)))
                ref_cells[smallest] += pooled_ref
                win_cells[smallest] += pooled_win
            else:
                ref_cells.append(pooled_ref)
                win_cells.append(pooled_win)
        if len(ref_cells) < 2:
            return 0.0, 0
        table = np.array([ref_cells, win_cells], dtype=np.float64)
        cells = table.sum(axis=0)
        expected = np.outer(table.sum(axis=1), cells) / table.sum()
        statistic = float(((table - expected) ** 2 / expected).sum())
        return statistic, len(ref_cells) - 1


# --------------------------------------------------------------------------------------------------
# Data drift: every feature of the schema


@dataclass
class FeatureDrift:
    feature: str
    test: str  # "ks" | "chi2"
    statistic: float | None
    p_value: float | None  # raw p-value of this feature's test; `detected` applies Holm across features
    distance: float | None  # KS D or total variation distance, in [0, 1]
    detected: bool

    def to_dict(self) -> dict:
        return {"test": self.test, "statistic": _none_if_nan(self.statistic),
                "p_value": _none_if_nan(self.p_value), "distance": _none_if_nan(self.distance),
                "detected": bool(self.detected)}


@dataclass
class DataDriftReport:
    max_distance: float | None  # the largest per-feature distance, in [0, 1] (JSON and gauge: data_drift score)
    detected: bool
    window_size: int
    alpha: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    reason: str | None = None  # set when the window could not be tested

    def to_dict(self) -> dict:
        return {"score": _none_if_nan(self.max_distance), "detected": bool(self.detected),
                "window_size": int(self.window_size), "alpha": float(self.alpha),
                "features": {name: f.to_dict() for name, f in self.features.items()},
                "reason": self.reason}


class DataDriftDetector:
    """Data drift of the served inputs against the training features.

    Reference: the training features (`reference_features`, one column per schema feature;
    categorical columns as pandas categoricals or strings, mapped to the schema's codes by category
    name). Each numeric feature gets a KSDetector, each categorical one a ChiSquareDetector; a
    window is drifted when Holm-Bonferroni at family-wise level `alpha` rejects at least one
    feature, so a check on clean traffic false-alarms with probability at most `alpha` (less with
    ties, which make KS conservative). The overall score is the largest per-feature distance.
    """

    def __init__(self, reference_features: pd.DataFrame, schema: dict, alpha: float = DEFAULT_ALPHA,
                 min_samples: int = 50):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self.features = list(schema["features"])
        self.names = [f["name"] for f in self.features]
        self._lookup: dict[str, dict[str, int]] = {}
        self.detectors: dict[str, KSDetector | ChiSquareDetector] = {}
        for f in self.features:
            name = f["name"]
            if name not in reference_features:
                raise ValueError(f"reference features lack the schema's feature {name!r}")
            if f["kind"] == "categorical":
                self._lookup[name] = {str(c): i for i, c in enumerate(f["categories"])}
                codes = self.encode_column(name, reference_features[name])
                self.detectors[name] = ChiSquareDetector(codes, f["categories"])
            else:
                self.detectors[name] = KSDetector(reference_features[name].to_numpy(dtype=np.float64))

    def encode_column(self, name: str, values) -> np.ndarray:
        """A categorical column (pandas categorical, strings) as schema codes; unknown values -1."""
        lookup = self._lookup[name]
        series = pd.Series(values) if not isinstance(values, pd.Series) else values
        if isinstance(series.dtype, pd.CategoricalDtype):
            remap = np.array([lookup.get(str(c), -1) for c in series.cat.categories] + [-1], dtype=np.int64)
            return remap[series.cat.codes.to_numpy()]  # code -1 (missing) picks the trailing -1
        return np.array([lookup.get(str(v), -1) for v in series], dtype=np.int64)

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """A frame of inputs as the window mapping that `score` takes."""
        return {name: (self.encode_column(name, frame[name]) if name in self._lookup
                       else frame[name].to_numpy(dtype=np.float64)) for name in self.names}

    def score(self, window: Mapping[str, np.ndarray]) -> DataDriftReport:
        missing = [n for n in self.names if n not in window]
        if missing:
            raise ValueError(f"window lacks features {missing}")
        sizes = {len(np.asarray(window[n]).ravel()) for n in self.names}
        if len(sizes) > 1:
            raise ValueError(f"window features differ in length: {sorted(sizes)}")
        m = sizes.pop() if sizes else 0
        if m < self.min_samples:
            return DataDriftReport(
                max_distance=None, detected=False, window_size=m, alpha=self.alpha,
                features={n: FeatureDrift(n, d.test, None, None, None, False) for n, d in self.detectors.items()},
                reason=NOT_ENOUGH_DATA.format(n=m, what="inputs", need=self.min_samples))
        results = {n: d.score(window[n]) for n, d in self.detectors.items()}
        rejected = holm_bonferroni([r.p_value for r in results.values()], self.alpha)
        features = {n: FeatureDrift(n, r.test, r.statistic, r.p_value, r.distance, bool(rej))
                    for (n, r), rej in zip(results.items(), rejected)}
        distances = [r.distance for r in results.values() if r.distance is not None]
        return DataDriftReport(max_distance=max(distances) if distances else None, detected=bool(rejected.any()),
                               window_size=m, alpha=self.alpha, features=features)


# --------------------------------------------------------------------------------------------------
# Concept drift: labelled predictions against held-out errors


@dataclass
class ConceptDriftReport:
    mse_increase: float | None  # relative MSE increase over the reference (JSON: score; gauge: the lab's concept_drift)
    detected: bool
    labelled_size: int
    mse: float | None
    reference_mse: float
    statistic: float | None  # KS distance of the PIT values from Uniform(0, 1)
    p_value: float | None
    alpha: float
    test: str
    mean_log_ratio: float | None  # mean of log(actual / predicted) in the window
    bias_pct: float | None  # prices vs predictions, relative to the reference at similar predicted price
    reason: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out = {"score": out.pop("mse_increase"), **out}
        out["detected"] = bool(out["detected"])
        return {k: (_none_if_nan(v) if isinstance(v, float) else v) for k, v in out.items()}


class ConceptDriftDetector:
    """Concept drift: has the relation between inputs and price changed, as seen by the model's errors?

    Reference: held-out actual prices and the model's predictions for them (never training rows,
    which the forest nearly memorises). An error is measured as the log price ratio
    q = log(actual / predicted), whose spread grows with price less than the raw error does but
    still depends on it; so the reference is cut into `n_bins` bins of predicted price (quantiles)
    and each labelled window sample is compared with the reference errors of its own bin: its
    probability-integral transform u = mid-rank of q among that bin's reference q's. Without
    concept drift u is uniform on (0, 1) whatever the mix of inputs (more large stones only moves
    samples between bins). A one-sample Kolmogorov-Smirnov test of the u's against Uniform(0, 1)
    catches a bias (prices 20% higher: u piles up near 1) and a change of spread (u piles up at
    both ends). Its effective sample size accounts for the reference's own sampling noise:
    1/n_eff = 1/m + sum_b (m_b/m)^2 / n_b, which for a window spread like the reference is the usual
    two-sample n*m/(n+m) and grows the p-value when the window crowds into few bins.

    `mse_increase` keeps the lab's meaning (relative MSE increase over the reference), which a covariate
    shift moves as much as a concept change; `detected` comes from the test only. `bias_pct` is the
    mean log ratio against each sample's own bin, so it too ignores the input mix.

    Limit: the invariance holds as far as the error distribution depends on the inputs only through
    the predicted price. The forest over-prices Fair cuts and J colours by ~4% with a wider spread,
    so traffic made only of those reads as concept drift (a model that is wrong for this traffic);
    a moderate mix change (Fair and Good cuts 3x as common) does not (evaluate_drift.py).
    """

    test = "pit-ks"

    def __init__(self, reference_actual: np.ndarray, reference_predicted: np.ndarray, alpha: float = DEFAULT_ALPHA,
                 min_samples: int = 30, n_bins: int = 10, price_floor: float = 1.0):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        actual, predicted = _finite_pairs(reference_actual, reference_predicted, "reference actual and predicted")
        if actual.size < 2 * n_bins:
            raise ValueError(f"ConceptDriftDetector needs at least {2 * n_bins} reference errors")
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self.price_floor = float(price_floor)
        self.reference_mse = float(np.mean((actual - predicted) ** 2))
        self.n = int(actual.size)
        q = self._log_ratio(actual, predicted)
        # inner edges at predicted-price quantiles; equal quantiles collapse into one edge
        self.edges = np.unique(np.quantile(predicted, np.arange(1, n_bins) / n_bins))
        bins = np.searchsorted(self.edges, predicted, side="right")
        self.n_bins = len(self.edges) + 1
        self._sorted = [np.sort(q[bins == b]) for b in range(self.n_bins)]
        self._bin_sizes = np.array([max(s.size, 1) for s in self._sorted], dtype=np.float64)
        self._bin_mean = np.array([s.mean() if s.size else 0.0 for s in self._sorted])

    def _log_ratio(self, actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(actual, self.price_floor) / np.maximum(predicted, self.price_floor))

    def pit(self, actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, bin index) per sample: mid-rank of its log ratio among its bin's reference, in (0, 1)."""
        predicted = np.asarray(predicted, dtype=np.float64)
        return self._pit(self._log_ratio(np.asarray(actual, dtype=np.float64), predicted), predicted)

    def _pit(self, q: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bins = np.searchsorted(self.edges, predicted, side="right")
        u = np.empty_like(q)
        for b in range(self.n_bins):
            mask = bins == b
            if not mask.any():
                continue
            ref = self._sorted[b]
            below = np.searchsorted(ref, q[mask], side="left")
            at_most = np.searchsorted(ref, q[mask], side="right")
            u[mask] = (0.5 * (below + at_most) + 0.5) / (ref.size + 1)
        return u, bins

    def score(self, actual: np.ndarray, predicted: np.ndarray) -> ConceptDriftReport:
        actual, predicted = _finite_pairs(actual, predicted, "actual and predicted")
        m = int(actual.size)
        if m < self.min_samples:
            return ConceptDriftReport(
                mse_increase=None, detected=False, labelled_size=m, mse=None, reference_mse=self.reference_mse,
                statistic=None, p_value=None, alpha=self.alpha, test=self.test, mean_log_ratio=None,
                bias_pct=None, reason=NOT_ENOUGH_DATA.format(n=m, what="labelled predictions",
                                                             need=self.min_samples))
        mse = float(np.mean((actual - predicted) ** 2))
        q = self._log_ratio(actual, predicted)
        u, bins = self._pit(q, predicted)
        u.sort()
        i = np.arange(1, m + 1)
        d = float(max((i / m - u).max(), (u - (i - 1) / m).max()))
        window_bin_sizes = np.bincount(bins, minlength=self.n_bins)
        weights = window_bin_sizes / m
        n_eff = 1.0 / (1.0 / m + float(np.sum(weights ** 2 / self._bin_sizes)))
        p = ks_p_value(d, n_eff)
        shift = float(np.mean(q - self._bin_mean[bins]))
        return ConceptDriftReport(
            mse_increase=(mse - self.reference_mse) / self.reference_mse, detected=bool(p <= self.alpha),
            labelled_size=m, mse=mse, reference_mse=self.reference_mse, statistic=d, p_value=p,
            alpha=self.alpha, test=self.test, mean_log_ratio=float(q.mean()),
            bias_pct=100.0 * float(np.expm1(shift)))
