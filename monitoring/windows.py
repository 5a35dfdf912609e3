"""Sliding windows of recent traffic, kept as preallocated numpy ring buffers.

A drift check copies a window under its lock (a memcpy) and does its statistics after releasing
it, so predictions never wait for a check.
"""
from __future__ import annotations

import threading

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
    """Served inputs, per feature: numbers as they came, grades as their schema codes."""

    def __init__(self, schema, capacity: int):
        self._schema = schema
        self._buffer = RingBuffer(capacity, len(schema.names))
        self._categorical = [i for i, f in enumerate(schema.features) if f.kind == "categorical"]

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._buffer.capacity

    def extend(self, rows) -> None:
        """rows: feature tuples in schema order, grades as strings."""
        matrix = np.empty((len(rows), len(self._schema.names)), dtype=np.float64)
        names = self._schema.names
        for i, row in enumerate(rows):
            row_codes = list(row)
            for j in self._categorical:
                row_codes[j] = self._schema.code(names[j], row[j])
            matrix[i] = row_codes
        self._buffer.extend(matrix)

    def snapshot(self) -> dict[str, np.ndarray]:
        matrix = self._buffer.snapshot()
        return {f.name: (matrix[:, j].astype(np.int64) if f.kind == "categorical" else matrix[:, j])
                for j, f in enumerate(self._schema.features)}


class LabelledWindow:
    """(actual, predicted) pairs of the newest labelled predictions."""

    def __init__(self, capacity: int):
        self._buffer = RingBuffer(capacity, 2)

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._buffer.capacity

    def extend(self, pairs) -> None:
        if len(pairs):
            self._buffer.extend(np.asarray(pairs, dtype=np.float64).reshape(-1, 2))

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        matrix = self._buffer.snapshot()
        return matrix[:, 0].copy(), matrix[:, 1].copy()
