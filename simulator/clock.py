"""The simulated host time: a clock that runs `speed` times faster than real time, and the lazy scheduler
that applies a host's planned changes on it.

No thread drives the simulation: a change (a job's next phase, a merge's end) is scheduled at its host
time and applied, in order and *at the time it was due*, whenever the host is next looked at. So the
outcome depends only on the scenario, the seed and the clock, and a record made by a change carries the
moment it happened on the host, never the moment someone asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    """Simulated UTC clock: starts at real now and runs `speed` times faster."""

    def __init__(self, speed: float, start: datetime | None = None):
        self.speed = speed
        self._start = start or datetime.now(UTC)
        self._mono = time.monotonic()
        self._skip = 0.0

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._mono) * self.speed + self._skip
        return self._start + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        """Jump the clock forward (tests use it to pass a backup window)."""
        self._skip += seconds

    def real_seconds(self, simulated: float) -> float:
        return simulated / self.speed


class Schedule:
    """One host's planned changes, applied lazily in the order of their host times."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._planned: list[tuple[datetime, int, Callable[[], None]]] = []
        self._seq = 0
        self._acting_at: datetime | None = None  # while a planned change applies: the time it was due

    def now(self) -> datetime:
        """The host's time: while a planned change applies, the moment it was due."""
        return self._acting_at or self.clock.now()

    def at(self, when: datetime, action: Callable[[], None]) -> None:
        self._seq += 1
        self._planned.append((when, self._seq, action))
        self._planned.sort(key=lambda item: (item[0], item[1]))

    def tick(self) -> None:
        """Apply every planned change whose time has come, in order."""
        now = self.now()
        while self._planned and self._planned[0][0] <= now:
            due, _, action = self._planned.pop(0)
            self._acting_at = due  # the change happened when it was due, not when someone next asked
            try:
                action()
            finally:
                self._acting_at = None

    def clear(self) -> None:
        """Forget every planned change (the host restarted: what it was doing is gone)."""
        self._planned.clear()
