"""Prometheus metrics of one monitor, on a registry of its own (tests build a fresh one each)."""
from __future__ import annotations

import datetime as dt
import math
import threading

import numpy as np

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitoring.drift import ConceptDriftReport, DataDriftReport
from monitoring.performance import PerformanceEstimate

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
VALUE_BUCKETS = 12  # predicted_value's buckets: at this many quantiles of the held-out predictions
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def value_buckets(reference_predictions, n: int = VALUE_BUCKETS) -> tuple[float, ...]:
    """Histogram bounds for predicted values: the held-out predictions' quantiles (so that each
    bucket holds about as many predictions as the others, whatever the target's scale or sign),
    rounded to two significant figures and made unique."""
    values = np.asarray(reference_predictions, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0,)
    quantiles = np.quantile(values, np.arange(1, n + 1) / (n + 1))
    return tuple(sorted({float(f"{q:.2g}") for q in quantiles}))


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, feature_tests: dict[str, str] | None = None,
                 segments: list[str] | None = None, value_bounds: tuple[float, ...] | None = None,
                 classes: list[str] | None = None, cusum_subjects: dict[str, list[str]] | None = None):
        """feature_tests: the main test of each feature's drift detector, by feature name ("ks", "chi2");
        segments: the concept-drift segments a check may report; value_bounds: the predicted_value
        histogram's buckets (a regression; value_buckets); classes: a classifier's classes (as text);
        cusum_subjects: the subjects of the CUSUMs between checks, {"data": features, "concept":
        segments} (monitoring/sequential.py; either may be empty: a classifier's labels have none)."""
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        # Serving
        self.predictions = Counter("predictions", "Rows predicted", registry=registry)
        self.prediction_requests = Counter("prediction_requests", "Successful /predict requests",
                                           registry=registry)
        self.prediction_latency = Histogram("prediction_latency_seconds",
                                            "Time to answer a /predict request, parsing to response",
                                            buckets=LATENCY_BUCKETS, registry=registry)
        # A regression's predictions (buckets at the held-out predictions' quantiles), a classifier's
        # by class; both exist for every model, empty for the other task, so that the metric set is one.
        self.predicted_value = _BatchHistogram("predicted_value", "Predicted values (a regression), buckets at "
                                               "the held-out predictions' quantiles", value_bounds or (0.0,),
                                               registry)
        self.predictions_by_class = Counter("predictions_by_class", "Rows predicted as each class (a "
                                            "classifier)", ["class"], registry=registry)
        for name in classes or ():
            self.predictions_by_class.labels(name)
        self.labels_received = Counter("labels_received", "Ground-truth labels joined to a prediction",
                                       registry=registry)
        self.labels_unknown = Counter("labels_unknown", "Labels whose prediction id is not known",
                                      registry=registry)
        self.invalid_requests = Counter("invalid_requests", "Requests refused with a 4xx, by reason",
                                        ["endpoint", "reason"], registry=registry)
        self.refused_requests = Counter("refused_requests", "Requests the server could not take: 503 "
                                        "(store unavailable, too many connections) or 500 (internal_error: a bug)", ["endpoint", "reason"],
                                        registry=registry)
        # Both reasons exist from the start, so that a rate over them reads 0 rather than no data.
        self.refused_requests.labels("/feedback", "store_unavailable")
        self.refused_requests.labels("other", "too_many_connections")
        self.evicted_connections = Counter("evicted_connections", "Connections waiting for a request head "
                                           "closed to make room for a new one", registry=registry)

        # Drift
        self.data_drift = Gauge("data_drift", "Overall data-drift magnitude in [0, 1]: the largest "
                                "per-feature distance (KS D or total variation)", registry=registry)
        self.data_drift_detected = Gauge("data_drift_detected", "1 if any feature drifted "
                                         "(Holm-corrected tests, or a CUSUM alarm since the previous check), else 0", registry=registry)
        self.data_drift_alpha = Gauge("data_drift_alpha", "Family-wise significance level of the "
                                      "data-drift tests", registry=registry)
        self.feature_distance = Gauge("data_drift_feature_distance", "Per-feature drift distance in "
                                      "[0, 1]", ["feature"], registry=registry)
        self.feature_statistic = Gauge("data_drift_feature_statistic", "Per-feature test statistic",
                                       ["feature", "test"], registry=registry)
        self.feature_p_value = Gauge("data_drift_feature_p_value", "Per-feature test p-value",
                                     ["feature"], registry=registry)
        self.feature_detected = Gauge("data_drift_feature_detected", "1 if this feature drifted "
                                      "after correction, or its CUSUM alarmed since the previous check", ["feature"], registry=registry)
        self.feature_scale = Gauge("data_drift_feature_scale", "Newest samples the test that flagged this "
                                   "feature looked at (the window size for the whole window); NaN if none did",
                                   ["feature"], registry=registry)
        self.feature_since = Gauge("data_drift_feature_since_timestamp_seconds", "When this feature's change "
                                   "began, as estimated from the window (unix time); NaN if not drifted",
                                   ["feature"], registry=registry)
        self.data_drift_tests = Gauge("data_drift_tests", "Hypotheses in the data-drift check's Holm family "
                                      "(features x tests x scales, and the joint test)", registry=registry)
        self.multivariate_statistic = Gauge("data_drift_multivariate_statistic", "Joint test: the window's "
                                            "mean PCA reconstruction error over the reference's (1 = as in "
                                            "training)", registry=registry)
        self.multivariate_p_value = Gauge("data_drift_multivariate_p_value", "Joint test: p-value on the "
                                          "whole window", registry=registry)
        self.multivariate_detected = Gauge("data_drift_multivariate_detected", "1 if the joint test rejected "
                                           "(at any scale, after correction)", registry=registry)
        self.concept_drift = Gauge("concept_drift", "Relative loss increase of the labelled window over "
                                   "the held-out reference (0.25 = 25% worse): MSE for a regression, log loss "
                                   "for a classifier", registry=registry)
        self.concept_drift_detected = Gauge("concept_drift_detected", "1 if the errors' distribution "
                                            "departs from the held-out reference, else 0", registry=registry)
        self.concept_drift_p_value = Gauge("concept_drift_p_value", "p-value of the concept-drift test",
                                           registry=registry)
        self.concept_drift_bias = Gauge("concept_drift_bias_percent", "How far actual values sit above "
                                        "predictions, relative to the reference, in percent (a regression with "
                                        "positive targets)", registry=registry)
        self.concept_drift_bias_units = Gauge("concept_drift_bias", "How far actual values sit above "
                                              "predictions, against the reference, in the target's units (a "
                                              "regression whose targets may be <= 0)", registry=registry)
        self.window_accuracy = Gauge("concept_drift_window_accuracy", "Accuracy of the labelled window (a "
                                     "classifier)", registry=registry)
        self.reference_accuracy = Gauge("concept_drift_reference_accuracy", "Held-out accuracy the window is "
                                        "compared with (a classifier)", registry=registry)
        self.window_log_loss = Gauge("concept_drift_window_log_loss", "Mean log loss of the labelled window "
                                     "(a classifier)", registry=registry)
        self.reference_log_loss = Gauge("concept_drift_reference_log_loss", "Held-out mean log loss the window "
                                        "is compared with (a classifier)", registry=registry)
        self.window_mse = Gauge("concept_drift_window_mse", "MSE of the labelled window", registry=registry)
        self.concept_drift_tests = Gauge("concept_drift_tests", "Hypotheses in the concept-drift check's Holm "
                                         "family (tests x scales, and segments)", registry=registry)
        self.concept_drift_scale = Gauge("concept_drift_scale", "Newest labels the test that flagged concept "
                                         "drift looked at; NaN if none did", registry=registry)
        self.concept_drift_since = Gauge("concept_drift_since_timestamp_seconds", "When the concept change "
                                         "began, as estimated from the labelled window (unix time of a "
                                         "label's arrival); NaN if not drifted", registry=registry)
        self.segment_detected = Gauge("concept_drift_segment_detected", "1 if this segment's errors (a "
                                      "predicted-value band or a category) departed from the reference, after "
                                      "correction", ["segment"], registry=registry)
        self.segment_bias = Gauge("concept_drift_segment_bias_percent", "How far actual values sit above "
                                  "predictions in this segment, against the reference, in percent",
                                  ["segment"], registry=registry)
        # The CUSUMs between checks (monitoring/sequential.py), from the check's `sequential` report:
        # how near each subject's CUSUM is to its alarm. One series per subject, not per direction:
        # the report gives the subject's CUSUM nearest its threshold (up or down), and a direction
        # label would make series vanish and reappear each time the nearer side flips on clean traffic.
        self.feature_cusum_ratio = Gauge("data_drift_cusum_ratio", "The feature's CUSUM nearest its alarm (up or "
                                         "down), as a fraction of its threshold (1 = alarm; above 1: the value it "
                                         "alarmed at since the previous check)", ["feature"], registry=registry)
        self.segment_cusum_ratio = Gauge("concept_drift_cusum_ratio", "The labels' CUSUM of this segment nearest its "
                                         "alarm (up or down), as a fraction of its threshold (1 = alarm; above 1: "
                                         "the value it alarmed at since the previous check)", ["segment"],
                                         registry=registry)
        self.drift_since = Gauge("drift_since_timestamp_seconds", "When the drift this check flags began (unix "
                                 "time): the earliest start of its windowed detections and of the CUSUM alarms "
                                 "since the previous check; NaN when nothing drifts", ["kind"], registry=registry)
        self.reference_mse = Gauge("concept_drift_reference_mse", "Held-out MSE the window is compared "
                                   "with", registry=registry)
        self.estimated_mse = Gauge("performance_estimated_mse", "MSE the served predictions are expected "
                                   "to have, estimated from them before labels arrive (direct loss estimation)",
                                   registry=registry)
        self.estimate_reference = Gauge("performance_estimate_reference_mse", "The estimate's mean on clean "
                                        "traffic (the held-out predictions)", registry=registry)
        self.estimate_band = Gauge("performance_estimate_band_mse", "The range the estimate keeps on clean "
                                   "windows of this size", ["bound"], registry=registry)
        self.estimate_detected = Gauge("performance_estimate_detected", "1 if the estimated MSE left its "
                                       "band, else 0", registry=registry)
        self.window_samples = Gauge("drift_window_samples", "Samples in a drift window now", ["window"],
                                    registry=registry)
        self.checks = Counter("drift_checks", "Drift checks run", registry=registry)
        self.check_failures = Counter("drift_check_failures", "Drift checks that raised", registry=registry)
        self.check_duration = Histogram("drift_check_duration_seconds", "Time one drift check takes",
                                        buckets=CHECK_BUCKETS, registry=registry)
        self.last_check = Gauge("drift_last_check_timestamp_seconds", "When the last drift check "
                                "finished (unix time)", registry=registry)

        # Model
        self.model_info = Info("model", "The served model", registry=registry)
        self.model_heldout_mse = Gauge("model_heldout_mse", "Held-out MSE at training (a regression)",
                                       registry=registry)
        self.model_heldout_accuracy = Gauge("model_heldout_accuracy", "Held-out accuracy at training (a "
                                            "classifier)", registry=registry)
        self.model_trained = Gauge("model_trained_timestamp_seconds", "When the model was trained",
                                   registry=registry)

        # Start per-feature series at NaN so that dashboards list every feature from the first scrape.
        for name, test in (feature_tests or {}).items():
            self.feature_distance.labels(name).set(math.nan)
            self.feature_p_value.labels(name).set(math.nan)
            self.feature_detected.labels(name).set(0)
            self.feature_statistic.labels(name, test).set(math.nan)
            self.feature_scale.labels(name).set(math.nan)
            self.feature_since.labels(name).set(math.nan)
        self._segments = list(segments or [])
        for segment in self._segments:
            self.segment_detected.labels(segment).set(0)
            self.segment_bias.labels(segment).set(math.nan)
        for bound in ("lower", "upper"):
            self.estimate_band.labels(bound).set(math.nan)
        # NaN until a check reports them, so that panels list every subject from the first scrape
        self._cusum_subjects = {"data": [], "concept": [], **{k: list(v) for k, v in (cusum_subjects or {}).items()}}
        for kind, gauge in (("data", self.feature_cusum_ratio), ("concept", self.segment_cusum_ratio)):
            for subject in self._cusum_subjects[kind]:
                gauge.labels(subject).set(math.nan)
        for kind in ("data", "concept"):
            self.drift_since.labels(kind).set(math.nan)
        for gauge in (self.estimated_mse, self.estimate_reference, self.data_drift, self.concept_drift,
                      self.concept_drift_p_value,
                      self.concept_drift_bias, self.concept_drift_bias_units, self.window_mse,
                      self.window_accuracy, self.reference_accuracy, self.window_log_loss, self.reference_log_loss,
                      self.multivariate_statistic,
                      self.multivariate_p_value, self.concept_drift_scale, self.concept_drift_since):
            gauge.set(math.nan)
        self.multivariate_detected.set(0)
        self.estimate_detected.set(0)

    def watch_windows(self, inputs, labelled) -> None:
        """Publish the windows' sizes as they are at each scrape (refilled at start, not only at checks)."""
        self.window_samples.labels("inputs").set_function(lambda: len(inputs))
        self.window_samples.labels("labelled").set_function(lambda: len(labelled))

    def watch_store(self, store) -> None:
        """Publish the prediction store's health and counters, read from it at each scrape."""
        self.registry.register(_StoreCollector(store))

    def describe_model(self, info: dict, metrics: dict) -> None:
        # name and task: an artifact from before any model could be served is the diamond regressor
        self.model_info.info({"version": info["model_version"], "trained_at": info["trained_at"],
                              "sklearn_version": info["versions"]["sklearn"],
                              "name": info.get("model_name", "diamond-price"), "task": info.get("task", "regression")})
        self.model_heldout_mse.set(metrics.get("mse", math.nan))  # a classifier has no MSE
        self.reference_mse.set(metrics.get("mse", math.nan))
        self.model_heldout_accuracy.set(metrics.get("accuracy", math.nan))  # a regression has no accuracy
        self.reference_accuracy.set(metrics.get("accuracy", math.nan))
        self.reference_log_loss.set(metrics.get("log_loss", math.nan))
        self.model_trained.set(dt.datetime.fromisoformat(info["trained_at"]).timestamp())

    def record_drift(self, data: DataDriftReport, concept: ConceptDriftReport,
                     performance: PerformanceEstimate | None = None) -> None:
        """Publish one check's reports; a figure the check could not compute reads NaN."""
        if performance is not None:
            self.estimated_mse.set(_number(performance.estimated))
            self.estimate_reference.set(performance.reference)
            self.estimate_band.labels("lower").set(_number(performance.lower))
            self.estimate_band.labels("upper").set(_number(performance.upper))
            self.estimate_detected.set(1 if performance.detected else 0)
        self.data_drift_alpha.set(data.alpha)
        self.data_drift.set(_number(data.max_distance))
        self.data_drift_detected.set(1 if data.detected else 0)
        # a feature whose CUSUM alarmed since the previous check is drifted too (monitoring/sequential.py)
        cusums = (getattr(data, "sequential", None) or {}).get("subjects") or {}
        for name, feature in data.features.items():
            self.feature_distance.labels(name).set(_number(feature.distance))
            self.feature_statistic.labels(name, feature.test).set(_number(feature.statistic))
            self.feature_p_value.labels(name).set(_number(feature.p_value))
            self.feature_detected.labels(name).set(1 if feature.detected or cusums.get(name, {}).get("alarm") else 0)
            fired = data.detections.get(name)
            self.feature_scale.labels(name).set(math.nan if fired is None else fired.scale)
            self.feature_since.labels(name).set(math.nan if fired is None else _number(fired.since))
        self.data_drift_tests.set(data.tests)
        self._record_cusums("data", self.feature_cusum_ratio, getattr(data, "sequential", None))
        self._record_cusums("concept", self.segment_cusum_ratio, getattr(concept, "sequential", None))
        self.drift_since.labels("data").set(_number(change_began(
            [d.since for d in data.detections.values()], getattr(data, "sequential", None))))
        detection = getattr(concept, "detection", None)  # a classifier's report has none
        self.drift_since.labels("concept").set(_number(change_began(
            [] if detection is None else [detection.since], getattr(concept, "sequential", None))))
        joint = data.multivariate
        self.multivariate_statistic.set(math.nan if joint is None else _number(joint.statistic))
        self.multivariate_p_value.set(math.nan if joint is None else _number(joint.p_value))
        self.multivariate_detected.set(1 if joint is not None and joint.detected else 0)
        self.concept_drift_detected.set(1 if concept.detected else 0)
        self.concept_drift_p_value.set(_number(concept.p_value))
        if hasattr(concept, "loss_increase"):  # a classifier's (monitoring/classification.py): no MSE, no bias
            self.concept_drift.set(_number(concept.loss_increase))
            self.window_accuracy.set(_number(concept.accuracy))
            self.reference_accuracy.set(_number(concept.reference_accuracy))
            self.window_log_loss.set(_number(concept.log_loss))
            self.reference_log_loss.set(_number(concept.reference_log_loss))
            return
        self.concept_drift.set(_number(concept.mse_increase))
        self.concept_drift_bias.set(_number(concept.bias_pct))
        self.concept_drift_bias_units.set(_number(getattr(concept, "bias", None)))
        self.window_mse.set(_number(concept.mse))
        self.concept_drift_tests.set(concept.tests)
        fired = concept.detection
        self.concept_drift_scale.set(math.nan if fired is None else fired.scale)
        self.concept_drift_since.set(math.nan if fired is None else _number(fired.since))
        for segment in self._segments:  # a segment with too few labels to test reads 0 and NaN
            tested = concept.segments.get(segment)
            self.segment_detected.labels(segment).set(1 if tested is not None and tested.detected else 0)
            self.segment_bias.labels(segment).set(math.nan if tested is None else _number(tested.bias_pct))

    def _record_cusums(self, kind: str, gauge: Gauge, report: dict | None) -> None:
        """Each subject's ratio from a check's `sequential` report, whatever subjects it names (kept,
        so that one it stops naming, as in a check without CUSUMs, reads NaN rather than its old value)."""
        subjects = (report or {}).get("subjects") or {}
        known = self._cusum_subjects[kind]
        known.extend(s for s in subjects if s not in known)
        for subject in known:
            gauge.labels(subject).set(cusum_ratio(subjects.get(subject)))


