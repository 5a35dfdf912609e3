"""Sliding windows of recent traffic, kept as preallocated numpy ring buffers.

A drift check copies a window under its lock (a memcpy) and does its statistics after releasing
it, so predictions never wait for a check.
"""
from __future__ import annotations

import threading
import time

import numpy as np


class RingBuffer:
    """The newest `capacity` rows of a fixed number of float64 columns."""

    def __init__(self, capacity: int, columns: int):
        if capacity < 1:
            raise ValueError("a window needs a capacity of at least 1")
        self.capacity = capacity
        self._data = np.empty((capacity, columns), dtype=np.float64)
        self._next = 0  # slot the next row goes to
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def extend(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if len(rows) > self.capacity:
            rows = rows[-self.capacity:]
        n = len(rows)
        with self._lock:
            first = min(n, self.capacity - self._next)
            self._data[self._next:self._next + first] = rows[:first]
            self._data[:n - first] = rows[first:]
            self._next = (self._next + n) % self.capacity
            self._size = min(self._size + n, self.capacity)

    def snapshot(self) -> np.ndarray:
        """A copy of the rows, oldest first."""
        with self._lock:
            if self._size < self.capacity:
                return self._data[:self._size].copy()
            return np.concatenate((self._data[self._next:], self._data[:self._next]))


class InputWindow:
    """Served inputs, per feature: numbers as they came, grades as their schema codes; the model's
    prediction for each (for the performance estimate) and when each arrived (unix time), so that a
    check can say when a change began."""

    def __init__(self, schema, capacity: int):
        self._schema = schema
        self._buffer = RingBuffer(capacity, len(schema.names) + 2)  # the prediction, then the arrival time
        self._categorical = [i for i, f in enumerate(schema.features) if f.kind == "categorical"]

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._buffer.capacity

    def extend(self, rows, now: float | None = None, predictions=None) -> None:
        """rows: feature tuples in schema order, grades as strings; `now`: their arrival time, or
        one per row (default: the current time); `predictions`: the model's, one per row (NaN if
        not given)."""
        names = self._schema.names
        matrix = np.empty((len(rows), len(names) + 2), dtype=np.float64)
        for i, row in enumerate(rows):
            row_codes = list(row)
            for j in self._categorical:
                row_codes[j] = self._schema.code(names[j], row[j])
            matrix[i, :-2] = row_codes
        matrix[:, -2] = np.nan if predictions is None else np.asarray(predictions, dtype=np.float64)
        matrix[:, -1] = time.time() if now is None else now
        self._buffer.extend(matrix)

    def snapshot(self) -> dict[str, np.ndarray]:
        return self.snapshot_all()[0]

    def snapshot_all(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(features as `snapshot` gives them, predictions, arrival times), from one copy of the window."""
        matrix = self._buffer.snapshot()
        return ({f.name: (matrix[:, j].astype(np.int64) if f.kind == "categorical" else matrix[:, j].copy())
                 for j, f in enumerate(self._schema.features)}, matrix[:, -2].copy(), matrix[:, -1].copy())


class LabelledWindow:
    """(actual, predicted) pairs of the newest labelled predictions; optionally the grades of their
    inputs (`grades`: names of the categorical features, kept as schema codes, NaN when unknown)
    and when each label arrived."""

    def __init__(self, capacity: int, grades: tuple[str, ...] | list[str] = ()):
        self.grades = tuple(grades)
        self._buffer = RingBuffer(capacity, 3 + len(self.grades))  # actual, predicted, grades..., time

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._buffer.capacity

    def extend(self, pairs, grades=None, now: float | None = None) -> None:
        """pairs: (actual, predicted) rows; grades: matching rows of grade codes (None: unknown);
        `now`: their arrival time, or one per pair (default: the current time)."""
        if not len(pairs):
            return
        pairs = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
        matrix = np.full((len(pairs), 3 + len(self.grades)), np.nan)
        matrix[:, :2] = pairs
        if grades is not None and self.grades:
            matrix[:, 2:-1] = np.asarray(grades, dtype=np.float64).reshape(len(pairs), len(self.grades))
        matrix[:, -1] = time.time() if now is None else now
        self._buffer.extend(matrix)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        actual, predicted, _, _ = self.snapshot_all()
        return actual, predicted

    def snapshot_all(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """(actual, predicted, grade codes by feature (NaN unknown), arrival times), from one copy."""
        matrix = self._buffer.snapshot()
        grades = {name: matrix[:, 2 + j].copy() for j, name in enumerate(self.grades)}
        return matrix[:, 0].copy(), matrix[:, 1].copy(), grades, matrix[:, -1].copy()
