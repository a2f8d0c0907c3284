"""BackupJobTrigger: a VM backup's waits, in the triggerer, not in a worker.

A step that must wait (for its turn and a free host, for its job's shadow copy, for the merge
of the Recovery checkpoint, for the job's end) defers to this trigger, which polls until the
host's record says the wait is over (`record.settled`) and then only says "look again": the
step reads the record itself and decides. It only ever reads (Get-HvbVMBackupStatus, and the catalog
for the turn), on one remote shell kept for the whole wait: a lost connection, a
restarted triggerer or a re-deferred task re-attaches and can never start a second job. The shell
is deleted before the event is yielded (the triggerer may cancel a trigger right after its event,
so nothing after a `yield` is sure to run), and by `cleanup()`, which the triggerer awaits also
after a cancellation.

Every limit is on the host's clock: the window's end (`not_after`), the merge limit
(`merge_deadline`), the time a job may run (`job_timeout_seconds`, from the job's own start). A
host that does not answer at all is given up after `silence_seconds` (real time: a silent host
has no clock to ask), with what to check.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from . import catalog
from .facts import Status
from .record import BackupStatus, JobRecord, Until, new_job, parse_time, past_shadow_copy, settled, sighting, succeeded_values
from .rules import merged

_WAITS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="hyperv-wait")  # host-side waits block a thread each


def off_loop(function):
    """Run a blocking call in a thread of its own pool: asgiref's default (one shared thread) would queue every
    trigger's host-side wait behind the others'."""
    from asgiref.sync import sync_to_async

    return sync_to_async(function, thread_sensitive=False, executor=_WAITS)


class KeptShellTrigger(BaseTrigger):
    """A wait on one host over one remote shell, kept for the whole wait in `self._hook` and deleted by `cleanup()`,
    which the triggerer awaits also after it cancelled the wait (nothing after a `yield` is sure to run).

    No event comes sooner than `settle_seconds` after the wait began ([hyperv_backup] resume_after_seconds; 0 where
    the trigger runs inline, under dag.test). Airflow 3.3's scheduler fails a deferred task whose trigger fired before
    it had read the worker's exit from the deferral (apache/airflow#67287, #72716), and the host can be done that
    fast: a shadow copy or a merge of seconds, at a simulator's speed or a small VM's. The host is not kept
    waiting by it: the trigger's own work (starting a job in its turn) is done at once; only the step's next try,
    which reads what the host recorded, comes that much later."""

    settle_seconds: float = 0.0

    def begin(self) -> None:
        """Mark the wait's start (in `run`, before anything else), from which `settle_seconds` count."""
        self._began = time.monotonic()

    async def answer(self, payload: dict[str, Any] | TriggerEvent) -> TriggerEvent:
        """The wait's event (a payload, or an event that ends the task): the shell deleted first, then held until
        `settle_seconds` after the wait began."""
        await self.cleanup()
        await asyncio.sleep(max(0.0, self.settle_seconds - (time.monotonic() - getattr(self, "_began", time.monotonic()))))
        return payload if isinstance(payload, TriggerEvent) else TriggerEvent(payload)

    async def cleanup(self) -> None:
        """Delete the wait's remote shell, once."""
        hook, self._hook = getattr(self, "_hook", None), None
        if hook is not None:
            await off_loop(hook.close)()


