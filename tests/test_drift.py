"""drift.py, scenarios.py and evaluate_drift.py: the statistics against scipy, and seeded streams."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from evaluation import scenarios
from monitoring import drift
from tests.helpers import heldout_predicted, split_halves
import train

NUMERIC = ["carat", "depth", "table"]


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def heldout(small_artifact):
    return heldout_predicted(small_artifact)


@pytest.fixture(scope="module")
def halves(heldout):
    return split_halves(heldout)


@pytest.fixture(scope="module")
def data_detector(small_artifact):
    return drift.DataDriftDetector(small_artifact["reference_features"], small_artifact["schema"])


@pytest.fixture(scope="module")
def concept_detector(halves):
    a, _ = halves
    return drift.ConceptDriftDetector(a["price"].to_numpy(), a["predicted"].to_numpy())


def _windows(frame: pd.DataFrame, size: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield frame.iloc[rng.choice(len(frame), size=size, replace=False)]


def _json_ready(d: dict) -> str:
    return json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# KS


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_ks_statistic_equals_scipy(ties, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=3000)
    win = rng.normal(0.1 * seed, 1.0, size=257)
    if ties:
        ref, win = np.round(ref, 1), np.round(win, 1)
    result = drift.KSDetector(ref).score(win)
    expected = stats.ks_2samp(ref, win, method="asymp")
    assert result.statistic == expected.statistic
    assert result.distance == result.statistic
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)
    assert result.window_size == len(win)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own p-value at n*m/(n+m) < 0.5
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=60), st.lists(st.integers(-5, 5), min_size=1, max_size=60))
def test_ks_statistic_equals_scipy_on_small_tied_samples(ref, win):
    ref, win = np.array(ref, dtype=float), np.array(win, dtype=float)
    assert drift.KSDetector(ref).score(win).statistic == stats.ks_2samp(ref, win, method="asymp").statistic


def test_ks_detector_reference_is_summarised():
    """Score work does not keep the reference rows: only its unique values and their counts."""
    ref = np.round(np.random.default_rng(1).normal(size=100_000), 2)
    det = drift.KSDetector(ref)
    assert det.n == ref.size and det.values.size == np.unique(ref).size < 2000


def test_ks_no_detection_on_reference_samples_and_detection_on_shift():
    rng = np.random.default_rng(2)
    det = drift.KSDetector(rng.lognormal(size=20_000))
    p_same = [det.score(rng.lognormal(size=500)).p_value for _ in range(200)]
    assert np.mean(np.array(p_same) <= 0.01) <= 0.04  # ~1% expected
    assert stats.kstest(p_same, "uniform").pvalue > 0.001  # p-values roughly uniform under H0
    shifted = det.score(rng.lognormal(0.25, 1.0, size=500))
    assert shifted.p_value < 1e-4 and shifted.distance > 0.05


def test_ks_ignores_non_finite_and_handles_empty():
    det = drift.KSDetector(np.arange(100.0))
    assert det.score(np.array([1.0, np.nan, np.inf, 2.0])).window_size == 2
    empty = det.score(np.array([]))
    assert empty.statistic is None and empty.p_value is None and empty.window_size == 0
    with pytest.raises(ValueError, match=r"^KSDetector needs a non-empty finite reference$"):
        drift.KSDetector(np.array([np.nan, np.inf, -np.inf]))
    with pytest.raises(ValueError, match=r"^KSDetector needs a non-empty finite reference$"):
        drift.KSDetector(np.array([]))


def test_ks_reference_drops_non_finite_values():
    det = drift.KSDetector(np.array([3.0, np.nan, 1.0, np.inf, 3.0, 2.0]))
    assert det.n == 4 and det.values.tolist() == [1.0, 2.0, 3.0]
    win = np.array([0.5, 2.5, 2.5, 4.0])
    expected = stats.ks_2samp([3.0, 1.0, 3.0, 2.0], win, method="asymp")
    result = det.score(win)
    assert result.statistic == expected.statistic == 0.25
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_ks_single_value_reference_and_window():
    det = drift.KSDetector(np.array([5.0]))
    assert det.n == 1
    same = det.score(np.array([5.0]))
    assert same.statistic == 0.0 and same.p_value == 1.0 and same.window_size == 1
    apart = det.score(np.array([6.0, 7.0]))
    assert apart.statistic == 1.0 and apart.distance == 1.0 and apart.window_size == 2


def test_ks_statistic_of_an_empty_window_is_nan():
    d, m = drift.KSDetector(np.arange(10.0)).statistic(np.array([np.nan]))
    assert np.isnan(d) and m == 0
    empty = drift.KSDetector(np.arange(10.0)).score(np.array([np.nan, np.nan]))
    assert empty == drift.TestResult("ks", None, None, None, 0)


@pytest.mark.parametrize("window, expected_d", [
    ([0.0, 1.0, 2.0, 3.0], 0.0),           # the reference itself
    ([0.0, 0.0, 0.0, 0.0], 0.75),          # all at the first jump: F_win(0) = 1, F_ref(0) = 1/4
    ([3.0, 3.0], 0.75),                    # all at the last: F_ref(2) = 3/4, F_win(2) = 0
    ([1.5], 0.5),                          # between reference values
    ([-1.0, 10.0], 0.5),                   # outside on both sides
])
def test_ks_statistic_at_hand_computed_values(window, expected_d):
    det = drift.KSDetector(np.array([0.0, 1.0, 2.0, 3.0]))
    result = det.score(np.array(window))
    assert result.statistic == pytest.approx(expected_d, abs=1e-15)
    assert result.statistic == stats.ks_2samp([0.0, 1.0, 2.0, 3.0], window, method="asymp").statistic
    assert result.test == "ks" and result.window_size == len(window)
    assert result.p_value == drift.ks_p_value(result.statistic, 4 * len(window) / (4 + len(window)))


def _two_sided_ks_p(statistic: float, n: int) -> float:
    """ks_p_value's three regimes at an integer size n, from scipy's own distributions: twice the
    exact one-sided tail below 150 (capped at 1), Kolmogorov's exact distribution up to 4,999,
    Stephens' (1970) corrected limit from 5,000."""
    if n < 150:
        return min(1.0, float(2.0 * stats.ksone.sf(statistic, n)))
    if n < 5000:
        return float(stats.kstwo.sf(statistic, n))
    return float(stats.kstwobign.sf((np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * statistic))


@pytest.mark.parametrize("statistic, n_effective, n", [
    (0.1, 100.0, 100), (0.1, 99.6, 100), (0.1, 100.4, 100), (0.3, 10.6, 11), (0.3, 10.4, 10),
    (0.7, 1.0, 1), (0.7, 1.4, 1), (0.7, 1.6, 2), (0.8, 0.3, 1), (0.8, 0.0, 1), (0.05, 2000.0, 2000),
    (0.1, 149.0, 149), (0.1, 149.4, 149), (0.1, 149.6, 150), (0.1, 150.0, 150),
    (0.02, 4999.0, 4999), (0.02, 4999.4, 4999), (0.02, 4999.6, 5000), (0.02, 5000.0, 5000), (0.01, 30000.0, 30000),
])
def test_ks_p_value_at_the_rounded_size_in_each_regime(statistic, n_effective, n):
    """Below 150 samples the p-value is twice the exact one-sided tail (special.smirnov), not kstwo's
    exact two-sided one (a8044ca's cost fix: milliseconds to microseconds); from 5,000 Stephens'
    limit. Each regime's value is scipy's exactly, at round(n_effective), and the regimes meet at
    149 | 150 and 4,999 | 5,000 (the params straddle both)."""
    p = drift.ks_p_value(statistic, n_effective)
    assert type(p) is float
    assert p == _two_sided_ks_p(statistic, n)
    assert 0.0 < p < 1.0
    if n < 150:  # an upper bound of the exact two-sided p, within 1e-6 of it where p < 0.05
        assert p >= float(stats.kstwo.sf(statistic, n))
    if n < 5000:
        assert p == pytest.approx(float(stats.kstwo.sf(statistic, n)), abs=1e-6 if p < 0.05 else 1e-3)
    else:  # Stephens' limit: within 3% of kstwo in the tail
        assert p == pytest.approx(float(stats.kstwo.sf(statistic, n)), rel=0.03)


@pytest.mark.parametrize("statistic, n_effective, expected", [
    (0.2, 3.0, 1.0),                      # 2 * P(D+ >= 0.2) = 1.424 at n = 3: capped at 1
    (0.5, 1.0, 1.0),                      # 2 * (1 - 0.5) at n = 1: exactly 1
    (0.6, 1.0, 0.8),                      # 2 * (1 - 0.6) at n = 1
])
def test_ks_p_value_small_sizes_by_hand(statistic, n_effective, expected):
    assert drift.ks_p_value(statistic, n_effective) == pytest.approx(expected, abs=1e-15)
    assert type(drift.ks_p_value(statistic, n_effective)) is float


def test_ks_p_value_bounds():
    assert drift.ks_p_value(0.0, 50) == 1.0
    assert drift.ks_p_value(1.0, 50) == 0.0


# --------------------------------------------------------------------------------------------------
# chi-square


def test_chi2_equals_scipy_contingency_without_pooling():
    rng = np.random.default_rng(3)
    cats = list("abcd")
    ref = rng.choice(4, size=5000, p=[0.1, 0.2, 0.3, 0.4])
    win = rng.choice(4, size=400, p=[0.15, 0.2, 0.25, 0.4])
    result = drift.ChiSquareDetector(ref, cats).score(win)
    table = np.array([np.bincount(ref, minlength=4), np.bincount(win, minlength=4)])
    chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    tvd = 0.5 * np.abs(table[1] / table[1].sum() - table[0] / table[0].sum()).sum()
    assert result.distance == pytest.approx(tvd)


def test_chi2_pools_rare_categories():
    """Grades expected fewer than 5 times in the window are pooled; a pooled cell still expected
    fewer than 5 times joins the smallest remaining cell. Fewer degrees of freedom, no blow-up."""
    rng = np.random.default_rng(4)
    p = [0.005, 0.005, 0.29, 0.3, 0.4]
    det = drift.ChiSquareDetector(rng.choice(5, size=40_000, p=p), list("abcde"))
    win = rng.choice(5, size=200, p=p)
    win[:3] = 0  # three of the rarest: 1.5% instead of 0.5%; alone that cell would add chi2 ~ 4
    ref, counts = det.reference_counts, det.counts(win)
    table = np.array([[ref[:3].sum(), ref[3], ref[4]], [counts[:3].sum(), counts[3], counts[4]]])
    chi2, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    result = det.score(win)
    assert dof == 2 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p_value, rel=1e-9) and result.p_value > 0.5
    # with a window large enough, the rare grades keep their own cells
    big = rng.choice(5, size=5000, p=p)
    chi2_big, *_ = stats.chi2_contingency(np.array([ref[:5], np.bincount(big, minlength=5)]), correction=False)
    assert det.score(big).statistic == pytest.approx(chi2_big, rel=1e-12)


def test_chi2_no_false_alarms_on_small_windows_of_rare_grades():
    rng = np.random.default_rng(5)
    p = np.array([0.01, 0.02, 0.07, 0.2, 0.3, 0.4])
    det = drift.ChiSquareDetector(rng.choice(6, size=40_000, p=p), list("abcdef"))
    p_values = np.array([det.score(rng.choice(6, size=60, p=p)).p_value for _ in range(400)])
    assert np.mean(p_values <= 0.01) <= 0.03


def test_chi2_unseen_codes_are_counted_not_crashing():
    rng = np.random.default_rng(6)
    det = drift.ChiSquareDetector(rng.choice(3, size=10_000), ["x", "y", "z"])
    win = rng.choice(3, size=500)
    one_bad = win.copy()
    one_bad[0] = 99
    assert det.score(one_bad).p_value > 0.01  # one junk code in 500 is not drift
    many_bad = win.copy()
    many_bad[:150] = -1
    many_bad[150:200] = 3
    result = det.score(many_bad)
    assert result.p_value < 1e-10 and result.distance == pytest.approx(0.4, abs=0.03)
    floats = det.score(np.array([0.0, 1.0, 2.0, np.nan, 1.5, 7.0] * 20))  # float codes: non-integers unseen
    assert floats.window_size == 120 and det.counts(np.array([np.nan, 1.5, 2.0]))[-1] == 2


def _merged_chi2(table):
    """scipy's Pearson chi-square (no continuity correction) on an already merged 2 x c table."""
    chi2, p, dof, _ = stats.chi2_contingency(np.array(table, dtype=float), correction=False)
    return chi2, p, dof


def test_chi2_pooled_cell_stands_alone_when_it_expects_enough():
    """Three rare grades pooled expect ~12 window counts together: one cell of their own, the unseen
    code in it, not merged into a common grade."""
    det = drift.ChiSquareDetector(np.repeat(np.arange(5), [1000, 1000, 30, 30, 30]), list("abcde"))
    win = np.repeat([0, 1, 2, 3, 4, 7], [140, 150, 4, 3, 3, 1])  # 7: an unseen code
    result = det.score(win)
    chi2, p, dof = _merged_chi2([[1000, 1000, 90], [140, 150, 11]])
    assert dof == 2
    assert result.statistic == pytest.approx(chi2, rel=1e-12) and result.p_value == pytest.approx(p, rel=1e-9)
    assert result.window_size == 301
    ref_freq = np.array([1000, 1000, 30, 30, 30, 0]) / 2090
    win_freq = np.array([140, 150, 4, 3, 3, 1]) / 301
    assert result.distance == pytest.approx(0.5 * np.abs(win_freq - ref_freq).sum(), rel=1e-12)


def test_chi2_small_pooled_cell_joins_the_smallest_remaining_one():
    det = drift.ChiSquareDetector(np.repeat(np.arange(4), [2000, 500, 1000, 10]), list("abcd"))
    win = np.repeat([0, 1, 2, 3, 5], [100, 30, 50, 2, 1])  # d and one unseen code expect < 5 together
    chi2, p, dof = _merged_chi2([[2000, 510, 1000], [100, 33, 50]])
    result = det.score(win)
    assert dof == 2 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9) and result.window_size == 183


def test_chi2_unseen_codes_form_the_pooled_cell():
    """Unseen codes expect nothing in the reference but are never a cell of their own beside the rare
    grades: they are pooled with them."""
    det = drift.ChiSquareDetector(np.repeat(np.arange(3), [600, 390, 10]), ["x", "y", "z"])
    win = np.repeat([0, 1, 2, -1], [200, 150, 2, 48])
    chi2, p, dof = _merged_chi2([[600, 390, 10], [200, 150, 50]])
    result = det.score(win)
    assert dof == 2 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9) and result.p_value < 1e-10


def test_chi2_window_as_large_as_the_reference():
    det = drift.ChiSquareDetector(np.repeat(np.arange(3), [50, 30, 20]), list("abc"))
    win = np.repeat(np.arange(3), [20, 30, 50])
    chi2, p, dof = _merged_chi2([[50, 30, 20], [20, 30, 50]])
    result = det.score(win)
    assert dof == 2 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.distance == pytest.approx(0.3)
    same = det.score(np.repeat(np.arange(3), [50, 30, 20]))
    assert same.statistic == 0.0 and same.p_value == 1.0 and same.distance == 0.0


def test_chi2_two_categories():
    det = drift.ChiSquareDetector(np.repeat([0, 1], [700, 300]), ["no", "yes"])
    chi2, p, dof = _merged_chi2([[700, 300], [50, 50]])
    result = det.score(np.repeat([0, 1], [50, 50]))
    assert dof == 1 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9) and result.distance == pytest.approx(0.2)


