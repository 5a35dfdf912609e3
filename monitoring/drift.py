"""Drift detection: pure statistics (numpy and scipy), no HTTP, no metrics.

A detector is built once from its reference, which is where all the work that does not depend on
the traffic is done (sorting, counting, binning); its `score(...)` then costs a sort of the window
and a few searchsorted calls, whatever the size of the reference. Each `score` returns one plain
dataclass.

    KSDetector            one numeric feature: two-sample Kolmogorov-Smirnov against the reference
    NormalScoreDetector   one numeric feature: z-test of the mean van der Waerden normal score of the
                          reference mid-CDF values (a location shift)
    ChiSquareDetector     one categorical feature: chi-square test of homogeneity of the 2 x k table
                          (reference counts vs window counts), rare cells pooled, unseen codes counted
    BinnedChiSquareDetector  one numeric feature: the chi-square test on bins at the reference's
                          quantiles (point masses such as carat's 1.00 and 1.01 moving)
    ReconstructionDetector   all features jointly: PCA reconstruction error of the normal scores,
                          a one-sided z-test against the reference's per-row errors
    DataDriftDetector     every input feature of the schema, each of its tests on the whole window and
                          on its newest samples (`scales`), Holm-Bonferroni across all of them
    ConceptDriftDetector  labelled predictions: probability-integral transform of the log price ratio
                          against held-out errors of similar predicted price, then tests of its
                          uniformity (KS), its bias and its spread, on the whole window and on its
                          newest samples, globally and per predicted-price segment; Holm across all

Multi-scale: a check tests the whole window and its newest `scales` samples (50, 100, 250 by
default), so that an abrupt change is seen in the newest samples before it fills the window and a
slow one in the whole window. Every (feature or segment, test, scale) is one hypothesis of one
family: the family-wise correction lives in one place, `holm_bonferroni`, and a clean check raises
a false alarm with probability at most alpha whatever the dependence between scales and tests.
When something is detected, `change_start` estimates how many samples ago the change began.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

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

# Newest-sample counts tested besides the whole window. With a check every 50 rows, a change that
# the newest 50 samples show clearly is flagged at the first check after it; the larger scales
# catch weaker changes, the whole window the weakest. Evaluation (evaluate_drift.py): the median
# delay to colours G-J only falls from 100 to 50 samples, to carat^1.5-weighted stones from 150 to 50.
DEFAULT_SCALES = (50, 100, 250)


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
    the one-sample Kolmogorov distribution `kstwo` at round(n_effective). Below 150 samples, where
    `kstwo` runs an exact algorithm costing milliseconds, twice the exact one-sided tail
    (special.smirnov, Birnbaum-Tingey) instead: an upper bound of the two-sided p that differs from
    it by less than 1e-6 wherever p < 0.05, in microseconds."""
    n = max(1, int(round(n_effective)))
    if n < 150:
        return float(np.clip(2.0 * special.smirnov(n, statistic), 0.0, 1.0))
    if n >= 5000:
        # kstwo costs ~10-50 ms there; Stephens' (1970) corrected limit is within 3% of it in the tail
        return float(np.clip(special.kolmogorov((np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * statistic), 0.0, 1.0))
    return float(np.clip(stats.kstwo.sf(statistic, n), 0.0, 1.0))


@dataclass
class TestResult:
    """One test on one window: statistic, p-value and a distance (magnitude, in [0, 1])."""

    test: str
    statistic: float | None
    p_value: float | None
    distance: float | None
    window_size: int


def window_scales(m: int, scales: Sequence[int]) -> list[int]:
    """The suffix lengths a window of m samples is tested at: each scale below m, then m itself."""
    return sorted({int(s) for s in scales if 0 < int(s) < m} | ({m} if m > 0 else set()))


def change_start(codes: np.ndarray, reference_freq: np.ndarray, suffix: int, mask: np.ndarray | None = None) -> int:
    """How many samples ago a change began: the maximum-likelihood change point of a sequence of
    category (or bin) codes, with the reference frequencies before it and the newest `suffix`
    samples' frequencies after it (CUSUM's change-point estimate, Page 1954; Hinkley 1971).

    Each sample contributes its log-likelihood ratio log(p_after(c) / p_before(c)) (frequencies
    smoothed by half a count); the change point t maximises the sum of the ratios after it, and the
    answer is len(codes) - t. `mask` limits the sum to some samples (a segment), keeping positions.
    Always at least 1."""
    codes = np.asarray(codes, dtype=np.int64)
    m = codes.size
    if m == 0:
        return 0
    k = len(reference_freq)
    recent = codes[-suffix:] if mask is None else codes[-suffix:][mask[-suffix:]]
    after = (np.bincount(recent, minlength=k)[:k] + 0.5) / (recent.size + 0.5 * k)
    before = np.maximum(np.asarray(reference_freq, dtype=np.float64), 0.5 / (recent.size + 0.5 * k))
    llr = np.log(after / before)[codes]
    if mask is not None:
        llr = np.where(mask, llr, 0.0)
    tail = np.cumsum(llr[::-1])  # tail[j] = sum of the newest j + 1 ratios
    return int(np.argmax(tail)) + 1


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


def _reference_counts(reference: np.ndarray, who: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sorted unique values, cumulative counts with a leading 0) of a reference's finite values:
    cum[i] = #reference values <= values[i-1], the ECDF the KS and normal-score tests share."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError(f"{who} needs a non-empty finite reference")
    values, counts = np.unique(ref, return_counts=True)
    return int(ref.size), values, np.concatenate(([0], np.cumsum(counts)))


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
        self.n, self.values, self._cum = _reference_counts(reference, "KSDetector")
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
        # at the window's jump points: #window values <= win[i] is the index after the last copy of win[i]
        last = np.flatnonzero(np.r_[win[1:] != win[:-1], True])
        win_cdf = np.repeat(last + 1, np.diff(np.r_[-1, last])) / m
        ref_cdf = self._cum[np.searchsorted(self.values, win, side="right")] / self.n
        d_win = np.abs(ref_cdf - win_cdf)
        return float(max(d_ref.max(), d_win.max())), m

    def score_suffixes(self, window: np.ndarray, lengths: Sequence[int]) -> list[TestResult]:
        """`score` of the newest `length` samples for each length."""
        window = np.asarray(window).ravel()
        return [self.score(window[len(window) - length:]) for length in lengths]

    def score(self, window: np.ndarray) -> TestResult:
        d, m = self.statistic(window)
        if m == 0:
            return TestResult(self.test, None, None, None, 0)
        p = ks_p_value(d, self.n * m / (self.n + m))
        return TestResult(self.test, d, p, d, m)


class NormalScoreDetector:
    """Location test of a numeric feature: the mean van der Waerden normal score against the reference's.

    Reference: the training values of the feature. Each value x becomes its reference mid-CDF value
    u = (#ref < x + #ref <= x) / 2n (clipped to [1/2n, 1 - 1/2n]) and its normal score z = Phi^-1(u)
    (van der Waerden 1952). The reference's own scores have mean mu and standard deviation sd (ties
    included, computed exactly from the reference's value counts); the window's mean score is
    compared by the z-test Z = (mean - mu) / (sd * sqrt(1/m + 1/n)), two-sided p from the normal
    distribution (central limit theorem: the scores are bounded by |Phi^-1(1/2n)|). Against a shift
    of location the normal-score test is at least as efficient as the t-test (Chernoff-Savage 1958)
    and much more so than KS: table + 0.45 sd is flagged after 100 samples instead of 250.
    Distance = None (KS gives the feature's distance).
    """

    test = "normal-score"

    def __init__(self, reference: np.ndarray):
        self.n, self.values, self._cum = _reference_counts(reference, "NormalScoreDetector")
        counts = np.diff(self._cum)
        clip = lambda u: np.clip(u, 0.5 / self.n, 1 - 0.5 / self.n)
        self._at_value = special.ndtri(clip((self._cum[:-1] + 0.5 * counts) / self.n))  # a reference value's score
        self._between = special.ndtri(clip(self._cum / self.n))  # a value below values[i] and above values[i-1]
        z = self.scores(self.values)
        self.mean = float((counts * z).sum() / self.n)
        self.sd = float(np.sqrt((counts * (z - self.mean) ** 2).sum() / self.n))

    def scores(self, values: np.ndarray) -> np.ndarray:
        """The normal score of each value (finite values only are meaningful)."""
        values = np.asarray(values, dtype=np.float64)
        i = np.searchsorted(self.values, values, side="left")
        hit = self.values[np.minimum(i, len(self.values) - 1)] == values
        return np.where(hit, self._at_value[np.minimum(i, len(self.values) - 1)], self._between[i])

    def score(self, window: np.ndarray) -> TestResult:
        return self.score_suffixes(window, [len(np.ravel(window))])[0]

    def score_suffixes(self, window: np.ndarray, lengths: Sequence[int],
                       scores: np.ndarray | None = None) -> list[TestResult]:
        """`score` of the newest `length` samples for each length, the scores computed once
        (or given: `scores(window)`, when the caller needs them too)."""
        win = np.asarray(window, dtype=np.float64).ravel()
        ok = np.isfinite(win)
        z = np.where(ok, self.scores(win) if scores is None else scores, 0.0)
        sums, counts = np.cumsum(z[::-1]), np.cumsum(ok[::-1])
        out = []
        for length in lengths:
            m = int(counts[length - 1]) if length > 0 else 0
            if m == 0 or self.sd == 0:
                out.append(TestResult(self.test, None, None, None, m))
                continue
            stat = (sums[length - 1] / m - self.mean) / (self.sd * np.sqrt(1.0 / m + 1.0 / self.n))
            out.append(TestResult(self.test, float(stat), float(2.0 * special.ndtr(-abs(stat))), None, m))
        return out


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

    def cells(self, codes: np.ndarray) -> np.ndarray:
        """Each sample's cell: its category's code, or k (the unseen cell) for any other code."""
        codes = np.asarray(codes).ravel()
        if codes.dtype.kind == "f":
            ok = np.isfinite(codes) & (codes == np.round(codes))
            codes = np.where(ok, codes, -1).astype(np.int64)
        elif codes.dtype.kind not in "iub":
            raise TypeError(f"categorical codes must be integers, got dtype {codes.dtype}")
        codes = codes.astype(np.int64, copy=False)
        return np.where((codes >= 0) & (codes < self.k), codes, self.k)

    def counts(self, codes: np.ndarray) -> np.ndarray:
        """Counts per category, plus the unseen cell last (length k + 1)."""
        return np.bincount(self.cells(codes), minlength=self.k + 1)

    def score_suffixes(self, window_codes: np.ndarray, lengths: Sequence[int]) -> list[TestResult]:
        """`score` of the newest `length` samples for each length, the cells found once."""
        cells = self.cells(window_codes)
        return [self.score(cells[len(cells) - length:]) for length in lengths]

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


class BinnedChiSquareDetector:
    """Shape test of a numeric feature on bins at its reference's quantiles.

    Reference: the training values of the feature, cut at its `n_bins`-quantiles (equal quantiles
    merge, so a point mass stays in one bin: carat's 0.30, 1.00 and 1.01 are each 3-5% of the
    stones; an integer column with five values gets at most six bins, one of them empty). The
    window's values are binned the same way, and for a window of m values adjacent bins are merged
    into groups that each expect at least `min_expected` of them by the reference's frequencies
    (`groups`); Pearson's chi-square of the 2 x groups table (reference counts, window counts),
    dof = groups - 1. KS looks at the largest gap between the CDFs; this adds up every bin's
    departure, which is what moves when a measurement is off by a few percent and the bunched
    values leave their bins (carat 5% high: flagged after 100 samples instead of 500). Distance =
    total variation between the (unmerged) bins' frequencies.

    Why the groups come from the reference alone: ChiSquareDetector pools a cell by its expected
    count in the pooled table, which includes the window's own count; with 20 bins of 5 expected at
    100 samples, that kept exactly the bins the window over-filled and pooled the others, and clean
    windows of a uniform feature got p < 0.05 27% of the time (friedman: 2.4% clean false alarms).
    Why 10: with 5 expected per cell the chi-square tail is 1.7x too light at p = 3e-5, where Holm's
    thresholds lie; with 10 it is within the simulation's noise (400,000 multinomial windows).
    """

    test = "binned-chi2"
    min_expected = 10.0

    def __init__(self, reference: np.ndarray, n_bins: int = 20):
        ref = np.asarray(reference, dtype=np.float64).ravel()
        ref = ref[np.isfinite(ref)]
        if ref.size == 0:
            raise ValueError("BinnedChiSquareDetector needs a non-empty finite reference")
        self.edges = np.unique(np.quantile(ref, np.arange(1, n_bins) / n_bins))
        self.n_bins = len(self.edges) + 1
        self.chi2 = ChiSquareDetector(self.codes(ref), [str(b) for b in range(self.n_bins)])
        self.reference_counts = self.chi2.reference_counts[:self.n_bins]
        self.reference_freq = self.reference_counts / self.chi2.n
        self._groups: dict[int, np.ndarray] = {}  # by window size: a pure function of the reference, cached

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value; non-finite values get -1 (not counted)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        return np.where(np.isfinite(values), np.searchsorted(self.edges, values, side="right"), -1)

    def groups(self, m: int) -> np.ndarray:
        """Each bin's group for a window of m values: adjacent bins merged from the lowest up until
        the group expects at least `min_expected` values (m times its reference frequency); a last
        group short of that joins the one before. One group: no test."""
        group = self._groups.get(m)
        if group is None:
            group = np.zeros(self.n_bins, dtype=np.int64)
            g, expected = 0, 0.0
            for b, freq in enumerate(self.reference_freq):
                group[b] = g
                expected += m * freq
                if expected >= self.min_expected:
                    g, expected = g + 1, 0.0
            if g > 0:  # the bins after the last full group (none when it closed on the last bin)
                group[group == g] = g - 1
            self._groups[m] = group
        return group

    def score(self, window: np.ndarray) -> TestResult:
        return self.score_suffixes(window, [len(np.ravel(window))])[0]

    def score_suffixes(self, window: np.ndarray, lengths: Sequence[int]) -> list[TestResult]:
        """`score` of the newest `length` samples for each length, the bins found once."""
        codes = self.codes(window)
        return [self._test(codes[len(codes) - length:]) for length in lengths]

    def _test(self, codes: np.ndarray) -> TestResult:
        counts = np.bincount(codes[codes >= 0], minlength=self.n_bins)
        m = int(counts.sum())
        if m == 0:
            return TestResult(self.test, None, None, None, 0)
        distance = float(0.5 * np.abs(counts / m - self.reference_freq).sum())
        group = self.groups(m)
        k = int(group[-1]) + 1
        if k < 2:
            return TestResult(self.test, 0.0, 1.0, distance, m)
        table = np.array([np.bincount(group, self.reference_counts, k), np.bincount(group, counts, k)])
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
        statistic = float(((table - expected) ** 2 / expected).sum())
        return TestResult(self.test, statistic, float(special.chdtrc(k - 1, statistic)), distance, m)


class ReconstructionDetector:
    """Joint drift of all features: PCA reconstruction error of their normal scores.

    Reference: the training features as columns (numbers, and grades as their ordered codes, worst
    = 0), each turned into normal scores by its own NormalScoreDetector and standardised. Principal
    components of the reference are kept until they explain `variance` of it (65%, NannyML's
    default for its data-reconstruction drift); a row's error is its squared distance to its
    projection on them. When features stop going together as they did (better clarity on larger
    stones), rows leave that subspace and the mean error rises, though no feature's own
    distribution has moved. The components are fitted on one half of the reference rows and the
    errors' distribution is taken from the other half (`n` rows; see __init__ for why).
    Test: the window's mean error against those rows' errors, in a
    Welch-Satterthwaite gamma approximation (the errors are skewed; a normal one fires too often on
    small windows): with per-row mean mu and variance v, c = v / 2mu and nu = 2mu^2 / v, the sum of
    m_eff errors is about c * chi2(m_eff * nu), m_eff = 1 / (1/m + 1/n) for the reference's own
    noise; one-sided p (errors up). Rows with a missing or unseen value are left out.
    Statistic = mean error / reference mean error; distance = None.
    """

    test = "pca-reconstruction"

    def __init__(self, reference: Mapping[str, np.ndarray], variance: float = 0.65,
                 scorers: Mapping[str, NormalScoreDetector] | None = None):
        """`scorers`: NormalScoreDetectors already built on some of these reference columns."""
        self.names = list(reference)
        self.scorers = {n: (scorers or {}).get(n) or NormalScoreDetector(np.asarray(v, dtype=np.float64))
                        for n, v in reference.items()}
        z = self.standardised(reference)
        z = z[np.isfinite(z).all(axis=1)]
        if len(z) < 2 * (len(self.names) + 2):
            raise ValueError("ReconstructionDetector needs at least 2 x (features + 2) complete reference rows")
        # The basis is fitted on one half of the rows (a seeded split) and the errors' distribution is
        # measured on the other half. The fitted directions are those of most variance in the rows
        # they were fitted on, so those rows' own errors are smaller than a new row's: on friedman's
        # twelve nearly independent features 3.89 against 3.99 on fresh rows, and clean windows of
        # 500 had p < 0.001 12 times too often. Rows the basis never saw err like the traffic does.
        order = np.random.default_rng(0).permutation(len(z))
        fit, z = z[order[:len(z) // 2]], z[order[len(z) // 2:]]
        self.n = int(len(z))
        eigenvalues, vectors = np.linalg.eigh(np.cov(fit, rowvar=False))
        order = np.argsort(eigenvalues)[::-1]
        explained = np.cumsum(eigenvalues[order]) / eigenvalues.sum()
        # at least one direction is left out: with every component kept each error is rounding noise
        self.components = min(int(np.searchsorted(explained, variance) + 1), len(self.names) - 1)
        self._basis = vectors[:, order[:self.components]]
        errors = self.errors(z)
        self.error_deciles = np.quantile(errors, np.arange(1, 10) / 10)
        self.mean_error = float(errors.mean())
        var = float(errors.var())
        self._scale = var / (2 * self.mean_error)
        self._dof = 2 * self.mean_error ** 2 / var

    def standardised(self, columns: Mapping[str, np.ndarray],
                     scores: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Rows x features of standardised normal scores; a missing or non-finite value gives NaN.
        `scores`: some columns' normal scores, already computed by the same scorers."""
        out = []
        for n in self.names:
            scorer = self.scorers[n]
            values = np.asarray(columns[n], dtype=np.float64).ravel()
            raw = scores[n] if scores is not None and n in scores else scorer.scores(values)
            z = (raw - scorer.mean) / scorer.sd
            out.append(np.where(np.isfinite(values), z, np.nan))
        return np.column_stack(out)

    def errors(self, z: np.ndarray) -> np.ndarray:
        return ((z - z @ self._basis @ self._basis.T) ** 2).sum(axis=1)

    def score(self, window: Mapping[str, np.ndarray]) -> TestResult:
        return self.score_suffixes(window, [len(np.ravel(window[self.names[0]]))])[0]

    def score_suffixes(self, window: Mapping[str, np.ndarray], lengths: Sequence[int]) -> list[TestResult]:
        """`score` of the newest `length` rows for each length, the errors computed once."""
        return [self._test(e) for e in self._suffix_errors(window, lengths)[0]]

    def row_errors(self, window: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Each row's reconstruction error; NaN for a row with a missing or unseen value."""
        z = self.standardised(window, scores)
        ok = np.isfinite(z).all(axis=1)
        return np.where(ok, self.errors(np.where(ok[:, None], z, 0.0)), np.nan)

    def _suffix_errors(self, window, lengths, scores=None):
        errors = self.row_errors(window, scores)
        return [errors[len(errors) - length:] for length in lengths], errors

    def _test(self, errors: np.ndarray) -> TestResult:
        errors = errors[np.isfinite(errors)]
        m = int(errors.size)
        if m == 0:
            return TestResult(self.test, None, None, None, 0)
        mean = float(errors.mean())
        m_eff = 1.0 / (1.0 / m + 1.0 / self.n)
        p = float(special.chdtrc(m_eff * self._dof, m_eff * mean / self._scale))
        return TestResult(self.test, mean / self.mean_error, float(np.clip(p, 0.0, 1.0)), None, m)


# --------------------------------------------------------------------------------------------------
# Data drift: every feature of the schema


@dataclass
class FeatureDrift:
    feature: str
    test: str  # "ks" | "chi2": the feature's main test, on the whole window
    statistic: float | None
    p_value: float | None  # raw p-value of the main test on the whole window; `detected` applies Holm to all tests
    distance: float | None  # KS D or total variation distance, in [0, 1]
    detected: bool  # any of this feature's tests, at any scale, rejected after the correction

    def to_dict(self) -> dict:
        return {"test": self.test, "statistic": _none_if_nan(self.statistic),
                "p_value": _none_if_nan(self.p_value), "distance": _none_if_nan(self.distance),
                "detected": bool(self.detected)}


@dataclass
class Detection:
    """What fired, for a feature (or the joint test, or concept drift): the rejected hypothesis with
    the smallest p-value, and when the change began by `change_start`."""
    test: str
    scale: int  # the newest samples that test looked at (the window's size for the whole window)
    p_value: float
    since_samples: int  # the change began about this many samples ago (newest sample = 1)
    segment: str | None = None  # concept drift: the segment tested ("all" for every label)
    since: float | None = None  # unix time of that sample, when the window knows arrival times

    def to_dict(self) -> dict:
        out = {"test": self.test, "scale": int(self.scale), "p_value": float(self.p_value),
               "since_samples": int(self.since_samples), "since": self.since}
        if self.segment is not None:
            out["segment"] = self.segment
        return out


@dataclass
class MultivariateDrift:
    test: str
    statistic: float | None  # mean reconstruction error over the reference's, whole window
    p_value: float | None  # whole window
    detected: bool  # at any scale, after the correction
    components: int

    def to_dict(self) -> dict:
        return {"test": self.test, "statistic": _none_if_nan(self.statistic), "p_value": _none_if_nan(self.p_value),
                "detected": bool(self.detected), "components": int(self.components)}


@dataclass
class DataDriftReport:
    max_distance: float | None  # the largest per-feature distance, in [0, 1] (JSON and gauge: data_drift score)
    detected: bool
    window_size: int
    alpha: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    reason: str | None = None  # set when the window could not be tested
    multivariate: MultivariateDrift | None = None
    tests: int = 0  # hypotheses in the Holm family of this check
    scales: list[int] = field(default_factory=list)
    detections: dict[str, Detection] = field(default_factory=dict)  # by feature, and "multivariate"
    sequential: dict | None = None  # the CUSUMs between checks (monitoring/sequential.py), as the monitor reports them

    def to_dict(self) -> dict:
        out = {"score": _none_if_nan(self.max_distance), "detected": bool(self.detected),
               "window_size": int(self.window_size), "alpha": float(self.alpha),
               "features": {name: f.to_dict() for name, f in self.features.items()},
               "reason": self.reason,
               "multivariate": None if self.multivariate is None else self.multivariate.to_dict(),
               "tests": int(self.tests), "scales": [int(s) for s in self.scales],
               "detections": {name: d.to_dict() for name, d in self.detections.items()}}
        if self.sequential is not None:  # the monitor's CUSUMs; a report scored alone has none
            out["sequential"] = self.sequential
        return out


MULTIVARIATE = "multivariate"


class DataDriftDetector:
    """Data drift of the served inputs against the training features.

    Reference: the training features (`reference_features`, one column per schema feature;
    categorical columns as pandas categoricals or strings, mapped to the schema's codes by category
    name). Each numeric feature gets a KSDetector (its main test), a NormalScoreDetector and a
    BinnedChiSquareDetector, each categorical one a ChiSquareDetector, and all features together a
    ReconstructionDetector (`multivariate=True`). Every test runs on the whole window and on its
    newest `scales` samples; a window is drifted when Holm-Bonferroni at family-wise level `alpha`
    rejects at least one of these hypotheses, so a check on clean traffic false-alarms with
    probability at most `alpha` (less with ties, which make KS conservative, and with the tests'
    dependence). The overall score is the largest per-feature distance (KS D or total variation,
    whole window); `detections` says which test at which scale fired and since when.
    """

    def __init__(self, reference_features: pd.DataFrame, schema: dict, alpha: float = DEFAULT_ALPHA,
                 min_samples: int = 50, scales: Sequence[int] = DEFAULT_SCALES, multivariate: bool = True):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self.scales = tuple(int(s) for s in scales)
        self.features = list(schema["features"])
        self.names = [f["name"] for f in self.features]
        self._lookup: dict[str, dict[str, int]] = {}
        self.detectors: dict[str, KSDetector | ChiSquareDetector] = {}  # each feature's main test
        self.tests: dict[str, list] = {}  # every test of each feature, the main one first
        self._bins: dict[str, tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]] = {}  # for change_start
        reference_columns = {}
        for f in self.features:
            name = f["name"]
            if name not in reference_features:
                raise ValueError(f"reference features lack the schema's feature {name!r}")
            if f["kind"] == "categorical":
                self._lookup[name] = {str(c): i for i, c in enumerate(f["categories"])}
                codes = self.encode_column(name, reference_features[name])
                chi2 = ChiSquareDetector(codes, f["categories"])
                self.detectors[name] = chi2
                self.tests[name] = [chi2]
                self._bins[name] = (chi2.cells, chi2.reference_counts / chi2.n)
                reference_columns[name] = np.where(codes >= 0, codes, np.nan)
            else:
                values = reference_features[name].to_numpy(dtype=np.float64)
                binned = BinnedChiSquareDetector(values)
                self.detectors[name] = KSDetector(values)
                self.tests[name] = [self.detectors[name], NormalScoreDetector(values), binned]
                self._bins[name] = (binned.codes, binned.reference_freq)
                reference_columns[name] = values
        self._scorers = {name: tests[1] for name, tests in self.tests.items() if isinstance(tests[-1], BinnedChiSquareDetector)}
        self.multivariate = (ReconstructionDetector(reference_columns, scorers=self._scorers)
                             if multivariate and len(self.names) > 1 else None)

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

    def _joint_columns(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The columns as the joint test reads them: unseen or non-integer grade codes as NaN."""
        out = {}
        for name in self.names:
            values = np.asarray(columns[name], dtype=np.float64)
            if name in self._lookup:
                k = len(self._lookup[name])
                values = np.where((values >= 0) & (values < k) & (values == np.round(values)), values, np.nan)
            out[name] = values
        return out

    def score(self, window: Mapping[str, np.ndarray]) -> DataDriftReport:
        missing = [n for n in self.names if n not in window]
        if missing:
            raise ValueError(f"window lacks features {missing}")
        columns = {n: np.asarray(window[n]).ravel() for n in self.names}
        sizes = {len(c) for c in columns.values()}
        if len(sizes) > 1:
            raise ValueError(f"window features differ in length: {sorted(sizes)}")
        m = sizes.pop() if sizes else 0
        if m < self.min_samples:
            return DataDriftReport(
                max_distance=None, detected=False, window_size=m, alpha=self.alpha,
                features={n: FeatureDrift(n, d.test, None, None, None, False) for n, d in self.detectors.items()},
                reason=NOT_ENOUGH_DATA.format(n=m, what="inputs", need=self.min_samples),
                multivariate=None if self.multivariate is None else MultivariateDrift(
                    self.multivariate.test, None, None, False, self.multivariate.components))
        scales = window_scales(m, self.scales)
        # The family: (subject, test, scale, result) for every test of every feature at every scale.
        family: list[tuple[str, object, int, TestResult]] = []
        # numeric features' normal scores, shared by their normal-score test and the joint test
        scores = {name: scorer.scores(columns[name]) for name, scorer in self._scorers.items()}
        for name, tests in self.tests.items():
            for test in tests:
                results = (test.score_suffixes(columns[name], scales, scores[name]) if test is self._scorers.get(name)
                           else test.score_suffixes(columns[name], scales))
                family += [(name, test, s, r) for s, r in zip(scales, results)]
        if self.multivariate is not None:
            suffixes, row_errors = self.multivariate._suffix_errors(self._joint_columns(columns), scales, scores)
            family += [(MULTIVARIATE, self.multivariate, s, self.multivariate._test(e)) for s, e in zip(scales, suffixes)]
        rejected = holm_bonferroni([r.p_value for *_, r in family], self.alpha)

        features, detections = {}, {}
        for name, main in self.detectors.items():
            whole = next(r for subject, test, s, r in family if subject == name and test is main and s == m)
            fired = [(r.p_value, test.test, s) for (subject, test, s, r), rej in zip(family, rejected)
                     if rej and subject == name]
            features[name] = FeatureDrift(name, main.test, whole.statistic, whole.p_value, whole.distance, bool(fired))
            if fired:
                p, test_name, s = min(fired)
                encode, freq = self._bins[name]
                codes = encode(columns[name])
                detections[name] = Detection(test_name, s, p, change_start(codes[codes >= 0], freq, s))
        multivariate = None
        if self.multivariate is not None:
            joint_results = [(r, rej, s) for (subject, _, s, r), rej in zip(family, rejected) if subject == MULTIVARIATE]
            whole = joint_results[-1][0]
            fired = [(r.p_value, s) for r, rej, s in joint_results if rej]
            multivariate = MultivariateDrift(self.multivariate.test, whole.statistic, whole.p_value, bool(fired),
                                             self.multivariate.components)
            if fired:
                p, s = min(fired)
                detections[MULTIVARIATE] = Detection(self.multivariate.test, s, p, self._joint_change_start(row_errors, s))
        distances = [f.distance for f in features.values() if f.distance is not None]
        return DataDriftReport(max_distance=max(distances) if distances else None, detected=bool(rejected.any()),
                               window_size=m, alpha=self.alpha, features=features, multivariate=multivariate,
                               tests=len(family), scales=scales, detections=detections)

    def _joint_change_start(self, row_errors: np.ndarray, suffix: int) -> int:
        """change_start on the rows' reconstruction errors, binned at the reference errors' deciles."""
        errors = row_errors[np.isfinite(row_errors)]
        edges = self.multivariate.error_deciles
        return change_start(np.searchsorted(edges, errors, side="right"), np.full(len(edges) + 1, 1 / (len(edges) + 1)),
                            min(suffix, errors.size))


# --------------------------------------------------------------------------------------------------
# Concept drift: labelled predictions against held-out errors


@dataclass
class SegmentDrift:
    """Concept drift within one segment of the labelled window (a predicted-price band, or a grade)."""
    samples: int
    bias_pct: float | None  # prices vs predictions in this segment, against the reference
    p_value: float | None  # the smallest raw p-value of its tests (bias, spread)
    detected: bool  # one of its tests rejected after the correction

    def to_dict(self) -> dict:
        return {"samples": int(self.samples), "bias_pct": _none_if_nan(self.bias_pct),
                "p_value": _none_if_nan(self.p_value), "detected": bool(self.detected)}


@dataclass
class ConceptDriftReport:
    mse_increase: float | None  # relative MSE increase over the reference (JSON: score; gauge: the lab's concept_drift)
    detected: bool
    labelled_size: int
    mse: float | None
    reference_mse: float
    statistic: float | None  # KS distance of the PIT values from Uniform(0, 1), whole window
    p_value: float | None  # that KS test's raw p-value; `detected` applies Holm to every test
    alpha: float
    test: str
    mean_log_ratio: float | None  # mean of log(actual / predicted) in the window
    bias_pct: float | None  # prices vs predictions, relative to the reference at similar predicted price
    reason: str | None = None
    tests: int = 0  # hypotheses in the Holm family of this check
    scales: list[int] = field(default_factory=list)
    detection: Detection | None = None  # what fired (test, scale, segment) and since when
    segments: dict[str, SegmentDrift] = field(default_factory=dict)
    error: str = "log_ratio"  # how an error is measured: "log_ratio" (positive targets) or "residual"
    bias: float | None = None  # "residual": actual minus predicted against the reference, in target units
    sequential: dict | None = None  # the CUSUMs between checks (monitoring/sequential.py), as the monitor reports them

    def to_dict(self) -> dict:
        out = {"score": _none_if_nan(self.mse_increase), "detected": bool(self.detected)}
        for name in ("labelled_size", "mse", "reference_mse", "statistic", "p_value", "alpha", "test",
                     "mean_log_ratio", "bias_pct", "reason", "tests", "error", "bias"):
            value = getattr(self, name)
            out[name] = _none_if_nan(value) if isinstance(value, float) else value
        out["scales"] = [int(s) for s in self.scales]
        out["detection"] = None if self.detection is None else self.detection.to_dict()
        out["segments"] = {name: seg.to_dict() for name, seg in self.segments.items()}
        if self.sequential is not None:  # the monitor's CUSUMs; a report scored alone has none
            out["sequential"] = self.sequential
        return out


ALL_LABELS = "all"


def mid_rank_pit(sorted_reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's mid-rank among a sorted reference sample as a PIT value in (0, 1):
    (below + half the ties + 1/2) / (n + 1), so that ties (a forest repeats errors) sit in the middle
    and no value reaches 0 or 1. ConceptDriftDetector ranks labels so, and the concept CUSUMs'
    calibration (sequential.py) ranks resampled held-out errors the same way."""
    below = np.searchsorted(sorted_reference, values, side="left")
    at_most = np.searchsorted(sorted_reference, values, side="right")
    return (0.5 * (below + at_most) + 0.5) / (sorted_reference.size + 1)


class ConceptDriftDetector:
    """Concept drift: has the relation between inputs and price changed, as seen by the model's errors?

    Reference: held-out actual prices and the model's predictions for them (never training rows,
    which the forest nearly memorises). An error is measured as the log price ratio
    q = log(actual / predicted), whose spread grows with price less than the raw error does but
    still depends on it; so the reference is cut into `n_bins` bins of predicted price (quantiles)
    and each labelled window sample is compared with the reference errors of its own bin: its
    probability-integral transform u = mid-rank of q among that bin's reference q's. Without
    concept drift u is uniform on (0, 1) whatever the mix of inputs (more large stones only moves
    samples between bins), and its normal score z = Phi^-1(u) standard normal. Three tests of that:

      pit-ks  one-sample Kolmogorov-Smirnov test of the u's against Uniform(0, 1): any departure
      bias    z-test of the mean of z (two-sided): prices above or below predictions
      spread  chi-square test of the mean of z^2 (one-sided, larger): noisier prices

    Their effective sample size accounts for the reference's own sampling noise:
    1/n_eff = 1/m + sum_b (m_b/m)^2 / n_b, which for a window spread like the reference is the usual
    two-sample n*m/(n+m) and grows the p-values when the window crowds into few bins. Each test runs
    on the whole window and on its newest `scales` labels. Bias and spread also run within each
    segment of the whole window with at least `min_segment` labels: each predicted-price bin
    ("price 950-1,400") and, when the reference's grades (`reference_grades`, codes into `grades`)
    and the window's are known, each grade ("cut=Fair"). A segment is compared with the same
    segment of the reference, whose own PIT values (each reference error ranked in its bin) need not
    be uniform: the forest over-prices J colours by ~4% at any price, so color=J's reference scores
    sit above 0. A t-test of the mean scores (bias) and the F-test of their variances (spread),
    see `_segment_tests`. All of these hypotheses go through one Holm-Bonferroni
    correction at `alpha`; `segments` reports each segment, `detection` the rejected hypothesis with
    the smallest p and when the change began.

    `mse_increase` keeps the lab's meaning (relative MSE increase over the reference), which a covariate
    shift moves as much as a concept change; `detected` comes from the tests only. `bias_pct` is the
    mean log ratio against each sample's own bin, so it too ignores the input mix.

    A target that may be zero or negative has no ratio: with `error="residual"` (the artifact records
    the choice: train.py picks it when any target is <= 0) an error is the residual
    actual - predicted, ranked the same way among the held-out residuals of similar prediction;
    `bias` is then the mean residual shift in the target's units, and `bias_pct`, `mean_log_ratio`
    and the segments' `bias_pct` are None.

    Limit: the invariance holds as far as the error distribution depends on the inputs only through
    the predicted price. The forest over-prices Fair cuts and J colours by ~4% with a wider spread,
    so traffic made only of those reads as concept drift (a model that is wrong for this traffic);
    a moderate mix change (Fair and Good cuts 3x as common) does not (evaluate_drift.py).
    """

    test = "pit-ks"

    def __init__(self, reference_actual: np.ndarray, reference_predicted: np.ndarray, alpha: float = DEFAULT_ALPHA,
                 min_samples: int = 30, n_bins: int = 10, price_floor: float = 1.0,
                 scales: Sequence[int] = DEFAULT_SCALES, grades: Mapping[str, Sequence[str]] | None = None,
                 reference_grades: Mapping[str, np.ndarray] | None = None, min_segment: int = 20,
                 error: str = "log_ratio"):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if error not in ("log_ratio", "residual"):
            raise ValueError("error must be 'log_ratio' or 'residual'")
        self.error = error
        actual, predicted = _finite_pairs(reference_actual, reference_predicted, "reference actual and predicted")
        raw_actual = np.asarray(reference_actual, dtype=np.float64).ravel()
        raw_ok = np.isfinite(raw_actual) & np.isfinite(np.asarray(reference_predicted, dtype=np.float64).ravel())
        if actual.size < 2 * n_bins:
            raise ValueError(f"ConceptDriftDetector needs at least {2 * n_bins} reference errors")
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self.min_segment = int(min_segment)
        self.scales = tuple(int(s) for s in scales)
        # grade segments need the reference's grades, to compare each grade with itself
        self.grades = {name: [str(c) for c in categories] for name, categories in (grades or {}).items()
                       if reference_grades is not None and name in reference_grades}
        self.price_floor = float(price_floor)
        self.reference_mse = float(np.mean((actual - predicted) ** 2))
        self.n = int(actual.size)
        q = self._error(actual, predicted)
        # inner edges at predicted-price quantiles; equal quantiles collapse into one edge
        self.edges = np.unique(np.quantile(predicted, np.arange(1, n_bins) / n_bins))
        bins = np.searchsorted(self.edges, predicted, side="right")
        self.n_bins = len(self.edges) + 1
        self._sorted = [np.sort(q[bins == b]) for b in range(self.n_bins)]
        self._bin_sizes = np.array([max(s.size, 1) for s in self._sorted], dtype=np.float64)
        self._bin_mean = np.array([s.mean() if s.size else 0.0 for s in self._sorted])
        bounds = np.concatenate(([0.0], self.edges))
        if error == "residual":  # any sign: the bands by their edges, three significant figures
            self.bin_names = [f"predicted < {self.edges[0]:.3g}" if self.edges.size else "predicted: all"]
            self.bin_names += [f"predicted {lo:.3g} to {hi:.3g}" for lo, hi in zip(self.edges[:-1], self.edges[1:])]
            if self.edges.size:
                self.bin_names.append(f"predicted >= {self.edges[-1]:.3g}")
            if len(set(self.bin_names)) < len(self.bin_names):  # edges too close for three figures
                self.bin_names = [f"band {b + 1}" for b in range(self.n_bins)]
        else:
            self.bin_names = [f"price {_dollars(lo)}-{_dollars(hi)}" for lo, hi in zip(bounds[:-1], self.edges)]
            self.bin_names.append(f"price {_dollars(bounds[-1])}+")
            if len(set(self.bin_names)) < len(self.bin_names):  # edges too close for two figures
                self.bin_names = [f"price {lo:,.0f}-{hi:,.0f}" for lo, hi in zip(bounds[:-1], self.edges)]
                self.bin_names.append(f"price {bounds[-1]:,.0f}+")
        # Each segment's reference: (n, mean z, var z) of the reference's own scores.
        u, _ = self._pit(q, predicted)
        z = special.ndtri(u)
        masks = {name: bins == b for b, name in enumerate(self.bin_names)}
        for feature, categories in self.grades.items():
            codes = np.asarray(reference_grades[feature], dtype=np.float64).ravel()
            if codes.size != raw_ok.size:
                raise ValueError(f"reference_grades[{feature!r}] differs in length from the reference errors")
            codes = codes[raw_ok]
            masks.update({f"{feature}={c}": codes == i for i, c in enumerate(categories)})
        self._segment_reference = {}
        for name, mask in masks.items():
            if mask.sum() >= self.min_segment:
                zs = z[mask]
                self._segment_reference[name] = (int(mask.sum()), float(zs.mean()), float(zs.var()))

    def segment_names(self) -> list[str]:
        """Every segment a check may report: the predicted-price bins, then each grade (those with
        enough reference errors to compare with)."""
        return list(self._segment_reference)

    def _error(self, actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """The error that is ranked: the log price ratio, or the residual (error="residual")."""
        if self.error == "residual":
            return actual - predicted
        return np.log(np.maximum(actual, self.price_floor) / np.maximum(predicted, self.price_floor))

    def pit(self, actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, bin index) per sample: mid-rank of its error among its bin's reference, in (0, 1)."""
        predicted = np.asarray(predicted, dtype=np.float64)
        return self._pit(self._error(np.asarray(actual, dtype=np.float64), predicted), predicted)

    def _pit(self, q: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bins = np.searchsorted(self.edges, predicted, side="right")
        u = np.empty_like(q)
        for b in range(self.n_bins):
            mask = bins == b
            if not mask.any():
                continue
            u[mask] = mid_rank_pit(self._sorted[b], q[mask])
        return u, bins

    def _n_eff(self, bins: np.ndarray) -> float:
        m = bins.size
        weights = np.bincount(bins, minlength=self.n_bins) / m
        return 1.0 / (1.0 / m + float(np.sum(weights ** 2 / self._bin_sizes)))

    @staticmethod
    def _ks(u: np.ndarray, n_eff: float) -> TestResult:
        m = u.size
        u = np.sort(u)
        i = np.arange(1, m + 1)
        d = float(max((i / m - u).max(), (u - (i - 1) / m).max()))
        return TestResult("pit-ks", d, ks_p_value(d, n_eff), d, m)

    @staticmethod
    def _bias(z: np.ndarray, n_eff: float) -> TestResult:
        stat = float(z.mean() * np.sqrt(n_eff))
        return TestResult("bias", stat, float(2.0 * special.ndtr(-abs(stat))), None, z.size)

    @staticmethod
    def _spread(z: np.ndarray, n_eff: float) -> TestResult:
        stat = float((z ** 2).mean())
        return TestResult("spread", stat, float(special.chdtrc(n_eff, n_eff * stat)), None, z.size)

    @staticmethod
    def _segment_tests(z: np.ndarray, reference: tuple) -> tuple[TestResult, TestResult]:
        """Bias and spread of a segment's scores against the same segment of the reference.

        Bias: a two-sample t-test of the mean scores whose standard error is the larger of Welch's
        (each side's own variance, sqrt(var_w/k + var_r/n)) and Student's (the pooled variance,
        sqrt(pooled * (1/k + 1/n))), with Student's k + n - 2 degrees of freedom. Without drift both
        sides share one distribution, and the pooled variance, mostly the reference segment's n
        scores, is the exact test's (Student 1908); Welch's alone rests on the variance of the ~20
        window scores of a small segment, which moves with their mean (every window score is ranked
        against one reference), so its tail was 1.8-3x too heavy at p = 1e-4 where Holm's thresholds
        lie (simulated, 20 scores against 67 and 100; at level for 50 against 200). This one was
        0.8-0.9x there. A window segment whose own variance is larger keeps Welch's error, so a
        segment whose spread alone grew does not read as biased.
        Spread: the F-test of the variances (one-sided, larger), exact for normal samples, which
        normal scores within a segment nearly are. Both use the reference segment's size, so that a
        small segment (Fair cuts: ~3% of the stones) is not judged on its reference's noise as if it
        were exact."""
        n, mean, var = reference
        k = z.size
        var_w = float(z.var(ddof=1)) if k > 1 else 0.0
        var_r = max(var * n / max(n - 1, 1), 1e-12)
        dof = max(k + n - 2, 1)
        pooled = ((k - 1) * var_w + (n - 1) * var_r) / dof
        se = np.sqrt(max(var_w / k + var_r / n, pooled * (1.0 / k + 1.0 / n), 1e-12))
        stat = float((z.mean() - mean) / se)
        bias = TestResult("bias", stat, float(2.0 * special.stdtr(dof, -abs(stat))), None, k)
        ratio = var_w / var_r
        spread = TestResult("spread", ratio, float(special.fdtrc(max(k - 1, 1), max(n - 1, 1), ratio)), None, k)
        return bias, spread

    def score(self, actual: np.ndarray, predicted: np.ndarray,
              grades: Mapping[str, np.ndarray] | None = None) -> ConceptDriftReport:
        """`grades`: optional codes of the labels' grades, by feature (as in the constructor's
        `grades`; a negative or out-of-range code is unknown and left out of that grade's segments)."""
        actual = np.asarray(actual, dtype=np.float64).ravel()
        predicted = np.asarray(predicted, dtype=np.float64).ravel()
        if actual.shape != predicted.shape:
            raise ValueError("actual and predicted differ in length")
        ok = np.isfinite(actual) & np.isfinite(predicted)
        actual, predicted = actual[ok], predicted[ok]
        m = int(actual.size)
        if m < self.min_samples:
            return ConceptDriftReport(
                mse_increase=None, detected=False, labelled_size=m, mse=None, reference_mse=self.reference_mse,
                statistic=None, p_value=None, alpha=self.alpha, test=self.test, mean_log_ratio=None,
                bias_pct=None, error=self.error, reason=NOT_ENOUGH_DATA.format(n=m, what="labelled predictions",
                                                             need=self.min_samples))
        mse = float(np.mean((actual - predicted) ** 2))
        q = self._error(actual, predicted)
        ratio = self.error == "log_ratio"
        u, bins = self._pit(q, predicted)
        z = special.ndtri(u)
        shift = q - self._bin_mean[bins]
        scales = window_scales(m, self.scales)

        # The family: (segment, scale, result, mask of the samples tested within the window)
        family: list[tuple[str, int, TestResult, np.ndarray | None]] = []
        for s in scales:
            n_eff = self._n_eff(bins[m - s:])
            family += [(ALL_LABELS, s, test(x[m - s:], n_eff), None)
                       for test, x in ((self._ks, u), (self._bias, z), (self._spread, z))]
        segment_masks = {name: bins == b for b, name in enumerate(self.bin_names)}
        for feature, categories in self.grades.items():
            if grades is None or feature not in grades:
                continue
            codes = np.asarray(grades[feature], dtype=np.float64).ravel()
            if codes.size != ok.size:
                raise ValueError(f"grades[{feature!r}] differs in length from the labels")
            codes = codes[ok]
            for c, category in enumerate(categories):
                segment_masks[f"{feature}={category}"] = codes == c
        segment_rows: dict[str, tuple[int, float | None]] = {}
        for name, mask in segment_masks.items():
            k = int(mask.sum())
            if k < self.min_segment or name not in self._segment_reference:
                continue
            family += [(name, m, result, mask) for result in self._segment_tests(z[mask], self._segment_reference[name])]
            segment_rows[name] = (k, 100.0 * float(np.expm1(shift[mask].mean())) if ratio else None)
        rejected = holm_bonferroni([r.p_value for _, _, r, _ in family], self.alpha)

        segments = {}
        for name, (k, bias) in segment_rows.items():
            mine = [(r.p_value, rej) for (seg, _, r, _), rej in zip(family, rejected) if seg == name]
            segments[name] = SegmentDrift(k, bias, min(p for p, _ in mine), any(rej for _, rej in mine))
        detection = None
        fired = [(r.p_value, i) for i, ((_, _, r, _), rej) in enumerate(zip(family, rejected)) if rej]
        if fired:
            p, i = min(fired)
            segment, s, result, mask = family[i]
            deciles = np.minimum((u * 10).astype(np.int64), 9)  # the PIT's deciles: 1/10 each without drift
            since = change_start(deciles, np.full(10, 0.1), s, mask)
            detection = Detection(result.test, s, p, since, segment=segment)
        whole_ks = family[3 * (len(scales) - 1)][2]
        return ConceptDriftReport(
            mse_increase=(mse - self.reference_mse) / self.reference_mse, detected=bool(rejected.any()),
            labelled_size=m, mse=mse, reference_mse=self.reference_mse, statistic=whole_ks.statistic,
            p_value=whole_ks.p_value, alpha=self.alpha, test=self.test, mean_log_ratio=float(q.mean()) if ratio else None,
            bias_pct=100.0 * float(np.expm1(shift.mean())) if ratio else None, tests=len(family), scales=scales,
            error=self.error, bias=None if ratio else float(shift.mean()),
            detection=detection, segments=segments)


def _dollars(x: float) -> str:
    """A bin edge as the segment names show it: 950, 1,400, 12,000 (two significant figures)."""
    if x <= 0:
        return "0"
    rounded = float(f"{x:.2g}")
    return f"{rounded:,.0f}"
