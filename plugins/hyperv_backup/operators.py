"""The Airflow side of the steps: the operators of the steps that wait on the host (snapshot, verify
merge, copy), and shared wiring (the catalog engine, the hook and the run key of a task)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator
from airflow.sdk.api.client import ServerResponseError
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowRuntimeError, AirflowSkipException
from airflow.sdk.execution_time.timeout import timeout
from airflow.triggers.base import StartTriggerArgs

from . import catalog, windows
from .errors import HostError, PermanentHostError, TransientHostError
from .facts import DEFAULT_JOB_ATTEMPTS, Status
from .record import Until, parse_time, sighted
from .settings import catalog_engine, resume_after_seconds
from .steps import BackupSteps, NotThisTime, RunKey, Turn, Wait, pending_places, turn_of
from .triggers import BackupJobTrigger, pushed_by_trigger


def steps_for(context: dict[str, Any], host: str, conn_id: str, target: str, vm_name: str, poll: float,
              clean_recovery_checkpoints: bool = False, max_attempts: int = DEFAULT_JOB_ATTEMPTS,
              allowed_modes: list | None = None, order: list[str] | None = None) -> BackupSteps:
    """A step's BackupSteps. `order`: the run's order (run_order), if the step has it already."""
    from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

    dag_run, ti = context["dag_run"], context["ti"]
    run = RunKey(dag_run.dag_id, dag_run.run_id, context.get("data_interval_start"), context.get("data_interval_end"), host, vm_name,
                 windows.run_kind(dag_run.run_type))
    return BackupSteps(HyperVHook(conn_id), catalog_engine(), run, target, poll, clean_recovery_checkpoints,
                       run_alive=_run_alive(ti), turn=_turn(ti, order),
                       max_attempts=max_attempts, allowed_modes=allowed_modes, tried_again=_tried_again(ti))


def run_order(ti) -> list[str]:
    """The run's VMs in the order their jobs start (select_vms's list): a mapped step's map index is its VM's
    place in it. One request (`map_indexes=None`: pulled without it, the Task SDK reads the list in slices)."""
    return ti.xcom_pull(task_ids="select_vms", map_indexes=None) or []


def pulled(ti, *task_ids: str) -> list[Any]:
    """The results of earlier steps of this VM (tasks of its mapped group), one request each.

    A step is not handed them as XComArgs: inside a mapped task group, Airflow's Task SDK resolves an
    XComArg with two more requests to the api-server (the group's task count, asked twice) on every try and
    resumption, and each request holds the worker slot (bench.scheduler: 584 of 2,746 a night of 48 VMs)."""
    return [pushed_by_trigger(ti.xcom_pull(task_ids=task_id, map_indexes=ti.map_index)) for task_id in task_ids]


def _tried_again(ti) -> Callable[[], bool]:
    """Whether Airflow tries this task again if the current try fails: its retries are not used up (the
    api-server's rule, `max_tries != 0 and try_number <= max_tries`; AirflowFailException never retries)."""
    return lambda: ti.max_tries != 0 and ti.try_number <= ti.max_tries


def _turn(ti, order: list[str] | None) -> Callable[[], Turn]:
    """This VM's turn, by its place in the run's order (`order`, else pulled when first asked)."""
    def turn() -> Turn:
        here = place(ti, run_order(ti) if order is None else order) if ti.map_index is not None and ti.map_index >= 0 else None
        return current_turn(here, ti.get_task_states, catalog_engine())[0] if here and here["earlier"] else Turn.NOW
    return turn


def place(ti, order: list[str]) -> dict[str, Any]:
    """Where a mapped step's task stands in its run (`order`: run_order): what `current_turn` (here) and a turn's
    trigger (`triggers._still_to_go`) need."""
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index,
            "earlier": list(order[:ti.map_index])}


def current_turn(place: dict[str, Any], get_task_states: Callable[..., dict], engine) -> tuple[Turn, list[str]]:
    """This VM's turn, with the earlier VMs that have not had theirs yet. The catalog says first (a row with a
    started job, or one that ended); Airflow's task states of the step are asked only while the catalog
    leaves an earlier VM pending (it may be queued, or dead: turn_of)."""
    if not place["earlier"]:
        return Turn.NOW, []
    run_id = place["run_id"]
    past = catalog.past_their_turn(engine, place["dag_id"], run_id)
    if all(name in past for name in place["earlier"]):
        return Turn.NOW, []
    states = get_task_states(place["dag_id"], task_ids=[place["task_id"]], run_ids=[run_id]).get(run_id, {})
    started = frozenset(i for i, name in enumerate(place["earlier"]) if name in past)
    pending = pending_places(states, place["task_id"], place["map_index"], started)
    waiting = [name for i, name in enumerate(place["earlier"])  # a place Airflow does not list yet is pending too
               if i in pending or (i not in started and f"{place['task_id']}_{i}" not in states)]
    return turn_of(states, place["task_id"], place["map_index"], started), waiting


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
    that ends here leaves the cause in the catalog (the row stays `running` only while a backup whose
    job started is still to be tried again: BackupSteps.failed_try)."""
    try:
        with steps.hook.session():  # one remote shell for all the step's commands
            yield
    except NotThisTime as reason:
        raise AirflowSkipException(str(reason)) from None
    except PermanentHostError as error:
        steps.record(status=Status.FAILED, error=str(error), host_fault=error.host_wide)
        raise AirflowFailException(str(error)) from None
    except HostError as error:
        steps.failed_try(str(error), error.host_wide)
        raise


class HostStepOperator(BaseOperator):
    """A step of one VM's backup that may wait on the host (snapshot, verify merge, copy).

    `step()` reads the host's record, decides and acts; it returns the step's result, or a `Wait`.
    A wait on the host is deferred to BackupJobTrigger; a wait on another task of the run (an
    earlier VM that needs a worker to take its turn) gives the worker slot back and is rescheduled
    after `poll_interval`. The worker slot is held only while deciding and acting.
    """

    def __init__(self, *, host: str, winrm_conn_id: str, backup_target: str, probe_task_id: str, poll_interval: float = 5.0,
                 job_timeout: timedelta = timedelta(hours=12), silence: timedelta = timedelta(minutes=30),
                 host_wait: timedelta = timedelta(minutes=1), window=None, max_attempts: int = DEFAULT_JOB_ATTEMPTS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host, self.winrm_conn_id, self.backup_target = host, winrm_conn_id, backup_target
        self.probe_task_id, self.poll_interval = probe_task_id, poll_interval
        self.vm_name, self.order, self.probe = "", None, {}  # pulled when a try begins (_steps)
        self.job_timeout, self.silence, self.host_wait, self.window, self.max_attempts = job_timeout, silence, host_wait, window, max_attempts

    takes_turns = False  # whether the step waits for its VM's turn in the run's order (Until.TURN)
    try_timeout: timedelta | None = None  # a worker try's bound where execution_timeout cannot be one (start_in_triggerer)

    def step(self, steps: BackupSteps, context, event: dict[str, Any] | None) -> Any:
        raise NotImplementedError

    def execute(self, context):
        with self._bounded():
            return self._turn(context, None)

    def resume(self, context, event: Any):
        event = event if isinstance(event, dict) else {}  # a DateTimeTrigger's event is its moment
        with self._bounded():
            steps = self._steps(context)
            with outcome(steps):
                raise_for_event(steps, event)
            return self._turn(context, event, steps)

    def start_in_triggerer(self, until: Until, **kwargs: Any) -> None:
        """Have Airflow start this step in the triggerer: its first look at the host would only find it must wait
        (`until`, the merge or the job's end), so the scheduler defers it straight to BackupJobTrigger, and no worker
        slot is taken for it (a try costs one 1.4-1.7 real seconds: bench.scheduler). The trigger learns only the
        task's place and finds its VM in the catalog (catalog.placed); what it cannot settle comes to `resume` in a
        worker. Airflow would bound such a step's whole wait by its `execution_timeout` (TaskInstance.defer_task),
        so the step's timeout bounds each worker try instead (`_bounded`); dag.test runs it from `execute`."""
        self.try_timeout, self.execution_timeout = self.execution_timeout, None
        self.start_from_trigger = True
        trigger_cls, trigger_kwargs = BackupJobTrigger(  # no VM: the trigger finds it (BackupJobTrigger._find_vm)
            self.winrm_conn_id, "", "", until, self.poll_interval, job_timeout_seconds=self.job_timeout.total_seconds(),
            silence_seconds=self.silence.total_seconds(), host_wait_seconds=self.host_wait.total_seconds(), **kwargs).serialize()
        self.start_trigger_args = StartTriggerArgs(trigger_cls=trigger_cls, next_method="resume", trigger_kwargs=trigger_kwargs)

    @contextmanager
    def _bounded(self) -> Iterator[None]:
        """A worker try bounded by the step's timeout, where Airflow's `execution_timeout` cannot be (start_in_triggerer)."""
        if self.try_timeout is None:
            yield
            return
        with timeout(self.try_timeout.total_seconds(), f"{self.task_id} worked longer than its {self.try_timeout} (step_timeout_minutes)"):
            yield

    def _steps(self, context) -> BackupSteps:
        """The try's BackupSteps, with what the step reads of its run: the probe's result (which names the VM)
        and, for a step that takes turns, the run's order. Pulled, not templated: a request each (see `pulled`),
        and no rendered fields to write."""
        ti = context["ti"]
        self.probe, = pulled(ti, self.probe_task_id)
        named = self.probe.get("vm_name")  # none by a probe of the version before (a night that went on across an upgrade)
        self.order = run_order(ti) if self.takes_turns or not named else None
        self.vm_name = context["vm_name"] = named or self.order[ti.map_index]  # its place in the order; context: map_index_template
        return steps_for(context, self.host, self.winrm_conn_id, self.backup_target, self.vm_name, self.poll_interval,
                         max_attempts=self.max_attempts, order=self.order)

    def _turn(self, context, event: dict[str, Any] | None, steps: BackupSteps | None = None):
        steps = steps or self._steps(context)
        with outcome(steps):
            result = self.step(steps, context, event)
        if not isinstance(result, Wait):
            return result
        inline = triggers_inline(context)
        if inline and (result.others_first or result.until is None):
            raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=self.poll_interval))
        settle = 0.0 if inline else resume_after_seconds()  # KeptShellTrigger: Airflow's deferral race
        if result.until is None:
            self.defer(trigger=DateTimeTrigger(datetime.now(UTC) + timedelta(seconds=max(self.poll_interval, settle))),
                       method_name="resume")
        turn = place(context["ti"], self.order) if result.until == Until.TURN else None
        self.defer(trigger=trigger_for(result, steps, self.winrm_conn_id, self.probe["vm_id"], self.poll_interval,
                                       self.job_timeout, self.silence, self.host_wait, turn, settle), method_name="resume")

    def last_start(self, context) -> tuple[datetime | None, str]:
        """The last moment a new job may start (the window's end plus grace, scheduled runs only), and the window's words."""
        if self.window is None:
            return None, ""
        due = context.get("data_interval_end") or context.get("logical_date")
        kind = windows.run_kind(context["dag_run"].run_type)
        return windows.job_deadline(self.window, kind, due, bool(context["params"].get("force"))), self.window.describe()


