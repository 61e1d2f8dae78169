"""A cron schedule for retraining (croniter), evaluated against an injected clock.

`due(since, now)` answers whether a fire time fell in (since, now]: the service checks on a tick, so a
fire between two ticks is caught at the next one, and several missed fires (the module was down) make
one request, not a burst.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from croniter import croniter  # type: ignore[import-untyped, unused-ignore]


class ScheduleError(ValueError):
    """A cron expression croniter does not accept."""


def validate_cron(expression: str) -> str:
    """The expression stripped, or `ScheduleError` naming it (used by the settings validator)."""
    cleaned = " ".join(expression.split())
    if not cleaned or not croniter.is_valid(cleaned):
        raise ScheduleError(f"{expression!r} is not a valid cron expression")
    return cleaned


class CronSchedule:
    def __init__(self, expression: str, timezone: tzinfo = UTC) -> None:
        self.expression = validate_cron(expression)
        self.timezone = timezone

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`."""
        start = _aware(moment).astimezone(self.timezone)
        fire: datetime = croniter(self.expression, start).get_next(datetime)
        return fire.astimezone(UTC)

    def fires_between(self, since: datetime, now: datetime, limit: int = 1000) -> list[datetime]:
        """Fire times in (since, now], at most `limit` of them."""
        fires: list[datetime] = []
        moment = _aware(since)
        end = _aware(now)
        while len(fires) < limit:
            moment = self.next_after(moment)
            if moment > end:
                break
            fires.append(moment)
        return fires

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last fire time <= `moment` (croniter's get_prev is strict, hence the microsecond)."""
        start = (_aware(moment) + timedelta(microseconds=1)).astimezone(self.timezone)
        fire: datetime = croniter(self.expression, start).get_prev(datetime)
        return fire.astimezone(UTC)

    def due(self, since: datetime, now: datetime) -> datetime | None:
        """The latest fire time in (since, now], or None. Only the latest: missed fires make one request."""
        if _aware(now) <= _aware(since):
            return None
        latest = self.latest_at_or_before(now)
        return latest if latest > _aware(since) else None


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