def test_chi2_one_cell_left_is_no_test():
    """One category, or a window so small that everything pools into one cell: statistic 0, p 1."""
    one = drift.ChiSquareDetector(np.zeros(100, dtype=int), ["only"])
    result = one.score(np.zeros(40, dtype=int))
    assert (result.statistic, result.p_value, result.distance, result.window_size) == (0.0, 1.0, 0.0, 40)
    det = drift.ChiSquareDetector(np.repeat(np.arange(3), [100, 100, 100]), list("abc"))
    tiny = det.score(np.array([2, 2, 2, 2, 2, 2]))  # each grade expects 2: all pooled
    assert tiny.statistic == 0.0 and tiny.p_value == 1.0 and tiny.window_size == 6
    assert tiny.distance == pytest.approx(2 / 3)


def test_chi2_without_pooling_leaves_empty_categories_out():
    """min_expected is the pooling threshold; at 0 only the unseen cell is pooled, and a grade that
    neither the reference nor the window has is no cell at all (it would divide by zero)."""
    det = drift.ChiSquareDetector(np.repeat([0, 1, 3, 4], [40, 30, 2, 1]), list("abcde"))
    det.min_expected = 0.0
    win = np.repeat([0, 1, 3, 9], [10, 20, 1, 1])
    chi2, p, dof = _merged_chi2([[40, 30, 2, 1, 0], [10, 20, 1, 0, 1]])
    result = det.score(win)
    assert dof == 4 and result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    # no unseen code: no pooled cell at all
    chi2, p, dof = _merged_chi2([[40, 30, 2, 1], [10, 20, 1, 0]])
    result = det.score(np.repeat([0, 1, 3], [10, 20, 1]))
    assert dof == 3 and result.statistic == pytest.approx(chi2, rel=1e-12)


def test_chi2_pooling_threshold_is_strictly_below_five():
    """A cell expecting exactly 5 window counts keeps its own cell, and so does a pooled cell."""
    det = drift.ChiSquareDetector(np.repeat(np.arange(3), [44, 22, 24]), list("abc"))
    win = np.repeat(np.arange(3), [6, 3, 1])  # n = 90, m = 10: expected = total / 10 = 5, 2.5, 2.5
    chi2, p, dof = _merged_chi2([[44, 46], [6, 4]])
    result = det.score(win)
    assert dof == 1 and chi2 > 0.1
    assert result.statistic == pytest.approx(chi2, rel=1e-12) and result.p_value == pytest.approx(p, rel=1e-9)


def test_chi2_pooled_cell_expectation_uses_both_sample_sizes():
    """Pooled d expects 400 * 15 / 1400 = 4.3 < 5 window counts: it joins the smallest cell, c."""
    det = drift.ChiSquareDetector(np.repeat(np.arange(4), [500, 300, 190, 10]), list("abcd"))
    win = np.repeat(np.arange(4), [200, 120, 75, 5])
    chi2, p, dof = _merged_chi2([[500, 300, 200], [200, 120, 80]])
    result = det.score(win)
    assert dof == 2 and result.statistic == pytest.approx(chi2, rel=1e-12) and result.p_value == pytest.approx(p)


def test_chi2_counts_per_category_and_unseen_last():
    det = drift.ChiSquareDetector(np.array([0, 1, 1, 2, 2, 2]), ["a", "b", "c"])
    assert det.categories == ["a", "b", "c"] and det.k == 3 and det.n == 6
    assert det.reference_counts.tolist() == [1, 2, 3, 0]
    assert det.counts(np.array([0, 0, 2, 3, 4, -1, -7])).tolist() == [2, 0, 1, 4]
    assert det.counts(np.array([], dtype=np.int64)).tolist() == [0, 0, 0, 0]
    assert det.counts(np.array([True, False, True])).tolist() == [1, 2, 0, 0]
    assert det.counts(np.array([0, 1], dtype=np.uint8)).tolist() == [1, 1, 0, 0]
    assert det.counts(np.array([0.0, 2.0, 2.5, -1.0, np.nan, np.inf, 3.0])).tolist() == [1, 0, 1, 5]
    assert drift.ChiSquareDetector(np.array([0, 1]), [10, 20]).categories == ["10", "20"]


def test_chi2_refuses_what_it_cannot_count():
    det = drift.ChiSquareDetector(np.array([0, 1]), ["a", "b"])
    with pytest.raises(TypeError, match=r"^categorical codes must be integers, got dtype <U1$"):
        det.counts(np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"^categorical codes must be integers, got dtype object$"):
        det.score(np.array([0, None], dtype=object))
    with pytest.raises(ValueError, match=r"^ChiSquareDetector needs at least one category$"):
        drift.ChiSquareDetector(np.array([0, 1]), [])
    with pytest.raises(ValueError, match=r"^ChiSquareDetector needs a non-empty reference$"):
        drift.ChiSquareDetector(np.array([], dtype=int), ["a", "b"])
    empty = det.score(np.array([], dtype=int))
    assert empty == drift.TestResult("chi2", None, None, None, 0)


# --------------------------------------------------------------------------------------------------
# Holm


def test_holm_bonferroni():
    assert drift.holm_bonferroni([0.01, 0.04, 0.03, 0.005], 0.05).tolist() == [True, False, False, True]
    assert drift.holm_bonferroni([0.01, 0.02, 0.03, 0.04], 0.05).tolist() == [True, False, False, False]
    # step-down: all rejected when each passes its own threshold (Bonferroni would keep 0.02 and 0.04)
    assert drift.holm_bonferroni([0.04, 0.02, 0.0001], 0.05).tolist() == [True, True, True]
    # stops at the first failure even if later ones would pass their (larger) thresholds
    assert drift.holm_bonferroni([0.001, 0.03, 0.03], 0.05).tolist() == [True, False, False]
    assert drift.holm_bonferroni([None, float("nan"), 0.0], 0.01).tolist() == [False, False, True]
    assert drift.holm_bonferroni([], 0.01).tolist() == []


def test_holm_thresholds_are_inclusive():
    """p_(i) <= alpha / (k - i + 1): a p-value exactly at its threshold is rejected."""
    assert drift.holm_bonferroni([0.5, 0.25], 0.5).tolist() == [True, True]
    assert drift.holm_bonferroni([0.5, 0.250001], 0.5).tolist() == [False, False]
    assert drift.holm_bonferroni([0.25, 0.5000001], 0.5).tolist() == [True, False]
    assert drift.holm_bonferroni([0.01], 0.01).tolist() == [True]
    assert drift.holm_bonferroni([0.0101], 0.01).tolist() == [False]
    assert drift.holm_bonferroni((0.2, 0.1, 0.3), 0.9).tolist() == [True, True, True]
    assert drift.holm_bonferroni([0.3, None, 0.2], 0.9).tolist() == [True, False, True]  # None ranks last
    result = drift.holm_bonferroni([0.001, 0.5], 0.05)
    assert result.dtype == bool and result.shape == (2,)


def test_holm_controls_family_wise_error():
    rng = np.random.default_rng(7)
    p = rng.uniform(size=(20_000, 6))
    any_rejected = np.array([drift.holm_bonferroni(row, 0.05).any() for row in p[:4000]])
    assert any_rejected.mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)


# --------------------------------------------------------------------------------------------------
# DataDriftDetector on a small made-up schema: every number checked against the per-feature detectors

SMALL_SCHEMA = {"features": [
    {"name": "x", "kind": "numeric"},
    {"name": "g", "kind": "categorical", "categories": ["a", "b", "c"]},
    {"name": "y", "kind": "numeric"},
]}


@pytest.fixture(scope="module")
def small_reference():
    rng = np.random.default_rng(20)
    return pd.DataFrame({"x": rng.normal(size=2000), "g": rng.choice(["a", "b", "c"], size=2000, p=[0.5, 0.3, 0.2]),
                         "y": rng.integers(0, 50, size=2000)})


def _small_window(m: int, seed: int, x_shift: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(x_shift, 1.0, size=m), "g": rng.choice(3, size=m, p=[0.5, 0.3, 0.2]),
            "y": rng.integers(0, 50, size=m).astype(float)}


def test_data_detector_is_the_per_feature_tests_with_holm(small_reference):
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=0.01, min_samples=20)
    assert det.alpha == 0.01 and det.min_samples == 20 and det.names == ["x", "g", "y"]
    own = {"x": drift.KSDetector(small_reference["x"].to_numpy(float)),
           "g": drift.ChiSquareDetector(det.encode_column("g", small_reference["g"]), ["a", "b", "c"]),
           "y": drift.KSDetector(small_reference["y"].to_numpy(float))}
    for shift in (0.0, 0.5):
        window = _small_window(150, seed=21, x_shift=shift)
        report = det.score(window)
        results = {n: d.score(window[n]) for n, d in own.items()}
        rejected = drift.holm_bonferroni([r.p_value for r in results.values()], 0.01)
        assert list(report.features) == ["x", "g", "y"]
        for (name, r), rej in zip(results.items(), rejected):
            f = report.features[name]
            assert (f.feature, f.test, f.statistic, f.p_value, f.distance, f.detected) == \
                (name, r.test, r.statistic, r.p_value, r.distance, bool(rej))
        assert report.detected == bool(rejected.any()) and report.detected == (shift > 0)
        assert report.max_distance == max(r.distance for r in results.values())
        assert report.window_size == 150 and report.alpha == 0.01 and report.reason is None
    assert [n for n, f in report.features.items() if f.detected] == ["x"]


def test_data_detection_at_exactly_alpha(small_reference):
    """Holm's thresholds include alpha itself: a family whose smallest p-value is exactly alpha/k is
    drifted. The family is every test of every feature at every scale plus the joint test: a window
    of 150 is tested at 50, 100 and 150, x and y by KS, normal scores and binned chi-square, g by
    chi-square, all three jointly: k = 3 * (3 + 1 + 3 + 1) = 24."""
    window = _small_window(150, seed=22, x_shift=0.3)
    report = drift.DataDriftDetector(small_reference, SMALL_SCHEMA).score(window)
    assert report.tests == 24 and report.scales == [50, 100, 150]
    # the family's smallest p-value: x's normal-score test on the whole window (x moved 0.3 sd)
    p_min = drift.NormalScoreDetector(small_reference["x"].to_numpy(float)).score(window["x"]).p_value
    # since when: the change point of x's bins (the binned test's), over the whole window it was tested on
    binned = drift.BinnedChiSquareDetector(small_reference["x"].to_numpy(float))
    since = drift.change_start(binned.codes(window["x"]), binned.reference_freq, 150)
    assert report.detections == {"x": drift.Detection("normal-score", 150, p_min, since)}
    k = report.tests
    alpha = next(a for a in (k * p_min, np.nextafter(k * p_min, 1), np.nextafter(k * p_min, 0)) if a / k == p_min)
    assert 0 < alpha < 1
    at = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=alpha).score(window)
    assert at.detected is True and [n for n, f in at.features.items() if f.detected] == ["x"]
    assert at.detections["x"].p_value == p_min and at.detections["x"].test == "normal-score"
    below = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=alpha * 0.999).score(window)
    assert below.detected is False and below.detections == {}
    assert not any(f.detected for f in below.features.values())


def test_data_window_size_boundary_and_reason(small_reference):
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, min_samples=20)
    short = det.score(_small_window(19, seed=23))
    assert short.reason == "not enough data: 19 inputs in the window, at least 20 needed"
    assert short.max_distance is None and short.detected is False and short.window_size == 19
    assert short.features == {"x": drift.FeatureDrift("x", "ks", None, None, None, False),
                              "g": drift.FeatureDrift("g", "chi2", None, None, None, False),
                              "y": drift.FeatureDrift("y", "ks", None, None, None, False)}
    enough = det.score(_small_window(20, seed=23))
    assert enough.reason is None and enough.window_size == 20 and enough.max_distance is not None
    assert all(f.p_value is not None for f in enough.features.values())


def test_data_window_given_as_lists(small_reference):
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, min_samples=3)
    window = {"x": [0.1, -0.2, 0.3, 1.0], "g": [0, 1, 2, 2], "y": [3, 40, 12, 8]}
    report = det.score(window)
    assert report.window_size == 4
    assert report.features["x"].statistic == det.detectors["x"].score(np.array(window["x"])).statistic


def test_data_detector_refuses_bad_settings_and_windows(small_reference):
    for alpha in (0, 1, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"^alpha must be in \(0, 1\)$"):
            drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=alpha)
    for alpha in (1e-9, 0.999):
        assert drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=alpha).alpha == alpha
    with pytest.raises(ValueError, match=r"^reference features lack the schema's feature 'y'$"):
        drift.DataDriftDetector(small_reference[["x", "g"]], SMALL_SCHEMA)
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, min_samples=5)
    with pytest.raises(ValueError, match=r"^window lacks features \['g', 'y'\]$"):
        det.score({"x": np.zeros(10)})
    with pytest.raises(ValueError, match=r"^window features differ in length: \[10, 11\]$"):
        det.score({"x": np.zeros(10), "g": np.zeros(11, dtype=int), "y": np.zeros(10)})


def test_data_window_of_only_missing_numbers(small_reference):
    """Enough rows, but no finite value: each test reports nothing and so does the score."""
    schema = {"features": [{"name": "x", "kind": "numeric"}, {"name": "y", "kind": "numeric"}]}
    det = drift.DataDriftDetector(small_reference, schema, min_samples=2)
    report = det.score({"x": np.full(3, np.nan), "y": np.array([np.inf, np.nan, -np.inf])})
    assert report.max_distance is None and report.detected is False and report.window_size == 3
    assert report.reason is None and all(f.p_value is None for f in report.features.values())
    assert report.to_dict()["score"] is None


def test_data_detector_without_features():
    det = drift.DataDriftDetector(pd.DataFrame(), {"features": []}, min_samples=1)
    report = det.score({})
    assert report.window_size == 0 and not report.detected and report.features == {}
    assert report.reason == "not enough data: 0 inputs in the window, at least 1 needed"


def test_encode_maps_categories_by_name(small_reference):
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA)
    # a categorical whose own order differs from the schema's, with a missing value and a category
    # the schema does not know
    values = pd.Series(pd.Categorical(["b", None, "zz", "a", "c", "b"], categories=["c", "zz", "a", "b"]))
    codes = det.encode_column("g", values)
    assert codes.tolist() == [1, -1, -1, 0, 2, 1] and codes.dtype == np.int64
    assert det.encode_column("g", ["a", "q", "c"]).tolist() == [0, -1, 2]
    assert det.encode_column("g", np.array(["c", "b"])).tolist() == [2, 1]
    assert det.encode_column("g", pd.Series(["b", None])).tolist() == [1, -1]
    assert det.encode_column("g", pd.Categorical([], categories=["a"])).tolist() == []
    assert det.encode_column("g", []).dtype == np.int64 and det.encode_column("g", []).size == 0
    frame = pd.DataFrame({"y": [1, 2], "x": [0.5, 1.5], "g": ["c", "nope"], "extra": [9, 9]})
    window = det.encode(frame)
    assert list(window) == ["x", "g", "y"]
    assert window["x"].tolist() == [0.5, 1.5] and window["y"].dtype == np.float64 and window["y"].tolist() == [1.0, 2.0]
    assert window["g"].tolist() == [2, -1]


