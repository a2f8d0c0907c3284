"""The fleet page's content (docs/fleet-page.md): per host and VM, what an administrator asks first. Pure: no Airflow
import, no database; `fleet_app` reads the catalog and renders.

Per VM: its last good backup and that backup's age against the host's RPO, the mode predicted and the mode its
last backup really took, what that backup did to the VM (offline seconds, a restarted uptime), the restore points
on its target, its last restore test, and a backup under way (since when, host time), each with a link to its run
in Airflow's grid. Per host: how many VMs, past their RPO, failed last time, backing up now.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .rpo import Exposure


@dataclass(frozen=True)
class VMLine:
    host: str
    vm_name: str
    status: str  # of its newest backup: succeeded, failed, running, ...
    last_good: datetime | None
    age_hours: float | None
    rpo_hours: float
    past_rpo: bool
    predicted_mode: str | None
    mode: str | None
    impact: str
    restore_points: int | None
    restore_test: str  # "succeeded 2026-11-21 12:04", "failed ...: why", "never"
    running_since: datetime | None
    run_url: str
    error: str | None


@dataclass(frozen=True)
class HostLine:
    host: str
    vms: int
    past_rpo: int
    failed: int
    running: int


def impact(row: dict[str, Any]) -> str:
    """What the VM's last backup did to it, in words."""
    if (row.get("offline_seconds") or 0) > 0:
        return f"offline {row['offline_seconds']:.0f} s"
    if row.get("uptime_reset"):
        return "uptime restarted (the host restarted)" if row.get("host_restarted") else "uptime restarted"
    return "none" if row.get("mode") else ""


def run_url(dag_id: str, run_id: str) -> str:
    """The run in Airflow 3's grid (a path of the UI's own)."""
    return f"/dags/{urllib.parse.quote(dag_id, safe='')}/runs/{urllib.parse.quote(run_id, safe='')}"


def lines(latest: list[dict[str, Any]], tests: dict[tuple[str, str], dict[str, Any]], rpo_hours: dict[str, float],
          now: datetime, default_rpo: float = 24.0) -> list[VMLine]:
    """One line per VM of the catalog (`catalog.latest_per_vm`), with its last restore test (`tests`, by host and VM)."""
    result = []
    for row in latest:
        host, name, good = row["host"], row["vm_name"], row.get("last_good")
        rpo = float(rpo_hours.get(host, default_rpo))
        age = max(0.0, (now - good).total_seconds() / 3600) if good else None  # a host clock ahead of Airflow's is no negative age
        test = tests.get((host, name))
        if test is None:
            tested = "never"
        else:
            tested = f"{test['status']} {test['finished_at']:%Y-%m-%d %H:%M}" if test.get("finished_at") else str(test["status"])
            tested += f": {test['error']}" if test.get("error") else ""
        running = row["status"] == "running"
        result.append(VMLine(host=host, vm_name=name, status=row["status"], last_good=good, age_hours=age, rpo_hours=rpo,
                             past_rpo=Exposure(host, name, good, rpo).past(now), predicted_mode=row.get("predicted_mode"), mode=row.get("mode"),
                             impact=impact(row), restore_points=row.get("restore_points"), restore_test=tested,
                             running_since=row.get("job_started_at") if running else None,
                             run_url=run_url(row["dag_id"], row["run_id"]), error=row.get("error")))
    return result


def hosts(vm_lines: list[VMLine]) -> list[HostLine]:
    """Per host, what needs looking at."""
    names = sorted({line.host for line in vm_lines})
    return [HostLine(host=name, vms=sum(1 for v in vm_lines if v.host == name),
                     past_rpo=sum(1 for v in vm_lines if v.host == name and v.past_rpo),
                     failed=sum(1 for v in vm_lines if v.host == name and v.status == "failed"),
                     running=sum(1 for v in vm_lines if v.host == name and v.running_since is not None)) for name in names]
