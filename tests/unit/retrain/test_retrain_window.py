"""The recent window: newest rows by event time, by count or by minutes."""

from __future__ import annotations

import numpy as np
import pytest

from retrain import RecentWindow


def test_a_row_window_keeps_the_newest_rows_by_event_time() -> None:
    window = RecentWindow(["score"], rows=5)
    window.add([10, 11, 12], [1.0, 2.0, 3.0])
    window.add([1, 2, 3], [9.0, 9.0, 9.0])  # late, older data
    window.add([13, 14], [4.0, 5.0])
    assert len(window) == 5
    assert window.column("score").tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert window.span() == (10.0, 14.0)


def test_a_minutes_window_is_measured_from_the_newest_timestamp() -> None:
    window = RecentWindow(["a", "b"], minutes=1.0)
    window.add(np.arange(0, 200, 10, dtype=float), np.ones((20, 2)))
    assert window.span() == (130.0, 190.0)
    assert len(window) == 7


def test_both_limits_take_the_tighter_and_max_rows_bounds_memory() -> None:
    window = RecentWindow(["a"], rows=3, minutes=10.0)
    window.add(np.arange(10, dtype=float), np.arange(10, dtype=float))
    assert window.column("a").tolist() == [7.0, 8.0, 9.0]
    bounded = RecentWindow(["a"], minutes=1e9, max_rows=4)
    bounded.add(np.arange(10, dtype=float), np.arange(10, dtype=float))
    assert len(bounded) == 4


def test_shapes_are_checked_and_a_window_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="rows or minutes"):
        RecentWindow(["a"])
    window = RecentWindow(["a", "b"], rows=10)
    with pytest.raises(ValueError, match="expected 2 rows of 2"):
        window.add([1, 2], [1.0, 2.0])
    window.add([1], [[1.0, 2.0]])
    window.clear()
    assert len(window) == 0
    assert window.span() is None