def test_report_to_dict_values():
    feature = drift.FeatureDrift("x", "ks", 0.25, 0.004, 0.25, np.bool_(True))
    assert feature.to_dict() == {"test": "ks", "statistic": 0.25, "p_value": 0.004, "distance": 0.25,
                                 "detected": True}
    assert type(feature.to_dict()["detected"]) is bool
    blank = drift.FeatureDrift("g", "chi2", float("nan"), None, float("inf"), False).to_dict()
    assert blank == {"test": "chi2", "statistic": None, "p_value": None, "distance": None, "detected": False}
    report = drift.DataDriftReport(max_distance=np.float64(0.25), detected=np.bool_(True), window_size=np.int64(60),
                                   alpha=0.01, features={"x": feature})
    d = report.to_dict()
    assert d == {"score": 0.25, "detected": True, "window_size": 60, "alpha": 0.01,
                 "features": {"x": feature.to_dict()}, "reason": None,
                 "multivariate": None, "tests": 0, "scales": [], "detections": {}}
    assert type(d["detected"]) is bool and type(d["window_size"]) is int and type(d["alpha"]) is float
    short = drift.DataDriftReport(max_distance=float("nan"), detected=None, window_size=3, alpha=0.5,
                                  reason="not enough data").to_dict()
    assert short == {"score": None, "detected": False, "window_size": 3, "alpha": 0.5, "features": {},
                     "reason": "not enough data", "multivariate": None, "tests": 0, "scales": [],
                     "detections": {}}
    assert short["detected"] is False
    # the multi-scale fields: the joint test, the family's size, the scales, what fired and since when
    joint = drift.MultivariateDrift("pca-reconstruction", np.float64(1.5), float("nan"), np.bool_(True),
                                    np.int64(3))
    assert joint.to_dict() == {"test": "pca-reconstruction", "statistic": 1.5, "p_value": None, "detected": True,
                               "components": 3}
    assert type(joint.to_dict()["detected"]) is bool and type(joint.to_dict()["components"]) is int
    fired = drift.Detection("normal-score", np.int64(50), np.float64(1e-7), np.int64(42), since=1700000000.5)
    assert fired.to_dict() == {"test": "normal-score", "scale": 50, "p_value": 1e-7, "since_samples": 42,
                               "since": 1700000000.5}
    assert [type(v) for v in fired.to_dict().values()] == [str, int, float, int, float]
    assert drift.Detection("chi2", 100, 0.001, 7).to_dict() == {"test": "chi2", "scale": 100, "p_value": 0.001,
                                                                "since_samples": 7, "since": None}
    full = drift.DataDriftReport(max_distance=0.25, detected=True, window_size=500, alpha=0.005,
                                 features={"x": feature}, multivariate=joint, tests=np.int64(52),
                                 scales=[np.int64(50), 100, 250, 500],
                                 detections={"x": fired, "multivariate": drift.Detection("pca-reconstruction", 500,
                                                                                         0.002, 480)}).to_dict()
    assert full == {"score": 0.25, "detected": True, "window_size": 500, "alpha": 0.005,
                    "features": {"x": feature.to_dict()}, "reason": None, "multivariate": joint.to_dict(),
                    "tests": 52, "scales": [50, 100, 250, 500],
                    "detections": {"x": fired.to_dict(),
                                   "multivariate": {"test": "pca-reconstruction", "scale": 500, "p_value": 0.002,
                                                    "since_samples": 480, "since": None}}}
    assert type(full["tests"]) is int and [type(s) for s in full["scales"]] == [int] * 4
    assert list(full) == ["score", "detected", "window_size", "alpha", "features", "reason", "multivariate",
                          "tests", "scales", "detections"]
    concept = drift.ConceptDriftReport(
        mse_increase=0.5, detected=np.bool_(True), labelled_size=40, mse=150.0, reference_mse=100.0,
        statistic=0.3, p_value=float("nan"), alpha=0.005, test="pit-ks", mean_log_ratio=-float("inf"),
        bias_pct=12.5)
    c = concept.to_dict()
    assert list(c)[0] == "score" and "mse_increase" not in c
    assert c == {"score": 0.5, "detected": True, "labelled_size": 40, "mse": 150.0, "reference_mse": 100.0,
                 "statistic": 0.3, "p_value": None, "alpha": 0.005, "test": "pit-ks", "mean_log_ratio": None,
                 "bias_pct": 12.5, "reason": None, "tests": 0, "error": "log_ratio", "bias": None, "scales": [],
                 "detection": None, "segments": {}}
    assert c["detected"] is True
    empty = drift.ConceptDriftReport(None, None, 0, None, 100.0, None, None, 0.005, "pit-ks", None, None,
                                     reason="not enough data").to_dict()
    assert empty == {"score": None, "detected": False, "labelled_size": 0, "mse": None, "reference_mse": 100.0,
                     "statistic": None, "p_value": None, "alpha": 0.005, "test": "pit-ks", "mean_log_ratio": None,
                     "bias_pct": None, "reason": "not enough data", "tests": 0, "error": "log_ratio", "bias": None,
                     "scales": [], "detection": None, "segments": {}}
    assert empty["detected"] is False
    # segments and what fired: a Detection with its segment, SegmentDrift's values and types
    segment = drift.SegmentDrift(np.int64(25), float("nan"), np.float64(0.01), np.bool_(False))
    assert segment.to_dict() == {"samples": 25, "bias_pct": None, "p_value": 0.01, "detected": False}
    assert type(segment.to_dict()["samples"]) is int and segment.to_dict()["detected"] is False
    assert drift.SegmentDrift(30, 4.5, None, True).to_dict() == {"samples": 30, "bias_pct": 4.5, "p_value": None,
                                                                 "detected": True}
    fired = drift.Detection("bias", 50, 1e-4, 12, segment="color=J")
    assert fired.to_dict() == {"test": "bias", "scale": 50, "p_value": 1e-4, "since_samples": 12, "since": None,
                               "segment": "color=J"}
    full = drift.ConceptDriftReport(
        mse_increase=0.5, detected=True, labelled_size=500, mse=150.0, reference_mse=100.0, statistic=0.1,
        p_value=0.2, alpha=0.005, test="pit-ks", mean_log_ratio=0.01, bias_pct=1.0, tests=30,
        scales=[np.int64(50), 100, 250, 500], detection=fired,
        segments={"color=J": segment, "price 0-950": drift.SegmentDrift(40, -1.5, 0.3, False)}).to_dict()
    assert {k: full[k] for k in ("tests", "scales", "detection", "segments")} == {
        "tests": 30, "scales": [50, 100, 250, 500], "detection": fired.to_dict(),
        "segments": {"color=J": segment.to_dict(),
                     "price 0-950": {"samples": 40, "bias_pct": -1.5, "p_value": 0.3, "detected": False}}}
    assert [type(s) for s in full["scales"]] == [int] * 4
    assert list(full)[-6:] == ["tests", "error", "bias", "scales", "detection", "segments"]


# --------------------------------------------------------------------------------------------------
# DataDriftDetector on the real data


def test_reference_categories_mapped_by_name(data_detector, small_artifact):
    ref = small_artifact["reference_features"]
    schema = {f["name"]: f for f in small_artifact["schema"]["features"]}
    for name in ("cut", "color", "clarity"):
        counts = data_detector.detectors[name].reference_counts
        for code, category in enumerate(schema[name]["categories"]):
            assert counts[code] == (ref[name].astype(str) == category).sum()
        assert counts[-1] == 0
    codes = data_detector.encode_column("cut", pd.Series(["Fair", "Ideal", "Superb"]))
    assert codes.tolist() == [0, 4, -1]


def test_data_no_detection_on_clean_windows(data_detector, small_artifact, heldout):
    flagged = [data_detector.score(data_detector.encode(w)).detected
               for w in _windows(small_artifact["reference_features"], 500, 100, seed=8)]
    flagged += [data_detector.score(data_detector.encode(w)).detected for w in _windows(heldout, 500, 100, seed=9)]
    assert sum(flagged) <= 4  # ~0.5% expected


def test_data_detects_numeric_shift(data_detector, heldout):
    window = next(_windows(heldout, 500, 1, seed=10))
    shifted = scenarios.SCENARIOS["depth_shift"].transform(window.copy(), np.random.default_rng(0))
    report = data_detector.score(data_detector.encode(shifted))
    assert report.detected and report.features["depth"].detected
    assert [n for n, f in report.features.items() if f.detected] == ["depth"]
    assert report.max_distance == report.features["depth"].distance > 0.1


def test_data_detects_category_mix(data_detector, heldout):
    window = scenarios.SCENARIOS["cut_mix"].sample(heldout, 500, np.random.default_rng(11))
    report = data_detector.score(data_detector.encode(window))
    assert report.detected and report.features["cut"].detected and report.features["cut"].test == "chi2"


def test_data_unseen_category_code(data_detector, heldout):
    window = data_detector.encode(next(_windows(heldout, 500, 1, seed=12)))
    window["color"] = window["color"].copy()
    window["color"][:100] = 7  # one past the last colour
    window["clarity"] = window["clarity"].copy()
    window["clarity"][0] = -1
    report = data_detector.score(window)
    assert report.features["color"].detected and not report.features["clarity"].detected
    _json_ready(report.to_dict())


def test_data_short_and_empty_windows(data_detector):
    empty = data_detector.score({n: np.array([]) for n in data_detector.names})
    assert not empty.detected and empty.max_distance is None and "not enough data" in empty.reason
    d = empty.to_dict()
    assert d["window_size"] == 0 and set(d["features"]) == set(data_detector.names)
    assert all(f["statistic"] is None and f["detected"] is False for f in d["features"].values())
    _json_ready(d)
    short = data_detector.score({n: np.zeros(10) for n in data_detector.names})
    assert not short.detected and short.window_size == 10
    with pytest.raises(ValueError, match="lacks"):
        data_detector.score({"carat": np.zeros(100)})
    with pytest.raises(ValueError, match="length"):
        data_detector.score({n: np.zeros(100 + i) for i, n in enumerate(data_detector.names)})


def test_data_report_to_dict(data_detector, heldout):
    report = data_detector.score(data_detector.encode(heldout.iloc[:800])).to_dict()
    assert set(report) >= {"score", "detected", "window_size", "alpha", "features"}
    assert 0 <= report["score"] <= 1 and report["window_size"] == 800
    for name, f in report["features"].items():
        assert set(f) == {"test", "statistic", "p_value", "distance", "detected"}
        assert f["test"] == ("ks" if name in NUMERIC else "chi2")
        assert 0 <= f["p_value"] <= 1 and 0 <= f["distance"] <= 1
    _json_ready(report)


# --------------------------------------------------------------------------------------------------
# ConceptDriftDetector


def test_concept_no_detection_on_heldout_errors(concept_detector, halves):
    _, b = halves
    reports = [concept_detector.score(w["price"], w["predicted"]) for w in _windows(b, 500, 60, seed=13)]
    assert sum(r.detected for r in reports) <= 2
    assert np.median([abs(r.bias_pct) for r in reports]) < 3


def test_concept_detects_prices_25_percent_higher(concept_detector, halves):
    _, b = halves
    for w in _windows(b, 200, 5, seed=14):
        report = concept_detector.score(w["price"] * 1.25, w["predicted"])
        assert report.detected and report.p_value < 1e-6
        assert report.bias_pct == pytest.approx(25, abs=5) and report.mse_increase > 0.5


def test_concept_detects_noisier_prices(concept_detector, halves):
    _, b = halves
    w = next(_windows(b, 500, 1, seed=15))
    noisy = w["price"].to_numpy() * np.exp(np.random.default_rng(0).normal(0, 0.2, len(w)))
    assert concept_detector.score(noisy, w["predicted"]).detected


def test_concept_not_fooled_by_covariate_shift(concept_detector, halves):
    """Only large stones: the MSE soars (errors grow with price) but the concept has not changed."""
    _, b = halves
    large = b[b["carat"] >= 1.2]
    assert len(large) > 600
    reports = [concept_detector.score(w["price"], w["predicted"]) for w in _windows(large, 500, 20, seed=16)]
    assert np.median([r.mse_increase for r in reports]) > 1.0  # the lab's relative-MSE rule would fire
    assert sum(r.detected for r in reports) <= 1


def test_concept_pit_is_uniform_on_reference(concept_detector, halves):
    a, _ = halves
    u, bins = concept_detector.pit(a["price"].to_numpy(), a["predicted"].to_numpy())
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.bincount(bins).min() >= len(a) // concept_detector.n_bins - 5


def test_concept_short_window_and_guards(concept_detector):
    for m in (0, 10):
        report = concept_detector.score(np.full(m, 1000.0), np.full(m, 1000.0))
        assert not report.detected and report.mse_increase is None and "not enough data" in report.reason
        assert report.labelled_size == m
        _json_ready(report.to_dict())
    # non-positive and non-finite values neither crash nor produce NaN
    actual = np.r_[np.full(40, 1000.0), 0.0, -5.0, np.nan]
    predicted = np.r_[np.full(40, 1000.0), 500.0, 500.0, 500.0]
    report = concept_detector.score(actual, predicted)
    assert report.labelled_size == 42
    d = report.to_dict()
    _json_ready(d)
    assert set(d) >= {"score", "detected", "labelled_size", "mse", "reference_mse", "statistic", "p_value",
                      "alpha", "test", "mean_log_ratio", "bias_pct"}
    with pytest.raises(ValueError):
        concept_detector.score(np.zeros(40), np.zeros(41))


def test_concept_reference_mse_and_score(halves):
    a, _ = halves
    det = drift.ConceptDriftDetector(a["price"], a["predicted"])
    assert det.reference_mse == pytest.approx(np.mean((a["price"] - a["predicted"]) ** 2))
    report = det.score(a["price"], a["predicted"])
    assert report.mse_increase == pytest.approx(0.0, abs=1e-12) and not report.detected


# --------------------------------------------------------------------------------------------------
# ConceptDriftDetector on small hand-made references: every number checked

TIED_ACTUAL = np.array([50.0, 80.0, 100.0, 100.0, 100.0, 125.0, 150.0, 200.0])  # predicted 100: three ties at q = 0


def test_concept_pit_uses_mid_ranks_for_ties():
    det = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), n_bins=1, min_samples=3)
    assert det.n == 8 and det.n_bins == 1 and det.edges.size == 0
    u, bins = det.pit(np.array([100.0, 150.0, 10.0, 1000.0, 110.0]), np.full(5, 100.0))
    # (below + at_most) / 2 + 1/2 over n + 1: a tie with three reference values sits in their middle
    assert u.tolist() == pytest.approx([4 / 9, 7 / 9, 0.5 / 9, 8.5 / 9, 5.5 / 9], abs=1e-15)
    assert bins.tolist() == [0, 0, 0, 0, 0]


