"""What a replica needs to take part in fleet drift checks (monitoring/pg_store.py stores them):
the windows a check scores, built from the fleet's rows read from the store, and a stored report
turned back into the typed reports that set the drift gauges.

Kept apart from drift.py (the statistics) and monitor.py (the flow): a report crosses the database
as the same JSON `/drift` serves (DriftCheck.to_dict), and comes back here.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import NamedTuple

import numpy as np

from monitoring.classification import ClassificationConceptDetector, ClassificationConceptReport
from monitoring.drift import (ConceptDriftReport, DataDriftReport, Detection, FeatureDrift, MultivariateDrift,
                              SegmentDrift)
from monitoring.performance import PerformanceEstimate
from monitoring.report import DriftSnapshot

__all__ = ["CheckWindows", "StoredSnapshot", "data_report_from_dict", "concept_report_from_dict",
           "performance_from_dict", "snapshot_from_columns", "windows_from_columns"]


class CheckWindows(NamedTuple):
    """Everything one check scores, as a replica's own windows give it (InputWindow.snapshot_all,
    LabelledWindow.snapshot_all): the same numbers whether the windows are this replica's or the
    fleet's read from the store, so that a fleet check flags what a single replica would."""
    inputs: dict[str, np.ndarray]  # numbers as float64, grades as int64 schema codes
    predictions: np.ndarray  # the model's prediction for each input (the performance estimate's)
    input_times: np.ndarray  # arrival times, unix seconds (when a change began)
    actual: np.ndarray
    predicted: np.ndarray
    grades: dict[str, np.ndarray]  # the labelled inputs' grade codes by feature, NaN unknown (segments)
    label_times: np.ndarray

    @property
    def snapshot(self) -> DriftSnapshot:
        """What the drift report page draws."""
        return DriftSnapshot(self.inputs, self.actual, self.predicted)


