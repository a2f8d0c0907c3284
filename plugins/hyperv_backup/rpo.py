"""The RPO's alerts between reports (docs/alerts.md): which VMs a closed window leaves at risk, which are past. Pure.

A VM's recovery point objective (the inventory's `rpo_hours`) is the oldest its last good backup may be. The nightly
report tells it the next morning; two mails tell it when it happens:

- A run's deadline: when a host's window closes and its backup run is still going or has failed, one mail names the
  VMs the run did not back up whose last good backup will be older than the RPO before the next window closes (their
  next chance). A VM whose RPO a missed night does not threaten is not named; with nothing at risk no mail goes.
- A breach: when a VM's last good backup grows older than the RPO, one mail names it. The breach is the VM with that
  last good backup (`Exposure.episode`): a VM left unprotected for a week is told once, not nightly, and told again only
  when a newer good backup has also grown too old.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .facts import Status

# Statuses that leave nothing to protect tonight: backed up, covered by a later backup, or nothing to back up.
PROTECTED = frozenset({Status.SUCCEEDED, Status.COVERED, Status.SKIPPED})


@dataclass(frozen=True)
class Exposure:
    """A VM whose last good backup is, or will be, older than its RPO."""

    host: str
    vm_name: str
    last_good: datetime | None  # the newest successful job's start (host time, UTC); None: never backed up
    rpo_hours: float
    status: str | None = None  # what its backup in the run did (failed, running, deferred); None: no row for it yet
    error: str | None = None

    @property
    def past_at(self) -> datetime | None:
        """When the last good backup passes (passed) the RPO; None when there is none, which is past from the start."""
        return None if self.last_good is None else self.last_good + timedelta(hours=self.rpo_hours)

    def past(self, moment: datetime) -> bool:
        """Past the RPO at `moment`: the last good backup is older than the RPO then (at exactly the RPO it is not
        yet). The one rule of the alerts, the fleet page and the report's RPO table."""
        return self.past_at is None or self.past_at < moment

    @property
    def episode(self) -> str:
        """The breach this is: the VM and its last good backup (the mail ledger's key, at most 250 characters)."""
        good = self.last_good.isoformat() if self.last_good else "never"
        return f"rpo-breach/{self.host}/{self.vm_name}/{good}"[:250]


def _order(exposures: Iterable[Exposure]) -> list[Exposure]:
    """The most exposed first: never backed up, then the oldest last good backup."""
    return sorted(exposures, key=lambda e: (e.last_good is not None, e.last_good or datetime.min, e.host, e.vm_name))


def left_at_risk(host: str, latest: list[dict[str, Any]], run_rows: list[dict[str, Any]], rpo_hours: float,
                 next_close: datetime) -> list[Exposure]:
    """The VMs a run did not protect whose RPO runs out before `next_close` (the end of the host's next window).

    `latest` holds the host's VMs the inventory selects, each with its `last_good` (`catalog.latest_per_vm`), and
    `run_rows` the run's catalog rows: a VM of either without a protecting row in the run (failed, still running,
    deferred, not begun) is exposed.
    """
    last_good = {row["vm_name"]: row.get("last_good") for row in latest}
    in_run = {row["vm_name"]: row for row in run_rows}
    exposed = []
    for name in sorted(last_good.keys() | in_run.keys()):
        row = in_run.get(name, {})
        if row.get("status") in PROTECTED:
            continue
        exposure = Exposure(host, name, last_good.get(name), rpo_hours, row.get("status"), row.get("error"))
        if exposure.past(next_close):
            exposed.append(exposure)
    return _order(exposed)


def breaches(latest: list[dict[str, Any]], rpo_hours: dict[str, float], now: datetime) -> list[Exposure]:
    """The VMs past their RPO now, from each VM's newest catalog row with its `last_good` (`catalog.latest_per_vm`)."""
    exposed = (Exposure(row["host"], row["vm_name"], row.get("last_good"), float(rpo_hours[row["host"]]), row["status"],
                        row.get("error")) for row in latest if row["host"] in rpo_hours)
    return _order(e for e in exposed if e.past(now))


def breach_mail_key(new: list[Exposure]) -> str:
    """One mail's ledger key for a set of new breaches: the same breaches give the same key, so a retried send finds it."""
    digest = hashlib.sha256("\n".join(sorted(e.episode for e in new)).encode()).hexdigest()[:24]
    return f"rpo-breaches/{digest}"


def deadline_subject(host: str, closed_at: datetime, run_state: str, exposed: list[Exposure]) -> str:
    names = ", ".join(e.vm_name for e in exposed[:5]) + (f" and {len(exposed) - 5} more" if len(exposed) > 5 else "")
    how = "still running" if run_state in ("running", "queued") else run_state
    return (f"Hyper-V backup: {host}'s window closed {closed_at:%Y-%m-%d %H:%M} UTC with its run {how}; "
            f"{len(exposed)} VM(s) at risk of their RPO: {names}")


def breach_subject(new: list[Exposure]) -> str:
    names = ", ".join(f"{e.host}/{e.vm_name}" for e in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
    return f"Hyper-V backup: {len(new)} VM(s) past their RPO: {names}"