def test_concept_score_of_a_tiny_window_by_hand():
    det = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), alpha=0.05, n_bins=1, min_samples=3)
    assert det.reference_mse == (2500 + 400 + 625 + 2500 + 10000) / 8
    actual, predicted = np.array([100.0, 150.0, 10.0, 1000.0, 110.0]), np.full(5, 100.0)
    report = det.score(actual, predicted)
    q = np.log(actual / predicted)
    u = np.sort([4 / 9, 7 / 9, 0.5 / 9, 8.5 / 9, 5.5 / 9])
    d = stats.kstest(u, "uniform").statistic
    assert report.statistic == pytest.approx(d, abs=1e-12)
    # n_eff = 1 / (1/m + (m_b/m)^2 / n_b) = 1 / (1/5 + 1/8) = 40/13, rounded to 3; below 150 the KS p is
    # twice the one-sided tail, 2 * 0.712 here, capped at 1 (kstwo's two-sided value would be 0.977)
    assert 2 * stats.ksone.sf(d, 3) > 1 and report.p_value == 1.0
    assert report.mse == (0 + 2500 + 8100 + 810000 + 100) / 5
    assert report.mse_increase == pytest.approx((report.mse - det.reference_mse) / det.reference_mse, rel=1e-12)
    assert report.mean_log_ratio == pytest.approx(q.mean(), rel=1e-12)
    reference_mean = np.log(TIED_ACTUAL / 100.0).mean()
    assert report.bias_pct == pytest.approx(100 * np.expm1(q.mean() - reference_mean), rel=1e-12)
    assert (report.labelled_size, report.alpha, report.test, report.reason) == (5, 0.05, "pit-ks", None)
    assert report.reference_mse == det.reference_mse
    # the family: KS, bias and spread on the whole window (5 labels: no scale below it), no segment
    # (the reference's 8 errors are fewer than min_segment = 20); nothing is rejected at 0.05
    assert (report.tests, report.scales, report.segments, report.detection) == (3, [5], {}, None)
    assert det.segment_names() == [] and det.bin_names == ["price 0+"]
    z = stats.norm.ppf(u)
    n_eff = 40 / 13
    p_bias = 2 * stats.norm.sf(abs(z.mean()) * np.sqrt(n_eff))  # 0.750
    p_spread = stats.chi2.sf(n_eff * np.mean(z ** 2), n_eff)  # 0.327
    assert drift.holm_bonferroni([1.0, p_bias, p_spread], 0.05).tolist() == [False, False, False]
    assert report.detected is False


def _spread_of_the_tiny_window() -> float:
    """The tiny window's spread test by hand: mean z^2 = 1.152 against chi2(n_eff) / n_eff, n_eff = 40/13."""
    z = stats.norm.ppf([4 / 9, 7 / 9, 0.5 / 9, 8.5 / 9, 5.5 / 9])
    return float(stats.chi2.sf(40 / 13 * np.mean(z ** 2), 40 / 13))


def test_concept_detection_at_exactly_alpha():
    """Holm's thresholds include alpha: the tiny window's family is KS (p = 1), bias (0.750) and
    spread (0.327); at alpha = 3 * p_spread the spread test is rejected, just below it nothing."""
    actual, predicted = np.array([100.0, 150.0, 10.0, 1000.0, 110.0]), np.full(5, 100.0)
    loose = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), alpha=0.99, n_bins=1, min_samples=3)
    fired = loose.score(actual, predicted).detection
    # every sample's PIT decile is one of the newest five's: each adds log(1.5 / 1) > 0, the change is 5 old
    assert fired == drift.Detection("spread", 5, fired.p_value, 5, segment="all")
    p = fired.p_value
    assert p == pytest.approx(_spread_of_the_tiny_window(), rel=1e-12)
    alpha = next(a for a in (3 * p, np.nextafter(3 * p, 1), np.nextafter(3 * p, 0)) if a / 3 == p)
    assert 0 < alpha < 1
    at = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), alpha=alpha, n_bins=1, min_samples=3)
    report = at.score(actual, predicted)
    assert report.detected is True and report.detection == fired
    assert report.to_dict()["detection"] == {"test": "spread", "scale": 5, "p_value": p, "since_samples": 5,
                                             "since": None, "segment": "all"}
    below = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), alpha=alpha * 0.999, n_bins=1, min_samples=3)
    report = below.score(actual, predicted)
    assert report.detected is False and report.detection is None


def test_concept_bins_and_effective_sample_size():
    """Two bins of predicted price; a window crowded into one bin has a smaller effective size."""
    rng = np.random.default_rng(30)
    predicted = np.repeat([100.0, 1000.0], 200)
    factors = np.exp(np.r_[rng.normal(0, 0.1, 200), rng.normal(0.05, 0.2, 200)])
    det = drift.ConceptDriftDetector(predicted * factors, predicted, n_bins=2, min_samples=10)
    assert det.edges.tolist() == [550.0] and det.n_bins == 2 and det.n == 400
    w_pred = np.r_[np.full(30, 100.0), np.full(69, 1000.0), 550.0]  # 550: on the edge, the upper bin
    w_actual = w_pred * np.exp(rng.normal(0.02, 0.15, 100))
    u, bins = det.pit(w_actual, w_pred)
    assert bins.tolist() == [0] * 30 + [1] * 70
    q_ref = np.log(factors)
    for i in (0, 45, 99):
        ref = np.sort(q_ref[:200] if bins[i] == 0 else q_ref[200:])
        q = np.log(w_actual[i] / w_pred[i])
        assert u[i] == pytest.approx((np.sum(ref < q) + np.sum(ref <= q) + 1) / 2 / 201, abs=1e-15)
    report = det.score(w_actual, w_pred)
    d = stats.kstest(u, "uniform").statistic
    n_eff = 1 / (1 / 100 + (0.3 ** 2 + 0.7 ** 2) / 200)
    assert report.statistic == pytest.approx(d, abs=1e-12)
    assert round(n_eff) == 78  # below 150: twice the exact one-sided tail
    assert report.p_value == pytest.approx(float(2 * stats.ksone.sf(d, 78)), rel=1e-9)
    q = np.log(w_actual / w_pred)
    shift = np.mean(q - np.where(bins == 0, q_ref[:200].mean(), q_ref[200:].mean()))
    assert report.bias_pct == pytest.approx(100 * np.expm1(shift), rel=1e-9)


def test_concept_price_floor():
    det = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), n_bins=1, min_samples=2)
    report = det.score(np.array([0.0, -5.0, 0.5]), np.full(3, 100.0))
    assert report.mean_log_ratio == pytest.approx(np.log(1 / 100), rel=1e-12)
    floored = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), n_bins=1, min_samples=2, price_floor=10.0)
    assert floored.price_floor == 10.0
    assert floored.score(np.array([5.0, 2.0]), np.array([100.0, 4.0])).mean_log_ratio == \
        pytest.approx(np.mean([np.log(10 / 100), np.log(10 / 10)]), rel=1e-12)


def test_concept_window_size_boundary_drops_non_finite_pairs():
    det = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), n_bins=1, min_samples=3)
    short = det.score(np.array([100.0, 120.0, np.nan]), np.array([100.0, 100.0, 100.0]))
    assert short.reason == "not enough data: 2 labelled predictions in the window, at least 3 needed"
    assert (short.labelled_size, short.mse_increase, short.mse, short.statistic, short.p_value) == (2, None, None,
                                                                                                 None, None)
    assert (short.mean_log_ratio, short.bias_pct, short.detected) == (None, None, False)
    assert (short.reference_mse, short.alpha, short.test) == (det.reference_mse, det.alpha, "pit-ks")
    enough = det.score(np.array([100.0, 120.0, 90.0, 5.0]), np.array([100.0, 100.0, 100.0, np.inf]))
    assert enough.labelled_size == 3 and enough.reason is None
    assert enough.mse == pytest.approx((0 + 400 + 100) / 3)


def test_concept_detector_refuses_bad_settings():
    predicted = np.full(8, 100.0)
    for alpha in (0, 1, -0.1, 2):
        with pytest.raises(ValueError, match=r"^alpha must be in \(0, 1\)$"):
            drift.ConceptDriftDetector(TIED_ACTUAL, predicted, alpha=alpha, n_bins=1)
    with pytest.raises(ValueError, match=r"^ConceptDriftDetector needs at least 10 reference errors$"):
        drift.ConceptDriftDetector(TIED_ACTUAL, predicted, n_bins=5)
    with pytest.raises(ValueError, match=r"^ConceptDriftDetector needs at least 8 reference errors$"):
        drift.ConceptDriftDetector(np.r_[TIED_ACTUAL[:7], np.nan], predicted, n_bins=4)
    assert drift.ConceptDriftDetector(TIED_ACTUAL, predicted, n_bins=4).n == 8
    with pytest.raises(ValueError, match=r"^reference actual and predicted differ in length$"):
        drift.ConceptDriftDetector(TIED_ACTUAL, predicted[:7], n_bins=1)
    det = drift.ConceptDriftDetector(TIED_ACTUAL, predicted, n_bins=1, min_samples=1)
    with pytest.raises(ValueError, match=r"^actual and predicted differ in length$"):
        det.score(np.ones(3), np.ones(2))


def test_concept_reference_on_a_bin_edge_belongs_to_the_upper_bin():
    """Edges are predicted-price quantiles; a reference error whose prediction sits on an edge is
    binned like a window sample there: in the upper bin."""
    predicted = np.array([100.0] * 3 + [200.0] * 4 + [300.0] * 3)
    actual = predicted * np.array([0.9, 1.0, 1.1, 0.7, 0.8, 1.2, 1.3, 0.95, 1.05, 1.15])
    det = drift.ConceptDriftDetector(actual, predicted, n_bins=2, min_samples=1)
    assert det.edges.tolist() == [200.0]
    upper = np.sort(np.log(actual[3:] / predicted[3:]))  # the 200s and the 300s
    u, bins = det.pit(np.array([200.0 * 1.1, 100.0]), np.array([200.0, 100.0]))
    assert bins.tolist() == [1, 0]
    q = np.log(1.1)
    assert u[0] == pytest.approx((np.sum(upper < q) + np.sum(upper <= q) + 1) / 2 / (upper.size + 1), abs=1e-15)
    assert u[1] == pytest.approx(2 / 4)  # q = 0: the middle of the lower bin's three (-0.105, 0, 0.095)


def test_concept_bin_without_reference_errors():
    """All reference predictions equal: one edge there, and the bin below it has no reference errors.
    A sample that lands in it gets u = 1/2, is compared with a log ratio of 0, and that bin counts as
    one reference error in the effective sample size; no NaN anywhere."""
    actual = np.array([80.0, 90.0, 100.0, 110.0, 120.0, 130.0])
    det = drift.ConceptDriftDetector(actual, np.full(6, 100.0), n_bins=3, min_samples=20)
    assert det.edges.tolist() == [100.0] and det.n_bins == 2
    w_pred = np.repeat([50.0, 100.0], 10)
    w_actual = w_pred * np.linspace(0.75, 1.35, 20)
    u, bins = det.pit(w_actual, w_pred)
    assert bins.tolist() == [0] * 10 + [1] * 10 and u[:10].tolist() == [0.5] * 10
    report = det.score(w_actual, w_pred)
    q = np.log(w_actual / w_pred)
    ref_mean = np.log(actual / 100.0).mean()
    shift = np.mean(np.r_[q[:10], q[10:] - ref_mean])
    assert report.bias_pct == pytest.approx(100 * np.expm1(shift), rel=1e-12)
    n_eff = 1 / (1 / 20 + 0.5 ** 2 / 1 + 0.5 ** 2 / 6)  # ~2.9
    d = stats.kstest(u, "uniform").statistic
    assert report.p_value == pytest.approx(float(stats.kstwo.sf(d, round(n_eff))), rel=1e-12)
    assert np.isfinite([report.statistic, report.p_value, report.bias_pct, report.mean_log_ratio]).all()


def test_detector_defaults(small_reference):
    assert drift.DEFAULT_ALPHA == 0.005
    data = drift.DataDriftDetector(small_reference, SMALL_SCHEMA)
    assert (data.alpha, data.min_samples) == (0.005, 50)
    assert data.score(_small_window(49, seed=24)).reason == "not enough data: 49 inputs in the window, at least 50 needed"
    assert data.score(_small_window(50, seed=24)).reason is None
    rng = np.random.default_rng(25)
    predicted = rng.uniform(300, 5000, size=400)
    concept = drift.ConceptDriftDetector(predicted * rng.lognormal(0, 0.1, 400), predicted)
    assert (concept.alpha, concept.min_samples, concept.n_bins, concept.price_floor) == (0.005, 30, 10, 1.0)
    np.testing.assert_allclose(concept.edges, np.quantile(predicted, np.arange(1, 10) / 10), rtol=0, atol=0)
    assert concept.score(np.full(29, 1000.0), np.full(29, 1000.0)).reason == \
        "not enough data: 29 labelled predictions in the window, at least 30 needed"
    assert concept.score(np.full(30, 1000.0), np.full(30, 1000.0)).reason is None


def test_none_is_a_missing_value():
    """Plain lists with None (a label never sent, a value left out) count as missing, like NaN."""
    ks = drift.KSDetector([1.0, None, 2.0, 3.0])
    assert ks.n == 3 and ks.score([None, 2.0, 2.5]).window_size == 2
    det = drift.ConceptDriftDetector(TIED_ACTUAL, np.full(8, 100.0), n_bins=1, min_samples=1)
    report = det.score([100.0, None, 120.0, 90.0], [100.0, 100.0, None, 100.0])
    assert report.labelled_size == 2 and report.mse == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------------
# The detect branch's additions, by hand and against scipy: scales, the change point, the added
# per-feature tests, the joint test, the whole data family, concept segments


def test_window_scales_by_hand():
    assert drift.window_scales(500, (50, 100, 250)) == [50, 100, 250, 500]
    assert drift.window_scales(120, (250, 50, 100, 50)) == [50, 100, 120]
    assert drift.window_scales(100, (100, 0, -5)) == [100]
    assert drift.window_scales(101, (100,)) == [100, 101]
    assert drift.window_scales(2, (1,)) == [1, 2]
    assert drift.window_scales(1, (1, 2)) == [1]
    assert drift.window_scales(60, (50.7,)) == [50, 60]
    assert drift.window_scales(80, ()) == [80]
    assert drift.window_scales(0, (50,)) == [] and drift.window_scales(0, ()) == []


def _change_start_by_hand(codes, freq, suffix, mask=None):
    """The docstring's estimate, one sample at a time: each sample's log(p_after / p_before), the
    newest suffix's frequencies after (half a count added), the reference's before (floored at half
    a count); the answer is the length of the newest run with the largest sum (the shortest if tied)."""
    codes = [int(c) for c in codes]
    m, k = len(codes), len(freq)
    if m == 0:
        return 0
    recent = [codes[i] for i in range(max(0, m - suffix), m) if mask is None or mask[i]]
    after = np.array([(recent.count(c) + 0.5) / (len(recent) + 0.5 * k) for c in range(k)])
    before = np.array([max(f, 0.5 / (len(recent) + 0.5 * k)) for f in freq])
    ratio = np.log(after / before)
    total, best, answer = 0.0, -np.inf, 0
    for j in range(1, m + 1):
        i = m - j
        total += ratio[codes[i]] if mask is None or mask[i] else 0.0
        if total > best:
            best, answer = total, j
    return answer


def test_change_start_by_hand():
    # the newest two samples read 1 where the reference is even: they are the change
    assert drift.change_start(np.array([0, 0, 1, 1]), np.array([0.5, 0.5]), 2) == 2
    # within a segment (mask), every masked-in sample reads 1: the change spans the whole window
    mask = np.array([True, False, True, False, True])
    assert drift.change_start(np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5]), 5, mask) == 5
    assert drift.change_start(np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5]), 5) == 1
    # a reference frequency of 0 is floored, not divided by
    assert drift.change_start(np.array([0, 0, 0, 1, 1]), np.array([1.0, 0.0]), 2) == 2
    assert drift.change_start(np.array([], dtype=np.int64), np.array([0.5, 0.5]), 5) == 0
    assert type(drift.change_start(np.array([0, 1]), np.array([0.5, 0.5]), 1)) is int
    rng = np.random.default_rng(42)
    for trial in range(40):
        k = int(rng.integers(2, 6))
        freq = rng.dirichlet(np.ones(k))
        m = int(rng.integers(1, 80))
        codes = rng.integers(0, k, m)
        suffix = int(rng.integers(1, m + 10))
        mask = None if trial % 2 else rng.random(m) < 0.6
        assert drift.change_start(codes, freq, suffix, mask) == _change_start_by_hand(codes, freq, suffix, mask), trial


