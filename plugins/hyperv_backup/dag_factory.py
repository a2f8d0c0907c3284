"""Build one backup DAG per host of the inventory.

One DAG per host because the host is the unit of everything that matters: one WSB job at
a time, one backup window, one time zone, one connection. A host's trouble (unreachable,
full target) then shows as that host's failed run, and the other hosts go on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import CronTriggerTimetable

from . import catalog, windows
from .errors import HostError
from .facts import DEFAULT_JOB_ATTEMPTS
from .hooks import HyperVHook
from .inventory import HostEntry, Inventory
from .operators import SnapshotOperator, VerifyMergeOperator, WaitForBackupJobOperator, catalog_engine, outcome, steps_for
from .retrying import SpreadRetries

CATALOG_ASSET = Asset("hyperv_backup_catalog", uri="hyperv-backup://catalog/vm_backups")


def retry_policy() -> dict:
    """Retries of a step that met a transient error (`[hyperv_backup] retries`, `retry_delay_seconds`): the delay
    doubles at each try and is spread over the run's VMs (retrying.SpreadRetries)."""
    from airflow.configuration import conf

    delay = timedelta(seconds=conf.getint("hyperv_backup", "retry_delay_seconds", fallback=30))
    return {"retries": conf.getint("hyperv_backup", "retries", fallback=2), "retry_delay": delay,
            "retry_exponential_backoff": True, "retry_policy": SpreadRetries(delay)}


def poll_seconds() -> float:
    """How often a step asks the host how its job is doing (`[hyperv_backup] poll_seconds`).

    Each poll is a few WinRM round trips; the interval trades host load against how soon the
    next VM's job starts after one ends (bench/pipeline.py measures both).
    """
    from airflow.configuration import conf

    return conf.getfloat("hyperv_backup", "poll_seconds", fallback=5.0)


def job_timeout() -> timedelta:
    """How long a VM's WSB job may run before the copy step gives up on it (`[hyperv_backup] job_timeout_hours`)."""
    from airflow.configuration import conf

    return timedelta(hours=conf.getfloat("hyperv_backup", "job_timeout_hours", fallback=12.0))


def merge_timeout() -> timedelta:
    """How long, in host time, a Recovery checkpoint's merge may take (`[hyperv_backup] merge_timeout_minutes`)."""
    from airflow.configuration import conf

    return timedelta(minutes=conf.getfloat("hyperv_backup", "merge_timeout_minutes", fallback=60.0))


def host_silence() -> timedelta:
    """How long a wait goes on while the host does not answer at all (`[hyperv_backup] host_silence_minutes`):
    a rebooting host is silent for minutes; one that stays silent longer fails the step (retried)."""
    from airflow.configuration import conf

    return timedelta(minutes=conf.getfloat("hyperv_backup", "host_silence_minutes", fallback=30.0))


def host_wait() -> timedelta:
    """How long the host waits for a change before it answers a waiting step anyway (`[hyperv_backup]
    host_wait_seconds`, host time): the longer, the fewer requests; 0 makes the waits poll every `poll_seconds`."""
    from airflow.configuration import conf

    return timedelta(seconds=conf.getfloat("hyperv_backup", "host_wait_seconds", fallback=60.0))


def step_timeout() -> timedelta:
    """How long one turn of a step may work in a worker (`[hyperv_backup] step_timeout_minutes`): its waits on
    the host are deferred and do not count, so this bounds only a hung command."""
    from airflow.configuration import conf

    return timedelta(minutes=conf.getfloat("hyperv_backup", "step_timeout_minutes", fallback=30.0))


