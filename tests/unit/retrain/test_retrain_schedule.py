"""Cron schedules: parsing, next fire times and `due` against a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from retrain import CronSchedule, RetrainSettings, ScheduleError, validate_cron

T0 = datetime(2026, 3, 2, 2, 30, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize("expression", ["0 3 * * *", "*/15 * * * *", "0 3 * * 0", "@daily", " 0  3 * * 1-5 "])
def test_valid_expressions_are_accepted(expression: str) -> None:
    assert validate_cron(expression) == " ".join(expression.split())


@pytest.mark.parametrize("expression", ["", "61 * * * *", "0 25 * * *", "every day", "* * *"])
def test_invalid_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ScheduleError):
        validate_cron(expression)


def test_settings_refuse_a_bad_cron_with_its_text() -> None:
    with pytest.raises(ValidationError, match="not a valid cron"):
        RetrainSettings.model_validate({"schedule": {"cron": "0 25 * * *"}})
    assert RetrainSettings.model_validate({"schedule": {"cron": "0 3 * * *"}}).schedule.cron == "0 3 * * *"


def test_next_fire_times() -> None:
    daily = CronSchedule("0 3 * * *")
    assert daily.next_after(T0) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert daily.next_after(datetime(2026, 3, 2, 3, 0, tzinfo=UTC)) == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    weekly = CronSchedule("0 3 * * 0")
    assert weekly.next_after(T0) == datetime(2026, 3, 8, 3, 0, tzinfo=UTC)
    quarter = CronSchedule("*/15 * * * *")
    assert quarter.fires_between(T0, T0 + timedelta(hours=1)) == [
        T0 + timedelta(minutes=15),
        T0 + timedelta(minutes=30),
        T0 + timedelta(minutes=45),
        T0 + timedelta(minutes=60),
    ]


def test_due_fires_once_per_fire_time_as_a_clock_ticks_past_it() -> None:
    daily = CronSchedule("0 3 * * *")
    fires = []
    last = T0
    now = T0
    for _ in range(6 * 24 * 2):  # two days of 10-minute ticks
        now += timedelta(minutes=10)
        fire = daily.due(last, now)
        last = now
        if fire is not None:
            fires.append((fire, now))
    assert [fire for fire, _ in fires] == [
        datetime(2026, 3, 2, 3, 0, tzinfo=UTC),
        datetime(2026, 3, 3, 3, 0, tzinfo=UTC),
    ]
    # Caught at the first tick at or after the fire time.
    assert fires[0][1] == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_missed_fires_during_an_outage_make_one_and_it_is_the_latest() -> None:
    every_minute = CronSchedule("* * * * *")
    down_until = T0 + timedelta(days=3, seconds=30)
    assert every_minute.due(T0, down_until) == datetime(2026, 3, 5, 2, 30, tzinfo=UTC)
    assert every_minute.due(down_until, down_until) is None
    assert CronSchedule("0 3 * * *").due(T0, T0 + timedelta(minutes=20)) is None