def cusum_ratio(entry: dict | None) -> float:
    """A `sequential` subject's statistic over its threshold; 0 for a threshold of 0 (a feature
    constant in the reference, whose CUSUMs never leave 0: sequential.py counts it so too)."""
    if not entry or entry.get("statistic") is None or entry.get("threshold") is None:
        return math.nan
    threshold = float(entry["threshold"])
    return float(entry["statistic"]) / threshold if threshold > 0 else 0.0


def change_began(detection_times, sequential: dict | None) -> float | None:
    """When the drift a check flags began: the earliest of its windowed detections' starts
    (`detection_times`, unix time or None) and of the CUSUM alarms since the previous check (the
    `since` of each alarmed subject of its `sequential` report); None when nothing drifts (or no
    start is known). The gauge and the report page both read it from here."""
    times = [t for t in detection_times if t is not None]
    for entry in ((sequential or {}).get("subjects") or {}).values():
        if entry.get("alarm") and entry.get("since") is not None:
            times.append(entry["since"])
    times = [float(t) for t in times if math.isfinite(float(t))]
    return min(times) if times else None


def _number(value) -> float:
    return math.nan if value is None else float(value)


class _StoreCollector:
    """Reads the store's own counters at scrape time instead of mirroring them on every write."""

    def __init__(self, store):
        self._store = store

    def collect(self):
        stats, counts = self._store.stats(), self._store.counts()
        yield GaugeMetricFamily("store_healthy", "1 if the last write to the prediction store succeeded",
                                value=1 if self._store.healthy else 0)
        yield GaugeMetricFamily("store_pending_records", "Predictions answered but not yet written "
                                "(kept in memory for retry)", value=stats["pending"])
        rows = GaugeMetricFamily("store_rows", "Rows in the prediction store", labels=["kind"])
        rows.add_metric(["predictions"], counts["predictions"])
        rows.add_metric(["labelled"], counts["labelled"])
        yield rows
        yield CounterMetricFamily("store_write_errors", "Failed writes to the prediction store",
                                  value=stats["write_errors"])
        yield CounterMetricFamily("store_dropped_records", "Unwritten predictions dropped because the "
                                  "retry buffer was full", value=stats["dropped"])
        yield CounterMetricFamily("store_rejected_records", "Records the database refused (set aside, "
                                  "the rest of their group committed)", value=stats["rejected"])
        yield CounterMetricFamily("store_commits", "Group commits to the prediction store",
                                  value=stats["commits"])
        yield CounterMetricFamily("store_pruned_rows", "Rows deleted by retention", value=stats["pruned_rows"])


class _BatchHistogram:
    """A Prometheus histogram fed a whole batch of values at once (one searchsorted), where
    prometheus_client's Histogram takes one observe() call, and one lock, per value."""

    def __init__(self, name: str, documentation: str, buckets, registry: CollectorRegistry):
        self._name, self._documentation = name, documentation
        self._bounds = np.array([*buckets, math.inf], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        # bucket le=b counts values <= b: the first bound >= the value
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self):
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        cumulative = np.cumsum(counts)
        buckets = [("+Inf" if math.isinf(b) else repr(float(b)), int(c)) for b, c in zip(self._bounds, cumulative)]
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=total)
