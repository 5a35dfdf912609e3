"""What a replica needs to take part in fleet drift checks (monitoring/pg_store.py stores them):
the windows a check scores, built from the fleet's rows read from the store, and a stored report
turned back into the typed reports that set the drift gauges.

Kept apart from drift.py (the statistics) and monitor.py (the flow): a report crosses the database
as the same JSON `/drift` serves (DriftCheck.to_dict), and comes back here.
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from monitoring.drift import ConceptDriftReport, DataDriftReport, FeatureDrift
from monitoring.report import DriftSnapshot

__all__ = ["StoredSnapshot", "data_report_from_dict", "concept_report_from_dict", "snapshot_from_columns"]


def snapshot_from_columns(schema, columns: dict[str, list], labelled: tuple[list, list]) -> DriftSnapshot:
    """The windows of a check, as InputWindow.snapshot() and LabelledWindow.snapshot() give them
    (numbers as float64, grades as their int64 schema codes), from the store's columns (grades as
    text; PgStore.windows). Column by column: a Python step per row would cost more than the read."""
    inputs = {}
    for feature in schema.features:
        values = columns[feature.name]
        if feature.kind == "categorical":
            codes = {v: schema.code(feature.name, v) for v in set(values)}
            # map() with the dict's own lookup: half the time of a generator per value
            inputs[feature.name] = np.fromiter(map(codes.__getitem__, values), dtype=np.int64, count=len(values))
        else:
            inputs[feature.name] = (values.astype(np.float64) if isinstance(values, np.ndarray) else
                                    np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    actual, predicted = labelled
    return DriftSnapshot(inputs, np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64))


class StoredSnapshot:
    """The windows of a check another replica ran, read from the store only when the drift report
    page is first drawn (a replica whose page nobody views never reads them): the fleet's newest
    rows as of the check's time. Has DriftSnapshot's attributes."""

    def __init__(self, store, schema, window: int, label_window: int, until: float):
        self._load = lambda: snapshot_from_columns(schema, *store.windows(window, label_window, until))
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


def data_report_from_dict(d: dict) -> DataDriftReport:
    """DataDriftReport.to_dict() read back."""
    features = {name: FeatureDrift(feature=name, **_known(FeatureDrift, {k: v for k, v in f.items() if k != "feature"}))
                for name, f in d.get("features", {}).items()}
    rest = _known(DataDriftReport, {k: v for k, v in d.items() if k not in ("score", "features")})
    return DataDriftReport(max_distance=d.get("score"), features=features, **rest)


def concept_report_from_dict(d: dict) -> ConceptDriftReport:
    """ConceptDriftReport.to_dict() read back."""
    return ConceptDriftReport(mse_increase=d.get("score"),
                              **_known(ConceptDriftReport, {k: v for k, v in d.items() if k != "score"}))
