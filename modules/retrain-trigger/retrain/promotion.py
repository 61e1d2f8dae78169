"""Whether a freshly trained candidate replaces the serving model, judged on recent data assumed normal.

Both metrics are lower-is-better: `anomaly_rate` (rows at or above each model's own threshold) and
`mean_score_ratio` (mean score over the model's own training baseline mean). The candidate is promoted
unless it is worse than the serving model by more than `tolerance`, in the metric's own units
(`candidate <= serving + tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .scoring import Evaluation

Metric = Literal["anomaly_rate", "mean_score_ratio"]


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    metric: Metric
    candidate_value: float | None
    serving_value: float | None
    tolerance: float

    def metrics(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "candidate": self.candidate_value,
            "serving": self.serving_value,
            "tolerance": self.tolerance,
        }


def metric_value(evaluation: Evaluation, metric: Metric) -> float | None:
    return evaluation.anomaly_rate if metric == "anomaly_rate" else evaluation.mean_score_ratio


def decide(candidate: Evaluation, serving: Evaluation | None, metric: Metric, tolerance: float) -> Verdict:
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    mine = metric_value(candidate, metric)

    def verdict(promoted: bool, reason: str, theirs: float | None = None) -> Verdict:
        return Verdict(promoted, reason, metric, mine, theirs, tolerance)

    if candidate.rows == 0:
        return verdict(False, "no recent rows to evaluate the candidate on")
    if mine is None:
        return verdict(False, f"the candidate has no {metric} (its card lacks score_baseline.mean)")
    if serving is None:
        return verdict(True, "no serving model to compare with")
    theirs = metric_value(serving, metric)
    if theirs is None:
        return verdict(True, f"the serving model has no {metric} to compare with", None)
    if mine <= theirs + tolerance:
        how = "better than" if mine < theirs else "as good as" if mine == theirs else "within tolerance of"
        return verdict(True, f"{metric} {mine:.6g} is {how} the serving model's {theirs:.6g}", theirs)
    return verdict(
        False,
        f"{metric} {mine:.6g} is worse than the serving model's {theirs:.6g} by more than {tolerance:g}",
        theirs,
    )