def _normal_scores_by_hand(ref, x):
    """van der Waerden scores: Phi^-1 of the reference mid-CDF (#ref < x + #ref <= x) / 2n, clipped
    to [1/2n, 1 - 1/2n]."""
    ref, x = np.asarray(ref, dtype=float), np.asarray(x, dtype=float)
    n = ref.size
    u = ((ref[None, :] < x[:, None]).sum(axis=1) + (ref[None, :] <= x[:, None]).sum(axis=1)) / (2 * n)
    return stats.norm.ppf(np.clip(u, 0.5 / n, 1 - 0.5 / n))


def test_normal_score_detector_by_hand():
    ref = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 8.0])
    det = drift.NormalScoreDetector(np.r_[ref, np.nan, np.inf])
    assert det.test == "normal-score" and det.n == 8 and det.values.tolist() == [1.0, 2.0, 3.0, 5.0, 8.0]
    x = np.array([0.0, 1.0, 1.5, 2.0, 2.5, 5.0, 6.0, 8.0, 9.0])
    np.testing.assert_allclose(det.scores(x), _normal_scores_by_hand(ref, x), rtol=1e-13, atol=1e-15)
    z_ref = _normal_scores_by_hand(ref, ref)
    assert det.mean == pytest.approx(z_ref.mean(), abs=1e-15)
    assert det.sd == pytest.approx(z_ref.std(), rel=1e-13)
    window = np.array([5.0, 8.0, 9.0, np.nan, 2.0, 6.0])
    result = det.score(window)
    z = _normal_scores_by_hand(ref, window[np.isfinite(window)])
    stat = (z.mean() - z_ref.mean()) / (z_ref.std() * np.sqrt(1 / 5 + 1 / 8))
    assert (result.test, result.distance, result.window_size) == ("normal-score", None, 5)
    assert result.statistic == pytest.approx(stat, rel=1e-12) and stat > 0
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(stat)), rel=1e-12)
    assert type(result.statistic) is float and type(result.p_value) is float
    low = det.score(np.array([1.0, 1.0, 2.0]))
    z = _normal_scores_by_hand(ref, [1.0, 1.0, 2.0])
    assert low.statistic == pytest.approx((z.mean() - z_ref.mean()) / (z_ref.std() * np.sqrt(1 / 3 + 1 / 8)), rel=1e-12)
    assert low.statistic < 0 and low.p_value == pytest.approx(2 * stats.norm.cdf(low.statistic), rel=1e-12)
    # suffixes count their finite values; a suffix with none has no result
    by_suffix = det.score_suffixes(np.array([5.0, 2.0, 8.0, np.nan]), [1, 2, 4])
    assert by_suffix[0] == drift.TestResult("normal-score", None, None, None, 0)
    assert by_suffix[1].window_size == 1 and by_suffix[1].statistic == pytest.approx(det.score([8.0]).statistic)
    assert by_suffix[2].window_size == 3 and by_suffix[2].p_value == pytest.approx(det.score([5.0, 2.0, 8.0]).p_value)
    # scores given by the caller are the ones used
    given = det.score_suffixes(window, [6], scores=np.zeros(6))[0]
    assert given.statistic == pytest.approx(-det.mean / (det.sd * np.sqrt(1 / 5 + 1 / 8)), abs=1e-15)
    assert det.score_suffixes(window, [6], scores=det.scores(window))[0] == result
    # a reference of one value has no spread: nothing to test
    flat = drift.NormalScoreDetector(np.array([4.0, 4.0, 4.0]))
    assert flat.sd == 0.0 and flat.score([4.0, 5.0]) == drift.TestResult("normal-score", None, None, None, 2)
    with pytest.raises(ValueError, match=r"^NormalScoreDetector needs a non-empty finite reference$"):
        drift.NormalScoreDetector([np.nan])


def test_binned_chi2_is_the_chi2_test_on_reference_quantile_bins():
    rng = np.random.default_rng(40)
    ref = rng.normal(size=4000)
    det = drift.BinnedChiSquareDetector(np.r_[ref, np.nan], n_bins=4)
    edges = np.quantile(ref, [0.25, 0.5, 0.75])
    assert det.test == "binned-chi2" and det.edges.tolist() == edges.tolist() and det.n_bins == 4
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=4)
    assert det.reference_freq.tolist() == (ref_counts / 4000).tolist()
    window = np.r_[rng.normal(0.3, 1.0, 400), np.nan, np.inf]
    codes = det.codes(window)
    assert codes[:400].tolist() == np.searchsorted(edges, window[:400], side="right").tolist()
    assert codes[400:].tolist() == [-1, -1] and det.codes([edges[1]]).tolist() == [2]  # an edge: the upper bin
    win_counts = np.bincount(codes[:400], minlength=4)
    expected = stats.chi2_contingency(np.array([ref_counts, win_counts]), correction=False)
    result = det.score(window)
    assert (result.test, result.window_size) == ("binned-chi2", 400)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9) and result.p_value < 1e-3
    assert result.distance == pytest.approx(0.5 * np.abs(win_counts / 400 - ref_counts / 4000).sum(), abs=1e-15)
    newest = det.score_suffixes(window, [102, 402])
    assert newest[0] == det.score(window[-102:]) and newest[0].window_size == 100 and newest[1] == result
    # equal quantiles merge: a point mass stays in one bin
    bunched = drift.BinnedChiSquareDetector(np.repeat([1.0, 2.0, 3.0], [10, 80, 10]), n_bins=10)
    assert bunched.edges.tolist() == pytest.approx([1.9, 2.0, 2.1]) and bunched.n_bins == 4
    assert bunched.reference_freq.tolist() == [0.1, 0.0, 0.8, 0.1]
    default = drift.BinnedChiSquareDetector(ref)
    assert default.edges.tolist() == np.quantile(ref, np.arange(1, 20) / 20).tolist() and default.n_bins == 20
    with pytest.raises(ValueError, match=r"^BinnedChiSquareDetector needs a non-empty finite reference$"):
        drift.BinnedChiSquareDetector([np.inf, np.nan])


def test_binned_chi2_merges_adjacent_bins_by_the_reference_until_each_expects_ten():
    det = drift.BinnedChiSquareDetector(np.arange(100.0))  # 20 bins of 5% each
    assert det.n_bins == 20 and det.min_expected == 10.0
    assert det.groups(100).tolist() == np.repeat(np.arange(10), 2).tolist()  # 5 expected per bin: pairs
    assert det.groups(50).tolist() == np.repeat(np.arange(5), 4).tolist()
    assert det.groups(30).tolist() == [0] * 7 + [1] * 13  # 1.5 each: 7 reach 10.5, the last 6 (9.0) join them
    assert det.groups(200).tolist() == list(range(20))  # 10 each: every bin its own
    assert det.groups(199).tolist() == np.repeat(np.arange(10), 2).tolist()  # 9.95 is short of 10
    assert det.groups(5).tolist() == [0] * 20  # 5 expected in all: one group
    assert det.groups(15).tolist() == [0] * 20  # 0.75 each: 14 reach 10.5, the last 6 (4.5) join them: one group
    assert det.groups(100) is det.groups(100)  # cached
    assert det.score([np.nan, np.inf]) == drift.TestResult("binned-chi2", None, None, None, 0)
    rng = np.random.default_rng(44)
    window = rng.uniform(0, 100, 100)
    counts = np.bincount(det.codes(window), minlength=20)
    table = np.array([det.reference_counts.reshape(10, 2).sum(axis=1), counts.reshape(10, 2).sum(axis=1)])
    expected = stats.chi2_contingency(table, correction=False)
    result = det.score(window)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9) and result.window_size == 100
    assert result.distance == pytest.approx(0.5 * np.abs(counts / 100 - 0.05).sum(), abs=1e-15)  # the 20 bins
    # fewer than min_expected values in all: one group, no test
    assert det.score(window[:9]) == drift.TestResult("binned-chi2", 0.0, 1.0, det.score(window[:9]).distance, 9)
    for m in (9, 15):  # one group (15: a full group and a short one merged into it): no test, yet the distance
        short = det.score(window[:m])
        assert (short.statistic, short.p_value, short.window_size) == (0.0, 1.0, m)
        counts_m = np.bincount(det.codes(window[:m]), minlength=20)
        assert short.distance > 0.0 and short.distance == pytest.approx(0.5 * np.abs(counts_m / m - 0.05).sum(), abs=1e-15)
    assert det.score(window[:10]).p_value == 1.0 and det.score(window[:20]).p_value < 1.0  # 10 expected in all: one
    # the groups follow the reference alone: the same grouping whatever the window holds
    piled = det.score(np.full(100, 50.0))
    assert piled.statistic == pytest.approx(stats.chi2_contingency(
        np.array([np.full(10, 10), np.eye(10)[5] * 100]), correction=False).statistic, rel=1e-12)


def test_binned_chi2_false_alarms_at_its_level_on_clean_windows_of_100():
    """20 bins of 5 expected at 100 samples: pooling by the pooled table's expected counts (the
    window's own counts in them) kept the bins the window over-filled, and 26% of clean windows of a
    uniform feature had p <= 0.05 (10% at 0.01). By the reference, merged to 10 expected: at level."""
    rng = np.random.default_rng(50)
    det = drift.BinnedChiSquareDetector(np.round(rng.uniform(size=16_000), 4))
    p = np.array([det.score(np.round(rng.uniform(size=100), 4)).p_value for _ in range(2000)])
    assert np.mean(p <= 0.05) <= 0.065 and np.mean(p <= 0.01) <= 0.017 and np.mean(p <= 0.001) <= 0.003


def test_binned_chi2_on_an_integer_column_with_five_values():
    """Quantile edges of five values collapse to the values themselves: one bin per value (and an
    empty one below), each value's share tested; false alarms at the level at 50 and 100 samples."""
    freq = [0.4, 0.3, 0.15, 0.1, 0.05]
    rng = np.random.default_rng(51)
    det = drift.BinnedChiSquareDetector(rng.choice(5, size=10_000, p=freq).astype(float))
    assert det.edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and det.n_bins == 6 and det.reference_freq[0] == 0.0
    assert det.groups(100).tolist() == [0, 0, 1, 2, 3, 3]  # 4 (5% of 100) joins 3: no cell expects < 10
    assert det.groups(50).tolist() == [0, 0, 1, 2, 2, 2]
    for m in (50, 100):
        p = np.array([det.score(rng.choice(5, size=m, p=freq).astype(float)).p_value for _ in range(2000)])
        assert np.mean(p <= 0.05) <= 0.07 and np.mean(p <= 0.01) <= 0.018, m
    assert det.groups(250).tolist() == [0, 0, 1, 2, 3, 4]  # 12.5 expected: the rarest value its own cell
    shifted = det.score(rng.choice(5, size=250, p=[0.3, 0.3, 0.15, 0.1, 0.15]).astype(float))
    assert shifted.p_value < 1e-6


def test_joint_test_is_at_its_level_when_the_features_are_independent():
    """Twelve independent features: every direction explains as much, so the components fitted are
    those of the fitted rows' own noise and those rows' errors are smaller than a new row's. Measured
    on them, clean windows of 500 had p <= 0.01 17% of the time; on the other half of the rows, 1%."""
    rng = np.random.default_rng(53)
    p = []
    for _ in range(20):  # over references, as a two-sample test's level is
        reference = {f"x{i}": rng.uniform(size=8000) for i in range(12)}
        joint = drift.ReconstructionDetector(reference)
        assert joint.n == 4000
        p += [joint.score({k: rng.uniform(size=500) for k in reference}).p_value for _ in range(30)]
    p = np.array(p)
    assert np.mean(p <= 0.05) <= 0.075 and np.mean(p <= 0.01) <= 0.02


def _reconstruction_by_hand(reference: dict, window: dict, variance: float = 0.65):
    """PCA reconstruction error of standardised normal scores, from scratch (SVD for the basis)."""
    def standardised(columns):
        out = []
        for name, ref in reference.items():
            ref = np.asarray(ref, dtype=float)
            ref = ref[np.isfinite(ref)]
            z_ref = _normal_scores_by_hand(ref, ref)
            values = np.asarray(columns[name], dtype=float)
            z = (_normal_scores_by_hand(ref, np.where(np.isfinite(values), values, 0.0)) - z_ref.mean()) / z_ref.std()
            out.append(np.where(np.isfinite(values), z, np.nan))
        return np.column_stack(out)

    z = standardised(reference)
    z = z[np.isfinite(z).all(axis=1)]
    # the basis from one half of the complete rows (seed 0), the errors' distribution from the other
    order = np.random.default_rng(0).permutation(len(z))
    fit, z = z[order[:len(z) // 2]], z[order[len(z) // 2:]]
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(fit, rowvar=False)))[::-1]
    components = int(np.argmax(np.cumsum(eigenvalues) / eigenvalues.sum() >= variance)) + 1
    vt = np.linalg.svd(fit - fit.mean(axis=0), full_matrices=False)[2][:components]
    errors = ((z - z @ vt.T @ vt) ** 2).sum(axis=1)
    w = standardised(window)
    w = w[np.isfinite(w).all(axis=1)]
    window_errors = ((w - w @ vt.T @ vt) ** 2).sum(axis=1)
    n, m = len(z), len(w)
    scale, dof = errors.var() / (2 * errors.mean()), 2 * errors.mean() ** 2 / errors.var()
    m_eff = 1 / (1 / m + 1 / n)
    p = stats.chi2.sf(m_eff * window_errors.mean() / scale, m_eff * dof)
    return components, n, errors, window_errors.mean() / errors.mean(), p, m


def test_reconstruction_detector_by_hand():
    rng = np.random.default_rng(41)
    a = rng.normal(size=600)
    reference = {"a": a, "b": a + rng.normal(0, 0.5, 600), "c": rng.normal(size=600),
                 "d": np.round(rng.normal(size=600))}
    reference["c"][:5] = np.nan  # rows left out of the reference
    det = drift.ReconstructionDetector(reference)
    assert det.test == "pca-reconstruction" and det.names == ["a", "b", "c", "d"]
    w = rng.normal(size=200)
    window = {"a": w, "b": -w + rng.normal(0, 0.5, 200), "c": rng.normal(size=200), "d": np.round(rng.normal(size=200))}
    window["d"][3] = np.inf
    components, n, errors, statistic, p, m = _reconstruction_by_hand(reference, window)
    assert (det.components, det.n) == (components, 298) and components == 2  # 595 complete rows: 297 fit the basis
    assert det.mean_error == pytest.approx(errors.mean(), rel=1e-9)
    np.testing.assert_allclose(det.error_deciles, np.quantile(errors, np.arange(1, 10) / 10), rtol=1e-9)
    result = det.score(window)
    assert (result.test, result.distance, result.window_size) == ("pca-reconstruction", None, m) and m == 199
    assert result.statistic == pytest.approx(statistic, rel=1e-9) and statistic > 1.5  # a and b turned against each other
    assert result.p_value == pytest.approx(p, rel=1e-6) and p < 1e-10
    assert np.isnan(det.row_errors(window)[3]) and np.isfinite(np.delete(det.row_errors(window), 3)).all()
    clean = {k: np.asarray(v)[300:] for k, v in reference.items()}
    _, _, _, statistic, p, _ = _reconstruction_by_hand(reference, clean)
    assert det.score(clean).statistic == pytest.approx(statistic, rel=1e-9)
    assert det.score(clean).p_value == pytest.approx(p, rel=1e-9) and p > 0.01
    newest = det.score_suffixes(window, [50, 200])
    assert newest[0] == det.score({k: v[-50:] for k, v in window.items()}) and newest[1] == result
    assert det.score({k: np.full(3, np.nan) for k in det.names}) == drift.TestResult("pca-reconstruction", None, None,
                                                                                      None, 0)
    # never every component: the errors would be rounding noise (and a division by a zero mean error)
    assert drift.ReconstructionDetector(reference, variance=0.99).components == 3
    two = drift.ReconstructionDetector({"x": rng.normal(size=500), "y": rng.normal(size=500)})
    assert two.components == 1 and two.mean_error > 0.5  # independent: the first explains ~50% < 65%
    assert drift.ReconstructionDetector(reference, variance=0.1).components == 1
    # a scorer given is used as it is
    scorer = drift.NormalScoreDetector(reference["a"])
    assert drift.ReconstructionDetector(reference, scorers={"a": scorer}).scorers["a"] is scorer
    # two features need at least eight complete rows: four to fit the basis, four to measure errors on
    eight = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert drift.ReconstructionDetector({"x": eight, "y": eight[::-1][:4] + eight[:4]}).n == 4
    with pytest.raises(ValueError, match=r"^ReconstructionDetector needs at least 2 x \(features \+ 2\) complete "
                                         r"reference rows$"):
        drift.ReconstructionDetector({"x": eight, "y": eight[:7] + [np.nan]})


