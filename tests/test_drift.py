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
import train

NUMERIC = ["carat", "depth", "table"]


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def heldout(small_artifact):
    rows = scenarios.heldout_rows()
    rows["predicted"] = small_artifact["pipeline"].predict(rows[train.FEATURES])
    return rows


@pytest.fixture(scope="module")
def halves(heldout):
    """Held-out rows split in two: reference half A, streamed half B (as evaluate_drift.py does)."""
    order = np.random.default_rng(0).permutation(len(heldout))
    half = len(order) // 2
    return heldout.iloc[order[:half]].reset_index(drop=True), heldout.iloc[order[half:]].reset_index(drop=True)


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
    with pytest.raises(ValueError):
        drift.KSDetector(np.array([np.nan]))


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


def test_holm_controls_family_wise_error():
    rng = np.random.default_rng(7)
    p = rng.uniform(size=(20_000, 6))
    any_rejected = np.array([drift.holm_bonferroni(row, 0.05).any() for row in p[:4000]])
    assert any_rejected.mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)


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
