"""Backup windows and run kinds: when a job may start, and what a late run should do. Pure.

A window is a promise to the business: "22:00-06:00 Europe/Berlin" means no backup load on the
host outside it. It is written in the host's local time, so it follows daylight saving time;
it may cross midnight. A scheduled run starts no VM job after its window's end plus a grace;
those VMs are recorded `deferred` and, having the oldest last good backup, go first next time.

Manual runs and backfills are an administrator's decision made now, so no window holds them.
A backfilled interval lies in the past, and a backup cannot be taken in the past: the first
backfilled run takes one catch-up backup per VM now, and every later missed interval is
`covered` by the newest good backup taken after it ended, without a second job.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from .facts import Status
from .yamlcheck import Integer

SCHEDULED, MANUAL, BACKFILL = "scheduled", "manual", "backfill"


def run_kind(run_type: object) -> str:
    """A DAG run's type as its plain value (`backfill`, ...): the Task SDK hands an Enum whose str() is its name."""
    return str(getattr(run_type, "value", run_type))


def _clock_time(value: str) -> str:
    hours, _, minutes = value.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2):
        raise ValueError(f"{value!r} is not a time of day; expected HH:MM")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (IANA name, e.g. Europe/Berlin)") from None
    return value


ClockTime = Annotated[str, AfterValidator(_clock_time)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid", title="a window"))
class Window:
    """Declared once: the inventory reads a host's `window` into this (validated), the code builds it directly."""

    start: ClockTime = "22:00"  # HH:MM, host-local
    end: ClockTime = "06:00"
    timezone: Annotated[str, AfterValidator(_time_zone)] = "UTC"
    grace_minutes: Annotated[Integer, Field(ge=0, le=24 * 60)] = 0

    def bounds(self, moment: datetime) -> tuple[datetime, datetime]:
        """The window that opened last at or before `moment` (aware), as UTC (start, end)."""
        tz = ZoneInfo(self.timezone)
        local = moment.astimezone(tz)
        opens, closes = _hhmm(self.start), _hhmm(self.end)
        day = local.date() if local.time() >= opens else local.date() - timedelta(days=1)
        start = datetime.combine(day, opens, tz)
        end_day = day if closes > opens else day + timedelta(days=1)
        end = datetime.combine(end_day, closes, tz)
        return start.astimezone(UTC), end.astimezone(UTC)

    def last_start(self, moment: datetime) -> datetime:
        """When a job may last start for a run due at `moment`: the window's end plus the grace."""
        return self.bounds(moment)[1] + timedelta(minutes=self.grace_minutes)

    def next_close(self, moment: datetime) -> datetime:
        """The end (UTC, no grace) of the first window that closes after `moment`: a VM's next chance of a backup. 27 hours
        after a window opened lies, whatever daylight saving does, between the next night's opening and the one after."""
        start, end = self.bounds(moment)
        return end if end > moment else self.bounds(start + timedelta(hours=27))[1]

    def describe(self) -> str:
        grace = f" + {self.grace_minutes} min grace" if self.grace_minutes else ""
        return f"{self.start}-{self.end} {self.timezone}{grace}"


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def job_deadline(window: Window, run_type: str, due: datetime | None, force: bool) -> datetime | None:
    """The latest moment (UTC) a VM job of this run may start, or None when no window holds the run."""
    if force or run_type != SCHEDULED or due is None:
        return None
    return window.last_start(due)


def missed_reason(run_type: str, earlier_status: str | None = None, earlier_error: str | None = None) -> str | None:
    """Why a run's interval was not backed up on time, for the catalog; None for a run on time."""
    if run_type != BACKFILL:
        return None
    if earlier_error:
        how = "failed" if earlier_status in (None, Status.FAILED, Status.RUNNING) else f"left it {earlier_status}"
        return f"the scheduled run {how}: {earlier_error}"
    return "no run took place in this interval (Airflow was down or the DAG was paused)"