def test_data_detector_family_is_every_test_at_every_scale_with_holm(small_reference):
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA, alpha=0.01, min_samples=20, scales=(40, 100, 500))
    window = _small_window(150, seed=26, x_shift=0.35)
    window["g"][-30:] = 2  # the newest 30 are all "c" (20% in the reference)
    x, y = small_reference["x"].to_numpy(float), small_reference["y"].to_numpy(float)
    g = det.encode_column("g", small_reference["g"])
    tests = {"x": [drift.KSDetector(x), drift.NormalScoreDetector(x), drift.BinnedChiSquareDetector(x)],
             "g": [drift.ChiSquareDetector(g, ["a", "b", "c"])],
             "y": [drift.KSDetector(y), drift.NormalScoreDetector(y), drift.BinnedChiSquareDetector(y)]}
    joint = drift.ReconstructionDetector({"x": x, "g": g.astype(float), "y": y})
    scales = [40, 100, 150]
    family = [(name, t.test, s, t.score(np.asarray(window[name])[150 - s:]))
              for name, ts in tests.items() for t in ts for s in scales]
    family += [("multivariate", joint.test, s, joint.score({k: np.asarray(v, dtype=float)[150 - s:]
                                                            for k, v in window.items()})) for s in scales]
    rejected = drift.holm_bonferroni([r.p_value for *_, r in family], 0.01)
    report = det.score(window)
    assert report.tests == len(family) == 24 and report.scales == scales
    assert (report.window_size, report.alpha, report.reason) == (150, 0.01, None)
    for name in ("x", "g", "y"):
        main = next(r for n, _, s, r in family if n == name and s == 150)
        f = report.features[name]
        assert (f.feature, f.test, f.distance) == (name, main.test, main.distance)
        assert f.statistic == pytest.approx(main.statistic, rel=1e-12)
        assert f.p_value == pytest.approx(main.p_value, rel=1e-9)
        fired = [(r.p_value, t, s) for (n, t, s, r), rej in zip(family, rejected) if rej and n == name]
        assert f.detected is bool(fired)
        if fired:
            p, t, s = min(fired)
            d = report.detections[name]
            assert (d.test, d.scale, d.segment, d.since) == (t, s, None, None)
            assert d.p_value == pytest.approx(p, rel=1e-9)
        else:
            assert name not in report.detections
    assert [n for n, f in report.features.items() if f.detected] == ["x", "g"]
    # g's change point, on its cells: the newest 30 "c"s, found from the newest 40
    cells = tests["g"][0].cells(window["g"])
    assert report.detections["g"].scale == 40
    assert report.detections["g"].since_samples == drift.change_start(cells, tests["g"][0].reference_counts / 2000, 40)
    whole = family[-1][3]
    joint_fired = [rej for (n, *_), rej in zip(family, rejected) if n == "multivariate"]
    assert report.multivariate == drift.MultivariateDrift("pca-reconstruction", pytest.approx(whole.statistic, rel=1e-9),
                                                          pytest.approx(whole.p_value, rel=1e-9), any(joint_fired),
                                                          joint.components)
    assert report.detected is bool(rejected.any()) is True
    assert report.max_distance == max(r.distance for n, t, s, r in family if s == 150 and r.distance is not None
                                      and t in ("ks", "chi2"))
    # the joint test leaves out rows with an unseen, negative or fractional grade code
    odd = {k: np.asarray(v, dtype=float).copy() for k, v in window.items()}
    odd["g"][:3] = [7, -1, 1.5]
    expected = joint.score({k: v[3:] for k, v in odd.items()})
    assert det.score(odd).multivariate.p_value == pytest.approx(expected.p_value, rel=1e-9)
    # too short a window: the joint test reports nothing, with its components; the family is empty
    short = det.score({k: np.asarray(v)[:19] for k, v in window.items()})
    assert short.multivariate == drift.MultivariateDrift("pca-reconstruction", None, None, False, joint.components)
    assert (short.tests, short.scales, short.detections) == (0, [], {})
    single = drift.DataDriftDetector(small_reference, {"features": SMALL_SCHEMA["features"][:1]})
    assert single.multivariate is None and single.score({"x": window["x"]}).multivariate is None
    assert drift.DataDriftDetector(small_reference, SMALL_SCHEMA, multivariate=False).multivariate is None
    assert det.scales == (40, 100, 500) and drift.DataDriftDetector(small_reference, SMALL_SCHEMA).scales == (50, 100, 250)


def test_concept_family_segments_and_detection_by_hand():
    """Two price bands and a grade; the family is KS, bias and spread at each scale, then each
    segment's t-test (`_segment_bias_p`) and F-test against the same segment of the reference, Holm over all."""
    rng = np.random.default_rng(50)
    pred = np.repeat([1000.0, 8000.0], 200)
    act = pred * np.exp(rng.normal(0, 0.1, 400))
    ref_cut = rng.choice(3, 400, p=[0.08, 0.32, 0.6])
    det = drift.ConceptDriftDetector(act, pred, alpha=0.01, min_samples=10, n_bins=2, scales=(50,),
                                     grades={"cut": ["Fair", "Good", "Ideal"], "color": ["D"]},
                                     reference_grades={"cut": ref_cut}, min_segment=20)
    assert det.grades == {"cut": ["Fair", "Good", "Ideal"]}  # color has no reference grades: no segment
    assert det.bin_names == ["price 0-4,500", "price 4,500+"] and det.scales == (50,) and det.min_segment == 20
    assert det.segment_names() == ["price 0-4,500", "price 4,500+", "cut=Fair", "cut=Good", "cut=Ideal"]
    w_pred = np.repeat([1000.0, 8000.0], 60)
    w_act = w_pred * np.exp(rng.normal(0, 0.1, 120)) * np.where(w_pred > 5000, 1.15, 1.0)  # dearer stones 15% up
    w_act[5] = np.nan  # this label and its grade are left out
    w_cut = rng.choice(3, 120, p=[0.08, 0.32, 0.6]).astype(float)
    w_cut[:4] = [-1, 5, np.nan, 1.5]  # unknown grades: in no grade segment
    report = det.score(w_act, w_pred, grades={"cut": w_cut})

    ok = np.isfinite(w_act)
    a, p_, cut = w_act[ok], w_pred[ok], w_cut[ok]
    m = 119
    u, bins = det.pit(a, p_)
    z = stats.norm.ppf(u)
    family = []  # (segment, scale, test, p, mask)
    for s in (50, 119):
        counts = np.bincount(bins[m - s:], minlength=2)
        n_eff = 1 / (1 / s + np.sum((counts / s) ** 2 / 200))
        d = stats.kstest(u[m - s:], "uniform").statistic
        zs = z[m - s:]
        family += [("all", s, "pit-ks", _two_sided_ks_p(d, round(n_eff)), None),
                   ("all", s, "bias", 2 * stats.norm.sf(abs(zs.mean()) * np.sqrt(n_eff)), None),
                   ("all", s, "spread", stats.chi2.sf(n_eff * np.mean(zs ** 2), n_eff), None)]
        if s == 119:
            whole_ks = (d, family[-3][3])
    u_ref, ref_bins = det.pit(act, pred)
    z_ref = stats.norm.ppf(u_ref)
    q_ref, q = np.log(act / pred), np.log(a / p_)
    shift = q - np.array([q_ref[ref_bins == 0].mean(), q_ref[ref_bins == 1].mean()])[bins]
    segments = {"price 0-4,500": (bins == 0, ref_bins == 0), "price 4,500+": (bins == 1, ref_bins == 1),
                "cut=Good": (cut == 1, ref_cut == 1), "cut=Ideal": (cut == 2, ref_cut == 2)}
    assert (cut == 0).sum() < 20 <= (ref_cut == 0).sum()  # Fair: too few labels in this window
    for name, (mask, ref_mask) in segments.items():
        zw, zr = z[mask], z_ref[ref_mask]
        family += [(name, m, "bias", _segment_bias_p(zw, zr), mask),
                   (name, m, "spread", stats.f.sf(zw.var(ddof=1) / zr.var(ddof=1), zw.size - 1, zr.size - 1), mask)]
    rejected = drift.holm_bonferroni([f[3] for f in family], 0.01)
    assert (report.tests, report.scales, report.labelled_size) == (len(family), [50, 119], m) and len(family) == 14
    assert report.statistic == pytest.approx(whole_ks[0], abs=1e-12)
    assert report.p_value == pytest.approx(whole_ks[1], rel=1e-9)
    assert report.bias_pct == pytest.approx(100 * np.expm1(shift.mean()), rel=1e-9)
    assert list(report.segments) == list(segments)
    for name, (mask, _) in segments.items():
        mine = [(f[3], rej) for f, rej in zip(family, rejected) if f[0] == name]
        seg = report.segments[name]
        assert seg.samples == mask.sum()
        assert seg.bias_pct == pytest.approx(100 * np.expm1(shift[mask].mean()), rel=1e-9)
        assert seg.p_value == pytest.approx(min(p for p, _ in mine), rel=1e-6)
        assert seg.detected is any(rej for _, rej in mine)
    assert [n for n, s in report.segments.items() if s.detected] == ["price 4,500+", "cut=Ideal"]
    assert report.detected is True
    i = min(range(len(family)), key=lambda j: (family[j][3], j) if rejected[j] else (np.inf, j))
    segment, s, test, p, mask = family[i]
    deciles = np.minimum((u * 10).astype(int), 9)
    assert report.detection == drift.Detection(test, s, pytest.approx(p, rel=1e-9),
                                               drift.change_start(deciles, np.full(10, 0.1), s, mask), segment=segment)
    assert (segment, s, test) == ("all", 50, "bias")
    # without the labels' grades only the price bands are segments
    plain = det.score(w_act, w_pred)
    assert list(plain.segments) == ["price 0-4,500", "price 4,500+"] and plain.tests == 6 + 4
    with pytest.raises(ValueError, match=r"^grades\['cut'\] differs in length from the labels$"):
        det.score(w_act, w_pred, grades={"cut": w_cut[:-1]})
    with pytest.raises(ValueError, match=r"^reference_grades\['cut'\] differs in length from the reference errors$"):
        drift.ConceptDriftDetector(act, pred, n_bins=2, grades={"cut": ["Fair"]}, reference_grades={"cut": ref_cut[1:]})
    # a segment of the reference with fewer than min_segment errors is never tested
    few = drift.ConceptDriftDetector(act, pred, n_bins=2, grades={"cut": ["Fair", "Good", "Ideal"]},
                                     reference_grades={"cut": ref_cut}, min_segment=100)
    assert few.segment_names() == ["price 0-4,500", "price 4,500+", "cut=Good", "cut=Ideal"]
    assert drift.ConceptDriftDetector(act, pred).min_segment == 20 and drift.ConceptDriftDetector(act, pred).scales == (50, 100, 250)


def test_concept_bin_names_two_figures_and_whole_dollars():
    pred = np.repeat([1234.0, 56789.0], 100)
    assert drift.ConceptDriftDetector(pred, pred, n_bins=2).bin_names == ["price 0-29,000", "price 29,000+"]
    # three edges that round alike: whole dollars instead
    pred = np.repeat([990.0, 1000.0, 1010.0, 1020.0], 100)
    det = drift.ConceptDriftDetector(pred, pred, n_bins=4)
    assert det.edges.tolist() == pytest.approx([997.5, 1005.0, 1012.5])
    assert det.bin_names == ["price 0-998", "price 998-1,005", "price 1,005-1,012", "price 1,012+"]
    pred = np.repeat([90.0, 950.0, 12345.0], 100)
    assert drift.ConceptDriftDetector(pred, pred, n_bins=3).bin_names == ["price 0-660", "price 660-4,700", "price 4,700+"]


# --------------------------------------------------------------------------------------------------
# scenarios and the evaluation script


def test_heldout_rows_are_the_artifacts_held_out_split(small_artifact):
    rows = scenarios.heldout_rows()
    assert list(rows.columns) == train.FEATURES + ["price"]
    assert len(rows) == small_artifact["metrics"]["n_test"]
    np.testing.assert_array_equal(rows["price"].to_numpy(float), small_artifact["reference_errors"]["actual"])


