"""Faster detection (issue #11): the tests on the newest samples, the added tests, the joint test,
concept segments and the change-point estimate, on seeded streams of held-out traffic.

Each detection test streams clean held-out rows then a scenario's rows, as evaluate_drift.py does
(window 500, a check every 50 rows), and asserts the delay the README reports, with a little room:
loose enough for any seed, tight enough that losing the multi-scale tests fails them (the whole
window alone takes 100-500 samples on these scenarios).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import train
from evaluation import scenarios
from monitoring import drift
from tests.helpers import heldout_predicted, split_halves

WINDOW, EVERY = 500, 50


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
def grades(small_artifact):
    return {f["name"]: f["categories"] for f in small_artifact["schema"]["features"] if f["kind"] == "categorical"}


@pytest.fixture(scope="module")
def concept_detector(halves, grades, small_artifact):
    a, _ = halves
    return drift.ConceptDriftDetector(a["price"].to_numpy(), a["predicted"].to_numpy(), grades=grades,
                                      reference_grades=train.grade_codes(a, small_artifact["schema"]))


def _stream(clean: pd.DataFrame, name: str, seed: int, pipeline=None) -> pd.DataFrame:
    """WINDOW clean rows, then 500 rows of the scenario (re-predicted if its inputs changed)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clean))
    warm, pool = clean.iloc[order[:WINDOW]], clean.iloc[order[WINDOW:]]
    scenario = scenarios.SCENARIOS[name]
    drifted = scenario.sample(pool, 500, rng)
    if scenario.kind == "data" and pipeline is not None:
        drifted["predicted"] = pipeline.predict(drifted[train.FEATURES])
    return pd.concat([warm, drifted], ignore_index=True)


def _first_data_detection(detector, stream):
    arrays = detector.encode(stream)
    for stop in range(WINDOW + EVERY, len(stream) + 1, EVERY):
        report = detector.score({k: v[stop - WINDOW:stop] for k, v in arrays.items()})
        if report.detected:
            return stop - WINDOW, report
    return None, None


def _first_concept_detection(detector, stream, grades=None):
    actual, predicted = stream["price"].to_numpy(float), stream["predicted"].to_numpy(float)
    codes = None
    if grades:
        codes = {g: stream[g].astype(str).map({c: i for i, c in enumerate(grades[g])}).to_numpy(float) for g in grades}
    for stop in range(WINDOW + EVERY, len(stream) + 1, EVERY):
        window = slice(stop - WINDOW, stop)
        report = detector.score(actual[window], predicted[window],
                                grades=None if codes is None else {g: c[window] for g, c in codes.items()})
        if report.detected:
            return stop - WINDOW, report
    return None, None


# --------------------------------------------------------------------------------------------------
# helpers: the scales and the change point


def test_window_scales_are_the_scales_below_the_window_and_the_window():
    assert drift.window_scales(500, (50, 100, 250)) == [50, 100, 250, 500]
    assert drift.window_scales(120, (250, 50, 100, 50)) == [50, 100, 120]
    assert drift.window_scales(100, (100,)) == [100]
    assert drift.window_scales(80, ()) == [80]
    assert drift.window_scales(0, (50,)) == []


