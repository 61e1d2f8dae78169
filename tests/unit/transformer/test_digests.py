from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from transformer.cleaning import RowDigestSet, row_digests


def table(rows: Sequence[tuple[object, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table(
        {
            "ts": pa.array(columns[0], pa.timestamp("us", tz="UTC")),
            "device": pa.array(columns[1], pa.string()),
            "value": pa.array(columns[2], pa.float64()),
            "flag": pa.array(columns[3], pa.bool_()),
        }
    )


def test_digest_is_a_function_of_values_only() -> None:
    rows = [(1, "a", 1.0, True), (1, "a", 1.0, True), (1, "b", 1.0, True), (1, None, 1.0, True)]
    hi, lo = row_digests(table(rows))
    assert (hi[0], lo[0]) == (hi[1], lo[1])
    assert len({(int(a), int(b)) for a, b in zip(hi, lo, strict=True)}) == 3
    # Same values in another chunk (other dictionary, other position): same digest.
    hi2, lo2 = row_digests(table([(9, "zzz", 0.0, False), (1, "a", 1.0, True)]))
    assert (hi2[1], lo2[1]) == (hi[0], lo[0])


def test_null_differs_from_zero_and_from_empty_text() -> None:
    rows = [(0, "", 0.0, False), (0, None, 0.0, False), (0, "", None, False), (0, "", 0.0, None)]
    hi, lo = row_digests(table(rows))
    assert len({(int(a), int(b)) for a, b in zip(hi, lo, strict=True)}) == 4


def test_values_swapped_between_columns_differ() -> None:
    first = pa.table({"a": ["x"], "b": ["y"]})
    second = pa.table({"a": ["y"], "b": ["x"]})
    assert row_digests(first) != row_digests(second)


def test_digest_set_across_batches_keeps_first_occurrences() -> None:
    rng = np.random.default_rng(3)
    seen = RowDigestSet(capacity=1_000_000)
    universe_hi = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    universe_lo = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    reference: set[int] = set()
    for _ in range(40):
        pick = rng.integers(0, 5000, 700)
        fresh = seen.admit(universe_hi[pick], universe_lo[pick])
        expected = []
        for index in pick.tolist():
            expected.append(index not in reference)
            reference.add(index)
        assert fresh.tolist() == expected
    assert len(seen) == len(reference)


def test_equal_high_halves_are_told_apart_by_low_halves() -> None:
    seen = RowDigestSet(capacity=100)
    hi = np.array([7, 7, 7], dtype=np.uint64)
    assert seen.admit(hi, np.array([1, 2, 3], dtype=np.uint64)).tolist() == [True, True, True]
    assert seen.admit(hi, np.array([3, 4, 1], dtype=np.uint64)).tolist() == [False, True, False]


def test_saturation_is_reported_not_hidden() -> None:
    seen = RowDigestSet(capacity=10)
    values = np.arange(25, dtype=np.uint64)
    assert seen.admit(values, values).all()
    assert seen.saturated
    assert len(seen) == 10
    # Remembered ones are still caught.
    assert not seen.admit(values[:10], values[:10]).any()
