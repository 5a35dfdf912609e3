"""windows.py: the ring buffer under the drift windows, and the two windows built on it.

Every read-back is compared with a plain model of "the newest `capacity` rows, oldest first"
(a deque with maxlen), so a wrong wrap-around, a wrong order or a lost row shows as a difference.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.model import Schema
from monitoring.windows import InputWindow, LabelledWindow, RingBuffer

SCHEMA = Schema({"features": [
    {"name": "carat", "kind": "numeric"},
    {"name": "cut", "kind": "categorical", "categories": ["Fair", "Good", "Ideal"]},
    {"name": "depth", "kind": "numeric"},
    {"name": "color", "kind": "categorical", "categories": ["J", "E", "D"]},
]})


def _rows(start: int, count: int, columns: int = 2) -> np.ndarray:
    """Rows start..start+count-1, row i being (i, 1000 + i, 2000 + i, ...): each row tells its number."""
    i = np.arange(start, start + count, dtype=np.float64)[:, None]
    return i + 1000.0 * np.arange(columns)[None, :]


# --------------------------------------------------------------------------------------------------
# RingBuffer


@pytest.mark.parametrize("capacity", [0, -1, -10])
def test_ring_buffer_refuses_a_capacity_below_one(capacity):
    with pytest.raises(ValueError, match=r"^a window needs a capacity of at least 1$"):
        RingBuffer(capacity, 2)


def test_empty_ring_buffer():
    ring = RingBuffer(4, 3)
    assert len(ring) == 0 and ring.capacity == 4
    snap = ring.snapshot()
    assert snap.shape == (0, 3) and snap.dtype == np.float64


def test_partly_filled_ring_buffer_reads_back_in_order():
    ring = RingBuffer(5, 2)
    ring.extend(_rows(0, 2))
    ring.extend(_rows(2, 1))
    assert len(ring) == 3
    np.testing.assert_array_equal(ring.snapshot(), _rows(0, 3))


def test_exactly_full_ring_buffer():
    ring = RingBuffer(4, 2)
    ring.extend(_rows(0, 4))
    assert len(ring) == 4
    np.testing.assert_array_equal(ring.snapshot(), _rows(0, 4))


def test_wrap_around_write_keeps_the_newest_rows_oldest_first():
    ring = RingBuffer(5, 2)
    ring.extend(_rows(0, 3))
    ring.extend(_rows(3, 4))  # 2 rows fit at the end, 2 wrap to the front
    assert len(ring) == 5
    np.testing.assert_array_equal(ring.snapshot(), _rows(2, 5))
    ring.extend(_rows(7, 1))
    np.testing.assert_array_equal(ring.snapshot(), _rows(3, 5))
    ring.extend(_rows(8, 2))  # lands exactly at the end of the storage
    np.testing.assert_array_equal(ring.snapshot(), _rows(5, 5))
    ring.extend(_rows(10, 3))
    np.testing.assert_array_equal(ring.snapshot(), _rows(8, 5))


def test_full_ring_read_back_oldest_first_after_single_row_writes():
    ring = RingBuffer(3, 1)
    for i in range(10):
        ring.extend(_rows(i, 1, columns=1))
        expected = _rows(max(0, i - 2), min(i + 1, 3), columns=1)
        np.testing.assert_array_equal(ring.snapshot(), expected)
        assert len(ring) == min(i + 1, 3)


@pytest.mark.parametrize("already", [0, 1, 3, 4])
def test_batch_larger_than_the_window_keeps_its_last_rows(already):
    ring = RingBuffer(4, 2)
    ring.extend(_rows(100, already))
    ring.extend(_rows(0, 10))
    assert len(ring) == 4
    np.testing.assert_array_equal(ring.snapshot(), _rows(6, 4))
    ring.extend(_rows(10, 1))  # and it goes on from there
    np.testing.assert_array_equal(ring.snapshot(), _rows(7, 4))


def test_capacity_one_keeps_only_the_newest_row():
    ring = RingBuffer(1, 2)
    ring.extend(_rows(0, 1))
    np.testing.assert_array_equal(ring.snapshot(), _rows(0, 1))
    ring.extend(_rows(1, 1))
    np.testing.assert_array_equal(ring.snapshot(), _rows(1, 1))
    ring.extend(_rows(2, 3))
    np.testing.assert_array_equal(ring.snapshot(), _rows(4, 1))
    assert len(ring) == 1


def test_empty_batch_changes_nothing():
    ring = RingBuffer(3, 2)
    ring.extend(np.empty((0, 2)))
    assert len(ring) == 0
    ring.extend(_rows(0, 2))
    ring.extend(np.empty((0, 2)))
    assert len(ring) == 2
    np.testing.assert_array_equal(ring.snapshot(), _rows(0, 2))
    ring.extend(_rows(2, 2))
    ring.extend(np.empty((0, 2)))
    np.testing.assert_array_equal(ring.snapshot(), _rows(1, 3))


def test_rows_of_any_number_type_are_stored_as_float64():
    ring = RingBuffer(3, 2)
    ring.extend([[1, 2], [3, 4]])  # a list of Python ints
    ring.extend(np.array([[5, 6]], dtype=np.int32))
    snap = ring.snapshot()
    assert snap.dtype == np.float64
    np.testing.assert_array_equal(snap, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    ring.extend(np.array([[7.5, 8.25]], dtype=np.float32))
    np.testing.assert_array_equal(ring.snapshot(), [[3.0, 4.0], [5.0, 6.0], [7.5, 8.25]])


@pytest.mark.parametrize("fill", [2, 3, 5])
def test_snapshot_is_a_copy(fill):
    """A drift check works on its snapshot after the lock is released: later writes must not show."""
    ring = RingBuffer(3, 2)
    ring.extend(_rows(0, fill))
    snap = ring.snapshot()
    before = snap.copy()
    snap[:] = -1.0
    np.testing.assert_array_equal(ring.snapshot(), before)
    ring.extend(_rows(50, 3))
    np.testing.assert_array_equal(snap, np.full_like(before, -1.0))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 7), st.lists(st.integers(0, 12), max_size=12))
def test_ring_buffer_equals_a_bounded_deque(capacity, batches):
    ring = RingBuffer(capacity, 2)
    model: deque = deque(maxlen=capacity)
    start = 0
    for size in batches:
        rows = _rows(start, size)
        start += size
        ring.extend(rows)
        model.extend(map(tuple, rows))
        assert len(ring) == len(model)
        np.testing.assert_array_equal(ring.snapshot(), np.array(list(model)).reshape(-1, 2))


# --------------------------------------------------------------------------------------------------
# InputWindow


def test_input_window_keeps_numbers_and_grade_codes_per_feature():
    window = InputWindow(SCHEMA, capacity=3)
    assert window.capacity == 3 and len(window) == 0
    window.extend([(0.5, "Good", 61.0, "D"), (1.25, "Fair", 59.5, "J")])
    assert len(window) == 2
    snap = window.snapshot()
    assert list(snap) == ["carat", "cut", "depth", "color"]
    np.testing.assert_array_equal(snap["carat"], [0.5, 1.25])
    np.testing.assert_array_equal(snap["depth"], [61.0, 59.5])
    np.testing.assert_array_equal(snap["cut"], [1, 0])
    np.testing.assert_array_equal(snap["color"], [2, 0])
    assert snap["carat"].dtype == snap["depth"].dtype == np.float64
    assert snap["cut"].dtype == snap["color"].dtype == np.int64


def test_input_window_slides_over_the_newest_rows():
    window = InputWindow(SCHEMA, capacity=2)
    window.extend([(0.3, "Ideal", 60.0, "E")])
    window.extend([(0.4, "Good", 61.0, "J"), (0.5, "Fair", 62.0, "D")])
    window.extend([(0.6, "Ideal", 63.0, "E")])
    assert len(window) == 2
    snap = window.snapshot()
    np.testing.assert_array_equal(snap["carat"], [0.5, 0.6])
    np.testing.assert_array_equal(snap["cut"], [0, 2])
    np.testing.assert_array_equal(snap["depth"], [62.0, 63.0])
    np.testing.assert_array_equal(snap["color"], [2, 1])


def test_input_window_empty_batch_and_empty_snapshot():
    window = InputWindow(SCHEMA, capacity=4)
    window.extend([])
    snap = window.snapshot()
    assert len(window) == 0 and all(v.size == 0 for v in snap.values())
    assert snap["cut"].dtype == np.int64 and snap["carat"].dtype == np.float64


def test_input_window_refuses_an_unknown_grade():
    """Rows reach the window validated; a grade outside the schema is a bug, not a silent code."""
    window = InputWindow(SCHEMA, capacity=4)
    with pytest.raises(KeyError):
        window.extend([(0.5, "Superb", 61.0, "D")])
    assert len(window) == 0


# --------------------------------------------------------------------------------------------------
# LabelledWindow


def test_labelled_window_keeps_the_newest_pairs():
    window = LabelledWindow(capacity=3)
    assert window.capacity == 3 and len(window) == 0
    window.extend([(100.0, 90.0), (200.0, 210.0)])
    window.extend([])
    assert len(window) == 2
    actual, predicted = window.snapshot()
    np.testing.assert_array_equal(actual, [100.0, 200.0])
    np.testing.assert_array_equal(predicted, [90.0, 210.0])
    window.extend(np.array([[300, 280], [400, 420]]))
    actual, predicted = window.snapshot()
    assert len(window) == 3
    np.testing.assert_array_equal(actual, [200.0, 300.0, 400.0])
    np.testing.assert_array_equal(predicted, [210.0, 280.0, 420.0])
    assert actual.dtype == predicted.dtype == np.float64


def test_labelled_window_accepts_a_flat_pair_and_reads_back_empty():
    window = LabelledWindow(capacity=2)
    actual, predicted = window.snapshot()
    assert actual.shape == predicted.shape == (0,)
    window.extend([5.0, 6.0])  # one pair given flat
    actual, predicted = window.snapshot()
    np.testing.assert_array_equal(actual, [5.0])
    np.testing.assert_array_equal(predicted, [6.0])


def test_labelled_window_snapshot_arrays_are_independent():
    window = LabelledWindow(capacity=4)
    window.extend([(1.0, 2.0), (3.0, 4.0)])
    actual, predicted = window.snapshot()
    actual[:] = 0.0
    predicted[:] = 0.0
    again_actual, again_predicted = window.snapshot()
    np.testing.assert_array_equal(again_actual, [1.0, 3.0])
    np.testing.assert_array_equal(again_predicted, [2.0, 4.0])


def test_windows_refuse_a_zero_capacity():
    with pytest.raises(ValueError, match=r"^a window needs a capacity of at least 1$"):
        LabelledWindow(capacity=0)
    with pytest.raises(ValueError, match=r"^a window needs a capacity of at least 1$"):
        InputWindow(SCHEMA, capacity=0)


# --------------------------------------------------------------------------------------------------
# What a check needs besides the values: predictions, arrival times, the labelled inputs' grades


def test_input_window_keeps_each_row_s_prediction_and_arrival_time():
    window = InputWindow(SCHEMA, capacity=3)
    window.extend([(0.5, "Good", 61.0, "D"), (1.25, "Fair", 59.5, "J")], now=1000.0, predictions=[1500, 7300.5])
    window.extend([(0.7, "Ideal", 62.0, "E")], now=1001.5, predictions=np.array([2600.0]))
    window.extend([(0.9, "Good", 60.0, "J")], now=1003.0, predictions=[4100.0])
    features, predictions, times = window.snapshot_all()
    np.testing.assert_array_equal(features["carat"], [1.25, 0.7, 0.9])   # the oldest row slid out
    np.testing.assert_array_equal(features["color"], [0, 1, 0])
    np.testing.assert_array_equal(predictions, [7300.5, 2600.0, 4100.0])
    np.testing.assert_array_equal(times, [1000.0, 1001.5, 1003.0])
    assert predictions.dtype == times.dtype == np.float64
    assert list(window.snapshot()) == list(features)
    np.testing.assert_array_equal(window.snapshot()["depth"], features["depth"])


def test_input_window_without_predictions_or_time_reads_nan_and_the_current_time(monkeypatch):
    import monitoring.windows as windows

    monkeypatch.setattr(windows.time, "time", lambda: 1234.5)
    window = InputWindow(SCHEMA, capacity=4)
    window.extend([(0.5, "Good", 61.0, "D"), (0.6, "Fair", 62.0, "J")])
    window.extend([(0.7, "Ideal", 63.0, "E")], predictions=[900.0])
    features, predictions, times = window.snapshot_all()
    np.testing.assert_array_equal(predictions, [np.nan, np.nan, 900.0])
    np.testing.assert_array_equal(times, [1234.5, 1234.5, 1234.5])
    np.testing.assert_array_equal(features["depth"], [61.0, 62.0, 63.0])


def test_snapshot_all_copies_predictions_and_times():
    window = InputWindow(SCHEMA, capacity=2)
    window.extend([(0.5, "Good", 61.0, "D")], now=5.0, predictions=[10.0])
    _, predictions, times = window.snapshot_all()
    predictions[:] = 0.0
    times[:] = 0.0
    _, predictions, times = window.snapshot_all()
    assert predictions.tolist() == [10.0] and times.tolist() == [5.0]


def test_labelled_window_keeps_grades_and_label_times():
    window = LabelledWindow(capacity=3, grades=("cut", "color"))
    assert window.grades == ("cut", "color")
    window.extend([(100.0, 90.0), (200.0, 210.0)], grades=[(1, 2), (0, np.nan)], now=50.0)
    window.extend(np.array([[300, 280], [400, 420]]), grades=np.array([[2.0, 1.0], [1.0, 0.0]]), now=60.0)
    actual, predicted, grades, times = window.snapshot_all()
    np.testing.assert_array_equal(actual, [200.0, 300.0, 400.0])
    np.testing.assert_array_equal(predicted, [210.0, 280.0, 420.0])
    assert list(grades) == ["cut", "color"]
    np.testing.assert_array_equal(grades["cut"], [0.0, 2.0, 1.0])
    np.testing.assert_array_equal(grades["color"], [np.nan, 1.0, 0.0])
    np.testing.assert_array_equal(times, [50.0, 60.0, 60.0])
    assert all(g.dtype == np.float64 for g in grades.values()) and times.dtype == np.float64
    grades["cut"][:] = -1.0   # a copy: the window keeps its own
    assert window.snapshot_all()[2]["cut"].tolist() == [0.0, 2.0, 1.0]


def test_labelled_window_with_grade_names_but_no_grades_reads_them_unknown(monkeypatch):
    import monitoring.windows as windows

    monkeypatch.setattr(windows.time, "time", lambda: 77.0)
    window = LabelledWindow(capacity=4, grades=("cut", "color", "clarity"))
    window.extend([(100.0, 90.0)])
    window.extend([5.0, 6.0], grades=[(1, 2, 3)], now=80.0)   # one pair given flat, with its grades
    actual, predicted, grades, times = window.snapshot_all()
    np.testing.assert_array_equal(actual, [100.0, 5.0])
    np.testing.assert_array_equal(predicted, [90.0, 6.0])
    np.testing.assert_array_equal(grades["cut"], [np.nan, 1.0])
    np.testing.assert_array_equal(grades["color"], [np.nan, 2.0])
    np.testing.assert_array_equal(grades["clarity"], [np.nan, 3.0])
    np.testing.assert_array_equal(times, [77.0, 80.0])


def test_labelled_window_without_grade_names_ignores_grades():
    window = LabelledWindow(capacity=2)
    assert window.grades == ()
    window.extend([(1.0, 2.0)], grades=[()], now=3.0)
    actual, predicted, grades, times = window.snapshot_all()
    assert (actual.tolist(), predicted.tolist(), grades, times.tolist()) == ([1.0], [2.0], {}, [3.0])
