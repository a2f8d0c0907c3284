"""Restore tests (docs/restore-tests.md): which VMs a run tests, what each copy is called and where it lives,
and what the host's answers mean. Pure: no Airflow import, no host.

A test recovers one VM of a backup version as files into a folder of its own (Start-HvbRestoreTest), imports
them as a new VM with a new id and name, its network adapters disconnected (Start-HvbRestoreCopy), starts it,
and waits for the heartbeat integration service to answer OK, then removes the copy and its files
(Remove-HvbRestoreCopy), whatever happened. Each phase's wait ends on the host's record (Get-HvbRestoreTest):
the recovery job's end, the heartbeat, or the host's clock passing the phase's limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .facts import RESTORE_COPY_PREFIX
from .record import parse_time
from .rules import folder_name


class Phase(StrEnum):
    HOST = "host"  # the host ran another Windows Server Backup operation: wait until it is free
    RECOVERY = "recovery"  # the recovery job copies the VM's files out of the backup
    BOOT = "boot"  # the copy runs: wait for its heartbeat


def copy_name(vm_name: str, started: datetime) -> str:
    """The copy's name: the prefix no VM of the fleet has, the VM's name and the test's start (host time, UTC)."""
    return f"{RESTORE_COPY_PREFIX}{vm_name}-{started.astimezone(UTC):%Y%m%d%H%M%S}"


def folder(root: str, name: str) -> str:
    """The test's own folder under the host's restore_test_path: the copy's name, with what Windows forbids in a file
    name replaced (a VM's name may hold `:` or `?`)."""
    return root.rstrip("\\") + "\\" + folder_name(name)


def period(cron: str, now: datetime) -> timedelta:
    """The time between two runs of a cron schedule, from `now`."""
    from croniter import croniter

    fires = croniter(cron, now)
    first = fires.get_next(datetime)
    return fires.get_next(datetime) - first


def choose(vms: list[str], last_tested: dict[str, datetime], restore_test_days: int, every: timedelta,
           count: int | None = None) -> list[str]:
    """The VMs of one host a run tests (of `vms`, those with a good backup): never tested first, then the longest
    ago; `count` of them, else as many as test every VM within `restore_test_days` when a run comes every `every`,
    and at least one."""
    never = datetime.min.replace(tzinfo=UTC)
    order = sorted(vms, key=lambda name: (last_tested.get(name) or never, name))
    return order[:count or max(1, math.ceil(len(vms) * (every / timedelta(days=restore_test_days))))]


@dataclass(frozen=True)
class TestStatus:
    """One answer of Get-HvbRestoreTest."""

    clock: datetime
    host_busy: bool
    recovery: dict[str, Any] | None
    copy: dict[str, Any] | None
    files: int
    change_key: str

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TestStatus:
        return cls(clock=parse_time(document["clock_utc"]), host_busy=document.get("host_job") is not None,
                   recovery=document.get("recovery"), copy=document.get("copy"), files=len(document.get("files") or []),
                   change_key=str(document.get("change_key") or ""))

    @property
    def recovered(self) -> bool | None:
        """The recovery's end: True when it completed, False when it failed, None while it runs (or before it)."""
        if self.recovery is None or self.recovery.get("job_state") == "Running":
            return None
        return int(self.recovery.get("hresult") or 0) == 0 and self.recovery.get("job_state") != "Failed"

    @property
    def heartbeat(self) -> bool:
        return bool(self.copy) and self.copy.get("state") == "Running" and self.copy.get("heartbeat") == "OK"


def wait_over(phase: Phase, status: TestStatus, deadline: datetime) -> bool:
    """Whether a phase's wait is over on the host's record: the host is free, the recovery ended, the heartbeat
    answered or the copy stopped; or the host's clock passed the phase's limit."""
    if status.clock >= deadline:
        return True
    if phase is Phase.HOST:
        return not status.host_busy
    if phase is Phase.RECOVERY:
        return status.recovered is not None
    return status.heartbeat or not status.copy or status.copy.get("state") != "Running"


def boot_verdict(status: TestStatus, copy_started: datetime, limit: timedelta) -> tuple[float | None, str | None]:
    """After the boot's wait: (seconds from the copy's start to its heartbeat, None) or (None, what went wrong).
    The heartbeat's moment is the answer's clock: Windows keeps no record of it, and the host answers within a
    second of the change (Get-HvbRestoreTest -WaitSeconds)."""
    if status.heartbeat:
        return max(0.0, (status.clock - copy_started).total_seconds()), None
    if not status.copy:
        return None, "the copy disappeared from Hyper-V before its heartbeat answered"
    if status.copy.get("state") != "Running":
        return None, f"the copy stopped ({status.copy.get('state')}) before its heartbeat answered: check the guest's boot in its console"
    minutes = limit.total_seconds() / 60
    return None, (f"no heartbeat from the copy within {minutes:.0f} minutes of its start (host time): the guest did not boot, or "
                  "its Heartbeat integration service is off or missing; check the VM's integration services, then run "
                  "hyperv_restore_test for it again")