def test_scenario_constants_match_the_data():
    diamonds = train.load_diamonds()
    assert scenarios.DEPTH_SD == pytest.approx(diamonds["depth"].std(), abs=1e-4)
    assert scenarios.TABLE_SD == pytest.approx(diamonds["table"].std(), abs=1e-4)


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenarios_give_valid_rows(name, heldout):
    scenario = scenarios.SCENARIOS[name]
    rows = heldout[scenarios.COLUMNS]
    out = scenario.apply(rows, np.random.default_rng(0))
    assert list(out.columns) == scenarios.COLUMNS and len(out) == len(rows)
    for column in NUMERIC + ["price"]:
        values = out[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and (values > 0).all()
    assert scenario.kind in ("none", "data", "concept")
    if scenario.kind == "concept":  # inputs drawn as they are
        merged = out[train.FEATURES].astype(str).agg("|".join, axis=1)
        assert merged.isin(rows[train.FEATURES].astype(str).agg("|".join, axis=1)).all()
    small = scenario.sample(rows, 100, np.random.default_rng(1))
    assert len(small) == 100
    again = scenario.sample(rows, 100, np.random.default_rng(1))
    pd.testing.assert_frame_equal(small, again)  # seeded


def test_mix_scenarios_move_the_mix(heldout):
    rng = np.random.default_rng(2)
    rows = heldout[scenarios.COLUMNS]
    assert scenarios.SCENARIOS["large_stones"].sample(rows, 2000, rng)["carat"].mean() > rows["carat"].mean() + 0.15
    cut = scenarios.SCENARIOS["cut_mix"].sample(rows, 2000, rng)["cut"].astype(str)
    assert cut.isin(["Fair", "Good"]).mean() > 1.7 * rows["cut"].astype(str).isin(["Fair", "Good"]).mean()
    up = scenarios.SCENARIOS["price_up_25"].apply(rows, rng)
    assert up["price"].sum() == pytest.approx(1.25 * rows["price"].sum(), rel=0.05)


def test_evaluate_drift_runs_end_to_end(small_artifact_path):
    from evaluation import evaluate_drift

    args = evaluate_drift.parse_args(["--model", str(small_artifact_path), "--seeds", "1", "--jobs", "1",
                                      "--window", "200", "--check-every", "50",
                                      "--scenarios", "clean", "large_stones", "price_up_25"])
    result = evaluate_drift.run_evaluation(args)
    runs = {r["scenario"]: r for r in result["runs"]}
    assert set(runs) == {"clean", "large_stones", "price_up_25"}
    assert sum(r["clean_checks"] for r in runs.values()) > 20
    assert runs["large_stones"]["delay"] <= 400 and runs["price_up_25"]["delay"] <= 200
    assert runs["clean"]["delay"] is None and runs["clean"]["other_checks"] == 0
    table = evaluate_drift.render(result, args)
    assert "| large_stones | data |" in table and "| clean |" not in table
    assert "False alarms on clean traffic: data drift" in table


JOINT_SCHEMA = {"features": [{"name": "x", "kind": "numeric"}, {"name": "y", "kind": "numeric"},
                             {"name": "g", "kind": "categorical", "categories": ["a", "b"]}]}


def test_joint_detection_names_its_scale_p_and_change_point():
    """x and y go together in the reference and against each other in the newest 120 rows: each
    feature's own distribution stays as it was, the joint test fires, and its Detection is the
    rejected joint hypothesis with the smallest p, dated by change_start on the rows' reconstruction
    errors binned at the reference errors' deciles (rows with a non-finite value left out)."""
    rng = np.random.default_rng(61)
    x = rng.normal(size=3000)
    reference = pd.DataFrame({"x": x, "y": x + rng.normal(0, 0.4, 3000), "g": rng.choice(["a", "b"], size=3000)})
    det = drift.DataDriftDetector(reference, JOINT_SCHEMA, alpha=0.01, min_samples=20, scales=(50, 120))
    w = rng.normal(size=400)
    sign = np.where(np.arange(400) < 280, 1.0, -1.0)  # the newest 120 turned against each other
    window = {"x": w, "y": sign * w + rng.normal(0, 0.4, 400), "g": rng.choice(2, size=400).astype(np.int64)}
    window["y"][5] = np.nan  # a row the joint test leaves out
    report = det.score(window)
    joint = det.multivariate
    columns = {"x": window["x"], "y": window["y"], "g": window["g"].astype(float)}
    results = [(s, joint.score({k: v[400 - s:] for k, v in columns.items()})) for s in (50, 120, 400)]
    assert report.scales == [50, 120, 400] and report.tests == 8 * 3  # x, y: 3 tests each; g: 1; joint: 1
    # which of them Holm rejects, with the per-feature tests in the family
    family = [r.p_value for name in ("x", "y", "g") for t in det.tests[name]
              for r in t.score_suffixes(np.asarray(window[name]), [50, 120, 400])]
    family += [r.p_value for _, r in results]
    rejected = drift.holm_bonferroni(family, 0.01)[-3:]
    fired = [(r.p_value, s) for (s, r), rej in zip(results, rejected) if rej]
    assert fired and not report.features["x"].detected and not report.features["g"].detected
    p, s = min(fired)
    d = report.detections["multivariate"]
    assert (d.test, d.scale, d.segment, d.since) == ("pca-reconstruction", s, None, None)
    assert d.p_value == pytest.approx(p, rel=1e-9)
    errors = joint.row_errors(columns)
    assert np.isnan(errors[5]) and np.isfinite(np.delete(errors, 5)).all()
    finite = errors[np.isfinite(errors)]
    cells = np.searchsorted(joint.error_deciles, finite, side="right")
    assert d.since_samples == drift.change_start(cells, np.full(10, 0.1), s)
    assert 100 <= d.since_samples <= 140  # about the newest 120
    assert report.multivariate.detected is True
    assert report.multivariate.statistic == pytest.approx(results[-1][1].statistic, rel=1e-9)


def test_joint_change_start_bins_finite_errors_at_the_reference_deciles():
    rng = np.random.default_rng(62)
    x = rng.normal(size=1000)
    reference = pd.DataFrame({"x": x, "y": x + rng.normal(0, 0.4, 1000), "g": rng.choice(["a", "b"], size=1000)})
    det = drift.DataDriftDetector(reference, JOINT_SCHEMA)
    deciles = det.multivariate.error_deciles
    assert deciles.size == 9 and np.all(np.diff(deciles) > 0)
    low, high = deciles[0] / 2, deciles[-1] * 2  # below every decile (bin 0), above all (bin 9)
    errors = np.array([low] * 30 + [np.nan] * 3 + [high] * 12 + [np.inf, high])
    # 43 finite errors: the newest 13 sit in the top bin, a suffix larger than them is cut to 43
    assert det._joint_change_start(errors, 13) == drift.change_start(np.array([0] * 30 + [9] * 13), np.full(10, 0.1), 13)
    assert det._joint_change_start(errors, 13) == 13
    assert det._joint_change_start(errors, 500) == drift.change_start(np.array([0] * 30 + [9] * 13), np.full(10, 0.1), 43)
    # an error exactly on a decile belongs to the bin above it (side="right")
    on_edge = np.array([deciles[0]] * 20 + [deciles[4]] * 20)
    expected = drift.change_start(np.array([1] * 20 + [5] * 20), np.full(10, 0.1), 20)
    assert det._joint_change_start(on_edge, 20) == expected == 20


def _segment_bias_p(zw: np.ndarray, zr: np.ndarray) -> float:
    """The segment bias test by scipy: of Welch's and Student's t statistics the smaller (the larger
    standard error), two-sided against Student's t with k + n - 2 degrees of freedom."""
    welch = stats.ttest_ind(zw, zr, equal_var=False).statistic
    student = stats.ttest_ind(zw, zr, equal_var=True).statistic
    return float(2 * stats.t.sf(min(abs(welch), abs(student)), zw.size + zr.size - 2))


def test_segment_tests_are_the_larger_error_t_test_and_the_f_test_by_hand():
    """ConceptDriftDetector._segment_tests against scipy, and its guards by hand: a one-label segment
    (no variance of its own), a reference segment of one error, and flat scores (a variance floor
    of 1e-12, never a division by zero)."""
    seg = drift.ConceptDriftDetector._segment_tests
    rng = np.random.default_rng(70)
    zr = rng.normal(0.0, 1.0, 250)
    # a wider window: Welch's error (its own variance) is the larger one
    zw = rng.normal(0.4, 1.3, 37)
    bias, spread = seg(zw, (zr.size, zr.mean(), zr.var()))
    welch = stats.ttest_ind(zw, zr, equal_var=False)
    assert (bias.test, bias.distance, bias.window_size) == ("bias", None, 37)
    assert bias.statistic == pytest.approx(welch.statistic, rel=1e-12)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(abs(welch.statistic), 285), rel=1e-9)
    assert bias.p_value == pytest.approx(_segment_bias_p(zw, zr), rel=1e-9)
    ratio = zw.var(ddof=1) / zr.var(ddof=1)
    assert (spread.test, spread.distance, spread.window_size) == ("spread", None, 37)
    assert spread.statistic == pytest.approx(ratio, rel=1e-12)
    assert spread.p_value == pytest.approx(stats.f.sf(ratio, 36, 249), rel=1e-9)
    # a narrower window: Student's error (the pooled variance) is the larger one, Student's p exactly
    zw = rng.normal(0.4, 0.6, 37)
    bias, _ = seg(zw, (zr.size, zr.mean(), zr.var()))
    student = stats.ttest_ind(zw, zr, equal_var=True)
    assert abs(student.statistic) < abs(stats.ttest_ind(zw, zr, equal_var=False).statistic)
    assert bias.statistic == pytest.approx(student.statistic, rel=1e-12)
    assert bias.p_value == pytest.approx(student.pvalue, rel=1e-9)
    # falling spread: the one-sided F-test does not flag it
    _, narrow = seg(zr[:40] * 0.3, (zr.size, zr.mean(), zr.var()))
    assert narrow.p_value > 0.999
    # one label: its own variance is 0, the pooled one is the reference's: Student's error, n - 1 dof
    bias, spread = seg(np.array([1.2]), (50, 0.1, 0.81))
    var_r = 0.81 * 50 / 49
    t = (1.2 - 0.1) / np.sqrt(var_r * (1 + 1 / 50))
    assert bias.statistic == pytest.approx(t, rel=1e-12) and bias.window_size == 1
    assert bias.p_value == pytest.approx(2 * stats.t.sf(t, 49), rel=1e-9)
    assert (spread.statistic, spread.p_value) == (0.0, 1.0)
    # a reference segment of one error: its variance taken as is (n / max(n - 1, 1) = 1), floored;
    # the pooled variance is the window's (2 * 0.25 / 2), Student's error the larger
    bias, spread = seg(np.array([0.5, 1.5, 1.0]), (1, 0.25, 0.0))
    assert bias.statistic == pytest.approx((1.0 - 0.25) / np.sqrt(0.25 * (1 / 3 + 1)), rel=1e-12)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(bias.statistic, 2), rel=1e-9)
    assert spread.statistic == pytest.approx(0.25 / 1e-12, rel=1e-12)
    assert spread.p_value == pytest.approx(stats.f.sf(0.25 / 1e-12, 2, 1), rel=1e-9)
    # flat scores on both sides: both errors under the floor, the standard error is 1e-6, not zero
    bias, spread = seg(np.full(4, 0.3), (10, 0.2, 0.0))
    assert bias.statistic == pytest.approx(0.1 / 1e-6, rel=1e-9)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(1e5, 12), rel=1e-6)
    assert (spread.statistic, spread.p_value) == (0.0, 1.0)
    # one label against one reference error: k + n - 2 = 0 degrees of freedom, taken as 1
    bias, _ = seg(np.array([1.0]), (1, 0.0, 0.0))
    assert bias.statistic == pytest.approx(1e6, rel=1e-9)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(1e6, 1), rel=1e-6)
    assert bias.p_value > 1e-7  # 6.4e-7 with 1 degree of freedom; 2 would give 1e-12


def test_segment_tests_with_two_labels_or_two_reference_errors():
    """The smallest segments where each guard's max(. - 1, 1) is the plain count minus one."""
    seg = drift.ConceptDriftDetector._segment_tests
    bias, spread = seg(np.array([0.2, 1.0]), (2, -0.1, 0.09))
    var_w, var_r = 0.32, 0.09 * 2 / 1
    se2_w, se2_r = var_w / 2, var_r / 2
    t = (0.6 + 0.1) / np.sqrt(se2_w + se2_r)  # = Student's: the pooled (0.32 + 0.18) / 2 = 0.25 times 1/2 + 1/2
    assert bias.statistic == pytest.approx(t, rel=1e-12)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(t, 2), rel=1e-9)
    assert spread.statistic == pytest.approx(var_w / var_r, rel=1e-12)
    assert spread.p_value == pytest.approx(stats.f.sf(var_w / var_r, 1, 1), rel=1e-9)
    # two labels against one reference error, and one label against two: k + n - 2 = 1 either way
    bias, _ = seg(np.array([0.2, 1.0]), (1, -0.1, 0.0))
    pooled = (0.32 + 0 * 1e-12) / 1
    t = 0.7 / np.sqrt(max(0.32 / 2 + 1e-12, pooled * 1.5))
    assert bias.statistic == pytest.approx(t, rel=1e-12)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(t, 1), rel=1e-9)
    bias, _ = seg(np.array([0.5]), (2, -0.1, 0.09))
    t = 0.6 / np.sqrt(0.18 * 1.5)  # pooled = the reference's 0.18
    assert bias.statistic == pytest.approx(t, rel=1e-12)
    assert bias.p_value == pytest.approx(2 * stats.t.sf(t, 1), rel=1e-9)