def _floats(values) -> np.ndarray:
    """Numbers as float64: an array as read (PgStore reads numbers as arrays), or a list with None."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _grade_codes(schema, name: str, values, dtype):
    """Schema codes of grades given as text; None, or a grade this schema does not know, is -1
    (int64: such a row cannot be in the window) or NaN (float64: a label's unknown grade)."""
    def code(v):
        try:
            return schema.code(name, v)
        except (KeyError, TypeError, ValueError):
            return -1 if dtype is np.int64 else np.nan

    vocab = getattr(values, "vocab", None)
    if vocab is not None:   # pg_windows.TextColumn: each distinct text once, then an array lookup
        return np.array([code(v) for v in vocab], dtype=dtype)[values.codes]
    codes = {v: code(v) for v in set(values)}
    # map() with the dict's own lookup: half the time of a generator per value
    return np.fromiter(map(codes.__getitem__, values), dtype=dtype, count=len(values))


def windows_from_columns(schema, columns: dict, labelled: dict, pairs=None) -> CheckWindows:
    """The windows of a check from the store's columns (PgStore.windows: {"features": {name:
    values}} with categories as text, each input's `prediction` and `ts`; the labelled rows'
    `actual`, `prediction`, `label_ts` and their inputs' categories under "features"). Column by
    column: a Python step per row would cost more than the read.

    pairs: for a classifier, what turns labelled predictions [(actual, predicted, features)] into
    the labelled window's (correct, loss) rows (monitor.py's _window_pairs, the same for the labels
    a replica takes): then `labelled` holds every feature, and a row that does not fit the schema
    is left out, as when a replica refills its window from its store."""
    inputs = {}
    for feature in schema.features:
        values = columns["features"][feature.name]
        inputs[feature.name] = (_grade_codes(schema, feature.name, values, np.int64)
                                if feature.kind == "categorical" else _floats(values))
    actual, predicted = _floats(labelled["actual"]), _floats(labelled["prediction"])
    label_times = _floats(labelled["label_ts"])
    with_labels = labelled["features"]
    label_grades = {f.name: with_labels.get(f.name) for f in schema.features if f.kind == "categorical"}
    if pairs is not None:
        rows = list(zip(*(with_labels[name] for name in schema.names))) if len(actual) else []
        keep = [k for k, row in enumerate(rows)
                if np.isfinite(actual[k]) and np.isfinite(predicted[k]) and schema.fits(row)]
        window = np.asarray(pairs([(actual[k], predicted[k], rows[k]) for k in keep]),
                            dtype=np.float64).reshape(-1, 2)
        actual, predicted, label_times = window[:, 0].copy(), window[:, 1].copy(), label_times[keep]
        label_grades = {name: [values[k] for k in keep] for name, values in label_grades.items()}
    grades = {name: (_grade_codes(schema, name, values, np.float64) if values is not None
                     else np.full(len(actual), np.nan))
              for name, values in label_grades.items()}
    return CheckWindows(inputs, _floats(columns["prediction"]), _floats(columns["ts"]), actual, predicted, grades,
                        label_times)


def snapshot_from_columns(schema, columns: dict, labelled: dict, pairs=None) -> DriftSnapshot:
    """The windows the drift report page draws, from the store's columns (windows_from_columns)."""
    return windows_from_columns(schema, columns, labelled, pairs).snapshot


class StoredSnapshot:
    """The windows of a check another replica ran, read from the store only when the drift report
    page is first drawn (a replica whose page nobody views never reads them): the fleet's newest
    rows as of the check's time. Has DriftSnapshot's attributes."""

    def __init__(self, store, schema, window: int, label_window: int, until: float, pairs=None):
        self._load = lambda: snapshot_from_columns(schema, *store.windows(window, label_window, until), pairs)
        self._snapshot: DriftSnapshot | None = None
        self._lock = threading.Lock()

    def _get(self) -> DriftSnapshot:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self._load()
            return self._snapshot

    @property
    def inputs(self):
        return self._get().inputs

    @property
    def actual(self) -> np.ndarray:
        return self._get().actual

    @property
    def predicted(self) -> np.ndarray:
        return self._get().predicted


def _known(cls, values: dict) -> dict:
    """The keys of `values` that are fields of dataclass `cls` (a report written by a newer replica
    may carry more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _detection(d: dict | None) -> Detection | None:
    return None if d is None else Detection(**_known(Detection, d))


def data_report_from_dict(d: dict) -> DataDriftReport:
    """DataDriftReport.to_dict() read back, its nested reports typed again (the joint test, what
    fired for each feature and since when)."""
    features = {name: FeatureDrift(feature=name, **_known(FeatureDrift, {k: v for k, v in f.items() if k != "feature"}))
                for name, f in d.get("features", {}).items()}
    nested = ("score", "features", "multivariate", "detections")
    rest = _known(DataDriftReport, {k: v for k, v in d.items() if k not in nested})
    joint = d.get("multivariate")
    return DataDriftReport(max_distance=d.get("score"), features=features,
                           multivariate=None if joint is None else MultivariateDrift(**_known(MultivariateDrift, joint)),
                           detections={name: _detection(f) for name, f in (d.get("detections") or {}).items()},
                           **rest)


def concept_report_from_dict(d: dict) -> ConceptDriftReport | ClassificationConceptReport:
    """ConceptDriftReport.to_dict() read back, its nested reports typed again (what fired and since
    when, each segment's); a classifier's ClassificationConceptReport.to_dict() (test
    "loss-accuracy") likewise."""
    if d.get("test") == ClassificationConceptDetector.test:
        rest = _known(ClassificationConceptReport, {k: v for k, v in d.items() if k not in ("score", "detection")})
        return ClassificationConceptReport(loss_increase=d.get("score"), detection=_detection(d.get("detection")),
                                           **rest)
    rest = _known(ConceptDriftReport, {k: v for k, v in d.items() if k not in ("score", "detection", "segments")})
    return ConceptDriftReport(mse_increase=d.get("score"), detection=_detection(d.get("detection")),
                              segments={name: SegmentDrift(**_known(SegmentDrift, s))
                                        for name, s in (d.get("segments") or {}).items()},
                              **rest)


def performance_from_dict(d: dict | None) -> PerformanceEstimate | None:
    """PerformanceEstimate.to_dict() read back (None: the artifact has no error model)."""
    return None if d is None else PerformanceEstimate(**_known(PerformanceEstimate, d))