class BackupJobTrigger(KeptShellTrigger):
    """Waits, in the triggerer, until what a VM backup's step waits for has happened on the host.

    `until` (record.Until) is the condition; `job_start` names our job for the waits on it. A turn's
    wait (`until="turn"`) first reads in the catalog whether every VM earlier in the run's order has had
    its turn (`turn`: where the task stands, see operators.current_turn), and only then asks the host;
    it ends when a job of the VM started at or after `since` (and not one of the `known` starts of
    other runs' jobs) exists, or the window closed (`not_after`). With `start` (`{"target", "dag_id",
    "run_id", "host", "vm_name"}`) the trigger starts the job itself the moment its turn comes and the
    host is free, and writes its start to the catalog: a worker would start it seconds to minutes
    later (the scheduler's round trip), and the host would idle meanwhile. Starting twice is not
    possible: the host refuses a job while one runs, and the wait ends once ours exists. A job the
    trigger started is followed on through its shadow copy, and the trigger then ends the snapshot step
    itself with the step's result; a wait for our job's end (`finish`) ends the copy step itself once
    the job succeeded (`_step_done`): the host's record already says all the step's next try would
    have read, and a try costs a worker slot a second or more. Whatever else the record shows (the
    host restarted, the job vanished or failed) goes back to the step.

    A wait for the merge ends the verify-merge step itself once the Recovery checkpoint is merged (the step
    pushes no result). A merge or job-end wait without a VM (`vm_id` empty) is a step that Airflow started
    here, with no worker try before it (operators.HostStepOperator.start_in_triggerer): the trigger finds its VM by the task's
    place in the run's order (catalog.placed) and follows the job its row names, and a merge from its first
    look for `merge_limit_seconds` of host time. Where the catalog does not say, the step's worker decides.

    Between answers the host waits (`Get-HvbVMBackupStatus -WaitSeconds`, up to `host_wait_seconds`
    of host time, until what the last answer showed changes): a job's end is seen within a second
    of it, with one request a minute while nothing changes.
    """

    def __init__(self, winrm_conn_id: str, vm_id: str, vm_name: str, until: str = Until.JOB_ENDED, poll_interval: float = 5.0,
                 job_start: str | None = None, not_after: str | None = None, merge_deadline: str | None = None,
                 job_timeout_seconds: float = 12 * 3600, silence_seconds: float = 1800, turn: dict[str, Any] | None = None,
                 since: str | None = None, known: list[str] | None = None, start: dict[str, Any] | None = None,
                 host_wait_seconds: float = 60, settle_seconds: float = 0, finish: dict[str, Any] | None = None,
                 merge_limit_seconds: float | None = None):
        super().__init__()
        self.winrm_conn_id, self.vm_id, self.vm_name, self.until = winrm_conn_id, vm_id, vm_name, Until(until)
        self.poll_interval, self.job_start, self.not_after, self.merge_deadline = poll_interval, job_start, not_after, merge_deadline
        self.job_timeout_seconds, self.silence_seconds, self.turn = job_timeout_seconds, silence_seconds, turn
        self.since, self.known, self.start, self.host_wait_seconds = since, list(known or []), start, host_wait_seconds
        self.settle_seconds, self.finish, self.merge_limit_seconds = settle_seconds, finish, merge_limit_seconds
        self.prepared, self._engine, self._patience = False, None, 0.0  # set by _prepare
        self._seen_past_shadow_copy: datetime | None = None  # set by _sight

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__name__}",
                {"winrm_conn_id": self.winrm_conn_id, "vm_id": self.vm_id, "vm_name": self.vm_name, "until": str(self.until),
                 "poll_interval": self.poll_interval, "job_start": self.job_start, "not_after": self.not_after,
                 "merge_deadline": self.merge_deadline, "job_timeout_seconds": self.job_timeout_seconds,
                 "silence_seconds": self.silence_seconds, "turn": self.turn, "since": self.since, "known": self.known,
                 "start": self.start, "host_wait_seconds": self.host_wait_seconds, "settle_seconds": self.settle_seconds,
                 "finish": self.finish, "merge_limit_seconds": self.merge_limit_seconds})

    async def _over(self, hook, status: BackupStatus) -> bool:
        """Whether the wait is over. A turn's is once a job of ours exists or the window closed; while the host is
        free, the trigger takes the turn itself (with `start`: its wait then goes on as the shadow copy's), or
        leaves that to the step."""
        if self.until != Until.TURN:
            return settled(self.until, status, parse_time(self.job_start), parse_time(self.not_after), parse_time(self.merge_deadline))
        if new_job(status, parse_time(self.since), tuple(map(parse_time, self.known))):
            return True
        if not settled(Until.TURN, status, not_after=parse_time(self.not_after)):
            return False
        return status.host_busy() or not self.start or await off_loop(self._take_turn)(hook, status.clock)

    def _take_turn(self, hook, clock: datetime) -> bool:
        """Start our job now (the host is free, the turn is ours), claimed first as the step claims its own
        (catalog.start_claimed; `clock`: the host's, just before). True once the window has closed; once the job
        started, the wait goes on as its shadow copy's (False)."""
        key = {k: self.start[k] for k in catalog.KEY}
        limit = {"NotAfterUtc": self.not_after} if self.not_after else {}
        answer = catalog.start_claimed(self._engine, key, clock, lambda: hook.run_script(
            "Start-HvbVMBackup", VMId=self.vm_id, BackupTarget=self.start["target"], **limit))
        if not answer["started"]:
            return bool(answer.get("window_closed"))
        started = answer["job"]["start_time_utc"]
        catalog.upsert(self._engine, key, {"status": Status.RUNNING, "job_started_at": parse_time(started), "attempts": 1},
                       datetime.now(UTC))
        self.log.info("%s: its turn; started its Windows Server Backup job at %s (host clock)", self.vm_name, started)
        self.until, self.job_start = Until.SHADOW_COPY, started
        return False

    def _sight(self, status: BackupStatus) -> None:
        """Note the first moment this wait saw our job past its shadow copy (running on, or already succeeded:
        record.past_shadow_copy): nothing on the host marks an online shadow copy's end (record.timings). A job
        the copy step started (after a failed one, a restart) is seen so only here; the copy step's result
        carries it to verify."""
        job = status.job_started_at(parse_time(self.job_start)) if self.job_start else None
        if self._seen_past_shadow_copy is None and job is not None and past_shadow_copy(job, status.boot_time):
            self._seen_past_shadow_copy = status.clock

    def _step_done(self, status: BackupStatus) -> TaskSuccessEvent | None:
        """The step's result, once the host's record says all that the step's next try would read before returning it.
        Ended here, the step takes no worker slot again (a try costs one a second or more). None: anything else (the
        host restarted, the job vanished or failed), which the step reads and decides.

        - A turn's wait that started the job (`start`), once the job is past its shadow copy and still runs on the host
          it started on: the snapshot step's result. It is the run's only job of the VM: the turn's wait ends once one
          exists, and none did when it began.
        - A wait for our job's end (`finish`: the row's key, and the `attempts` and `host_restarted` the copy step
          recorded when it began the wait), once the job succeeded: the copy step's result, recorded as the step
          records it (record.succeeded_values). No later job of ours can exist: only we start one.
        - A wait for the merge, once the Recovery checkpoint is merged and our job ran on or succeeded: the verify-merge
          step's result, which it only logs (BackupSteps.verify_merge)."""
        job = status.job_started_at(parse_time(self.job_start))
        if job is None:
            return None
        if self.until == Until.MERGED and merged(status.vm) and job.awaits_merge(status.boot_time):
            self.log.info("%s: no Recovery checkpoint of ours is left (host clock %s); the verify-merge step is done",
                          self.vm_name, status.clock.isoformat())
            return TaskSuccessEvent()
        if self.start is not None and self.until == Until.SHADOW_COPY and job.runs_after(status.boot_time):
            self.log.info("%s: past its shadow copy (host clock %s); the snapshot step is done", self.vm_name, status.clock.isoformat())
            return TaskSuccessEvent(xcoms={"return_value": {"job_started_at": job.start.isoformat()}
                                                           | sighting(self._seen_past_shadow_copy)})
        if self.finish is not None and self.until == Until.JOB_ENDED and job.succeeded:
            key = {k: self.finish[k] for k in catalog.KEY}
            catalog.upsert(self._engine, key, succeeded_values(job, self.finish["attempts"], self.finish["host_restarted"]),
                           datetime.now(UTC))
            self.log.info("%s: its job succeeded at %s (host clock); the copy step is done", self.vm_name, job.end.isoformat())
            return TaskSuccessEvent(xcoms={"return_value": job.to_json() | sighting(self._seen_past_shadow_copy)})
        return None

    def _overdue(self, status: BackupStatus) -> JobRecord | None:
        """The job this wait is on (ours, or the one holding the host) once it has run longer than allowed, host time."""
        job = status.host_job if self.until in (Until.TURN, Until.HOST_FREE) else status.job_started_at(parse_time(self.job_start))
        limit = timedelta(seconds=self.job_timeout_seconds)
        return job if job is not None and job.running and status.clock - job.start > limit else None

    def _overdue_message(self, job: JobRecord, status: BackupStatus) -> str:
        whose = f"of {self.vm_name}" if self.vm_name in job.vms else f"of {', '.join(job.vms) or 'another backup'} holding the host"
        return (f"the backup job {whose} has run since {job.start:%Y-%m-%d %H:%M} UTC (host clock {status.clock:%H:%M}), longer "
                f"than the {_duration(self.job_timeout_seconds)} allowed ([hyperv_backup] job_timeout_hours), at "
                f"{job.operation or 'an unknown step'}; it is left running: see `wbadmin get status` on the host, and stop "
                "it with `wbadmin stop job` if it hangs")

    def _prepare(self, hook) -> bool:
        """What the wait needs from Airflow, fetched once before it matters (the triggerer answers a connection
        request in its own time): the host's connection, and the catalog's for a turn, a job's end or a wait
        without its VM, which it then finds (`_find_vm`). False: the catalog does not say which VM."""
        from .settings import catalog_engine, task_states_seconds

        hook.get_conn()
        self._engine = catalog_engine() if self.turn or self.start or self.finish or not self.vm_id else None
        self._patience = task_states_seconds()
        return bool(self.vm_id) or self._find_vm()

    def _find_vm(self) -> bool:
        """The VM of a step Airflow started here, by the task's place in its run's order, and the job its row names
        (the latest of ours: the snapshot step, or the turn's trigger, recorded it). Its merge is awaited
        `merge_limit_seconds` of host time from the first look, as the step's own first try would count it."""
        ti = self.task_instance
        row = catalog.placed(self._engine, ti.dag_id, ti.run_id, ti.map_index)
        if row is None or not row["vm_id"] or row["job_started_at"] is None or row["status"] != Status.RUNNING:
            self.log.info("the catalog names no job under way at place %s of %s: the step decides in a worker", ti.map_index, ti.run_id)
            return False
        self.vm_id, self.vm_name, self.job_start = row["vm_id"], row["vm_name"], row["job_started_at"].isoformat()
        if self.until == Until.JOB_ENDED:
            self.finish = {k: row[k] for k in catalog.KEY} | {"attempts": row["attempts"] or 1, "host_restarted": row["host_restarted"]}
        return True

    def _still_to_go(self) -> list[str]:
        """The VMs earlier in the run's order that have yet to have their turn, as the catalog says (a row with a
        started job, or one that ended: catalog.past_their_turn).

        Airflow is not asked from here. A trigger's question to Airflow goes through the triggerer's one
        channel, and the first one in a triggerer's life builds Airflow's execution API in that process,
        which holds every trigger's start and event for seconds (20 on a busy 2-core machine: the hosts
        idled). Airflow's states tell only an earlier VM whose task died without a word: when the host has
        been free for `task_states_seconds` and no earlier VM has started meanwhile, the wait ends and the
        step asks (`run`). While more than one earlier VM has yet to start, the host is asked that often."""
        from .catalog import past_their_turn

        past = past_their_turn(self._engine, self.turn["dag_id"], self.turn["run_id"])
        return [name for name in self.turn["earlier"] if name not in past]

    def _status(self, hook, seen: str) -> BackupStatus:
        wait = {"WaitSeconds": int(self.host_wait_seconds), "Seen": seen} if seen and self.host_wait_seconds >= 1 else {}
        return BackupStatus.from_json(hook.run_script("Get-HvbVMBackupStatus", VMId=self.vm_id, **wait))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from .errors import PermanentHostError, TransientHostError
        from .hooks import HyperVHook

        self.begin()
        hook = self._hook = HyperVHook(self.winrm_conn_id, keep_shell=True)  # one shell for the whole wait
        silent_since, failures, last_percent, seen = None, 0, None, ""
        went_before, free_since, asked_at = list(self.turn["earlier"]) if self.turn else [], None, -float("inf")
        try:
            while True:
                try:
                    if not self.prepared:
                        if not await off_loop(self._prepare)(hook):
                            yield await self.answer({"status": "changed", "until": str(self.until)})
                            return
                        self.prepared = True
                    to_go = await off_loop(self._still_to_go)() if self.turn else []
                    if len(to_go) < len(went_before):
                        free_since = None  # an earlier VM took its turn: the host was not left idle
                    went_before = to_go
                    if len(to_go) > 1 and free_since is None and time.monotonic() - asked_at < self._patience:
                        await asyncio.sleep(self.poll_interval)  # the catalog says when they start; the host can wait
                        continue
                    status, asked_at = await off_loop(self._status)(hook, seen), time.monotonic()
                    job = status.host_job  # when one VM is left before this one, its job's start on the host is the turn
                    if to_go and not (len(to_go) == 1 and job is not None and job.running and to_go[0] in job.vms):
                        free_since = None if status.host_busy() else free_since or asked_at
                        if free_since is not None and asked_at - free_since >= self._patience:
                            # the host idles for a VM that has not come: the step asks Airflow whether its task lives
                            yield await self.answer({"status": "changed", "clock_utc": status.clock.isoformat(), "until": str(self.until)})
                            return
                        seen = status.change_key
                        if not seen or self.host_wait_seconds < 1:
                            await asyncio.sleep(self.poll_interval)
                        continue
                    self.turn = None  # once had, a turn stays: ask the host alone from now on
                    if self.until == Until.MERGED and self.merge_deadline is None and self.merge_limit_seconds is not None:
                        self.merge_deadline = (status.clock + timedelta(seconds=self.merge_limit_seconds)).isoformat()
                    self._sight(status)
                    over = await self._over(hook, status)
                except TransientHostError as error:
                    silent_since, failures = silent_since or time.monotonic(), failures + 1
                    if time.monotonic() - silent_since >= self.silence_seconds:
                        minutes = (time.monotonic() - silent_since) / 60
                        yield await self.answer({"status": "unreachable", "message": (
                            f"did not answer {failures} times over {minutes:.0f} minutes (the last time: {error.message})"
                            + (f"; {error.advice}" if error.advice else ""))})
                        return
                    self.log.warning("%s; polling again", error)
                    seen = ""
                    await asyncio.sleep(self.poll_interval)
                    continue
                except PermanentHostError as error:
                    yield await self.answer({"status": "error", "message": error.message, "advice": error.advice,
                                             "script": error.script, "cause": error.cause})
                    return
                silent_since, failures = None, 0
                if over:
                    yield await self.answer(await off_loop(self._step_done)(status) or {
                        "status": "changed", "clock_utc": status.clock.isoformat(), "until": str(self.until),
                        "merge_deadline": self.merge_deadline} | sighting(self._seen_past_shadow_copy))
                    return
                overdue = self._overdue(status)
                if overdue is not None:
                    yield await self.answer({"status": "error", "message": self._overdue_message(overdue, status)})
                    return
                job = status.job if self.until == Until.JOB_ENDED else None
                percent = int(100 * job.bytes_transferred / job.bytes_total) if job and job.bytes_total else None
                if percent is not None and percent != last_percent:
                    self.log.info("%s: %d%% copied (%s)", self.vm_name, percent, job.operation)
                    last_percent = percent
                if self.until == Until.TURN and not status.host_busy():
                    seen = ""  # another VM's job took the free host first: ask again at once, then wait on that job
                    continue
                seen = status.change_key
                if not seen or self.host_wait_seconds < 1:  # the host does not wait: poll
                    await asyncio.sleep(self.poll_interval)
        finally:
            await self.cleanup()


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"


def pushed_by_trigger(value: Any) -> Any:
    """An XCom that a trigger may have pushed (BackupJobTrigger._step_done), as the task that pulls it gets it.
    Airflow 3.3.2 stores a trigger's XCom JSON-encoded once more than a task's (the triggerer's XComModel.set
    serializes it, the execution API stores a task's as sent), so a dict arrives as its JSON text: decoded here.
    A value the step's own try returned arrives as it was."""
    return json.loads(value) if isinstance(value, str) else value

