"""When a retrain request goes out: trigger signals in, one decision out, with its evidence.

Signals are conditions (drift, volume: true for as long as the data says so) or events (schedule, manual:
true once). A condition must hold for `debounce_s` (seen true at evaluations at least that far apart, with
no false in between) before it counts, so one noisy window does not start a job. Whatever fired, a request
is held back while a job is in flight, and, except for a person's manual request, within `cooldown_s` of
the previous request: a drift that persists makes one request per cooldown, not one per evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Trigger(StrEnum):
    MANUAL = "manual"
    DRIFT = "drift"
    VOLUME = "volume"
    SCHEDULE = "schedule"


CONDITIONS = frozenset({Trigger.DRIFT, Trigger.VOLUME})
# When several fire at once the request names the first of these.
PRIORITY = (Trigger.MANUAL, Trigger.DRIFT, Trigger.VOLUME, Trigger.SCHEDULE)


class Suppressed(StrEnum):
    IN_FLIGHT = "in_flight"
    COOLDOWN = "cooldown"
    DEBOUNCE = "debounce"


@dataclass(frozen=True)
class Signal:
    trigger: Trigger
    fired: bool
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    at: float
    triggered: bool
    reason: Trigger | None
    suppressed: Suppressed | None
    evidence: dict[str, dict[str, Any]]
    detail: str = ""

    def to_json(self, at_iso: str) -> dict[str, Any]:
        return {
            "at": at_iso,
            "triggered": self.triggered,
            "reason": self.reason.value if self.reason else None,
            "suppressed": self.suppressed.value if self.suppressed else None,
            "detail": self.detail,
            "evidence": self.evidence,
        }


class RetrainPolicy:
    """Cooldown, debounce and the one-job-in-flight rule. Time is seconds (any epoch), passed in."""

    def __init__(self, *, cooldown_s: float, debounce_s: float, last_request_at: float | None = None) -> None:
        self.cooldown_s = cooldown_s
        self.debounce_s = debounce_s
        self.last_request_at = last_request_at
        self._pending_since: dict[Trigger, float] = {}

    def configure(self, *, cooldown_s: float, debounce_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.debounce_s = debounce_s

    def cooldown_left(self, now: float) -> float:
        if self.last_request_at is None:
            return 0.0
        return max(0.0, self.last_request_at + self.cooldown_s - now)

    def decide(self, signals: Sequence[Signal], now: float, *, in_flight: bool) -> Decision:
        evidence = {signal.trigger.value: dict(signal.evidence) for signal in signals}
        ready: list[Trigger] = []
        debouncing: list[Trigger] = []
        for signal in signals:
            if signal.trigger not in CONDITIONS:
                if signal.fired:
                    ready.append(signal.trigger)
                continue
            if not signal.fired:
                self._pending_since.pop(signal.trigger, None)
                continue
            since = self._pending_since.setdefault(signal.trigger, now)
            evidence[signal.trigger.value]["holding_s"] = round(now - since, 3)
            if now - since >= self.debounce_s:
                ready.append(signal.trigger)
            else:
                debouncing.append(signal.trigger)
        reason = _first(ready)
        if reason is None:
            waiting = _first(debouncing)
            if waiting is not None:
                detail = f"{waiting.value} must hold {self.debounce_s:g} s before it counts"
                return Decision(now, False, waiting, Suppressed.DEBOUNCE, evidence, detail)
            return Decision(now, False, None, None, evidence, "nothing fired")
        if in_flight:
            return Decision(now, False, reason, Suppressed.IN_FLIGHT, evidence, "a training job is in flight")
        left = self.cooldown_left(now)
        if reason is not Trigger.MANUAL and left > 0:
            detail = f"cooldown: {left:.0f} s left of {self.cooldown_s:g} s"
            return Decision(now, False, reason, Suppressed.COOLDOWN, evidence, detail)
        self.last_request_at = now
        # The request answers every condition that was holding; they start afresh.
        self._pending_since.clear()
        return Decision(now, True, reason, None, evidence, f"retrain: {reason.value}")


def _first(triggers: Iterable[Trigger]) -> Trigger | None:
    present = set(triggers)
    return next((trigger for trigger in PRIORITY if trigger in present), None)


@dataclass(frozen=True)
class BatchSeen:
    """A `batch-ready` as the volume trigger needs it: rows and event-time range (epoch seconds)."""

    batch_id: str
    rows: int
    min_time: float | None
    max_time: float | None


def new_rows_since(batches: Iterable[BatchSeen], training_max: float | None) -> tuple[int, int]:
    """(rows, batches) that arrived after the model's training data: whole batches that start after the
    card's `training_data.time_range.max`. A batch straddling it is not counted (it was, at least in part,
    data the model could have seen). Without a training max every batch counts."""
    rows = count = 0
    for batch in batches:
        if training_max is None or (batch.min_time is not None and batch.min_time > training_max):
            rows += batch.rows
            count += 1
    return rows, count


def volume_signal(new_rows: int, new_batches: int, threshold_rows: int) -> Signal:
    return Signal(
        Trigger.VOLUME,
        new_rows >= threshold_rows,
        {"new_rows": new_rows, "batches": new_batches, "threshold_rows": threshold_rows},
    )