def job_attempts() -> int:
    """How many WSB jobs one VM backup may take after transient failures or restarts (`[hyperv_backup] job_attempts`)."""
    from airflow.configuration import conf

    return conf.getint("hyperv_backup", "job_attempts", fallback=DEFAULT_JOB_ATTEMPTS)


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
        is_paused_upon_creation=False,  # a host in the inventory is to be backed up, not left paused
        max_active_runs=1,
        tags=["hyperv", "backup", host],
        doc_md=doc,
        # "upstream": a VM's later steps go before the next VMs' probes when worker slots are short, so the
        # VM whose turn is next is deferred on the host by the time the job before it ends
        default_args=retry_policy() | {"execution_timeout": step_timeout(), "weight_rule": "upstream"},
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
            return steps_for(context, host, conn, target, vm_name, poll_seconds(), entry.clean_recovery_checkpoints)

        @task
        def select_vms(params=None) -> list[str]:
            """The VMs of this run, in the order their jobs should start (priority, then oldest good backup)."""
            try:
                listed = [vm["name"] for vm in HyperVHook(conn).run_script("Get-HostVMs")["vms"]]
            except HostError as error:
                _host_failed(error)
                raise
            named = [v for v in entry.vms if v not in entry.patterns and v not in listed]  # probe records them as missing
            chosen = entry.selected(listed + named, catalog.last_good(catalog_engine(), host))
            wanted = params.get("vms") or []
            unknown = sorted(set(wanted) - set(chosen))
            if unknown:
                raise ValueError(f"not selected by the inventory for {host}: {', '.join(unknown)}")
            if not chosen:
                raise ValueError(f"no VM on {host} matches the inventory ({', '.join(entry.vms or ['*'])})")
            return [name for name in chosen if not wanted or name in wanted]

        def _host_failed(error: HostError) -> None:
            """The host could not be asked for its VMs: every VM it is known to have gets a failed row saying why, in the
            error's own words (unreachable, refused credentials, untrusted certificate are different fixes)."""
            known = set(catalog.last_good(catalog_engine(), host)) | {v for v in entry.vms if v not in entry.patterns}
            for vm_name in sorted(known):
                _steps(vm_name).record(status="failed", error=f"the host's VMs could not be listed: {error}")

        @task(map_index_template="{{ vm_name }}")
        def probe(vm_name: str, params=None) -> dict:
            steps = _steps(vm_name)
            with outcome(steps):
                steps.begin(windows.run_kind(get_current_context()["dag_run"].run_type), bool(params.get("force")))
                return steps.probe()

        @task(map_index_template="{{ vm_name }}")
        def verify(vm_name: str, probed: dict, snap: dict, job: dict) -> dict:
            steps = _steps(vm_name)
            with outcome(steps):
                return steps.verify(probed, snap, job)

        @task_group
        def backup_vm(vm_name: str):
            probed = probe(vm_name)
            waits = {"host": host, "winrm_conn_id": conn, "backup_target": target, "vm_name": vm_name, "probe": probed,
                     "poll_interval": poll_seconds(), "job_timeout": job_timeout(), "silence": host_silence(), "host_wait": host_wait(),
                     "window": entry.window, "max_attempts": job_attempts(), "map_index_template": "{{ vm_name }}"}
            snap = SnapshotOperator(task_id="snapshot", **waits)
            merged = VerifyMergeOperator(task_id="verify_merge", merge_timeout=merge_timeout(), **waits)
            copied = WaitForBackupJobOperator(task_id="copy", **waits)
            snap >> merged >> copied
            verify(vm_name, probed, snap.output, copied.output)

        @task(outlets=[CATALOG_ASSET], trigger_rule="all_done")
        def catalog_updated() -> None:
            """Marks the catalog Asset so the report DAG follows every backup run, failed VMs included."""

        @task
        def every_vm_accounted_for() -> str:
            """The run's verdict from the catalog: it fails when a VM failed, so the UI, a rerun of failed runs
            (`--reprocess-behavior failed`) and alerting see it; the rerun then redoes only those VMs."""
            dag_run = get_current_context()["dag_run"]
            rows = catalog.rows(catalog_engine(), dag_id=dag_run.dag_id, run_id=dag_run.run_id)
            failed = [f"{r['vm_name']}: {r['error']}" for r in rows if r["status"] in ("failed", "running")]
            counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in catalog.STATUSES if any(r["status"] == s for r in rows))
            if failed:
                raise AirflowFailException(f"{len(failed)} of {len(rows)} VMs not backed up ({counts}):\n" + "\n".join(failed))
            return counts or "no VM in this run"

        backup_vm.expand(vm_name=select_vms()) >> catalog_updated() >> every_vm_accounted_for()
    return dag
