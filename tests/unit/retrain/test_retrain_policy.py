"""Deciding: cooldown, debounce, one job in flight, trigger priority, and the volume arithmetic."""

from __future__ import annotations

from retrain import BatchSeen, RetrainPolicy, Signal, Suppressed, Trigger, new_rows_since
from retrain.policy import volume_signal

DRIFT = Signal(Trigger.DRIFT, True, {"value": 0.4})
CALM = Signal(Trigger.DRIFT, False, {"value": 0.01})


def test_a_condition_must_hold_for_the_debounce_time() -> None:
    policy = RetrainPolicy(cooldown_s=3600, debounce_s=60)
    first = policy.decide([DRIFT], 1000.0, in_flight=False)
    assert not first.triggered
    assert first.suppressed is Suppressed.DEBOUNCE
    assert first.reason is Trigger.DRIFT
    assert not policy.decide([DRIFT], 1059.0, in_flight=False).triggered
    third = policy.decide([DRIFT], 1060.0, in_flight=False)
    assert third.triggered
    assert third.reason is Trigger.DRIFT
    assert third.evidence["drift"]["holding_s"] == 60.0


def test_a_break_in_the_condition_restarts_the_debounce() -> None:
    policy = RetrainPolicy(cooldown_s=0, debounce_s=60)
    policy.decide([DRIFT], 0.0, in_flight=False)
    policy.decide([CALM], 30.0, in_flight=False)
    assert not policy.decide([DRIFT], 70.0, in_flight=False).triggered
    assert policy.decide([DRIFT], 130.0, in_flight=False).triggered


def test_no_second_request_inside_the_cooldown_and_a_new_one_after() -> None:
    policy = RetrainPolicy(cooldown_s=600, debounce_s=0)
    assert policy.decide([DRIFT], 0.0, in_flight=False).triggered
    held = policy.decide([DRIFT], 599.0, in_flight=False)
    assert not held.triggered
    assert held.suppressed is Suppressed.COOLDOWN
    assert "1 s left" in held.detail
    assert policy.cooldown_left(599.0) == 1.0
    again = policy.decide([DRIFT], 600.0, in_flight=False)
    assert again.triggered
    assert policy.last_request_at == 600.0


def test_a_job_in_flight_holds_everything_back_even_a_person() -> None:
    policy = RetrainPolicy(cooldown_s=0, debounce_s=0)
    manual = Signal(Trigger.MANUAL, True, {"reason": "new sensor"})
    decision = policy.decide([manual, DRIFT], 10.0, in_flight=True)
    assert not decision.triggered
    assert decision.suppressed is Suppressed.IN_FLIGHT
    assert policy.last_request_at is None


def test_a_manual_request_skips_cooldown_and_debounce_and_names_itself() -> None:
    policy = RetrainPolicy(cooldown_s=3600, debounce_s=600, last_request_at=100.0)
    manual = Signal(Trigger.MANUAL, True, {"reason": "new sensor"})
    decision = policy.decide([DRIFT, manual], 200.0, in_flight=False)
    assert decision.triggered
    assert decision.reason is Trigger.MANUAL
    assert set(decision.evidence) == {"drift", "manual"}


def test_schedule_is_an_event_subject_to_cooldown() -> None:
    policy = RetrainPolicy(cooldown_s=100, debounce_s=1000, last_request_at=0.0)
    tick = Signal(Trigger.SCHEDULE, True, {"cron": "0 3 * * *"})
    assert policy.decide([tick], 50.0, in_flight=False).suppressed is Suppressed.COOLDOWN
    assert policy.decide([tick], 150.0, in_flight=False).triggered


def test_nothing_fired_is_a_decision_too() -> None:
    decision = RetrainPolicy(cooldown_s=0, debounce_s=0).decide([CALM], 5.0, in_flight=False)
    assert not decision.triggered
    assert decision.reason is None
    assert decision.suppressed is None
    assert decision.to_json("2026-01-01T00:00:00Z")["evidence"] == {"drift": {"value": 0.01}}


def test_volume_counts_whole_batches_after_the_training_data() -> None:
    batches = [
        BatchSeen("old", 100, 10.0, 20.0),
        BatchSeen("straddling", 50, 90.0, 110.0),
        BatchSeen("new-1", 30, 101.0, 120.0),
        BatchSeen("new-2", 70, 121.0, 130.0),
        BatchSeen("no-range", 5, None, None),
    ]
    assert new_rows_since(batches, 100.0) == (100, 2)
    assert new_rows_since(batches, None) == (255, 5)
    assert volume_signal(100, 2, 100).fired
    assert not volume_signal(99, 2, 100).fired
    assert volume_signal(99, 2, 100).evidence == {"new_rows": 99, "batches": 2, "threshold_rows": 100}
