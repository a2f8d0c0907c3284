"""Build one backup DAG per host of the inventory.

One DAG per host because the host is the unit of everything that matters: one WSB job at
a time, one backup window, one time zone, one connection. A host's trouble (unreachable,
full target) then shows as that host's failed run, and the other hosts go on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from airflow.sdk import DAG, Param, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import CronTriggerTimetable

from . import catalog, rpo_dag, settings, windows
from .errors import HostError, told_once
from .facts import Status
from .inventory import HostEntry, Inventory
from .operators import SnapshotOperator, VerifyMergeOperator, WaitForBackupJobOperator, outcome, pulled, steps_for


@cache
def _schedule(schedule: str, timezone: str):
    """The cron schedule in the host's time zone. One timetable per distinct (cron, zone), shared by the DAGs
    that have it: building one describes the cron in words, 4 ms each, 0.4 s for a fleet of 100 hosts."""
    return schedule if schedule.startswith("@") else CronTriggerTimetable(schedule, timezone=timezone)


def dag_id(entry: HostEntry) -> str:
    return f"hyperv_backup_{entry.name.lower()}"


def build_dag(entry: HostEntry, inventory: Inventory) -> DAG:
    conn, target, host = entry.connection, entry.backup_target, entry.name
    doc = (f"### Hyper-V backups of {host}\n\nEach VM: probe → snapshot/checkpoint → verify merge → copy → verify, "
           f"one Windows Server Backup job at a time, to `{target}`. Window {entry.window.start}–{entry.window.end} "
           f"({entry.window.timezone}). Results go to the catalog (`vm_backups`); inventory: `{inventory.source}`.")
    deadline = rpo_dag.deadline(entry)  # the window's end: a run still going or failed then mails the VMs at risk
    if deadline is None:
        doc += (f"\n\nNo deadline at the window's end: Airflow's plugins folder lacks `{rpo_dag.PLUGIN_FILE}` "
                "(docs/alerts.md).")
    with DAG(
        dag_id=dag_id(entry),
        schedule=_schedule(entry.schedule, entry.window.timezone),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,  # a host in the inventory is to be backed up, not left paused
        max_active_runs=1,
        tags=["hyperv", "backup", host],
        doc_md=doc,
        deadline=deadline,
        default_args=settings.retry_policy() | {"execution_timeout": settings.step_timeout(), "weight_rule": "absolute",
                                                "priority_weight": settings.READS_THE_RECORD},
        params={
            # Typed Params are required in the trigger form unless they allow null (Airflow's Params UI tutorial).
            "vms": Param([], type=["array", "null"], description="back up only these VMs (empty: all of the inventory)"),
            "plan_only": Param(False, type=["boolean", "null"], description="probe and predict the mode, start no job"),
            "force": Param(False, type=["boolean", "null"], description="back up even when the window has closed or a later backup "
                                                               "already covers this (backfilled) interval"),
        },
    ) as dag:

        def _steps(vm_name: str):
            context = get_current_context()
            context["vm_name"] = vm_name  # for map_index_template: the UI shows the VM's name
            return steps_for(context, host, conn, target, vm_name, settings.poll_seconds(), entry.clean_recovery_checkpoints,
                             allowed_modes=entry.allowed_modes(vm_name))

        @task(priority_weight=settings.STARTS_A_JOB)
        def select_vms(params=None) -> list[str]:
            """The VMs of this run, in the order their jobs should start (priority, then oldest good backup)."""
            try:
                from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

                listed = [vm["name"] for vm in HyperVHook(conn).run_script("Get-HvbHostVMs")["vms"]]
            except HostError as error:
                _host_failed(error)
                raise
            engine = settings.catalog_engine()
            named = [v for v in entry.named if v not in listed]  # probe records them as missing
            for name in entry.vanished(catalog.standing(engine, host), listed):
                _steps(name).record(status=Status.SKIPPED, retired=True, error=(
                    f"no longer on {host}: its VM list no longer has it (deleted, or renamed); its backups stay on {target}, "
                    "and it leaves the RPO watch and the fleet page until the host lists it again"))
            chosen = entry.selected(listed + named, catalog.last_good(engine, host))
            wanted = params.get("vms") or []
            unknown = sorted(set(wanted) - set(chosen))
            if unknown:
                raise ValueError(f"not selected by the inventory for {host}: {', '.join(unknown)}")
            if not chosen:
                raise ValueError(f"no VM on {host} matches the inventory ({', '.join(entry.vms or ['*'])})")
            order = [name for name in chosen if not wanted or name in wanted]
            dag_run = get_current_context()["dag_run"]  # kept for the steps Airflow starts in the triggerer
            catalog.record_order(engine, dag_run.dag_id, dag_run.run_id, host, order, datetime.now(UTC))
            return order

        def _host_failed(error: HostError) -> None:
            """The host could not be asked for its VMs: every VM it is known to have gets a failed row saying why, in the
            error's own words (unreachable, refused credentials, untrusted certificate are different fixes)."""
            engine = settings.catalog_engine()  # a retired VM is not the host's any more
            known = (set(catalog.last_good(engine, host)) & set(catalog.standing(engine, host))) | set(entry.named)
            for vm_name in sorted(known):
                _steps(vm_name).record(status=Status.FAILED, error=f"the host's VMs could not be listed: {error}", host_fault=True)

        # multiple_outputs=False: a task annotated `-> dict` otherwise pushes each key as an XCom of its own besides the
        # whole (Airflow infers it), one api-server request each, in the worker slot: 9 for a probe, none of them read
        @task(map_index_template="{{ vm_name }}", priority_weight=settings.STARTS_A_JOB, multiple_outputs=False)
        def probe(vm_name: str, params=None) -> dict:
            steps = _steps(vm_name)
            with outcome(steps):
                steps.begin(windows.run_kind(get_current_context()["dag_run"].run_type), bool(params.get("force")))
                return steps.probe()

        @task(map_index_template="{{ vm_name }}", multiple_outputs=False)
        def verify(vm_name: str, steps_before: list[str]) -> dict:
            """`steps_before`: the task ids of the probe, snapshot and copy steps, whose results it pulls (operators.pulled)."""
            steps = _steps(vm_name)
            with outcome(steps):
                return steps.verify(*pulled(get_current_context()["ti"], *steps_before))

        @task_group
        def backup_vm(vm_name: str):
            probed = probe(vm_name)
            waits = {"host": host, "winrm_conn_id": conn, "backup_target": target, "probe_task_id": probed.operator.task_id,
                     "poll_interval": settings.poll_seconds(), "job_timeout": settings.job_timeout(), "silence": settings.host_silence(), "host_wait": settings.host_wait(),
                     "window": entry.window, "max_attempts": settings.job_attempts(), "map_index_template": "{{ vm_name }}"}
            snap = SnapshotOperator(task_id="snapshot", priority_weight=settings.STARTS_A_JOB, **waits)
            merged = VerifyMergeOperator(task_id="verify_merge", merge_timeout=settings.merge_timeout(), **waits)
            copied = WaitForBackupJobOperator(task_id="copy", **waits)
            probed >> snap >> merged >> copied >> verify(vm_name, [probed.operator.task_id, snap.task_id, copied.task_id])

        @task(outlets=[settings.catalog_asset()], trigger_rule="all_done")
        def catalog_updated() -> None:
            """Marks the catalog Asset so the report DAG follows every backup run, failed VMs included."""

        @task
        def every_vm_accounted_for() -> str:
            """The run's verdict from the catalog: it fails when a VM failed, so the UI, a rerun of failed runs
            (`--reprocess-behavior failed`) and alerting see it; the rerun then redoes only those VMs."""
            dag_run = get_current_context()["dag_run"]
            rows = catalog.rows(settings.catalog_engine(), dag_id=dag_run.dag_id, run_id=dag_run.run_id)
            failed = [r for r in rows if r["status"] in (Status.FAILED, Status.RUNNING)]
            counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in Status if any(r["status"] == s for r in rows))
            if failed:
                raise AirflowFailException(f"{len(failed)} of {len(rows)} VMs not backed up ({counts}):\n" + "\n".join(told_once(failed)))
            return counts or "no VM in this run"

        backup_vm.expand(vm_name=select_vms()) >> catalog_updated() >> every_vm_accounted_for()
    return dag
