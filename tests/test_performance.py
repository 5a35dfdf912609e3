"""The performance estimate before labels (direct loss estimation): fitted at training time, its
band calibrated on clean reference windows, what it sees (more expensive stones) and what it cannot
(changed prices for the same stones); on /drift, /metrics and in the artifact."""
from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import train
from evaluation import scenarios
from monitor import MonitorConfig, start_monitor
from monitoring import performance
from tests.helpers import as_payload, heldout_predicted, metric_value, request, split_halves


@pytest.fixture(scope="module")
def heldout(small_artifact):
    return heldout_predicted(small_artifact)


@pytest.fixture(scope="module")
def halves(heldout):
    return split_halves(heldout)


@pytest.fixture(scope="module")
def estimator(halves):
    a, _ = halves
    return performance.PerformanceEstimator(performance.ErrorModel.fit(a["price"], a["predicted"]), a["predicted"])


def test_the_artifact_carries_the_error_model_fitted_on_held_out_errors(small_artifact):
    model = performance.ErrorModel.from_dict(small_artifact["error_model"])
    errors = small_artifact["reference_errors"]
    expected = model.expected_squared_error(errors["predicted"])
    # fitted on those errors: the band ratios reproduce the held-out MSE exactly
    assert expected.mean() == pytest.approx(np.mean((errors["actual"] - errors["predicted"]) ** 2), rel=1e-9)
    assert np.all(model.ratios > 0) and len(model.ratios) == len(model.edges) + 1 <= 20
    # errors grow with price: the estimate of a dear stone's squared error is larger
    assert model.expected_squared_error(np.array([8000.0]))[0] > 20 * model.expected_squared_error(np.array([800.0]))[0]
    with pytest.raises(ValueError):
        performance.ErrorModel.from_dict({"metric": "mae", "kind": "band-ratio", "edges": [], "ratios": [1.0]})


def test_estimate_tracks_the_realised_error_on_held_out_rows(estimator, halves):
    _, b = halves
    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(40):
        w = b.iloc[rng.choice(len(b), 1000, replace=False)]
        ratios.append(estimator.score(w["predicted"]).estimated / np.mean((w["price"] - w["predicted"]) ** 2))
    assert 0.85 < np.median(ratios) < 1.15


@pytest.mark.parametrize("m", [50, 200, 1000])
def test_band_is_calibrated_on_clean_reference_windows(estimator, halves, m):
    _, b = halves
    rng = np.random.default_rng(m)
    predicted = b["predicted"].to_numpy()
    flagged = np.mean([estimator.score(predicted[rng.choice(len(predicted), m)]).detected for _ in range(3000)])
    assert flagged <= 0.012  # alpha 0.005: at most 1% of clean checks
    low, high = estimator.band(m)
    assert low < estimator.reference < high


def test_estimate_sees_more_expensive_stones_but_not_changed_prices(estimator, halves, small_artifact):
    _, b = halves
    rng = np.random.default_rng(2)
    large = scenarios.SCENARIOS["large_stones"].sample(b, 300, rng)
    large_predicted = small_artifact["pipeline"].predict(large[train.FEATURES])
    report = estimator.score(large_predicted)
    assert report.detected and report.estimated > report.upper and report.estimated > 1.5 * report.reference
    small = scenarios.SCENARIOS["small_stones"].sample(b, 200, rng)
    assert estimator.score(small_artifact["pipeline"].predict(small[train.FEATURES])).estimated < estimator.band(200)[0]
    dearer = scenarios.SCENARIOS["price_up_15"].sample(b, 500, rng)  # same stones, same predictions
    assert not estimator.score(dearer["predicted"]).detected
    short = estimator.score(np.full(10, 1000.0))
    assert short.estimated is None and not short.detected and short.to_dict()["window_size"] == 10


def test_monitor_reports_the_estimate_on_drift_and_metrics(small_artifact, heldout):
    config = MonitorConfig(port=0, check_interval=0, window=200, label_window=200, db_path=None)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    try:
        large = scenarios.SCENARIOS["large_stones_15"].sample(heldout, 200, np.random.default_rng(3))
        status, _, body = request(handle.url, "POST", "/predict", as_payload(large))
        assert status == 200
        status, _, report = request(handle.url, "POST", "/drift/check")
        assert status == 200
        estimate = report["performance_estimate"]
        assert estimate["metric"] == "mse" and estimate["window_size"] == 200 and estimate["detected"]
        assert estimate["lower"] < estimate["reference"] < estimate["upper"] < estimate["estimated"]
        _, _, text = request(handle.url, "GET", "/metrics")
        assert metric_value(text, "performance_estimate_detected") == 1
        assert metric_value(text, "performance_estimated_mse") == pytest.approx(estimate["estimated"])
        assert metric_value(text, "performance_estimate_band_mse", {"bound": "upper"}) == pytest.approx(estimate["upper"])
        # what fired in the data, and when its change began: the rows arrived just now
        carat = report["data_drift"]["detections"]["carat"]
        assert carat["scale"] in report["data_drift"]["scales"] and carat["since"] is not None
        assert abs(carat["since"] - metric_value(text, "data_drift_feature_since_timestamp_seconds",
                                                 {"feature": "carat"})) < 1e-3
    finally:
        handle.stop()


def test_an_artifact_without_an_error_model_has_no_estimate(small_artifact):
    artifact = {k: v for k, v in small_artifact.items() if k != "error_model"}
    handle = start_monitor(MonitorConfig(port=0, check_interval=0, db_path=None), artifact=artifact,
                           registry=CollectorRegistry())
    try:
        status, _, report = request(handle.url, "POST", "/drift/check")
        assert status == 200 and report["performance_estimate"] is None
    finally:
        handle.stop()
