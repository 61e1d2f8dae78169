"""Drift statistics of recent values against a model card's baseline histogram (fixed edges).

PSI compares bin proportions: sum((a - e) * ln(a / e)) over the card's bins, values outside the edges
counted in the end bins so that a shift past the training range still shows. KS is the one-sample
Kolmogorov-Smirnov distance between the recent sample's empirical CDF and the baseline CDF, which the
histogram gives piecewise-linearly (uniform within a bin): the card keeps no raw sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .card import Histogram

Statistic = Literal["psi", "ks"]
FloatArray = npt.NDArray[np.float64]

# Empty bins would make PSI infinite; a floor keeps one empty bin a large but finite contribution.
PSI_EPSILON = 1e-4


def histogram_counts(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Counts of `values` in the bins of `edges`; values beyond the edges go to the end bins; NaN dropped."""
    bounds = np.asarray(edges, dtype=np.float64)
    data = np.asarray(values, dtype=np.float64).ravel()
    data = np.clip(data[~np.isnan(data)], bounds[0], bounds[-1])
    counts, _ = np.histogram(data, bins=bounds)
    return counts.astype(np.int64)


def psi(expected_counts: npt.ArrayLike, actual_counts: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two count vectors over the same bins."""
    expected = np.asarray(expected_counts, dtype=np.float64)
    actual = np.asarray(actual_counts, dtype=np.float64)
    if expected.shape != actual.shape or expected.ndim != 1:
        raise ValueError(
            f"PSI needs two count vectors of one length, not {expected.shape} and {actual.shape}"
        )
    if expected.sum() <= 0 or actual.sum() <= 0:
        raise ValueError("PSI needs at least one value on each side")
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def baseline_cdf(histogram: Histogram, points: npt.ArrayLike) -> FloatArray:
    """The baseline's CDF at `points`, linear within each bin, 0 below the first edge and 1 above the last."""
    edges = np.asarray(histogram.edges, dtype=np.float64)
    counts = np.asarray(histogram.counts, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(counts) / counts.sum()))
    return np.asarray(np.interp(np.asarray(points, dtype=np.float64), edges, cumulative), dtype=np.float64)


def ks_statistic(values: npt.ArrayLike, histogram: Histogram) -> float:
    """sup |F_recent(x) - F_baseline(x)|; for a continuous baseline CDF the supremum lies at a sample point,
    just before or at its step."""
    data = np.sort(np.asarray(values, dtype=np.float64).ravel())
    data = data[~np.isnan(data)]
    n = data.size
    if n == 0:
        raise ValueError("KS needs at least one value")
    cdf = baseline_cdf(histogram, data)
    above = np.arange(1, n + 1, dtype=np.float64) / n - cdf
    below = cdf - np.arange(0, n, dtype=np.float64) / n
    return float(max(above.max(), below.max()))


def statistic_value(values: npt.ArrayLike, histogram: Histogram, statistic: Statistic) -> float:
    if statistic == "psi":
        return psi(histogram.counts, histogram_counts(values, histogram.edges))
    return ks_statistic(values, histogram)


@dataclass(frozen=True)
class DriftResult:
    """One comparison: `subject` is "score" or a feature column."""

    subject: str
    statistic: Statistic
    value: float | None
    threshold: float
    rows: int
    drifted: bool
    skipped: str | None = None

    def evidence(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "statistic": self.statistic,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "rows": self.rows,
            "drifted": self.drifted,
        }
        if self.skipped:
            found["skipped"] = self.skipped
        return found


def measure(
    subject: str, values: npt.ArrayLike, histogram: Histogram | None, statistic: Statistic, threshold: float
) -> DriftResult:
    """Compare `values` with `histogram`; `drifted` when the statistic reaches `threshold`."""
    data = np.asarray(values, dtype=np.float64).ravel()
    rows = int(np.count_nonzero(~np.isnan(data)))
    if histogram is None:
        return DriftResult(subject, statistic, None, threshold, rows, False, "no baseline in the card")
    if histogram.degenerate:
        return DriftResult(subject, statistic, None, threshold, rows, False, "constant baseline")
    if rows == 0:
        return DriftResult(subject, statistic, None, threshold, 0, False, "no values")
    value = statistic_value(data, histogram, statistic)
    return DriftResult(subject, statistic, value, threshold, rows, value >= threshold)


def feature_drift(
    columns: Mapping[str, npt.ArrayLike],
    baselines: Mapping[str, Histogram],
    statistic: Statistic,
    threshold: float,
) -> list[DriftResult]:
    """One result per column present in both the recent data and the card's feature baseline."""
    return [
        measure(name, values, baselines.get(name), statistic, threshold)
        for name, values in columns.items()
        if name in baselines
    ]