def triggers_inline(context) -> bool:
    """Whether this run is dag.test's, which runs one task at a time and its triggers inline: a wait on another
    task must give the process back (reschedule) there, or that task never runs. (Airflow's rescheduling
    is not used under an executor: a reschedule sooner than the executor reports the previous try's end
    makes the scheduler fail the task.)"""
    return context["dag_run"].triggering_user_name == "dag_test"


def trigger_for(wait: Wait, steps: BackupSteps, conn_id: str, vm_id: str, poll: float, job_timeout: timedelta = timedelta(hours=12),
                silence: timedelta = timedelta(minutes=30), host_wait: timedelta = timedelta(minutes=1),
                turn: dict[str, Any] | None = None, settle_seconds: float = 0) -> BackupJobTrigger:
    """The trigger that waits for `wait`. A turn's trigger also gets where the task stands in its run (`turn`),
    and what it needs to start the VM's job itself (the target, the catalog row); a wait for our job's end, what
    it needs to record the job's success itself (the catalog row, the jobs so far)."""
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    is_turn = wait.until == Until.TURN
    return BackupJobTrigger(conn_id, vm_id, steps.run.vm_name, wait.until, poll, iso(wait.job_start), iso(wait.not_after),
                            iso(wait.merge_deadline), job_timeout.total_seconds(), silence.total_seconds(),
                            turn=turn if is_turn else None, since=iso(wait.since), known=[iso(t) for t in wait.known],
                            start={"target": steps.location(vm_id), **steps.run.key()} if is_turn and wait.trigger_starts else None,
                            host_wait_seconds=host_wait.total_seconds(), settle_seconds=settle_seconds,
                            finish={**steps.run.key(), "attempts": wait.attempts, "host_restarted": wait.restarted}
                            if wait.until == Until.JOB_ENDED else None)


