"""The project's configuration, read in one place: every `[hyperv_backup]` key of airflow.cfg (or
`AIRFLOW__HYPERV_BACKUP__<KEY>`), and the catalog's Airflow connection.

`DEFAULTS` declares each key once with its default; docs/inventory.md documents the same keys
(a test holds the two together). Values are read when asked for, not at import, so a DAG file
that imports this module costs nothing and a changed setting is seen by the next parse.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from .facts import DEFAULT_JOB_ATTEMPTS

# Which ready task a short supply of worker slots runs first (Airflow's `priority_weight` with weight_rule "absolute";
# it breaks ties by the map index, the VM's place in its run's order). The backup steps that lead to the host's next
# job (select_vms, the probe, the snapshot) go first: the next VM must be waiting in the triggerer before the job
# ahead of it ends, or the host idles. A VM's later steps only read what the host recorded, which keeps. The other
# DAGs (the report, the RPO watch, the checkpoint audit, the restore tests, the preflight) answer to no backup window:
# they wait for the backups' steps (`yields_to_backups`).
STARTS_A_JOB, READS_THE_RECORD, CAN_WAIT = 2, 1, 0

SECTION = "hyperv_backup"
DEFAULTS: dict[str, float | int | bool | str | None] = {
    "poll_seconds": 5.0,
    "host_wait_seconds": 60.0,
    "task_states_seconds": 30.0,
    "retries": 2,
    "retry_delay_seconds": 30,
    "job_attempts": DEFAULT_JOB_ATTEMPTS,
    "merge_timeout_minutes": 60.0,
    "job_timeout_hours": 12.0,
    "host_silence_minutes": 30.0,
    "step_timeout_minutes": 30.0,
    "reports_path": None,  # $AIRFLOW_HOME/hyperv-backup-reports
    "mail_on_catalog_update": False,
    "restore_test_schedule": "0 12 * * 6",  # Saturdays at noon UTC, outside the nights' windows
    "restore_heartbeat_minutes": 20.0,
    "resume_after_seconds": 5.0,
    "approval_timeout_hours": 12.0,
    "rpo_watch_schedule": "0 * * * *",  # hourly
}


def _get(key: str):
    from airflow.configuration import conf

    default = DEFAULTS[key]
    if isinstance(default, bool):
        return conf.getboolean(SECTION, key, fallback=default)
    if isinstance(default, int):
        return conf.getint(SECTION, key, fallback=default)
    if isinstance(default, float):
        return conf.getfloat(SECTION, key, fallback=default)
    return conf.get(SECTION, key, fallback=default)


def poll_seconds() -> float:
    """How often a wait asks when it cannot wait on the host (real seconds): each poll is a few WinRM round
    trips, so the interval trades host load against how soon the next VM's job starts (bench/pipeline.py)."""
    return _get("poll_seconds")


def host_wait() -> timedelta:
    """How long the host waits for a change before it answers a waiting step anyway (host time): the longer,
    the fewer requests; 0 makes the waits poll every `poll_seconds`."""
    return timedelta(seconds=_get("host_wait_seconds"))


def task_states_seconds() -> float:
    """How long a VM waiting for its turn lets the host go without a job while an earlier VM has yet to start
    its job, before its step asks Airflow whether that VM's task still lives (real seconds). The catalog, which says
    when an earlier VM's job started or its backup ended, is read at every poll; Airflow's task states only
    tell an earlier VM whose task died without a word, and a trigger does not ask them (triggers._still_to_go)."""
    return _get("task_states_seconds")


def retry_policy() -> dict:
    """Retries of a step that met a transient error, as a DAG's default_args: the delay doubles at each try
    and is spread over the run's VMs (retrying.SpreadRetries), so a host-wide fault is not retried in step."""
    from .retrying import SpreadRetries

    delay = timedelta(seconds=_get("retry_delay_seconds"))
    return {"retries": _get("retries"), "retry_delay": delay, "retry_exponential_backoff": True,
            "retry_policy": SpreadRetries(delay)}


