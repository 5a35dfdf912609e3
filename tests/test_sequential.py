"""The CUSUMs between checks (monitoring/sequential.py): exact values on a hand-computed stream,
the calibration, alarms on seeded shifts, and the online path through a real monitor."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import special

from monitoring import drift, sequential
from tests.helpers import heldout_predicted, split_halves



@pytest.fixture(scope="module", autouse=True)
def _fresh_calibrations():
    """Calibrations are cached per process: start this module without any, so that its tests run
    the simulation itself (mutmut forks each mutant's run from a process that has calibrated)."""
    sequential._CACHE.clear()


# --------------------------------------------------------------------------------------------------
# the recursion, by hand


# x = 1, -2, 3, 0.5, -1 with k = 0.5: up = max(0, S + x - 0.5), down = max(0, S - x - 0.5)
X = np.array([1.0, -2.0, 3.0, 0.5, -1.0])
UP = [0.5, 0.0, 2.5, 2.5, 1.0]
DOWN = [0.0, 1.5, 0.0, 0.0, 0.5]


def _increments(x, k=0.5):
    return np.column_stack((x - k, -x - k))


@pytest.mark.parametrize("splits", [[5], [1, 4], [2, 3], [1, 1, 1, 1, 1]])
def test_cusum_values_by_hand_whatever_the_batches(splits):
    cusum = sequential.Cusum(np.array([10.0, 10.0]))
    seen, start = [], 0
    for n in splits:
        assert cusum.update(_increments(X[start:start + n])) == []
        start += n
        seen.append(cusum.state.tolist())
    assert cusum.rows == 5
    assert seen[-1] == [UP[-1], DOWN[-1]]
    # the row each last sat at zero: up after row 2, down after row 4
    assert cusum.last_zero.tolist() == [2, 4]


def test_cusum_alarms_restarts_and_says_since_when():
    cusum = sequential.Cusum(np.array([2.0, 1.0]))
    crossings = cusum.update(_increments(X))
    # up crosses at row 3 (2.5 > 2; it left zero after row 2), restarts, then 0, 0 (0 + 0, max(0, -1.5));
    # down crosses at row 2 (1.5 > 1; left zero after row 1) and never again (0, 0, 0.5)
    assert crossings == [(1, 2, 1.5, 2), (0, 3, 2.5, 3)]
    assert cusum.state.tolist() == [0.0, 0.5]
    assert cusum.last_zero.tolist() == [5, 4]
    assert cusum.rows == 5


def test_small_batches_row_by_row_decide_as_the_vectorised_form():
    """Up to Cusum.SMALL rows run in Python, more in numpy: the same crossings, rows and sinces,
    statistics equal to rounding, whatever the split."""
    rng = np.random.default_rng(4)
    y = rng.normal(0.3, 1.0, size=(400, 3)) - 0.25
    thresholds = np.array([4.0, 5.0, 6.0])
    small, large = sequential.Cusum(thresholds), sequential.Cusum(thresholds)
    found_small = [c for start in range(0, 400, 10) for c in small.update(y[start:start + 10])]
    found_large = large.update(y)
    assert len(found_small) > 10
    assert [(j, row, since) for j, row, _, since in found_small] == [(j, row, since) for j, row, _, since in found_large]
    assert [v for *_, v, _ in found_small] == pytest.approx([v for *_, v, _ in found_large])
    assert small.state == pytest.approx(large.state) and small.last_zero.tolist() == large.last_zero.tolist()
    assert small.rows == large.rows == 400


def test_a_batch_of_small_rows_runs_the_recursion_as_written():
    """Up to Cusum.SMALL rows: S = max(0, S + x) row by row, to the last bit (numpy's cumulative form
    rounds these increments differently: 3.8999999999999995)."""
    x = [0.7, -0.9, 0.1, 0.2] + [0.3] * 12
    assert len(x) == sequential.Cusum.SMALL == 16
    s = 0.0
    for step in x:
        s = max(0.0, s + step)
    cusum = sequential.Cusum(np.array([100.0]))
    assert cusum.update(np.array(x).reshape(-1, 1)) == []
    assert cusum.state.tolist() == [s] == [3.899999999999999]


def test_cusum_reset_and_a_start_away_from_zero():
    cusum = sequential.Cusum(np.array([10.0]))
    cusum.update(np.array([[3.0], [2.0]]))
    assert cusum.state.tolist() == [5.0]
    assert cusum.update(np.array([[-4.0], [-4.0], [1.0]])) == []
    assert cusum.state.tolist() == [1.0] and cusum.last_zero.tolist() == [4]
    cusum.reset()
    assert cusum.state.tolist() == [0.0] and cusum.last_zero.tolist() == [5] and cusum.rows == 5


def test_block_maxima_by_hand():
    # one stream, one CUSUM, increments 1, -3, 2, 2 / 1, -1: S = 1, 0, 2, 4 / 5, 4
    y = np.array([1.0, -3.0, 2.0, 2.0, 1.0, -1.0]).reshape(1, 6, 1)
    assert sequential.block_maxima(y, warmup=0, interval=2).ravel().tolist() == [1.0, 4.0, 5.0]
    assert sequential.block_maxima(y, warmup=2, interval=2).ravel().tolist() == [4.0, 5.0]
    assert sequential.block_maxima(y, warmup=1, interval=2).ravel().tolist() == [2.0, 5.0]


def test_thresholds_leave_the_budget_of_blocks_with_a_crossing():
    rng = np.random.default_rng(1)
    maxima = rng.exponential(size=(20000, 3))
    maxima[:, 1] *= 2.0
    h = sequential.thresholds_for(maxima, 0.01)
    rate = (maxima > h).any(axis=1).mean()
    assert 0.0095 <= rate <= 0.01
    # each CUSUM at the same quantile: the second's threshold twice the first's, within noise
    assert 1.8 < h[1] / h[0] < 2.2
    assert abs(h[0] - np.log(3 / 0.01)) < 0.3  # exp(1) tail: P(any of 3 > h) ~ 3 exp(-h)


# --------------------------------------------------------------------------------------------------
# the detectors on the diamonds reference


@pytest.fixture(scope="module")
def halves(small_artifact):
    return split_halves(heldout_predicted(small_artifact))


@pytest.fixture(scope="module")
def data_detector(small_artifact):
    return drift.DataDriftDetector(small_artifact["reference_features"], small_artifact["schema"])


@pytest.fixture(scope="module")
def seq_data(data_detector, small_artifact):
    return sequential.SequentialDataDetector.of(data_detector, small_artifact["reference_features"])


@pytest.fixture(scope="module")
def concept_detector(halves):
    a, _ = halves
    return drift.ConceptDriftDetector(a["price"].to_numpy(), a["predicted"].to_numpy())


@pytest.fixture(scope="module")
def seq_concept(concept_detector, halves):
    a, _ = halves
    return sequential.SequentialConceptDetector(concept_detector, a["price"].to_numpy(), a["predicted"].to_numpy())


def test_data_cusums_watch_the_numeric_features_normal_scores(seq_data, data_detector):
    assert seq_data.features == ["carat", "depth", "table"]
    assert seq_data.subjects == ["carat", "depth", "table"] * 2
    assert seq_data.directions == ["up"] * 3 + ["down"] * 3
    values = {"carat": np.array([0.3, 1.0, np.nan]), "depth": np.array([61.0, 62.0, 63.0]),
              "table": np.array([55.0, 57.0, 60.0])}
    z = seq_data.transform(values)
    scorer = data_detector._scorers["carat"]
    assert z[:2, 0] == pytest.approx((scorer.scores(values["carat"][:2]) - scorer.mean) / scorer.sd)
    assert np.isnan(z[2, 0]) and np.isfinite(z[:, 1:]).all()
    # a missing value leaves its CUSUMs where they were: increments 0
    y = seq_data.increments(z)
    assert y[2, 0] == 0.0 and y[2, 3] == 0.0
    assert y[0, 0] == pytest.approx(z[0, 0] - sequential.DATA_ALLOWANCE)
    assert y[0, 3] == pytest.approx(-z[0, 0] - sequential.DATA_ALLOWANCE)
    # thresholds of a few dozen allowances, as Siegmund's approximation puts them for this budget
    assert ((seq_data.thresholds > 12) & (seq_data.thresholds < 25)).all()


def test_concept_cusums_watch_every_label_and_each_third_of_the_bands(seq_concept, concept_detector):
    assert seq_concept.segments[0] == "all" and len(seq_concept.segments) == 4
    assert seq_concept.segments[1].startswith("price 0-") and seq_concept.segments[3].endswith("+")
    actual = np.array([1000.0, 5000.0, np.nan])
    predicted = np.array([1000.0, 5500.0, 800.0])
    rows = seq_concept.transform(actual, predicted)
    u, bins = concept_detector.pit(actual[:2], predicted[:2])
    assert rows[:2, 0] == pytest.approx(special.ndtri(u))
    assert rows[:2, 1].tolist() == [float(seq_concept._third[b]) for b in bins]
    assert np.isnan(rows[2]).all()
    y = seq_concept.increments(rows)
    k = sequential.CONCEPT_ALLOWANCE
    third = int(rows[0, 1])
    # the "all" pair and the label's own third move; the other thirds stay (increment 0)
    assert y[0, 0] == pytest.approx(rows[0, 0] - k) and y[0, 4] == pytest.approx(-rows[0, 0] - k)
    assert y[0, 1 + third] == pytest.approx(rows[0, 0] - k)
    assert all(y[0, 1 + t] == 0.0 for t in range(3) if t != third)
    assert (y[2] == 0.0).all()


def _interval_alarm_rate(detector, batches) -> float:
    fresh = detector.fresh()
    return float(np.mean([fresh._run(batch).alarm for batch in batches]))


def test_calibration_clean_reference_draws_stay_within_the_budget(seq_data, small_artifact):
    """Bootstrapped reference rows (whole rows), 4,000 intervals of 50: the share with an alarm
    stays within the budget (the calibration counts more, never restarting its CUSUMs)."""
    reference = small_artifact["reference_features"]
    z = seq_data.transform({n: reference[n].to_numpy(float) for n in seq_data.features})
    rng = np.random.default_rng(7)
    batches = [z[rng.integers(0, len(z), 50)] for _ in range(4000)]
    rate = _interval_alarm_rate(seq_data, batches)
    assert rate <= sequential.DEFAULT_BUDGET * 1.5


def test_calibration_is_seeded_and_cached(seq_data, data_detector, small_artifact):
    started = time.perf_counter()
    again = sequential.SequentialDataDetector.of(data_detector, small_artifact["reference_features"])
    assert time.perf_counter() - started < 0.5  # the cache: no second simulation
    assert again.thresholds.tolist() == seq_data.thresholds.tolist()
    other = sequential.SequentialDataDetector.of(data_detector, small_artifact["reference_features"], seed=1)
    assert other.thresholds.tolist() != seq_data.thresholds.tolist()
    assert np.allclose(other.thresholds, seq_data.thresholds, rtol=0.1)


def test_a_seeded_carat_shift_alarms_within_60_rows(seq_data, halves):
    """Stones drawn with weight carat^1.5 (carat's normal score +0.8 sd): the README's median is
    ~30 rows; never more than 60 here."""
    from evaluation import scenarios

    _, b = halves
    delays = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        detector = seq_data.fresh()
        detector.update({n: b[n].to_numpy(float)[rng.permutation(len(b))[:300]] for n in seq_data.features})
        before = detector.rows
        drifted = scenarios.SCENARIOS["large_stones_15"].sample(b, 300, rng)
        result = detector.update({n: drifted[n].to_numpy(float) for n in seq_data.features})
        carat = [a for a in result.alarms if a.subject == "carat" and a.direction == "up"]
        assert carat, f"seed {seed}: no carat alarm in 300 rows"
        delays.append(carat[0].row - before)
        # where the change began: at the switch, give or take a clean excursion just before it
        assert before - 30 < carat[0].since <= carat[0].row
    assert max(delays) <= 60 and np.median(delays) <= 45


def test_prices_over_one_carat_alarm_within_40_labels_in_the_median(seq_concept, halves):
    _, b = halves
    delays = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        rows = b.iloc[rng.permutation(len(b))[:400]]
        detector = seq_concept.fresh()
        clean, drifted = rows.iloc[:200], rows.iloc[200:]
        assert not detector.update(clean["price"].to_numpy(float), clean["predicted"].to_numpy(float)).alarm
        price = drifted["price"].to_numpy(float) * np.where(drifted["carat"].to_numpy(float) > 1.0, 1.15, 1.0)
        result = detector.update(price, drifted["predicted"].to_numpy(float))
        assert result.alarm and result.alarms[0].direction == "up"
        assert result.alarms[0].subject in (seq_concept.segments[0], seq_concept.segments[3])
        delays.append(result.alarms[0].row - 200)
    # ADWIN's 76 (issue #11) in the median; the whole window's tests took 100-200
    assert np.median(delays) <= 40 and max(delays) <= 100


def test_scan_counts_only_the_alarms_after_the_previous_check(seq_data):
    z = np.zeros((100, 3))
    z[40:, 0] = 3.0  # carat up 3 sd from row 41: the CUSUM crosses ~7 rows later
    times = np.arange(100, dtype=float)
    found = seq_data.scan(z, times, after=-np.inf)
    assert found.alarm and found.alarms[0].subject == "carat" and found.alarms[0].since == 41
    assert found.alarms[0].since_time == 40.0
    first = found.alarms[0].row
    later = seq_data.scan(z, times, after=float(first - 1))  # the first alarm's row is not newer
    assert all(a.row > first for a in later.alarms)
    assert seq_data.rows == 0  # the monitor's own CUSUMs untouched


def test_watch_reports_each_alarm_once_and_dates_it(seq_data):
    watch = sequential.Watch(seq_data.fresh())
    # each feature's reference value whose score is nearest 0: calm rows keep every CUSUM at zero
    def calm(name):
        scorer = seq_data.scorers[name]
        return scorer.values[np.argmin(np.abs(scorer.scores(scorer.values) - scorer.mean))]

    ref_median = {n: np.full(10, calm(n)) for n in seq_data.features}
    watch.update(ref_median, now=100.0)
    first = watch.report()
    assert first["alarm"] is False and first["rows"] == 10 and first["alarms"] == []
    assert set(first["subjects"]) == {"carat", "depth", "table"}
    big = {"carat": np.full(20, 5.0), "depth": ref_median["depth"][:1].repeat(20),
           "table": ref_median["table"][:1].repeat(20)}
    result = watch.update(big, now=200.0)
    assert result.alarm
    triggered = watch.report(consume=False)  # the check the alarm triggers: the next one reports it again
    assert triggered["alarm"] and triggered["subjects"]["carat"]["alarm"]
    report = watch.report()
    assert report == triggered
    assert report["alarm"] and report["subjects"]["carat"]["alarm"]
    assert report["subjects"]["carat"]["since"] == 200.0 and report["subjects"]["carat"]["since_row"] == 11
    assert report["alarms"][0]["subject"] == "carat" and report["alarms"][0]["since_time"] == 200.0
    again = watch.report()  # the next check: nothing new, the alarm still listed among the newest
    assert again["alarm"] is False and not again["subjects"]["carat"]["alarm"]
    assert again["alarms"] == report["alarms"]


# --------------------------------------------------------------------------------------------------
# online, through a real monitor


def test_a_shifted_stream_alarms_before_the_next_scheduled_check(small_artifact, halves):
    """A monitor whose scheduled checks are an hour apart: large stones served in small batches
    make the carat CUSUM alarm, which checks at once: /drift and the gauges follow within seconds,
    and shifted prices do the same for concept drift."""
    from prometheus_client import CollectorRegistry

    from evaluation import scenarios
    from monitor import MonitorConfig, start_monitor
    from tests.helpers import as_payload, metric_value, request

    config = MonitorConfig(port=0, check_interval=3600, window=500, label_window=500, db_path=None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        _, b = halves
        rng = np.random.default_rng(3)
        drifted = scenarios.SCENARIOS["large_stones_15"].sample(b, 200, rng)
        ids = []
        for start in range(0, 200, 20):
            status, _, served = request(handle.url, "POST", "/predict", as_payload(drifted.iloc[start:start + 20]))
            assert status == 200
            ids += served["ids"]
        report = _wait_for(handle.url, lambda r: r["data_drift"]["sequential"]["subjects"]["carat"]["alarm"])
        data = report["data_drift"]
        assert data["detected"] is True
        carat = data["sequential"]["subjects"]["carat"]
        assert carat["direction"] == "up" and carat["statistic"] > carat["threshold"]
        assert carat["since"] is not None and 1 <= carat["since_row"] <= 200
        _, _, text = request(handle.url, "GET", "/metrics")
        assert metric_value(text, "data_drift_feature_detected", {"feature": "carat"}) == 1
        assert metric_value(text, "data_drift_detected") == 1

        prices = drifted["price"].to_numpy(float) * 1.25
        status, _, _ = request(handle.url, "POST", "/feedback", [{"id": i, "actual": p} for i, p in zip(ids, prices)])
        assert status == 200
        report = _wait_for(handle.url, lambda r: (r["concept_drift"].get("sequential") or {}).get("alarm"))
        concept = report["concept_drift"]
        assert concept["detected"] is True
        assert concept["sequential"]["subjects"]["all"]["direction"] == "up"
        assert concept["sequential"]["alarms"][-1]["row"] <= 200
    finally:
        handle.stop()


def _wait_for(url, condition, timeout: float = 10.0) -> dict:
    """GET /drift until `condition(report)` holds (an alarm's check runs on its own thread)."""
    from tests.helpers import request

    deadline = time.monotonic() + timeout
    while True:
        status, _, report = request(url, "GET", "/drift")
        if status == 200 and isinstance(report, dict) and report.get("data_drift") and condition(report):
            return report
        assert time.monotonic() < deadline, f"no alarm check within {timeout} s: {report}"
        time.sleep(0.05)


def test_reports_carry_the_cusums_only_when_the_monitor_adds_them():
    data = drift.DataDriftReport(max_distance=0.1, detected=False, window_size=60, alpha=0.01)
    concept = drift.ConceptDriftReport(mse_increase=0.0, detected=False, labelled_size=40, mse=1.0, reference_mse=1.0,
                                       statistic=0.1, p_value=0.5, alpha=0.01, test="pit-ks", mean_log_ratio=0.0,
                                       bias_pct=0.0)
    assert "sequential" not in data.to_dict() and "sequential" not in concept.to_dict()
    entry = {"test": "cusum", "rows": 7, "alarm": True, "subjects": {}, "alarms": []}
    data.sequential = concept.sequential = entry
    assert data.to_dict()["sequential"] == entry and concept.to_dict()["sequential"] == entry
    from monitoring.fleet import concept_report_from_dict, data_report_from_dict

    assert data_report_from_dict(data.to_dict()).sequential == entry  # a fleet report read back keeps them
    assert concept_report_from_dict(concept.to_dict()).sequential == entry


def test_a_few_rows_are_scored_in_python_as_numpy_scores_them(seq_data, small_artifact):
    reference = small_artifact["reference_features"]
    rng = np.random.default_rng(2)
    picked = {n: reference[n].to_numpy(float)[rng.integers(0, len(reference), 12)] for n in seq_data.features}
    picked["carat"][:3] = [0.2, 5.01, np.nan]  # the reference's edge, beyond it, missing
    picked["depth"][3] = 61.55  # between two reference values
    fast = seq_data.transform(picked)  # 12 rows: the Python path
    slow = np.column_stack([seq_data.transform({n: np.repeat(v, 2) for n, v in picked.items()})[::2]])
    assert len(picked["carat"]) <= sequential.Cusum.SMALL < 2 * len(picked["carat"])
    assert np.isnan(fast[2, 0]) and np.isnan(slow[2, 0])
    assert fast[~np.isnan(fast)] == pytest.approx(slow[~np.isnan(slow)], rel=0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# exact behaviour of the parts the tests above reach only through ranges (issue #14's mutation run)


def test_alarm_to_dict_and_report_say_every_field():
    alarm = sequential.CusumAlarm("carat", "down", np.float32(2.5), np.float64(2.0), np.int64(7), np.int64(3), 12.0)
    assert alarm.to_dict() == {"subject": "carat", "direction": "down", "statistic": 2.5, "threshold": 2.0,
                               "row": 7, "since": 3, "since_time": 12.0}
    assert [type(v) for v in alarm.to_dict().values()] == [str, str, float, float, int, int, float]
    later = sequential.CusumAlarm("carat", "up", 3.0, 2.0, 9, 8)
    other = sequential.CusumAlarm("table", "up", 4.0, 3.0, 8, 2, None)
    result = sequential.SequentialResult("cusum", np.int64(9), True,
                                         statistics={"carat": (0.5, 2.0, "up"), "table": (0.0, 3.0, "down"),
                                                     "depth": (1.0, 4.0, "down")})
    got = sequential.report(result, [alarm, later, other], [other, alarm])
    assert got == {
        "test": "cusum", "rows": 9, "alarm": True,
        "subjects": {
            "carat": {"statistic": 2.5, "threshold": 2.0, "direction": "down", "alarm": True, "since": 12.0,
                      "since_row": 3},
            "table": {"statistic": 4.0, "threshold": 3.0, "direction": "up", "alarm": True, "since": None,
                      "since_row": 2},
            "depth": {"statistic": 1.0, "threshold": 4.0, "direction": "down", "alarm": False, "since": None,
                      "since_row": None}},
        "alarms": [other.to_dict(), alarm.to_dict()]}
    assert type(got["rows"]) is int
    quiet = sequential.report(result, [], [])
    assert quiet["alarm"] is False and quiet["alarms"] == [] and quiet["subjects"]["carat"]["statistic"] == 0.5


def test_block_maxima_of_several_streams_and_cusums_and_a_ragged_end():
    # two streams, two CUSUMs, 5 rows cut in blocks of 2 (the fifth row left out); the CUSUM starts at 0
    y = np.zeros((2, 5, 2))
    y[0, :, 0] = [-1.0, 2.0, 1.0, -5.0, 9.0]   # S = 0, 2, 3, 0, (9)
    y[0, :, 1] = [1.0, 1.0, 1.0, 1.0, 1.0]     # S = 1, 2, 3, 4, (5)
    y[1, :, 0] = [3.0, -1.0, -1.0, 4.0, 0.0]   # S = 3, 2, 1, 5, (5)
    y[1, :, 1] = [-2.0, -2.0, 0.5, 0.0, 0.0]   # S = 0, 0, .5, .5
    got = sequential.block_maxima(y, warmup=0, interval=2)
    assert got.tolist() == [[2.0, 2.0], [3.0, 4.0], [3.0, 0.0], [5.0, 0.5]]
    assert sequential.block_maxima(np.ones((1, 120, 1)), warmup=0).ravel().tolist() == [50.0, 100.0]


def test_thresholds_for_by_hand():
    # 10 blocks, 2 CUSUMs; budget 0.2: at most 2 blocks with any crossing
    maxima = np.array([[1, 10], [2, 9], [3, 8], [4, 7], [5, 6], [6, 5], [7, 4], [8, 3], [9, 2], [10, 1]],
                      dtype=float)
    # one block above each threshold (10 > 9 in the last row, 10 > 9 in the first): 2 blocks = 20%
    assert sequential.thresholds_for(maxima, 0.2).tolist() == [9.0, 9.0]
    # budget 0.1: one block allowed, but any threshold below the top puts two over: none above
    assert sequential.thresholds_for(maxima, 0.1).tolist() == [10.0, 10.0]
    # the same block tops both: 2 above each CUSUM's threshold is still 2 blocks
    together = np.column_stack((np.arange(1.0, 11.0), np.arange(1.0, 11.0) * 2))
    assert sequential.thresholds_for(together, 0.2).tolist() == [8.0, 16.0]
    assert sequential.thresholds_for(together, 0.25).tolist() == [8.0, 16.0]
    assert sequential.thresholds_for(together, 0.3).tolist() == [7.0, 14.0]
    assert sequential.thresholds_for(together, 0.0).tolist() == [10.0, 20.0]
    assert sequential.thresholds_for(together.astype(np.float32), 0.2).dtype == np.float64
    # three CUSUMs topped in different blocks: one block above each (3 of 10) fits 0.35, two (6) do not
    apart = np.ones((10, 3))
    for j in range(3):
        apart[2 * j:2 * j + 2, j] = [5.0, 4.0]
    assert sequential.thresholds_for(apart, 0.35).tolist() == [4.0, 4.0, 4.0]


def _simulated(rows, increments, budget, seed=0, streams=2000, length=1300, warmup=300, chunk=250):
    """calibrate's simulation written out: chunks of streams of whole rows drawn with replacement."""
    rng = np.random.default_rng(seed)
    maxima = []
    for start in range(0, streams, chunk):
        p = min(chunk, streams - start)
        reference = (rows(rng) if callable(rows) else np.asarray(rows, dtype=np.float64)).astype(np.float32)
        idx = rng.integers(0, len(reference), size=p * length)
        maxima.append(sequential.block_maxima(increments(reference[idx]).reshape(p, length, -1), warmup))
    return sequential.thresholds_for(np.concatenate(maxima), budget)


def test_calibrate_is_the_simulation_it_describes_and_caches_by_every_setting():
    rng = np.random.default_rng(11)
    rows = np.column_stack((rng.normal(size=300), rng.normal(size=300) ** 2))
    up = sequential._Increments(np.array([0, 1]), np.array([1.0, 1.0]), 0.5)
    expected = _simulated(rows, up, 0.01)
    drawn = []

    def recorded(block):
        drawn.append(block.shape)
        return up(block)

    recorded.key = up.key
    h = sequential.calibrate(rows, recorded, 0.01)
    assert h.dtype == np.float64 and h.tolist() == expected.tolist()
    # by default 2,000 streams of 1,300 whole rows, drawn 250 streams at a time
    assert drawn == [(250 * 1300, 2)] * 8
    h[:] = -1.0  # a copy: the cache keeps its own
    assert sequential.calibrate(rows, up, 0.01).tolist() == expected.tolist()
    small = dict(streams=70, length=160, warmup=20, chunk=30)
    assert sequential.calibrate(rows, up, 0.05, **small).tolist() == _simulated(rows, up, 0.05, **small).tolist()
    # each setting is part of the cache's key: a change gets its own simulation
    for change in (dict(seed=3), dict(streams=71), dict(length=170), dict(warmup=10), dict(chunk=31)):
        settings = {**small, **change}
        assert (sequential.calibrate(rows, up, 0.05, **settings).tolist()
                == _simulated(rows, up, 0.05, **settings).tolist()), change
    assert sequential.calibrate(rows, up, 0.1, **small).tolist() == _simulated(rows, up, 0.1, **small).tolist()
    other = sequential._Increments(np.array([0, 1]), np.array([1.0, 1.0]), 0.75)
    assert sequential.calibrate(rows, other, 0.05, **small).tolist() == _simulated(rows, other, 0.05, **small).tolist()
    shifted = rows + 1.0
    assert sequential.calibrate(shifted, up, 0.05, **small).tolist() == _simulated(shifted, up, 0.05, **small).tolist()

    def source(generator):
        return rows[generator.integers(0, len(rows), size=len(rows))]

    source.key = ("test source", 1)
    assert sequential.calibrate(source, up, 0.05, **small).tolist() == _simulated(source, up, 0.05, **small).tolist()

    def unnamed(generator):  # a source and increments without a key: simulated all the same
        return rows[generator.integers(0, len(rows), size=len(rows))] * 2.0

    def unnamed_up(block):
        return up(block)

    assert (sequential.calibrate(unnamed, unnamed_up, 0.05, **small, seed=5).tolist()
            == _simulated(unnamed, up, 0.05, **small, seed=5).tolist())
    # a reference is known by its values as floats: integers and their float64 copy are one reference,
    # another array of the same bytes (those integers read as float64) is another
    ints = np.arange(600, dtype=np.int64).reshape(300, 2) % 7
    assert (sequential.calibrate(ints, up, 0.05, **small).tolist()
            == sequential.calibrate(ints.astype(np.float64), up, 0.05, **small).tolist()
            == _simulated(ints, up, 0.05, **small).tolist())
    same_bytes = ints.view(np.float64)
    assert (sequential.calibrate(same_bytes, up, 0.05, **small).tolist()
            == _simulated(same_bytes, up, 0.05, **small).tolist() == [0.0, 0.0])


def test_increments_mask_and_missing_values_by_hand():
    inc = sequential._Increments(np.array([0, 0, 0, 0]), np.array([1.0, -1.0, 1.0, -1.0]), 0.5,
                                 mask_column=np.array([1, 1, 1, 1]), mask_value=np.array([-1.0, -1.0, 2.0, 2.0]))
    rows = np.array([[1.0, 2.0], [2.0, 0.0], [np.nan, 2.0], [-1.0, np.nan]], dtype=np.float32)
    y = inc(rows)
    assert y.dtype == np.float32
    assert y.tolist() == [[0.5, -1.5, 0.5, -1.5], [1.5, -2.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                          [-1.5, 0.5, 0.0, 0.0]]
    assert inc.key == ([0, 0, 0, 0], [1.0, -1.0, 1.0, -1.0], 0.5, ([1, 1, 1, 1], [-1.0, -1.0, 2.0, 2.0]))
    # the first third of the bands is mask value 0: its labels count, the others' do not
    thirds = sequential._Increments(np.array([0, 0]), np.array([1.0, 1.0]), 0.5, mask_column=np.array([1, 1]),
                                    mask_value=np.array([0.0, 1.0]))
    assert thirds(np.array([[1.0, 0.0], [2.0, 1.0]])).tolist() == [[0.5, 0.0], [0.0, 1.5]]
    plain = sequential._Increments(np.array([1]), np.array([-1.0]), 1)
    assert plain(np.array([[5.0, 2.0], [0.0, np.inf]])).tolist() == [[-3.0], [0.0]]
    assert plain.key == ([1], [-1.0], 1.0, None)


class _Plain(sequential._SequentialDetector):
    """A detector fed rows of its one column as they are (no transform)."""

    def update(self, rows, times=None):
        return self._run(rows, times)


def _tiny_detector(thresholds=None):
    """A detector over one column, up and down, calibrated on 40 fixed rows (cached after the first)."""
    rows = np.linspace(-1.5, 1.5, 40).reshape(-1, 1)
    inc = sequential._Increments(np.array([0, 0]), np.array([1.0, -1.0]), 0.5)
    detector = _Plain(["x", "x"], rows, inc, 0.01, seed=0)
    if thresholds is not None:
        detector.thresholds = np.asarray(thresholds, dtype=np.float64)
        detector.cusum = sequential.Cusum(detector.thresholds)
    return detector


def test_detector_alarms_statistics_and_dates():
    detector = _tiny_detector()
    assert detector.directions == ["up", "down"] and detector.budget == 0.01 and detector.rows == 0
    rows = np.linspace(-1.5, 1.5, 40).reshape(-1, 1)
    inc = sequential._Increments(np.array([0, 0]), np.array([1.0, -1.0]), 0.5)
    assert detector.thresholds.tolist() == sequential.calibrate(rows, inc, 0.01, seed=0).tolist()
    detector = _tiny_detector([2.0, 1.0])
    # X by hand (UP / DOWN above): down crosses at row 2 (since 2), up at row 3 (since 3)
    result = detector._run(X.reshape(-1, 1), times=np.arange(10.0, 15.0))
    assert result.test == "cusum" and result.rows == 5 and result.alarm is True
    assert [a.to_dict() for a in result.alarms] == [
        {"subject": "x", "direction": "down", "statistic": 1.5, "threshold": 1.0, "row": 2, "since": 2,
         "since_time": 11.0},
        {"subject": "x", "direction": "up", "statistic": 2.5, "threshold": 2.0, "row": 3, "since": 3,
         "since_time": 12.0}]
    # state up 0, down 0.5: down is nearer its threshold
    assert result.statistics == {"x": (0.5, 1.0, "down")} == detector.statistics()
    # a second batch: a change that began in the first batch has no time in this one
    more = detector._run(np.array([[-3.0], [1.0]]), times=np.array([20.0, 21.0]))
    assert [(a.direction, a.row, a.since, a.since_time) for a in more.alarms] == [("down", 6, 5, None)]
    assert more.rows == 7 and detector.rows == 7
    nothing = detector._run(np.array([[0.0]]))
    assert nothing.alarm is False and nothing.alarms == [] and nothing.rows == 8
    # both at zero: the up one
    assert nothing.statistics == {"x": (0.0, 2.0, "up")}
    detector._run(np.array([[1.0]]))
    assert detector.statistics() == {"x": (0.5, 2.0, "up")}
    detector.reset()
    assert detector.cusum.state.tolist() == [0.0, 0.0] and detector.rows == 9
    copy = detector.fresh()
    assert copy.rows == 0 and copy.thresholds is detector.thresholds and copy._lock is not detector._lock
    copy._run(np.array([[3.0]]))
    assert copy.rows == 1 and detector.rows == 9


def test_scan_keeps_alarms_strictly_after_and_dates_them():
    detector = _tiny_detector([2.0, 1.0])
    times = np.arange(10.0, 15.0)
    found = detector.scan(X.reshape(-1, 1), times, after=-np.inf)
    assert [(a.direction, a.row, a.since, a.since_time) for a in found.alarms] == [("down", 2, 2, 11.0),
                                                                                     ("up", 3, 3, 12.0)]
    assert found.rows == 5 and found.alarm and found.statistics == {"x": (0.5, 1.0, "down")}
    later = detector.scan(X.reshape(-1, 1), times.tolist(), after=11.0)  # row 2 arrived at 11.0: not after
    assert [(a.direction, a.row) for a in later.alarms] == [("up", 3)] and later.alarm
    none = detector.scan(X.reshape(-1, 1), times, after=12.0)
    assert none.alarm is False and none.alarms == [] and none.rows == 5
    assert detector.rows == 0


def test_watch_dates_keeps_and_reports_by_rows():
    watch = sequential.Watch(_tiny_detector([2.0, 1.0]))
    assert watch.KEEP == 32 and watch.TIMES == 4096
    watch.update(np.array([[0.0]] * 3), now=5.0)  # rows 1-3 at 5.0
    # 20 rows (the numpy path) at 6.0: up from row 4 at +1 a row: 0.5, 1.0, 1.5, 2.0, 2.5 > 2 at row 8
    result = watch.update(np.array([[1.0]] * 20), now=6.0)
    ups = [a for a in result.alarms if a.direction == "up"]
    assert [(a.row, a.since, a.since_time) for a in ups] == [(8, 4, 6.0), (13, 9, 6.0), (18, 14, 6.0),
                                                              (23, 19, 6.0)]
    report = watch.report(consume=False)
    assert report["alarm"] and report["rows"] == 23 and len(report["alarms"]) == 4
    assert watch.report()["alarm"] and not watch.report()["alarm"]
    # a change that began in an earlier batch is dated by that batch's arrival
    watch.update(np.array([[0.7]] * 3), now=7.0)   # up 0.2 a row: 0.2, 0.4, 0.6
    late = watch.update(np.array([[3.0]]), now=8.0)  # 0.6 + 2.5 > 2: since row 24, at 7.0
    assert [(a.row, a.since, a.since_time) for a in late.alarms] == [(27, 24, 7.0)]
    got = watch.report()
    assert got["subjects"]["x"]["since"] == 7.0 and got["subjects"]["x"]["since_row"] == 24
    # no time given: none kept, an alarm undated
    watch.update(np.array([[-0.5]] * 1))
    undated = watch.update(np.array([[2.9]]))
    assert [(a.row, a.since, a.since_time) for a in undated.alarms] == [(29, 29, None)]
    # only the newest KEEP alarms are listed
    for _ in range(40):
        watch.update(np.array([[3.0]]), now=9.0)
    assert len(watch.report()["alarms"]) == 32 and watch.report()["alarms"][-1]["row"] == 69


def test_watch_forgets_times_older_than_it_keeps():
    watch = sequential.Watch(_tiny_detector([1e9, 1e9]))
    watch.update(np.zeros((10, 1)), now=1.0)
    assert watch._times[:10].tolist() == [1.0] * 10 and np.isnan(watch._times[10:]).all()
    watch.update(np.zeros((4096 + 5, 1)), now=2.0)  # more rows than are kept: every slot holds the newest
    assert (watch._times == 2.0).all()
    watch.detector.thresholds[:] = 2.0
    watch.detector.cusum = sequential.Cusum(watch.detector.thresholds)
    watch.detector.cusum.rows = 4111
    watch.detector.cusum.last_zero[:] = 4111 - 4096  # a change that began more rows ago than are kept
    watch.detector.cusum.state[:] = [1.9, 0.0]
    result = watch.update(np.array([[1.0]]), now=3.0)
    assert [(a.row, a.since, a.since_time) for a in result.alarms] == [(4112, 16, None)]


@pytest.mark.parametrize("undated, row", [(1, 4098), (20, 4101)])  # the row-by-row path and numpy's
def test_an_undated_batch_is_not_dated_by_the_rows_before_it_in_the_ring(undated, row):
    watch = sequential.Watch(_tiny_detector([2.0, 1.0]))
    watch.update(np.zeros((4096, 1)), now=1.0)  # every kept time taken, by rows 1-4096
    # undated rows from 4097: up 0.5 a row from the first of them (20 rows: 2.5 > 2 at row 4101)
    crossed = watch.update(np.ones((undated, 1)))
    if undated == 1:
        crossed = watch.update(np.array([[3.0]]))  # 0.5 + 2.5 > 2 at row 4098, undated too
    assert [(a.row, a.since, a.since_time) for a in crossed.alarms][0] == (row, 4097, None)
    assert watch.report()["subjects"]["x"]["since"] is None


def test_a_band_without_reference_rows_is_skipped_not_the_end():
    rng = np.random.default_rng(6)
    predicted = np.repeat([1000.0, 5000.0], 20)  # quartile edges 1000, 3000, 5000: bands 0 and 2 empty
    actual = predicted * np.exp(rng.normal(0, 0.1, 40))
    concept = drift.ConceptDriftDetector(actual, predicted, n_bins=4)
    assert [s.size for s in concept._sorted] == [0, 20, 0, 20]
    detector = sequential.SequentialConceptDetector(concept, actual, predicted, budget=0.01)
    bins = np.searchsorted(concept.edges, predicted, side="right")
    rows = _pit_rows(concept._error(actual, predicted), bins, concept._sorted, detector._third)
    rows.key = ("written out", "empty bands")
    assert detector.thresholds.tolist() == sequential.calibrate(rows, detector.increments, 0.01, seed=0).tolist()


def test_a_band_with_one_reference_error_ranks_labels_against_it():
    rng = np.random.default_rng(9)
    # quartile edges 1000, 2000, 5000: band 0 empty, band 2 holds the one stone predicted at 3000
    predicted = np.array([1000.0] * 20 + [3000.0] + [5000.0] * 19)
    concept = drift.ConceptDriftDetector(predicted * np.exp(rng.normal(0, 0.1, 40)), predicted, n_bins=4)
    assert [s.size for s in concept._sorted] == [0, 20, 1, 19]
    # the CUSUMs' reference: other labels of the same predictions, five at 3000 ranked against that one
    seq_predicted = np.concatenate((predicted, [3000.0] * 4))
    seq_actual = seq_predicted * np.exp(rng.normal(0, 0.1, 44))
    detector = sequential.SequentialConceptDetector(concept, seq_actual, seq_predicted, budget=0.01)
    bins = np.searchsorted(concept.edges, seq_predicted, side="right")
    rows = _pit_rows(concept._error(seq_actual, seq_predicted), bins, concept._sorted, detector._third)
    rows.key = ("written out", "one error in a band")
    assert detector.thresholds.tolist() == sequential.calibrate(rows, detector.increments, 0.01, seed=0).tolist()


def test_thirds_of_the_bands_are_named_by_their_range():
    from types import SimpleNamespace

    nine = SimpleNamespace(error="residual", edges=np.arange(1.0, 9.0), bin_names=[str(b) for b in range(9)])
    assert sequential._band_name(nine, np.array([3, 4, 5])) == "predicted 3 to 6"
    assert sequential._band_name(nine, np.array([0, 1, 2])) == "predicted < 3"
    assert sequential._band_name(nine, np.array([6, 7, 8])) == "predicted >= 6"
    prices = SimpleNamespace(error="log_ratio", edges=np.array([1000.0, 2500.0, 6300.0]),
                             bin_names=["price 0-1,000", "price 1,000-2,500", "price 2,500-6,300", "price 6,300+"])
    name = sequential._band_name
    assert name(prices, np.array([0, 1])) == "price 0-2,500"
    assert name(prices, np.array([1, 2])) == "price 1,000-6,300"
    assert name(prices, np.array([2, 3])) == "price 2,500+"
    assert name(prices, np.array([3])) == "price 6,300+"
    residual = SimpleNamespace(error="residual", edges=np.array([-5.0, 0.0, 12345.0]),
                               bin_names=["predicted < -5", "predicted -5 to 0", "predicted 0 to 1.23e+04",
                                          "predicted >= 1.23e+04"])
    assert name(residual, np.array([0, 1])) == "predicted < 0"
    assert name(residual, np.array([1, 2])) == "predicted -5 to 1.23e+04"
    assert name(residual, np.array([2, 3])) == "predicted >= 0"
    assert name(residual, np.array([1])) == "predicted -5 to 0"


@pytest.mark.parametrize("rows", [3, 20])  # the row-by-row path and numpy's
def test_a_cusum_at_exactly_zero_or_exactly_its_threshold(rows):
    # 1, -1 puts it at exactly 0 (it left zero after row 2), then 2 crosses 1.5 at row 3
    y = np.zeros((rows, 1))
    y[:3, 0] = [1.0, -1.0, 2.0]
    cusum = sequential.Cusum(np.array([1.5]))
    assert cusum.update(y) == [(0, 3, 2.0, 3)]
    # exactly at the threshold is no crossing; integer increments count as floats
    ints = np.zeros((rows, 1), dtype=np.int64)
    ints[:2, 0] = [1, 1]
    level = sequential.Cusum([2])
    assert level.update(ints) == [] and level.state.tolist() == [2.0] and level.state.dtype == np.float64
    assert level.thresholds.dtype == np.float64 and level.last_zero.dtype == np.int64
    assert level.update(ints.tolist()[:1]) == [(0, rows + 1, 3.0, 1)]


def _pit_rows(q, bins, sorted_errors, third):
    """_resampled_pit written out (the docstring's recipe)."""
    def rows(rng):
        z = np.zeros(q.size)
        for b, ref in enumerate(sorted_errors):
            mask = bins == b
            if not mask.any() or ref.size == 0:
                continue
            resample = np.sort(ref[rng.integers(0, ref.size, size=ref.size)])
            lo = np.searchsorted(resample, q[mask], side="left")
            hi = np.searchsorted(resample, q[mask], side="right")
            z[mask] = special.ndtri(((lo + hi) / 2 + 0.5) / (ref.size + 1))
        return np.column_stack((z, third[bins]))[rng.integers(0, q.size, size=q.size)]
    return rows


def _score_rows(values):
    """_resampled_scores written out."""
    def rows(rng):
        resample = values[rng.integers(0, len(values), size=len(values))]
        out = np.empty_like(values)
        for j in range(values.shape[1]):
            scorer = drift.NormalScoreDetector(resample[:, j])
            out[:, j] = (scorer.scores(values[:, j]) - scorer.mean) / scorer.sd if scorer.sd > 0 else 0.0
        return out[rng.integers(0, len(values), size=len(values))]
    return rows


def _synthetic_concept(error="log_ratio", n=400, seed=5):
    rng = np.random.default_rng(seed)
    predicted = np.round(rng.uniform(300, 9000, n), -2)  # ties: reference predictions on the bands' edges
    actual = predicted * np.exp(rng.normal(0, 0.1, n)) if error == "log_ratio" else predicted + rng.normal(0, 50, n)
    return actual, predicted, drift.ConceptDriftDetector(actual, predicted, n_bins=4, error=error)


@pytest.mark.parametrize("error", ["log_ratio", "residual"])
def test_concept_cusums_are_calibrated_on_resampled_pit_scores(error):
    actual, predicted, concept = _synthetic_concept(error)
    # pairs with a missing value (a label, a prediction) are left out of the reference
    with_gaps = actual.tolist() + [None, 1000.0, 1000.0], predicted.tolist() + [1000.0, np.inf, None]
    detector = sequential.SequentialConceptDetector(concept, *with_gaps, budget=0.01)
    assert detector.segments[0] == "all" and len(detector.segments) == 4
    assert detector.subjects == detector.segments * 2 and detector.directions == ["up"] * 4 + ["down"] * 4
    assert detector._third.tolist() == [0, 0, 1, 2]
    inc = sequential._Increments(np.zeros(8, dtype=np.int64), np.repeat([1.0, -1.0], 4), sequential.CONCEPT_ALLOWANCE,
                                 mask_column=np.ones(8, dtype=np.int64),
                                 mask_value=np.array([-1.0, 0, 1, 2, -1, 0, 1, 2]))
    assert detector.increments.key == inc.key
    bins = np.searchsorted(concept.edges, predicted, side="right")
    rows = _pit_rows(concept._error(actual, predicted), bins, concept._sorted, detector._third)
    rows.key = ("written out", error)
    assert detector.thresholds.tolist() == sequential.calibrate(rows, inc, 0.01, seed=0).tolist()
    # another reference, the same settings: its own simulation, not the cached one
    part = sequential.SequentialConceptDetector(concept, actual[:300], predicted[:300], budget=0.01)
    rows = _pit_rows(concept._error(actual[:300], predicted[:300]), bins[:300], concept._sorted, detector._third)
    rows.key = ("written out", error, 300)
    assert part.thresholds.tolist() == sequential.calibrate(rows, inc, 0.01, seed=0).tolist()
    assert detector.transform([1000.0, None], [1000, 1000]).shape == (2, 2)
    assert np.isnan(detector.transform([1000.0, None], [1000, 1000])[1]).all()
    assert np.isnan(detector.transform([1000.0, 1000.0], [1000, None])[1]).all()
    times = np.arange(7.0, 17.0)
    result = detector.update(predicted[:10] * 100, predicted[:10], times=times)  # far above: "up" alarms
    assert result.alarm and all(a.direction == "up" for a in result.alarms)
    assert result.alarms[0].since == 1 and result.alarms[0].since_time == 7.0
    assert set(result.statistics) == set(detector.segments)


def test_data_cusums_are_calibrated_on_resampled_scores_and_a_constant_feature_scores_zero():
    rng = np.random.default_rng(8)
    x = np.round(rng.normal(10, 2, 300), 1)
    const = np.full(300, 4.0)
    reference = {"x": x.tolist() + [None], "c": const.tolist() + [4.0]}
    scorers = {"x": drift.NormalScoreDetector(x), "c": drift.NormalScoreDetector(const)}
    assert scorers["c"].sd == 0
    detector = sequential.SequentialDataDetector(scorers, reference, budget=0.01)
    inc = sequential._Increments(np.array([0, 1, 0, 1]), np.array([1.0, 1.0, -1.0, -1.0]),
                                 sequential.DATA_ALLOWANCE)
    assert detector.increments.key == inc.key and detector.subjects == ["x", "c", "x", "c"]
    rows = _score_rows(np.column_stack((x, const)))
    rows.key = ("written out", "scores")
    assert detector.thresholds.tolist() == sequential.calibrate(rows, inc, 0.01, seed=0).tolist()
    # the constant feature scores 0, on both paths; None is a missing value; beyond the reference too
    few = detector.transform({"x": [10.0, None, 100.0], "c": [4.0, 5.0, 3]})
    many = detector.transform({"x": [10.0, None, 100.0] * 6, "c": [4.0, 5.0, 3] * 6})
    assert few[:, 1].tolist() == [0.0, 0.0, 0.0] and many[:, 1].tolist() == [0.0] * 18
    assert np.isnan(few[1, 0]) and np.isnan(many[1, 0]) and few.shape == (3, 2)
    assert few[[0, 2], 0] == pytest.approx(many[[0, 2], 0], rel=0, abs=1e-12)
    assert few[2, 0] == pytest.approx((scorers["x"].scores(np.array([100.0]))[0] - scorers["x"].mean)
                                      / scorers["x"].sd)
    # its threshold is 0, and a stream of any values updates without fault: it never alarms
    assert detector.thresholds[1] == detector.thresholds[3] == 0.0
    moved = detector.fresh().update({"x": [10.0] * 60, "c": [9.0] * 60})
    assert not [a for a in moved.alarms if a.subject == "c"]
    assert moved.statistics["c"] == (0.0, 0.0, "up")
    # another reference, the same settings: its own simulation, not the cached one
    fewer = sequential.SequentialDataDetector({"x": drift.NormalScoreDetector(x[:200])}, {"x": x[:200]}, budget=0.01)
    single = _score_rows(x[:200].reshape(-1, 1))
    single.key = ("written out", "scores", 200)
    assert fewer.thresholds.tolist() == sequential.calibrate(single, fewer.increments, 0.01, seed=0).tolist()
    # and another of as many rows and features (the same increments): its own simulation too
    later = sequential.SequentialDataDetector({"x": drift.NormalScoreDetector(x[100:])}, {"x": x[100:]}, budget=0.01)
    single = _score_rows(x[100:].reshape(-1, 1))
    single.key = ("written out", "scores", "last 200")
    assert later.thresholds.tolist() == sequential.calibrate(single, later.increments, 0.01, seed=0).tolist()
    assert later.thresholds.tolist() != fewer.thresholds.tolist()
    with pytest.raises(ValueError, match="^SequentialDataDetector needs at least one numeric feature$"):
        sequential.SequentialDataDetector({}, {})
    assert sequential.SequentialDataDetector.of(SimpleNamespace(_scorers={}), {}) is None
    again = sequential.SequentialDataDetector.of(SimpleNamespace(_scorers=scorers), reference, budget=0.01)
    assert again.thresholds.tolist() == detector.thresholds.tolist()


def test_data_update_dates_alarms_by_the_times_given(seq_data):
    detector = seq_data.fresh()
    far = {"carat": [5.0] * 40, "depth": [61.8] * 40, "table": [57.0] * 40}
    result = detector.update(far, times=np.arange(100.0, 140.0))
    assert result.alarm and result.alarms[0].subject == "carat" and result.alarms[0].since_time == 100.0
    few = seq_data.fresh().update({n: v[:10] for n, v in far.items()}, times=np.arange(10.0))
    assert few.alarm and few.alarms[0].since_time == 0.0


def test_detector_dates_a_change_from_the_batch_it_began_in_and_picks_the_nearest_cusum():
    fresh = _tiny_detector()  # its own CUSUMs, on its calibrated thresholds
    plain = sequential.Cusum(fresh.thresholds)
    plain.update(_increments(X))
    fresh._run(X.reshape(-1, 1))
    assert fresh.cusum.state.tolist() == plain.state.tolist() and fresh.rows == 5
    detector = _tiny_detector([2.0, 1.0])
    first = detector._run(np.array([[3.0]]), times=np.array([50.0]))  # crosses on its first row
    assert [(a.row, a.since, a.since_time) for a in first.alarms] == [(1, 1, 50.0)]
    detector._run(np.array([[0.0]] * 4))
    # rows 6, 7: up at 0 after row 6, crosses at row 7: since 7, the second row of this batch
    later = detector._run(np.array([[0.0], [3.0]]), times=np.array([60.0, 61.0]))
    assert [(a.row, a.since, a.since_time) for a in later.alarms] == [(7, 7, 61.0)]
    # times that do not reach the change's row date nothing
    short = detector._run(np.array([[0.0], [3.0]]), times=np.array([70.0]))
    assert [(a.row, a.since, a.since_time) for a in short.alarms] == [(9, 9, None)]
    # the subject's CUSUM nearest its threshold, as a share of it
    near = _tiny_detector([0.5, 1.0])
    assert near._statistics(np.array([0.4, 0.3])) == {"x": (0.4, 0.5, "up")}
    assert near._statistics(np.array([0.1, 0.3])) == {"x": (0.3, 1.0, "down")}
    # a threshold of 0 (a direction the reference never moves) is at 0 of its way, whatever its CUSUM
    flat = _tiny_detector([0.0, 1.0])
    assert flat._statistics(np.array([0.0, 0.5])) == {"x": (0.5, 1.0, "down")}
    assert flat._statistics(np.array([0.0, 0.0])) == {"x": (0.0, 0.0, "up")}
    far = _tiny_detector([2.0, 4.0])
    assert far._statistics(np.array([1.0, 1.6])) == {"x": (1.0, 2.0, "up")}
    assert far.scan(np.zeros((2, 1)), [1, 2], after=0).test == "cusum"


def test_watch_reports_an_alarm_on_the_first_row_and_its_test():
    watch = sequential.Watch(_tiny_detector([2.0, 1.0]))
    watch.update(np.array([[3.0]]), now=1.0)
    got = watch.report()
    assert got["alarm"] is True and got["test"] == "cusum" and got["rows"] == 1
    assert got["subjects"]["x"]["alarm"] and got["subjects"]["x"]["since_row"] == 1


def test_watch_dates_by_each_rows_own_batch():
    watch = sequential.Watch(_tiny_detector([2.0, 1.0]))
    watch.update(np.array([[1.0]]), now=7.0)  # up 0.5 at row 1
    crossed = watch.update(np.array([[3.0]]), now=8.0)  # 3.0 > 2 at row 2: since row 1, at 7.0
    assert [(a.row, a.since, a.since_time) for a in crossed.alarms] == [(2, 1, 7.0)]
    watch.update(np.array([[0.0]] * 3), now=9.0)  # rows 3-5, down and up at zero
    watch.update(np.array([[0.7]] * 3), now=10.0)  # rows 6-8: up 0.2 a row from row 6
    big = watch.update(np.array([[3.0]] + [[0.5]] * 19), now=11.0)  # row 9 crosses: since row 6, at 10.0
    assert [(a.row, a.since, a.since_time) for a in big.alarms][0] == (9, 6, 10.0)
    # past TIMES rows, a recent change is still dated
    watch.update(np.zeros((5000, 1)) - 1.0, now=12.0)
    watch.update(np.array([[1.0]]), now=13.0)
    late = watch.update(np.array([[3.0]]), now=14.0)
    assert [(a.since, a.since_time) for a in late.alarms] == [(watch.detector.rows - 1, 13.0)]