def test_small_segment_bias_test_holds_its_level_at_holms_thresholds():
    """A segment of 67 reference errors (a friedman site) and 20 window labels, without drift: the
    bias test's p-value is at most 1e-4 (Holm's thresholds at alpha 0.005 over ~50 hypotheses) in at
    most 1.25x its share of 300,000 seeded windows (28 of the 30 expected). Welch's t-test, which it
    replaced, was 59: its variance of 20 window scores moves with their mean, since every score is
    ranked against one reference. Ranks of the window's errors among the reference's, both from one
    continuous distribution, are those of a random interleaving of the two samples."""
    rng = np.random.default_rng(14)
    n, k, reps = 67, 20, 300_000
    ref_scores = stats.norm.ppf(np.arange(1, n + 1) / (n + 1))  # the reference's own mid-rank scores
    reference = (n, float(ref_scores.mean()), float(ref_scores.var()))
    flagged = candidates = 0
    for _ in range(reps // 50_000):
        is_ref = np.argsort(rng.random((50_000, n + k)), axis=1) < n
        below = np.cumsum(is_ref, axis=1)[~is_ref].reshape(-1, k)  # reference errors under each window error
        z = stats.norm.ppf((below + 0.5) / (n + 1))
        # only windows with |Welch's t| >= 3 can reach p <= 1e-4 (the test's error is at least Welch's)
        welch = (z.mean(axis=1) - reference[1]) / np.sqrt(z.var(axis=1, ddof=1) / k + ref_scores.var(ddof=1) / n)
        for row in z[np.abs(welch) >= 3]:
            candidates += 1
            flagged += drift.ConceptDriftDetector._segment_tests(row, reference)[0].p_value <= 1e-4
    assert candidates > 1000
    assert 0.5 * 1e-4 * reps <= flagged <= 1.25 * 1e-4 * reps, flagged


def test_concept_whole_window_tests_by_hand():
    """The three whole-window concept tests as TestResults: names, statistics, p, distance, size."""
    u = np.array([0.05, 0.2, 0.35, 0.5, 0.95, 0.9])
    z = stats.norm.ppf(u)
    ks = drift.ConceptDriftDetector._ks(u, 5.0)
    d = stats.kstest(u, "uniform").statistic
    assert ks == drift.TestResult("pit-ks", pytest.approx(d, abs=1e-12), drift.ks_p_value(d, 5.0),
                                  pytest.approx(d, abs=1e-12), 6)
    bias = drift.ConceptDriftDetector._bias(z, 5.0)
    stat = z.mean() * np.sqrt(5.0)
    assert bias == drift.TestResult("bias", pytest.approx(stat, rel=1e-12),
                                    pytest.approx(2 * stats.norm.sf(abs(stat)), rel=1e-12), None, 6)
    spread = drift.ConceptDriftDetector._spread(z, 5.0)
    stat = np.mean(z ** 2)
    assert spread == drift.TestResult("spread", pytest.approx(stat, rel=1e-12),
                                      pytest.approx(stats.chi2.sf(5.0 * stat, 5.0), rel=1e-9), None, 6)


def test_finite_pairs_are_float_arrays_without_missing_pairs():
    actual, predicted = drift._finite_pairs([1, None, 3, 4], [2, 5, np.inf, 8], "pairs")
    assert actual.dtype == predicted.dtype == np.float64
    assert actual.tolist() == [1.0, 4.0] and predicted.tolist() == [2.0, 8.0]


def test_dollars_of_small_edges():
    assert [drift._dollars(x) for x in (-3.0, 0.0, 0.8, 1.0, 1.4, 950.4)] == ["0", "0", "1", "1", "1", "950"]


def test_concept_reference_with_missing_values_and_each_segment_s_reference():
    """Reference pairs with a missing value are left out of the segments too, grade for grade; each
    segment's reference is (n, mean, variance) of the reference's own normal scores in it, kept
    when it has at least min_segment errors."""
    rng = np.random.default_rng(71)
    pred = np.repeat([1000.0, 3000.0, 8000.0], 40)
    act = list(pred * np.exp(rng.normal(0, 0.1, 120)))
    act[3], act[50] = None, np.nan            # two pairs with no price
    pred = list(pred)
    pred[90] = np.inf                          # and one with no prediction
    cut = np.array([0] * 20 + [1] * 100)       # Fair: 20 rows, one of them without a price
    cut[100:] = 0                              # ... and 20 more among the dearest (one without prediction)
    det = drift.ConceptDriftDetector(act, pred, n_bins=3, grades={"cut": ["Fair", "Good"]},
                                     reference_grades={"cut": cut}, min_segment=39)
    ok = np.array([i not in (3, 50, 90) for i in range(120)])
    a, p_ = np.asarray(act, dtype=float)[ok], np.asarray(pred)[ok]
    u, bins = det.pit(a, p_)
    z = stats.norm.ppf(u)
    cut_ok = cut[ok]
    assert det.n_bins == 3 and bins.tolist() == [0] * 39 + [1] * 39 + [2] * 39
    expected = {**{name: bins == b for b, name in enumerate(det.bin_names)},
                "cut=Fair": cut_ok == 0, "cut=Good": cut_ok == 1}
    kept = {name: mask for name, mask in expected.items() if mask.sum() >= 39}
    assert (cut_ok == 0).sum() == 39 == (bins == 0).sum()   # exactly min_segment: kept
    assert list(det._segment_reference) == list(kept) == det.segment_names()
    for name, mask in kept.items():
        n, mean, var = det._segment_reference[name]
        assert n == mask.sum()
        assert mean == pytest.approx(z[mask].mean(), rel=1e-9, abs=1e-12)
        assert var == pytest.approx(z[mask].var(), rel=1e-9)


def test_concept_segments_of_a_second_grade_and_at_exactly_min_segment():
    """Labels with only the second grade's codes still get that grade's segments; a segment with
    exactly min_segment labels is tested; a detection within a segment is dated on that segment's
    labels (change_start with its mask)."""
    rng = np.random.default_rng(72)
    pred = np.repeat([1000.0, 8000.0], 300)
    act = pred * np.exp(rng.normal(0, 0.1, 600))
    ref_grades = {"cut": rng.choice(2, 600), "color": rng.choice(2, 600)}
    det = drift.ConceptDriftDetector(act, pred, alpha=0.05, min_samples=10, n_bins=2, scales=(),
                                     grades={"cut": ["Fair", "Ideal"], "color": ["D", "J"]},
                                     reference_grades=ref_grades, min_segment=25)
    m = 200
    w_pred = np.tile([1000.0, 8000.0], m // 2)
    color = np.array([0] * 175 + [1] * 25, dtype=float)   # J: exactly 25 labels, the newest
    w_act = w_pred * np.exp(rng.normal(0, 0.1, m)) * np.where(color == 1, 1.6, 1.0)  # J stones 60% dearer
    report = det.score(w_act, w_pred, grades={"color": color})
    assert list(report.segments) == ["price 0-4,500", "price 4,500+", "color=D", "color=J"]
    assert report.segments["color=J"].samples == 25 and report.segments["color=J"].detected
    d = report.detection
    assert d.segment == "color=J" and d.scale == m
    u, _ = det.pit(w_act, w_pred)
    deciles = np.minimum((u * 10).astype(int), 9)
    assert d.since_samples == drift.change_start(deciles, np.full(10, 0.1), m, color == 1)
    assert d.since_samples != drift.change_start(deciles, np.full(10, 0.1), m)  # the mask matters here


def test_data_detector_shares_normal_scores_and_scorers():
    """Each numeric feature's normal scores are computed once a check, for its normal-score test and
    the joint test together, by the same NormalScoreDetector."""
    rng = np.random.default_rng(73)
    reference = pd.DataFrame({"x": rng.normal(size=500), "g": rng.choice(["a", "b"], 500),
                              "y": rng.normal(size=500)})
    schema = {"features": [{"name": "x", "kind": "numeric"}, {"name": "g", "kind": "categorical",
                                                              "categories": ["a", "b"]},
                           {"name": "y", "kind": "numeric"}]}
    det = drift.DataDriftDetector(reference, schema, min_samples=10, scales=(20,))
    for name in ("x", "y"):
        assert det.multivariate.scorers[name] is det.tests[name][1]
    calls = []
    real = drift.NormalScoreDetector.scores

    def counted(self, values):
        calls.append(len(values))
        return real(self, values)

    window = {"x": rng.normal(size=60), "g": rng.choice(2, 60), "y": rng.normal(size=60)}
    drift.NormalScoreDetector.scores = counted
    try:
        report = det.score(window)
    finally:
        drift.NormalScoreDetector.scores = real
    assert calls == [60, 60, 60]   # x and y once each, and g's codes by the joint test's own scorer
    assert report.tests == (3 + 1 + 3 + 1) * 2
    # two features are enough for a joint test
    two = drift.DataDriftDetector(reference, {"features": schema["features"][:2]})
    assert two.multivariate is not None and two.multivariate.names == ["x", "g"]


def test_joint_columns_keep_only_codes_of_the_schema():
    rng = np.random.default_rng(74)
    reference = pd.DataFrame({"x": rng.normal(size=300), "g": rng.choice(["a", "b", "c"], 300)})
    schema = {"features": [{"name": "x", "kind": "numeric"},
                           {"name": "g", "kind": "categorical", "categories": ["a", "b", "c"]}]}
    det = drift.DataDriftDetector(reference, schema)
    out = det._joint_columns({"x": [0.5, 1.5, -2.0, 3.0, 0.0], "g": [0, 2, 3, -1, 1.5]})
    assert out["x"].tolist() == [0.5, 1.5, -2.0, 3.0, 0.0]
    np.testing.assert_array_equal(out["g"], [0.0, 2.0, np.nan, np.nan, np.nan])


def test_normal_score_suffix_of_length_zero_is_empty():
    det = drift.NormalScoreDetector(np.arange(100.0))
    empty, whole = det.score_suffixes(np.array([3.0, 50.0, 70.0]), [0, 3])
    assert empty == drift.TestResult("normal-score", None, None, None, 0)
    assert whole.window_size == 3 and whole.p_value is not None


def test_multivariate_drift_to_dict_keeps_its_p_value():
    joint = drift.MultivariateDrift("pca-reconstruction", 1.25, 3e-5, True, 2)
    assert joint.to_dict() == {"test": "pca-reconstruction", "statistic": 1.25, "p_value": 3e-5,
                               "detected": True, "components": 2}


def test_joint_change_start_depends_on_the_reference_share_of_each_bin():
    """change_start against 1/10 per decile bin: a reference share other than 1/10, or bins split
    at the deciles the other way (side='left'), would date this change differently."""
    rng = np.random.default_rng(75)
    x = rng.normal(size=1000)
    reference = pd.DataFrame({"x": x, "y": x + rng.normal(0, 0.4, 1000), "g": rng.choice(["a", "b"], size=1000)})
    det = drift.DataDriftDetector(reference, JOINT_SCHEMA)
    deciles = det.multivariate.error_deciles
    cells = np.array([1, 4, 9, 0, 8, 1, 3, 9, 2, 2, 9, 9, 0, 0, 5, 6, 5, 9, 9, 9, 0, 0, 7, 9, 3, 9, 9, 8, 9, 9])
    top = deciles[-1] * 2
    lower = np.concatenate(([deciles[0] / 2], deciles))   # a value inside each bin: its lower edge, or below all
    errors = np.where(cells == 9, top, lower[cells] + 1e-9 * (cells > 0))
    assert np.array_equal(np.searchsorted(deciles, errors, side="right"), cells)
    assert det._joint_change_start(errors, 12) == drift.change_start(cells, np.full(10, 0.1), 12) == 20
    # what another share per bin would give: not the same
    assert [drift.change_start(cells, np.full(11, 0.1), 12), drift.change_start(cells, np.full(10, 1 / 8), 12),
            drift.change_start(cells, np.full(10, 1 / 11), 12)] == [13, 13, 28]
    # an error exactly on a decile goes to the bin above it: side="right"
    on_edge = np.array([deciles[0] * 0.999] * 20 + [deciles[0]] * 20)
    assert det._joint_change_start(on_edge, 20) == 20


def test_none_is_a_missing_value_in_every_numeric_test_and_the_joint_columns(small_reference):
    scorer = drift.NormalScoreDetector([1.0, None, 2.0, 3.0])
    assert scorer.n == 3
    assert scorer.score_suffixes([None, 2.0, 2.5], [3])[0].window_size == 2
    binned = drift.BinnedChiSquareDetector([1.0, None, 2.0, 3.0, 4.0], n_bins=2)
    assert binned.chi2.n == 4 and binned.chi2.categories == ["0", "1"]   # bins named by their index
    det = drift.DataDriftDetector(small_reference, SMALL_SCHEMA)
    out = det._joint_columns({"x": [None, 1.0], "g": [None, 1], "y": [2.0, None]})
    np.testing.assert_array_equal(out["x"], [np.nan, 1.0])
    np.testing.assert_array_equal(out["g"], [np.nan, 1.0])
    np.testing.assert_array_equal(out["y"], [2.0, np.nan])
    concept = drift.ConceptDriftDetector([100.0, None] + [100.0] * 20, [100.0, 100.0, None] + [100.0] * 19, n_bins=1)
    assert concept.n == 20


def test_a_segment_s_detection_is_dated_on_that_segment_against_ten_deciles():
    """J stones (about 30% of the labels) 30% dearer over the newest 80 labels: the spread test of
    color=J fires, and its change point is change_start on that segment's PIT deciles, each with
    a reference share of 1/10 (neither the whole window's nor eleven cells' answer)."""
    rng = np.random.default_rng(108)
    pred = np.repeat([1000.0, 8000.0], 300)
    act = pred * np.exp(rng.normal(0, 0.1, 600))
    ref_grades = {"cut": rng.choice(2, 600), "color": rng.choice(2, 600)}
    det = drift.ConceptDriftDetector(act, pred, alpha=0.05, min_samples=10, n_bins=2, scales=(),
                                     grades={"cut": ["Fair", "Ideal"], "color": ["D", "J"]},
                                     reference_grades=ref_grades, min_segment=25)
    m = 200
    w_pred = np.tile([1000.0, 8000.0], m // 2)
    color = (rng.random(m) < 0.3).astype(float)
    late = np.arange(m) >= 120
    w_act = w_pred * np.exp(rng.normal(0, 0.1, m)) * np.where((color == 1) & late, 1.3, 1.0)
    d = det.score(w_act, w_pred, grades={"color": color}).detection
    assert (d.test, d.scale, d.segment) == ("spread", m, "color=J")
    u, _ = det.pit(w_act, w_pred)
    deciles = np.minimum((u * 10).astype(int), 9)
    assert d.since_samples == drift.change_start(deciles, np.full(10, 0.1), m, color == 1) == 99
    assert drift.change_start(deciles, np.full(11, 0.1), m, color == 1) == 75
    assert drift.change_start(deciles, np.full(10, 0.1), m) == 101


def test_small_helpers_on_edge_inputs():
    assert drift._dollars(-0.0) == "0"
    # codes given as floats index the same cells as integers
    codes = [0, 1, 1, 2, 2, 2, 2]
    freq = np.array([0.5, 0.3, 0.2])
    assert drift.change_start(np.array(codes, dtype=float), freq, 4) == drift.change_start(codes, freq, 4) == 4
    scorer = drift.NormalScoreDetector(np.arange(10.0))
    assert scorer.scores([None, 2.0])[1] == scorer.scores(np.array([2.0]))[0]
    binned = drift.BinnedChiSquareDetector(np.arange(100.0), n_bins=4)
    assert binned.codes([None, 10.0, 60.0]).tolist() == [-1, 0, 2]
    assert binned.score([None, 10.0, 60.0]).window_size == 2
    joint = drift.ReconstructionDetector({"a": np.arange(50.0), "b": np.arange(50.0) % 7, "c": np.arange(50.0) % 3})
    errors = joint.row_errors({"a": [None, 3.0], "b": [1.0, 2.0], "c": [0.0, 1.0]})
    assert np.isnan(errors[0]) and np.isfinite(errors[1])


def test_residual_errors_rank_actual_minus_predicted_whatever_the_targets_sign():
    """error="residual": a target that is zero or negative has no ratio. Shifting every target and
    prediction by the same constant changes nothing but the band names; `bias` is the mean shift of
    the residuals in the target's units, and the log-ratio figures are None."""
    rng = np.random.default_rng(5)
    predicted = rng.normal(0.0, 3.0, 4000)
    actual = predicted + rng.normal(0.0, 1.0, 4000)
    live_pred = rng.normal(0.0, 3.0, 400)
    live = live_pred + rng.normal(0.6, 1.0, 400)
    det = drift.ConceptDriftDetector(actual, predicted, error="residual")
    moved = drift.ConceptDriftDetector(actual + 100.0, predicted + 100.0, error="residual")
    a, b = det.score(live, live_pred), moved.score(live + 100.0, live_pred + 100.0)
    assert a.p_value == b.p_value and a.statistic == b.statistic and a.detected is b.detected is True
    assert a.error == "residual" and a.bias == pytest.approx(b.bias) and 0.4 < a.bias < 0.8
    assert a.bias_pct is None and a.mean_log_ratio is None
    assert all(seg.bias_pct is None for seg in a.segments.values())
    assert det.bin_names[0].startswith("predicted < ") and det.bin_names[-1].startswith("predicted >= ")
    u, _ = det.pit(actual[:10], predicted[:10])
    assert np.all((u > 0) & (u < 1))
    clean = det.score(predicted[:300] + rng.normal(0.0, 1.0, 300), predicted[:300])
    assert clean.detected is False
    with pytest.raises(ValueError, match="^error must be 'log_ratio' or 'residual'$"):
        drift.ConceptDriftDetector(actual, predicted, error="ratio")


def test_residual_bands_are_named_by_their_edges_and_residuals_ranked_exactly():
    """error="residual": bands named by their predicted edges (three significant figures; numbers
    when they would collide; one band for n_bins=1), errors ranked as actual minus predicted, and the
    report says which error it measured even before it has enough labels."""
    predicted = np.arange(40.0)
    actual = predicted + np.tile([-0.5, 0.5], 20)
    det = drift.ConceptDriftDetector(actual, predicted, n_bins=4, error="residual")
    assert det.bin_names == ["predicted < 9.75", "predicted 9.75 to 19.5", "predicted 19.5 to 29.2",
                             "predicted >= 29.2"]
    close = 1.0 + np.arange(40) * 1e-6  # edges equal to three figures: the bands are numbered instead
    assert drift.ConceptDriftDetector(close + 0.1, close, n_bins=4, error="residual").bin_names == [
        "band 1", "band 2", "band 3", "band 4"]
    one = drift.ConceptDriftDetector(10.0 + np.linspace(-1.0, 1.0, 40), np.full(40, 10.0), n_bins=1, error="residual")
    assert one.bin_names == ["predicted: all"]
    # residuals 2 (above all 40 reference residuals), 1 (ties the largest), 0 (20 below): mid-ranks
    u, bins = one.pit(np.array([5.0, 0.0, 10.0]), np.array([3.0, -1.0, 10.0]))
    assert u.tolist() == pytest.approx([40.5 / 41, 40.0 / 41, 20.5 / 41], abs=1e-15) and bins.tolist() == [0, 0, 0]
    short = one.score(np.ones(5), np.ones(5))
    assert short.error == "residual" and short.to_dict()["error"] == "residual" and short.detected is False
    assert det.score(actual[:35], predicted[:35]).bias == pytest.approx(-0.5 / 35, abs=1e-12)
    # the bias in target units is a residual's figure: a log-ratio report has none
    ratio = drift.ConceptDriftDetector(actual + 100.0, predicted + 100.0, n_bins=4)
    assert ratio.error == "log_ratio" and ratio.score(actual[:35] + 100.0, predicted[:35] + 100.0).bias is None