def restore_test_schedule() -> str:
    """When the restore-test DAG runs (cron, UTC): weekly by default, at an hour no backup window holds, as a test's
    recovery takes the host's one Windows Server Backup operation for as long as copying the VM takes."""
    return _get("restore_test_schedule")


def restore_heartbeat() -> timedelta:
    """How long a restore test's copy may take from its start to its heartbeat (host time) before the test fails."""
    return timedelta(minutes=_get("restore_heartbeat_minutes"))


def resume_after_seconds() -> float:
    """The least time a deferred wait lasts, a backup step's or a restore test's (real seconds). Airflow 3.3's scheduler
    fails a deferred task whose trigger fired before the scheduler had read the worker's exit from the deferral
    (apache/airflow#67287, #72716, open): a shadow copy, a merge or a restore phase over on the host within a second or
    two would otherwise fail its try. A few of the scheduler's loops (`[scheduler] scheduler_idle_sleep_time`, 1 s,
    plus the loop's own work) are enough; the host does not wait for it (triggers.KeptShellTrigger)."""
    return _get("resume_after_seconds")


def rpo_watch_schedule() -> str | None:
    """When the RPO watch looks for VMs past their RPO (cron, UTC): a breach is mailed within this long of happening.
    Empty: only when run by hand."""
    return _get("rpo_watch_schedule") or None


def approval_timeout() -> timedelta:
    """How long the checkpoint audit waits for an administrator's decision (remediate: ask) before it removes nothing."""
    return timedelta(hours=_get("approval_timeout_hours"))


def job_attempts() -> int:
    """How many WSB jobs one VM backup may take after transient failures or host restarts."""
    return _get("job_attempts")


def merge_timeout() -> timedelta:
    """How long, in host time, a Recovery checkpoint's merge may take."""
    return timedelta(minutes=_get("merge_timeout_minutes"))


def job_timeout() -> timedelta:
    """How long one WSB job may run, in host time from its start, before the step waiting on it fails."""
    return timedelta(hours=_get("job_timeout_hours"))


def host_silence() -> timedelta:
    """How long a wait goes on while the host does not answer at all: a rebooting host is silent for minutes;
    one that stays silent longer fails the step (retried). Real time: a silent host has no clock to read."""
    return timedelta(minutes=_get("host_silence_minutes"))


def step_timeout() -> timedelta:
    """How long one turn of a step may work in a worker (its `execution_timeout`): its waits on the host are
    deferred and do not count, so this bounds only a hung command."""
    return timedelta(minutes=_get("step_timeout_minutes"))


def reports_location() -> str:
    """Where report files go: a folder or an object storage URL (s3://...)."""
    from airflow.configuration import AIRFLOW_HOME

    return _get("reports_path") or str(Path(AIRFLOW_HOME) / "hyperv-backup-reports")


def storage(location: str):
    """A folder or an object storage URL as an ObjectStoragePath (a plain path is a local folder)."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location if "://" in location else f"file://{Path(location).resolve()}")


def reports_folder():
    """Where report files go, as an ObjectStoragePath."""
    return storage(reports_location())


def mail_on_catalog_update() -> bool:
    """Whether a report run triggered by a backup run (the catalog Asset) mails too, not only the daily one."""
    return _get("mail_on_catalog_update")


def catalog_engine():
    """The catalog's engine, from the Airflow connection `hyperv_backup_catalog` (created and migrated once per process)."""
    from airflow.sdk import BaseHook

    from . import catalog

    conn = BaseHook.get_connection(catalog.CONNECTION_ID)
    return _engine(catalog.sqlalchemy_url(conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema,
                                          conn.extra_dejson))


@lru_cache(maxsize=4)
def _engine(url: str):
    from . import catalog

    return catalog.engine_for(url)


def yields_to_backups() -> dict:
    """default_args of a DAG whose tasks let the backups' steps take the worker slots first (CAN_WAIT above)."""
    return {"weight_rule": "absolute", "priority_weight": CAN_WAIT}


def catalog_asset():
    """The Asset a backup run marks when it has written the catalog; the report DAG follows it."""
    from airflow.sdk import Asset

    return Asset("hyperv_backup_catalog", uri="hyperv-backup://catalog/vm_backups")
