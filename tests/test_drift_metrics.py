"""The gauges of the CUSUMs between checks and of "since when", published from a check's reports:
exact values from hand-made reports (monitoring/metrics.py). Through a real Prometheus and the
dashboard's queries: tests/test_prometheus_integration.py."""
from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring import drift
from monitoring.classification import ClassificationConceptReport
from monitoring.metrics import MonitorMetrics, change_began, cusum_ratio
from tests.helpers import metric_value


def _metrics(**options) -> tuple[MonitorMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return MonitorMetrics(registry, {"carat": "ks", "cut": "chi2"}, ["price 660-830"], **options), registry


def _entry(statistic, threshold, direction="up", alarm=False, since=None, since_row=None) -> dict:
    return {"statistic": statistic, "threshold": threshold, "direction": direction, "alarm": alarm,
            "since": since, "since_row": since_row}


def _sequential(subjects: dict) -> dict:
    return {"test": "cusum", "rows": 500, "alarm": any(e["alarm"] for e in subjects.values()), "subjects": subjects,
            "alarms": []}


def _data(detected=False, detections=None, sequential=None) -> drift.DataDriftReport:
    report = drift.DataDriftReport(max_distance=0.1, detected=detected, window_size=500, alpha=0.005,
                                   detections=detections or {})
    report.sequential = sequential
    return report


def _concept(detected=False, detection=None, sequential=None) -> drift.ConceptDriftReport:
    report = drift.ConceptDriftReport(mse_increase=0.0, detected=detected, labelled_size=400, mse=1.0,
                                      reference_mse=1.0, statistic=0.1, p_value=0.5, alpha=0.005, test="pit-ks",
                                      mean_log_ratio=0.0, bias_pct=0.0, detection=detection)
    report.sequential = sequential
    return report


def _value(registry, name, labels=None) -> float:
    return metric_value(generate_latest(registry).decode(), name, labels)


def test_every_cusum_subject_starts_as_nan_and_no_drift_has_no_start():
    metrics, registry = _metrics(cusum_subjects={"data": ["carat", "depth"], "concept": ["all", "price 4,600+"]})
    for name, label, subject in (("data_drift_cusum_ratio", "feature", "carat"),
                                 ("data_drift_cusum_ratio", "feature", "depth"),
                                 ("concept_drift_cusum_ratio", "segment", "all"),
                                 ("concept_drift_cusum_ratio", "segment", "price 4,600+")):
        assert math.isnan(_value(registry, name, {label: subject}))
    for kind in ("data", "concept"):
        assert math.isnan(_value(registry, "drift_since_timestamp_seconds", {"kind": kind}))
    # a classifier's labels have no CUSUM: no series at all rather than one that is always NaN
    metrics, registry = _metrics(cusum_subjects={"data": ["carat"], "concept": []})
    assert "concept_drift_cusum_ratio{" not in generate_latest(registry).decode()


def test_ratios_are_each_reported_cusum_over_its_threshold_whatever_the_subjects():
    metrics, registry = _metrics(cusum_subjects={"data": ["carat", "depth", "table"], "concept": ["all"]})
    data = _sequential({"carat": _entry(21.0, 17.5, alarm=True, since=1_700_000_100.5, since_row=40),
                        "depth": _entry(4.5, 18.0, direction="down"),
                        # a subject the monitor did not list at start (another allowance, say): published too
                        "carat k=0.75": _entry(3.0, 12.0),
                        # a feature constant in the reference: threshold 0, its CUSUMs never leave 0
                        "table": _entry(0.0, 0.0)})
    concept = _sequential({"all": _entry(2.25, 9.0, direction="down")})
    metrics.record_drift(_data(detected=True, sequential=data), _concept(sequential=concept))
    assert _value(registry, "data_drift_cusum_ratio", {"feature": "carat"}) == 21.0 / 17.5
    assert _value(registry, "data_drift_cusum_ratio", {"feature": "depth"}) == 0.25
    assert _value(registry, "data_drift_cusum_ratio", {"feature": "carat k=0.75"}) == 0.25
    assert _value(registry, "data_drift_cusum_ratio", {"feature": "table"}) == 0.0
    assert _value(registry, "concept_drift_cusum_ratio", {"segment": "all"}) == 0.25
    # the alarm's start is the data drift's start; nothing flags concept drift
    assert _value(registry, "drift_since_timestamp_seconds", {"kind": "data"}) == 1_700_000_100.5
    assert math.isnan(_value(registry, "drift_since_timestamp_seconds", {"kind": "concept"}))

    # the next check's report without CUSUMs (a report scored alone): every subject reads NaN again
    metrics.record_drift(_data(), _concept())
    for subject in ("carat", "depth", "table", "carat k=0.75"):
        assert math.isnan(_value(registry, "data_drift_cusum_ratio", {"feature": subject}))
    assert math.isnan(_value(registry, "drift_since_timestamp_seconds", {"kind": "data"}))


def test_since_is_the_earliest_start_of_the_windowed_detections_and_the_cusum_alarms():
    metrics, registry = _metrics(cusum_subjects={"data": ["carat"], "concept": ["all", "price 4,600+"]})
    detections = {"carat": drift.Detection("ks", 100, 1e-6, 80, since=1_700_000_300.0),
                  "multivariate": drift.Detection("pca-reconstruction", 500, 1e-5, 300, since=1_700_000_250.0)}
    data = _sequential({"carat": _entry(19.0, 17.5, alarm=True, since=1_700_000_260.0, since_row=9)})
    concept = _sequential({"all": _entry(12.0, 9.0, alarm=True, since=1_700_000_200.0, since_row=3),
                           "price 4,600+": _entry(10.0, 9.0, alarm=True, since=1_700_000_150.0, since_row=1)})
    detection = drift.Detection("z-mean", 250, 1e-4, 120, segment="all", since=1_700_000_180.0)
    metrics.record_drift(_data(True, detections, data), _concept(True, detection, concept))
    assert _value(registry, "drift_since_timestamp_seconds", {"kind": "data"}) == 1_700_000_250.0
    assert _value(registry, "drift_since_timestamp_seconds", {"kind": "concept"}) == 1_700_000_150.0
    # a CUSUM that did not alarm since the previous check says nothing about a start
    concept["subjects"]["price 4,600+"]["alarm"] = False
    metrics.record_drift(_data(True, detections, data), _concept(True, detection, concept))
    assert _value(registry, "drift_since_timestamp_seconds", {"kind": "concept"}) == 1_700_000_180.0


def test_a_classifiers_report_has_no_concept_cusum_and_no_concept_start():
    metrics, registry = _metrics(cusum_subjects={"data": ["carat"], "concept": []})
    concept = ClassificationConceptReport(loss_increase=0.3, detected=True, labelled_size=300, accuracy=0.6,
                                          reference_accuracy=0.75, accuracy_drop=0.15, log_loss=1.0,
                                          reference_log_loss=0.8, loss_p_value=1e-6, accuracy_p_value=1e-5,
                                          p_value=1e-6, alpha=0.005, test="loss-accuracy")
    metrics.record_drift(_data(sequential=_sequential({"carat": _entry(1.75, 17.5)})), concept)
    assert _value(registry, "data_drift_cusum_ratio", {"feature": "carat"}) == pytest.approx(0.1)
    assert math.isnan(_value(registry, "drift_since_timestamp_seconds", {"kind": "concept"}))
    assert "concept_drift_cusum_ratio{" not in generate_latest(registry).decode()


def test_the_helpers_by_hand():
    assert cusum_ratio(_entry(9.0, 18.0)) == 0.5
    assert cusum_ratio(_entry(0.0, 0.0)) == 0.0
    assert math.isnan(cusum_ratio(None)) and math.isnan(cusum_ratio({"statistic": None, "threshold": 1.0}))
    assert change_began([], None) is None
    assert change_began([None, 5.0, 3.0], None) == 3.0
    alarms = _sequential({"a": _entry(2.0, 1.0, alarm=True, since=2.0), "b": _entry(2.0, 1.0, alarm=True, since=None),
                          "c": _entry(0.5, 1.0, since=1.0)})
    assert change_began([3.0], alarms) == 2.0  # c did not alarm; b's start is unknown
    assert change_began([math.nan], {"subjects": {}}) is None