@pytest.mark.parametrize("changed", [30, 120, 300])
def test_change_start_finds_when_the_codes_changed(changed):
    rng = np.random.default_rng(changed)
    freq = np.array([0.5, 0.3, 0.2])
    codes = np.r_[rng.choice(3, 500 - changed, p=freq), rng.choice(3, changed, p=[0.1, 0.3, 0.6])]
    since = drift.change_start(codes, freq, suffix=min(changed, 100))
    assert abs(since - changed) <= max(25, changed // 4)


def test_change_start_within_a_segment_counts_every_sample():
    """A mask keeps positions: 'since' is in samples of the whole window, not of the segment."""
    rng = np.random.default_rng(3)
    mask = np.arange(500) % 4 == 0  # a quarter of the samples
    codes = rng.choice(10, 500)
    codes[400:][mask[400:]] = 9  # within the segment, the newest 100 samples all read 9
    since = drift.change_start(codes, np.full(10, 0.1), suffix=100, mask=mask)
    assert 95 <= since <= 110


# --------------------------------------------------------------------------------------------------
# the added tests, one by one


def test_normal_score_test_is_calibrated_and_sees_a_shift():
    rng = np.random.default_rng(4)
    reference = np.round(rng.normal(57.5, 2.2, 40_000))  # table-like: whole numbers, many ties
    det = drift.NormalScoreDetector(reference)
    p = np.array([det.score(rng.choice(reference, 100)).p_value for _ in range(600)])
    assert np.mean(p <= 0.01) <= 0.025 and np.mean(p <= 0.1) >= 0.05  # neither anti- nor over-conservative
    shifted = det.score(rng.choice(reference, 150) + 1.0)  # +0.45 sd: Z about 5.5
    assert shifted.p_value < 1e-3 and shifted.statistic > 0
    # the suffixes' results are the windows' own
    window = rng.choice(reference, 300)
    by_suffix = det.score_suffixes(window, [50, 300])
    assert by_suffix[0].statistic == pytest.approx(det.score(window[-50:]).statistic)
    assert by_suffix[1].p_value == pytest.approx(det.score(window).p_value)


def test_binned_chi2_keeps_point_masses_and_sees_a_measurement_bias(heldout):
    reference = heldout["carat"].to_numpy(float)
    det = drift.BinnedChiSquareDetector(reference)
    assert det.n_bins <= 20 and det.reference_freq.sum() == pytest.approx(1.0)
    assert det.codes(np.array([1.0]))[0] != det.codes(np.array([0.99]))[0]  # 1.00 carat starts a bin
    rng = np.random.default_rng(5)
    clean = np.array([det.score(rng.choice(reference, 150)).p_value for _ in range(300)])
    assert np.mean(clean <= 0.01) <= 0.03
    high = np.round(rng.choice(reference, 150) * 1.05, 2)
    assert det.score(high).p_value < 1e-5
    assert drift.KSDetector(reference).score(high).p_value > 1e-4  # what KS alone misses at this size


def test_joint_test_is_calibrated_on_reference_chunks_and_sees_what_marginals_miss(data_detector, heldout):
    joint = data_detector.multivariate
    assert joint is not None and 2 <= joint.components < len(data_detector.names)
    rng = np.random.default_rng(6)
    for size in (50, 250):
        p = np.array([data_detector.score(data_detector.encode(heldout.sample(size, random_state=int(s))))
                      .multivariate.p_value for s in rng.integers(0, 2**31, 200)])
        assert np.mean(p <= 0.01) <= 0.035, size
    coupled = scenarios.SCENARIOS["clarity_to_large"].sample(heldout, 300, rng)
    report = data_detector.score(data_detector.encode(coupled))
    assert report.multivariate.detected and report.multivariate.statistic > 1.2
    assert not any(f.detected for f in report.features.values()), "every marginal is unchanged"
    assert report.detections["multivariate"].test == "pca-reconstruction"


def test_ks_p_value_small_samples_agree_with_kstwo():
    from scipy import stats

    for n in (10, 50, 149):
        for d in (0.2, 0.35, 0.5):
            if stats.kstwo.sf(d, n) < 0.05:  # where decisions are made
                assert drift.ks_p_value(d, n) == pytest.approx(stats.kstwo.sf(d, n), abs=1e-6)
    assert drift.ks_p_value(0.1, 50) >= stats.kstwo.sf(0.1, 50)  # elsewhere an upper bound


# --------------------------------------------------------------------------------------------------
# data drift on seeded streams (window 500, a check every 50 rows)


@pytest.mark.parametrize("name, within", [("large_stones_15", 50), ("colors_g_to_j", 50),
                                          ("table_up_1", 250), ("carat_high_5", 200)])
def test_data_drift_is_flagged_by_the_newest_samples(data_detector, heldout, name, within):
    delays = []
    for seed in range(3):
        delay, report = _first_data_detection(data_detector, _stream(heldout, name, seed))
        assert delay is not None and delay <= within, (name, seed, delay)
        delays.append(delay)
        fired = min(report.detections.values(), key=lambda d: d.p_value)
        assert fired.scale in report.scales and fired.since_samples >= 1
    if within == 50:  # flagged at the first check: by a test on the newest samples, not the whole window
        assert all(d.scale < WINDOW for d in report.detections.values() if d.p_value < 1e-3)


def test_data_drift_says_when_the_change_began(data_detector, heldout):
    stream = _stream(heldout, "large_stones_15", 7)
    arrays = data_detector.encode(stream)
    report = data_detector.score({k: v[-WINDOW:] for k, v in arrays.items()})  # 500 drifted... the last 500
    report = data_detector.score({k: v[400:900] for k, v in arrays.items()})  # 100 clean, then 400 drifted
    carat = report.detections["carat"]
    assert 320 <= carat.since_samples <= 480, carat
    assert report.to_dict()["detections"]["carat"]["since_samples"] == carat.since_samples


def test_data_false_alarms_on_clean_windows_stay_rare(data_detector, heldout):
    rng = np.random.default_rng(8)
    flagged = sum(data_detector.score(data_detector.encode(heldout.sample(WINDOW, random_state=int(s)))).detected
                  for s in rng.integers(0, 2**31, 150))
    assert flagged <= 3  # alpha 0.005: 0.75 expected at most


def test_the_family_has_every_test_at_every_scale(data_detector, heldout):
    report = data_detector.score(data_detector.encode(heldout.iloc[:WINDOW]))
    numeric = sum(1 for f in data_detector.features if f["kind"] == "numeric")
    categorical = len(data_detector.names) - numeric
    assert report.scales == [50, 100, 250, WINDOW]
    assert report.tests == 4 * (3 * numeric + categorical + 1)
    whole_only = drift.DataDriftDetector(heldout[train.FEATURES], {"features": data_detector.features},
                                         scales=(), multivariate=False)
    assert whole_only.score(whole_only.encode(heldout.iloc[:WINDOW])).tests == 3 * numeric + categorical
    d = report.to_dict()
    assert set(d) >= {"multivariate", "tests", "scales", "detections"}
    assert set(d["multivariate"]) == {"test", "statistic", "p_value", "detected", "components"}


# --------------------------------------------------------------------------------------------------
# concept drift on seeded streams


@pytest.mark.parametrize("name, within", [("price_up_15", 50), ("noisy_prices", 100), ("large_up_15", 150)])
def test_concept_drift_is_flagged_by_the_newest_labels(concept_detector, halves, name, within):
    _, b = halves
    for seed in range(3):
        delay, report = _first_concept_detection(concept_detector, _stream(b, name, seed))
        assert delay is not None and delay <= within, (name, seed, delay)
        assert report.detection is not None and report.detection.scale in report.scales


def test_concept_drift_over_one_carat_is_placed_in_the_expensive_segments(concept_detector, halves):
    _, b = halves
    stream = _stream(b, "large_up_15", 11)
    report = concept_detector.score(stream["price"].to_numpy(float)[-WINDOW:],
                                    stream["predicted"].to_numpy(float)[-WINDOW:])
    assert report.detected
    drifted = [name for name, s in report.segments.items() if s.detected]
    assert drifted and all(name.startswith("price ") for name in drifted)
    lowest = min(float(name.split()[1].split("-")[0].rstrip("+").replace(",", "")) for name in drifted)
    assert lowest >= 3000, drifted  # stones over 1 carat are predicted at several thousand dollars
    assert all(report.segments[n].bias_pct > 5 for n in drifted)
    cheap = [s for name, s in report.segments.items() if name.startswith("price ") and s.detected is False]
    assert cheap and all(abs(s.bias_pct) < 5 for s in cheap if s.samples >= 40)


def test_concept_drift_in_one_grade_is_named_by_that_grade(concept_detector, halves, grades):
    _, b = halves
    rng = np.random.default_rng(12)
    window = b.sample(WINDOW, random_state=12).reset_index(drop=True)
    window["price"] = window["price"].astype(float)
    j_colour = window["color"].astype(str) == "J"
    window.loc[j_colour, "price"] *= 1.3
    codes = {g: window[g].astype(str).map({c: i for i, c in enumerate(grades[g])}).to_numpy(float) for g in grades}
    report = concept_detector.score(window["price"], window["predicted"], grades=codes)
    assert report.detected and report.segments["color=J"].detected
    assert report.segments["color=J"].bias_pct > 15
    assert not report.segments["color=D"].detected
    # without the grades, no grade segment is tested
    assert "color=J" not in concept_detector.score(window["price"], window["predicted"]).segments
    assert rng is not None


def test_concept_false_alarms_on_clean_windows_stay_rare(concept_detector, halves, grades):
    _, b = halves
    rng = np.random.default_rng(13)
    flagged = 0
    for s in rng.integers(0, 2**31, 150):
        w = b.sample(WINDOW, random_state=int(s))
        codes = {g: w[g].astype(str).map({c: i for i, c in enumerate(grades[g])}).to_numpy(float) for g in grades}
        flagged += concept_detector.score(w["price"], w["predicted"], grades=codes).detected
    assert flagged <= 3


def test_concept_report_lists_segments_and_what_fired(concept_detector, halves):
    _, b = halves
    w = b.iloc[:WINDOW]
    report = concept_detector.score(w["price"] * 1.2, w["predicted"])
    d = report.to_dict()
    assert d["detection"]["segment"] in report.segments or d["detection"]["segment"] == "all"
    assert d["detection"]["test"] in ("pit-ks", "bias", "spread") and d["detection"]["scale"] in d["scales"]
    assert set(d["segments"]) <= set(concept_detector.segment_names())
    for seg in d["segments"].values():
        assert set(seg) == {"samples", "bias_pct", "p_value", "detected"}
    assert d["tests"] == report.tests > 3 * len(report.scales)


# --------------------------------------------------------------------------------------------------
# through a monitor: the labels' grades reach the concept segments, with a store and without


@pytest.mark.parametrize("with_store", [True, False])
def test_monitor_names_the_drifted_grade_segment(small_artifact, halves, tmp_path, with_store):
    from prometheus_client import CollectorRegistry

    from monitor import MonitorConfig, start_monitor
    from tests.helpers import as_payload, metric_value, request

    config = MonitorConfig(port=0, check_interval=0, window=WINDOW, label_window=WINDOW,
                           db_path=tmp_path / "monitor.db" if with_store else None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        _, b = halves
        rows = b.sample(WINDOW, random_state=21).reset_index(drop=True)
        status, _, served = request(handle.url, "POST", "/predict", as_payload(rows))
        assert status == 200
        prices = rows["price"].astype(float) * np.where(rows["clarity"].astype(str) == "SI2", 1.3, 1.0)
        status, _, _ = request(handle.url, "POST", "/feedback",
                               [{"id": i, "actual": p} for i, p in zip(served["ids"], prices)])
        assert status == 200
        status, _, report = request(handle.url, "POST", "/drift/check")
        concept = report["concept_drift"]
        assert concept["detected"] and concept["segments"]["clarity=SI2"]["detected"]
        assert concept["segments"]["clarity=SI2"]["bias_pct"] > 15
        assert concept["detection"]["since"] is not None
        _, _, text = request(handle.url, "GET", "/metrics")
        assert metric_value(text, "concept_drift_segment_detected", {"segment": "clarity=SI2"}) == 1
        assert metric_value(text, "concept_drift_segment_detected", {"segment": "clarity=IF"}) == 0
    finally:
        handle.stop()


def test_ks_p_value_large_samples_use_the_corrected_limit_within_a_few_percent():
    from scipy import stats

    for n in (5000, 30000):
        for c in (1.2, 1.6, 2.0):  # p from about 0.1 down to 1e-3
            d = c / np.sqrt(n)
            assert drift.ks_p_value(d, n) == pytest.approx(stats.kstwo.sf(d, n), rel=0.04)
