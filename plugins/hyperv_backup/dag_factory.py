"""Build one backup DAG per host of the inventory.

One DAG per host because the host is the unit of everything that matters: one WSB job at
a time, one backup window, one time zone, one connection. A host's trouble (unreachable,
full target) then shows as that host's failed run, and the other hosts go on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param, get_current_context, task, task_group
from airflow.timetables.trigger import CronTriggerTimetable

from .inventory import HostEntry, Inventory
from .operators import WaitForBackupJobOperator, steps_for

CATALOG_ASSET = Asset("hyperv_backup_catalog", uri="hyperv-backup://catalog/vm_backups")
POLL_SECONDS = 0.5
MERGE_TIMEOUT_SECONDS = 600


def build_dag(entry: HostEntry, inventory: Inventory) -> DAG:
    conn, target, host = entry.connection, entry.backup_target, entry.name
    doc = (f"### Hyper-V backups of {host}\n\nEach VM: probe → snapshot/checkpoint → verify merge → copy → verify, "
           f"one Windows Server Backup job at a time, to `{target}`. Window {entry.window.start}–{entry.window.end} "
           f"({entry.window.timezone}). Results go to the catalog (`vm_backups`); inventory: `{inventory.source}`.")
    with DAG(
        dag_id=f"hyperv_backup_{host.lower()}",
        schedule=CronTriggerTimetable(entry.schedule, timezone=entry.window.timezone) if not entry.schedule.startswith("@") else entry.schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["hyperv", "backup", host],
        doc_md=doc,
        default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                      "execution_timeout": timedelta(hours=2)},
        params={
            "vms": Param([], type="array", description="back up only these VMs (empty: all of the inventory)"),
            "plan_only": Param(False, type="boolean", description="probe and predict the mode, start no job"),
        },
    ) as dag:

        @task
        def select_vms(params=None) -> list[str]:
            patterns = [v for v in entry.vms if any(ch in v for ch in "*?[")]
            if patterns or not entry.vms:
                raise ValueError(f"{host}: list VMs by name in the inventory; patterns ({', '.join(patterns) or 'all'}) "
                                 "need the host's VM list, which this version does not read yet")
            chosen = entry.selected(entry.vms)
            wanted = params.get("vms") or []
            unknown = sorted(set(wanted) - set(chosen))
            if unknown:
                raise ValueError(f"not in the inventory for {host}: {', '.join(unknown)}")
            return [name for name in chosen if not wanted or name in wanted]

        def _named(vm_name: str):
            context = get_current_context()
            context["vm_name"] = vm_name
            return context

        @task(map_index_template="{{ vm_name }}")
        def probe(vm_name: str) -> dict:
            return steps_for(_named(vm_name), host, conn, target, vm_name, POLL_SECONDS).probe()

        @task(map_index_template="{{ vm_name }}")
        def snapshot(vm_name: str, probed: dict, params=None) -> dict:
            steps = steps_for(_named(vm_name), host, conn, target, vm_name, POLL_SECONDS)
            if params.get("plan_only"):
                from airflow.exceptions import AirflowSkipException

                steps.record(status="skipped", error="plan only: no job was started")
                raise AirflowSkipException("plan only")
            return steps.snapshot(probed)

        @task(map_index_template="{{ vm_name }}")
        def verify_merge(vm_name: str, probed: dict, snap: dict) -> dict:
            return steps_for(_named(vm_name), host, conn, target, vm_name, POLL_SECONDS).verify_merge(probed, MERGE_TIMEOUT_SECONDS)

        @task(map_index_template="{{ vm_name }}")
        def verify(vm_name: str, probed: dict, snap: dict, job: dict) -> dict:
            return steps_for(_named(vm_name), host, conn, target, vm_name, POLL_SECONDS).verify(probed, snap, job)

        @task_group
        def backup_vm(vm_name: str):
            probed = probe(vm_name)
            snap = snapshot(vm_name, probed)
            merged = verify_merge(vm_name, probed, snap)
            copied = WaitForBackupJobOperator(task_id="copy", host=host, winrm_conn_id=conn, backup_target=target,
                                              vm_name=vm_name, probe=probed, snap=snap, poll_interval=POLL_SECONDS,
                                              map_index_template="{{ vm_name }}")
            merged >> copied
            verify(vm_name, probed, snap, copied.output)

        @task(outlets=[CATALOG_ASSET], trigger_rule="all_done")
        def catalog_updated() -> None:
            """Marks the catalog Asset so the report DAG follows every backup run, failed VMs included."""

        backup_vm.expand(vm_name=select_vms()) >> catalog_updated()
    return dag