def raise_for_event(steps: BackupSteps, event: dict[str, Any]) -> None:
    """A trigger's event that ends the step: a host silent too long (transient: Airflow retries the step), or
    what the host said cannot go on (recorded, final)."""
    if event.get("status") == "unreachable":
        raise TransientHostError(steps.run.host, event["message"])
    if event.get("status") == "error":  # in the words a worker's own PermanentHostError has (the host named once)
        error = PermanentHostError(steps.run.host, event.get("message", "the backup could not be followed"), event.get("advice", ""),
                                   event.get("script"), event.get("cause"))
        steps.record(status=Status.FAILED, error=str(error), host_fault=error.host_wide)
        raise error


class SnapshotOperator(HostStepOperator):
    """Start the VM's job in its turn (the run's order: priority, then the oldest good backup) and follow it
    through the shadow copy; a backfilled interval waits for another run's catch-up of the VM."""

    takes_turns = True

    def step(self, steps: BackupSteps, context, event: dict[str, Any] | None) -> Any:
        params = context["params"]
        if params.get("plan_only"):
            steps.record(status=Status.SKIPPED, error="plan only: no job was started")
            raise AirflowSkipException("plan only")
        last_start, window = self.last_start(context)
        catch_up = windows.run_kind(context["dag_run"].run_type) == windows.BACKFILL and not params.get("force")
        return steps.snapshot(self.probe, last_start, window, catch_up, sighted(event))


