"""PSI and KS against a card's fixed-edge histograms: known distributions and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrain import Histogram, baseline_cdf, feature_drift, histogram_counts, ks_statistic, measure, psi

EDGES = tuple(float(e) for e in np.linspace(-4.0, 4.0, 21))


def normal_baseline(rng: np.random.Generator, edges: tuple[float, ...] = EDGES) -> Histogram:
    counts = histogram_counts(rng.standard_normal(200_000), edges)
    return Histogram(edges, tuple(int(c) for c in counts))


def test_psi_matches_the_formula_by_hand() -> None:
    expected, actual = [10, 20, 30, 40], [20, 20, 20, 40]
    by_hand = (0.2 - 0.1) * math.log(0.2 / 0.1) + (0.2 - 0.3) * math.log(0.2 / 0.3)
    assert psi(expected, actual) == pytest.approx(by_hand, abs=1e-12)
    assert psi(expected, expected) == 0.0


def test_psi_floors_empty_bins_instead_of_going_infinite() -> None:
    value = psi([50, 50, 0], [50, 40, 10])
    e, a = np.array([0.5, 0.5, 1e-4]), np.array([0.5, 0.4, 0.1])
    assert value == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-12)
    assert math.isfinite(value)


def test_psi_refuses_mismatched_or_empty_counts() -> None:
    with pytest.raises(ValueError, match="one length"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one value"):
        psi([1, 2], [0, 0])


def test_histogram_counts_puts_values_beyond_the_edges_in_the_end_bins() -> None:
    counts = histogram_counts([-100.0, -1.0, 0.5, 2.0, 100.0, float("nan")], [-1.0, 0.0, 1.0, 2.0])
    assert counts.tolist() == [2, 1, 2]


def test_psi_of_the_same_distribution_is_near_zero_and_of_a_shifted_one_is_large() -> None:
    rng = np.random.default_rng(7)
    baseline = normal_baseline(rng)
    same = measure("score", rng.standard_normal(5000), baseline, "psi", 0.2)
    shifted = measure("score", rng.standard_normal(5000) + 1.0, baseline, "psi", 0.2)
    assert same.value is not None
    assert same.value < 0.02
    assert not same.drifted
    # For N(0,1) against N(1,1) the PSI (symmetric KL) is mu^2 = 1; binning takes a little off.
    assert shifted.value is not None
    assert 0.7 < shifted.value < 1.2
    assert shifted.drifted
    assert shifted.rows == 5000


def test_baseline_cdf_is_linear_inside_bins() -> None:
    uniform = Histogram((0.0, 0.5, 1.0), (50, 50))
    assert baseline_cdf(uniform, [-1.0, 0.0, 0.25, 0.5, 0.9, 3.0]).tolist() == pytest.approx(
        [0.0, 0.0, 0.25, 0.5, 0.9, 1.0]
    )
    skewed = Histogram((0.0, 1.0, 2.0), (75, 25))
    assert baseline_cdf(skewed, [0.5, 1.5]).tolist() == pytest.approx([0.375, 0.875])


def test_ks_matches_the_hand_computation_and_a_dense_numpy_scan() -> None:
    uniform = Histogram(tuple(float(e) for e in np.linspace(0.0, 1.0, 11)), (10,) * 10)
    sample = np.array([0.1, 0.4, 0.45, 0.9])
    # Steps of the empirical CDF: the largest gap is just below 0.45 (0.75 vs 0.45) -> 0.3.
    assert ks_statistic(sample, uniform) == pytest.approx(0.3, abs=1e-12)
    grid = np.linspace(-0.5, 1.5, 400_001)
    ecdf = np.searchsorted(np.sort(sample), grid, side="right") / sample.size
    scanned = float(np.max(np.abs(ecdf - np.clip(grid, 0.0, 1.0))))
    assert ks_statistic(sample, uniform) == pytest.approx(scanned, abs=1e-4)


def test_ks_of_the_same_distribution_is_small_and_of_a_shifted_one_matches_theory() -> None:
    rng = np.random.default_rng(11)
    fine = tuple(float(e) for e in np.linspace(-6.0, 6.0, 241))
    baseline = normal_baseline(rng, fine)
    same = ks_statistic(rng.standard_normal(20_000), baseline)
    shifted = ks_statistic(rng.standard_normal(20_000) + 1.0, baseline)
    assert same < 0.02
    # sup |Phi(x) - Phi(x - 1)| = 2 * Phi(0.5) - 1.
    theory = 2 * (0.5 * (1 + math.erf(0.5 / math.sqrt(2)))) - 1
    assert shifted == pytest.approx(theory, abs=0.02)
    assert measure("score", rng.standard_normal(2000) + 1.0, baseline, "ks", 0.2).drifted


def test_measure_skips_what_it_cannot_compare() -> None:
    assert measure("x", [1.0, 2.0], None, "psi", 0.2).skipped == "no baseline in the card"
    constant = Histogram((3.0, 3.0), (100,))
    result = measure("x", [3.0, 3.0], constant, "psi", 0.2)
    assert result.skipped == "constant baseline"
    assert not result.drifted
    assert result.value is None
    empty = measure("x", [float("nan")], Histogram((0.0, 1.0), (1,)), "ks", 0.2)
    assert empty.skipped == "no values"
    assert empty.rows == 0


def test_feature_drift_flags_only_the_shifted_feature() -> None:
    rng = np.random.default_rng(3)
    baselines = {"temperature": normal_baseline(rng), "vibration": normal_baseline(rng)}
    recent = {
        "temperature": rng.standard_normal(3000),
        "vibration": rng.standard_normal(3000) * 0.5 + 2.0,
        "not_in_card": rng.standard_normal(3000),
    }
    results = {r.subject: r for r in feature_drift(recent, baselines, "psi", 0.25)}
    assert set(results) == {"temperature", "vibration"}
    assert not results["temperature"].drifted
    assert results["vibration"].drifted
    assert results["vibration"].evidence()["threshold"] == 0.25
