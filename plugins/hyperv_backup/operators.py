"""The Airflow side of the steps: the copy step's deferrable operator, and shared wiring
(the catalog engine, the hook and the run key of a task)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.api.client import ServerResponseError
from airflow.sdk.exceptions import AirflowFailException, AirflowRuntimeError, AirflowSkipException

from . import catalog, windows
from .errors import HostError, PermanentHostError
from .facts import DEFAULT_JOB_ATTEMPTS
from .hooks import HyperVHook
from .steps import BackupSteps, NotThisTime, RunKey, ahead_of
from .triggers import BackupJobTrigger


@lru_cache(maxsize=4)
def _engine(url: str):
    return catalog.engine_for(url)


def catalog_engine():
    """The catalog's engine, from the Airflow connection `hyperv_backup_catalog`."""
    conn = BaseHook.get_connection(catalog.CONNECTION_ID)
    url = catalog.sqlalchemy_url(conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema, conn.extra_dejson)
    return _engine(url)


def steps_for(context: dict[str, Any], host: str, conn_id: str, target: str, vm_name: str, poll: float,
              clean_recovery_checkpoints: bool = False, max_attempts: int = DEFAULT_JOB_ATTEMPTS) -> BackupSteps:
    dag_run = context["dag_run"]
    run = RunKey(dag_run.dag_id, dag_run.run_id, context.get("data_interval_start"), context.get("data_interval_end"), host, vm_name)
    return BackupSteps(HyperVHook(conn_id), catalog_engine(), run, target, poll, clean_recovery_checkpoints,
                       run_alive=_run_alive(context["ti"]), ahead=_ahead(context["ti"]), max_attempts=max_attempts)


def _ahead(ti) -> Callable[[], tuple[int, int]]:
    """The VMs before this one in the run's order, by the states of their tasks of this same step
    (the map index is the VM's place in the order `select_vms` returned)."""
    def ahead() -> tuple[int, int]:
        if ti.map_index is None or ti.map_index < 0:
            return 0, 0
        states = ti.get_task_states(ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id])
        return ahead_of(states.get(ti.run_id, {}), ti.task_id, ti.map_index)
    return ahead


def _run_alive(ti) -> Callable[[str, str], bool]:
    """Whether an Airflow run is still queued or running, through the Task SDK (tasks have no metadata database)."""
    def alive(dag_id: str, run_id: str) -> bool:
        try:
            state = ti.get_dagrun_state(dag_id, run_id)
        except (AirflowRuntimeError, ServerResponseError):  # the run was deleted (the first in a worker, the second
            return False                                    # in dag.test): its catalog row waits for nobody
        return getattr(state, "value", state) in ("queued", "running")  # a DagRunState enum
    return alive


@contextmanager
def outcome(steps: BackupSteps) -> Iterator[None]:
    """How a step's end becomes Airflow's: not this time -> skipped; permanent -> failed at once, no retry;
    transient -> retried by Airflow. Every host error is written to the VM's row first, so a try
    that ends here leaves the cause in the catalog, not a `running` row."""
    try:
        with steps.hook.session():  # one remote shell for all the step's commands
            yield
    except NotThisTime as reason:
        raise AirflowSkipException(str(reason)) from None
    except PermanentHostError as error:
        steps.record(status="failed", error=str(error))
        raise AirflowFailException(str(error)) from None
    except HostError as error:
        steps.record(status="failed", error=str(error))
        raise


class WaitForBackupJobOperator(BaseOperator):
    """The copy step: the VM backup's state machine (BackupSteps.advance) between deferrals.

    Each turn reads the host's record and decides: follow our job (defer until it ends), wait for
    the host (defer until no job holds it), start a new job after a transient failure or a host
    restart, or finish. The worker slot is held only while deciding.
    """

    template_fields: Sequence[str] = ("vm_name", "probe", "snap")

    def __init__(self, *, host: str, winrm_conn_id: str, backup_target: str, vm_name: Any, probe: Any, snap: Any,
                 poll_interval: float = 5.0, job_timeout: timedelta = timedelta(hours=12), window=None,
                 max_attempts: int = DEFAULT_JOB_ATTEMPTS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host, self.winrm_conn_id, self.backup_target = host, winrm_conn_id, backup_target
        self.vm_name, self.probe, self.snap, self.poll_interval = vm_name, probe, snap, poll_interval
        self.job_timeout, self.window, self.max_attempts = job_timeout, window, max_attempts

    def execute(self, context):
        return self._advance(context)

    def execute_complete(self, context, event: dict[str, Any]):
        if event.get("status") == "error":
            steps = self._steps(context)
            with outcome(steps):
                raise steps.fail(event.get("message", "the backup job could not be followed"))
        return self._advance(context)

    def _steps(self, context) -> BackupSteps:
        context["vm_name"] = self.vm_name
        return steps_for(context, self.host, self.winrm_conn_id, self.backup_target, self.vm_name, self.poll_interval,
                         max_attempts=self.max_attempts)

    def _advance(self, context):
        steps = self._steps(context)
        last_start, window = self._window(context)
        with outcome(steps):
            step = steps.advance(self.probe, last_start, window)
        if "job" in step:
            return step["job"]
        deadline = datetime.now(UTC) + self.job_timeout  # the trigger reports it; defer's timeout is the safety net
        self.defer(trigger=BackupJobTrigger(self.winrm_conn_id, self.probe["vm_id"], self.vm_name, self.probe["clock_utc"],
                                            self.poll_interval, deadline.isoformat(), wait_for=step["wait"]),
                   method_name="execute_complete", timeout=self.job_timeout + timedelta(minutes=15))

    def _window(self, context) -> tuple[datetime | None, str]:
        """The last moment a new job may start (the window's end plus grace, scheduled runs only)."""
        if self.window is None:
            return None, ""
        due = context.get("data_interval_end") or context.get("logical_date")
        kind = windows.run_kind(context["dag_run"].run_type)
        return windows.job_deadline(self.window, kind, due, bool(context["params"].get("force"))), self.window.describe()