class VerifyMergeOperator(HostStepOperator):
    """Wait until the Recovery checkpoint is merged, up to `merge_timeout` of host time. Its result is logged, not
    pushed as an XCom: no step reads it, and a push is one more api-server request in the worker slot."""

    def __init__(self, *, merge_timeout: timedelta = timedelta(minutes=60), **kwargs: Any) -> None:
        super().__init__(do_xcom_push=False, **kwargs)
        self.merge_timeout = merge_timeout
        self.start_in_triggerer(Until.MERGED, merge_limit_seconds=merge_timeout.total_seconds())

    def step(self, steps: BackupSteps, context, event: dict[str, Any] | None) -> Any:
        result = steps.verify_merge(self.probe, self.merge_timeout, parse_time((event or {}).get("merge_deadline")))
        if isinstance(result, Wait):
            return result
        if result["merged"]:
            self.log.info("%s: no Recovery checkpoint of ours is left; the VM runs on its own disks", self.vm_name)
        else:
            self.log.info("%s: its job ended (%s) before the merge; the copy step decides what comes next", self.vm_name,
                          result["job_state"] or "no longer listed")
        return result


class WaitForBackupJobOperator(HostStepOperator):
    """The copy step: the VM backup's state machine (BackupSteps.advance) between deferrals.

    Each turn reads the host's record and decides: follow our job (defer until it ends), wait for
    the host (defer until no job holds it), start a new job after a transient failure or a host
    restart, or finish. Airflow starts it in the triggerer, following the job the snapshot step started.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_in_triggerer(Until.JOB_ENDED)

    def step(self, steps: BackupSteps, context, event: dict[str, Any] | None) -> Any:
        return steps.advance(self.probe, *self.last_start(context), seen=sighted(event))
