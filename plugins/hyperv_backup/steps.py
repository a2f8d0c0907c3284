"""The five steps of one VM's backup, as functions the DAG's tasks call.

probe -> snapshot/checkpoint -> verify merge -> copy -> verify. Each step reads the host
through HyperVHook, decides with the pure `rules`, and writes what it learned to the
catalog before it returns, so a worker that dies leaves a row that says how far it got.
A step that must wait returns a `Wait` instead of sleeping: its operator defers it to
`triggers.BackupJobTrigger` (or reschedules it under dag.test), so no step holds a worker
slot while it waits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from . import catalog, hygiene, record, rules, windows
from .errors import PermanentHostError, TransientHostError
from .facts import DEFAULT_JOB_ATTEMPTS, Mode, Status
from .parsers import parse_wbadmin_versions

if TYPE_CHECKING:  # WinRM is imported by the task that talks to a host, not by the DAG file
    from .hooks import HyperVHook

TERMINAL = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class Turn(StrEnum):
    """Where a VM stands in its run's order for the host (the snapshot step's states say it)."""

    NOW = "now"  # every VM before it is past its snapshot step: it may take the host once the host is free
    WAIT = "wait"  # VMs before it are in the step, all deferred: the triggerer waits on them, and so can it
    YIELD = "yield"  # a VM before it needs a worker to go on (queued, retried, rescheduled): under dag.test, give way


def turn_of(states: dict[str, Any], task_id: str, map_index: int, started: frozenset[int] = frozenset()) -> Turn:
    """This VM's turn, from the states of its run's mapped step (`{"<task_id>_<map index>": state}`, as
    Airflow's get_task_states answers; the map index is the VM's place in the order select_vms returned)
    and the earlier places whose job has started (`started`, from the catalog: that VM has had its turn,
    even while its task still follows the shadow copy).

    The order holds without a real-time grace: a VM never takes the host before an earlier one, and
    it waits deferred only on VMs that are themselves deferred, so neither a parallel executor nor
    dag.test (one task at a time, triggers run inline) can leave it waiting on a task that cannot run.
    """
    pending = pending_places(states, task_id, map_index, started)
    if not pending:
        return Turn.NOW
    return Turn.WAIT if all(state == "deferred" for state in pending.values()) else Turn.YIELD


def pending_places(states: dict[str, Any], task_id: str, map_index: int, started: frozenset[int] = frozenset()) -> dict[int, str]:
    """The places before `map_index` whose VM has yet to have its turn: neither started nor at a terminal state
    of the step (place -> the state's value)."""
    earlier = {int(index): getattr(state, "value", state) for key, state in states.items()
               if (index := (parts := key.rpartition("_"))[2]).isdigit() and parts[0] == task_id and int(index) < map_index}
    return {place: state for place, state in earlier.items() if place not in started and state not in TERMINAL}


@dataclass(frozen=True)
class Wait:
    """What a step waits for before it looks again, deferred to the triggerer (record.settled); `until`
    None: only time (another run's catch-up of the VM). `others_first`: another task of this run must
    act before this one can (an earlier VM's turn): where triggers run inline, one task at a time
    (dag.test), the step is rescheduled instead, so that task gets to run."""

    until: record.Until | None
    job_start: datetime | None = None
    not_after: datetime | None = None
    merge_deadline: datetime | None = None
    since: datetime | None = None  # a turn: the probe's host clock; a job of the VM from then on ends the wait...
    known: tuple[datetime, ...] = ()  # ...unless it is one of these (other runs' jobs of the VM)
    others_first: bool = False
    trigger_starts: bool = True  # a turn's trigger may start the job itself (not a catch-up: another run's may cover it)
    attempts: int = 0  # a wait for our job's end: the jobs it took so far, and whether a restart cut one;
    restarted: bool = False  # the trigger records them with the job's success (record.succeeded_values)


@dataclass
class RunKey:
    dag_id: str
    run_id: str
    interval_start: datetime | None
    interval_end: datetime | None
    host: str
    vm_name: str
    kind: str | None = None  # the run's kind (scheduled, manual, backfill, ...), recorded with each row

    def key(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "host": self.host, "vm_name": self.vm_name}


_parse_time = record.parse_time


class NotThisTime(Exception):
    """This VM is not backed up in this run, for a reason the catalog already holds (covered, deferred, done)."""


class BackupSteps:
    """One VM on one host in one DAG run."""

    def __init__(self, hook: HyperVHook, engine, run: RunKey, target: str, poll_seconds: float = 0.5,
                 clean_recovery_checkpoints: bool = False, run_alive: Callable[[str, str], bool] | None = None,
                 turn: Callable[[], Turn] | None = None, max_attempts: int = DEFAULT_JOB_ATTEMPTS,
                 allowed_modes: list[Mode] | None = None, tried_again: Callable[[], bool] | None = None):
        """`run_alive(dag_id, run_id)` tells whether another Airflow run still runs: a `running` row of
        a run that died (a killed worker) must not keep this run waiting for its backup. `turn()` says
        where this VM stands in its run's order (`turn_of`): the host goes to earlier VMs first. `allowed_modes`:
        the modes the inventory's `require` allows this VM's backup in (None: any). `tried_again()` tells whether
        Airflow tries the current step again if this try fails (`failed_try`)."""
        self.hook, self.engine, self.run, self.target, self.poll = hook, engine, run, target, poll_seconds
        self.clean = clean_recovery_checkpoints
        self.run_alive = run_alive or (lambda dag_id, run_id: True)
        self.tried_again = tried_again or (lambda: False)
        self.turn = turn or (lambda: Turn.NOW)
        self.max_attempts, self.allowed_modes = max_attempts, allowed_modes
        self.log = logging.getLogger(__name__)

    def record(self, **values: Any) -> None:
        """Upsert the VM's row. A status written says whose fault a failure is (`host_fault`); any other clears it."""
        if "status" in values:
            values.setdefault("host_fault", False)
        base = {"interval_start": self.run.interval_start, "interval_end": self.run.interval_end}
        if self.run.kind:
            base["run_kind"] = self.run.kind
        catalog.upsert(self.engine, self.run.key(), base | values, datetime.now(UTC))

    def failed_try(self, error: str, host_fault: bool) -> None:
        """A try that ended in a host error Airflow may retry: the row says why. A backup whose job has started stays
        `running` while its step will be tried again: it is still under way, and a concurrent backfilled run of the VM
        waits for its result (`_catch_up_elsewhere`) rather than start a second catch-up job. Any other is `failed`
        (one with no job yet thus gives its turn up meanwhile: catalog.past_their_turn)."""
        row = catalog.row(self.engine, self.run.key()) if self.tried_again() else None
        under_way = row is not None and row["job_started_at"] is not None
        self.record(status=Status.RUNNING if under_way else Status.FAILED, error=error, host_fault=host_fault)

    def location(self, vm_id: str) -> str:
        """Where this VM's backup goes on the target (its own folder on a network share: rules.backup_location)."""
        return rules.backup_location(self.target, self.run.vm_name, vm_id)

    def fail(self, error: str, **values: Any) -> PermanentHostError:
        self.record(status=Status.FAILED, error=error, **values)
        return PermanentHostError(self.run.host, error, script=None)

    # -- before the probe: does this run back the VM up at all? ---------------------

    def begin(self, run_type: str, force: bool = False) -> None:
        """Raise NotThisTime when the catalog says this VM needs no job in this run.

        A rerun of a run (a retry, a cleared task, a backfill reprocessing failed runs) does not
        redo a VM that already succeeded or was covered in it. A backfilled interval is covered
        by a good backup taken after it ended, if there is one (`force` takes a new one anyway).
        """
        existing = catalog.row(self.engine, self.run.key())
        if existing and existing["status"] in (Status.SUCCEEDED, Status.COVERED):
            raise NotThisTime(f"{self.run.vm_name} is already {existing['status']} in this run")
        earlier = existing or {}
        missed = earlier.get("missed") or windows.missed_reason(run_type, earlier.get("status"), earlier.get("error"))
        if missed:
            self.record(missed=missed)
        if run_type != windows.BACKFILL or force or self.run.interval_end is None:
            return
        self._raise_if_covered()

    def _raise_if_covered(self) -> None:
        """A good backup that started after this (missed) interval ended covers it: record so, take no job."""
        cover = catalog.covering_backup(self.engine, self.run.host, self.run.vm_name, self.run.interval_end)
        if cover:
            when = f"{cover['job_started_at']:%Y-%m-%d %H:%M} UTC"
            self.record(status=Status.COVERED, error=f"missed; covered by the backup of {when} (run {cover['run_id']}), no second job",
                        **{k: cover[k] for k in ("vm_id", "predicted_mode", "mode", "mode_reasons", "backup_version")})
            raise NotThisTime(f"covered by the backup of {when}")

    def _catch_up_elsewhere(self) -> str | None:
        """For a backfilled interval, right before its job would start: None when this run takes the
        catch-up; a description of another run's catch-up of this VM still under way, to wait for;
        NotThisTime when that one has succeeded and covers this interval. Concurrent backfill runs
        thus take one catch-up per VM; the host alone would only keep their jobs from overlapping.

        The catch-ups under way are read before the one that covers: a row goes from `running` to its result once,
        so a catch-up that ends between the two reads is seen in the second. (Read the other way round, it was
        in neither, and a second catch-up job started: seen in CI.)"""
        under_way = [other for other in catalog.backups_under_way(self.engine, self.run.host, self.run.vm_name,
                                                                  self.run.interval_end, self.run.dag_id, self.run.run_id)
                     if self.run_alive(other["dag_id"], other["run_id"])]
        self._raise_if_covered()
        if under_way:
            other = under_way[0]
            return f"run {other['run_id']} is backing {self.run.vm_name} up (job of {other['job_started_at']:%H:%M:%S} UTC)"
        return None

    # -- probe ----------------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        result = self._probe_host()
        idle = not result["wsb_job"]  # a Recovery checkpoint is debris only while no backup job could own it
        if self.clean and idle and result["vms"] and rules.recovery_checkpoints(result["vms"][0]["checkpoints"]):
            findings = [f for f in hygiene.audit_vm(result["vms"][0]) if f.removable]
            done = hygiene.remediate(self.hook.run_script, findings, self.run.vm_name, poll=self.poll)
            if not all(entry["merged"] for entry in done):
                raise self.fail(f"removed {', '.join(e['removed'] for e in done)} but Hyper-V did not finish the merge; "
                                "rerun once Get-VM shows no .avhdx")
            result = self._probe_host()
        return self._judge(result)

    def _probe_host(self) -> dict[str, Any]:
        return self.hook.run_script("Get-HvbVMBackupProbe", VMName=self.run.vm_name, BackupTarget=self.target)

    def _judge(self, result: dict[str, Any]) -> dict[str, Any]:
        os_version = rules.os_version_of(result["host"]["os_caption"])
        vms = result["vms"]
        if not vms:
            raise self.fail(f"no VM named {self.run.vm_name!r} on {self.run.host}: check the inventory")
        if len(vms) > 1:
            raise self.fail(f"{len(vms)} VMs are named {self.run.vm_name!r} on {self.run.host} (ids {', '.join(vm['id'] for vm in vms)}): "
                            "rename one (Rename-VM) so the backup is unambiguous")
        vm = vms[0]
        prediction = rules.predict_mode(os_version, vm)
        values = {"vm_id": vm["id"], "predicted_mode": prediction.mode.value, "mode_reasons": json.dumps(prediction.reasons)}
        refusal = rules.policy_refusal(prediction, self.allowed_modes)
        if refusal:
            self.record(status=Status.SKIPPED, error=refusal, **values)
            raise NotThisTime(refusal)
        leftovers = rules.recovery_checkpoints(vm["checkpoints"])
        if leftovers:
            names = ", ".join(repr(c["name"]) for c in leftovers)
            raise self.fail(
                f"a Recovery checkpoint left by an earlier failed backup blocks this one ({names}); remove it with "
                f"Remove-VMSnapshot -VMName '{vm['name']}' -Name <name> and let Hyper-V merge, then rerun", **values)
        size = sum(int(d.get("size_bytes") or 0) for d in vm["disks"])
        if not result["target"]["exists"]:
            unreachable = f", or {self.run.host} cannot reach it from a WinRM session: {rules.SHARE_UNREACHABLE}"
            raise self.fail(f"the backup target {self.target} does not exist on {self.run.host}"
                            + (unreachable if rules.is_share(self.target) else ""), **values)
        free = result["target"]["free_bytes"]  # None: a share whose free space the host could not read
        if free is not None and free < size:
            free_gb, need_gb = free / 1024**3, size / 1024**3
            raise self.fail(f"the backup target {self.target} has {free_gb:.1f} GB free; this VM needs {need_gb:.1f} GB", **values)
        self.record(status=Status.RUNNING, error=None, **values)
        return {"vm_name": self.run.vm_name, "vm_id": vm["id"], "os_version": os_version, "predicted_mode": prediction.mode.value,
                "reasons": prediction.reasons, "uptime_seconds": vm["uptime_seconds"], "state": vm["state"],
                "clock_utc": result["host"]["clock_utc"], "size_bytes": size}

    # -- the host's record, and what it says to do -----------------------------------------

    def status(self, vm_id: str, since: str | None = None) -> record.BackupStatus:
        """Get-HvbVMBackupStatus, retried through transient failures (a dropped connection is not an answer;
        a rebooting host answers again after its restart)."""
        params = {"VMId": vm_id} | ({"SinceUtc": since} if since else {})
        for attempt in range(6):
            try:
                return record.BackupStatus.from_json(self.hook.run_script("Get-HvbVMBackupStatus", **params))
            except TransientHostError:
                if attempt == 5:
                    raise
                time.sleep(min(30.0, self.poll * 2 ** attempt))
        raise AssertionError("unreachable")

    def ours(self, status: record.BackupStatus, probe: dict[str, Any]) -> list[record.JobRecord]:
        """This VM's jobs that this backup started (record.ours), by the host's job list and the catalog's rows."""
        since = _parse_time(probe["clock_utc"])
        mine, claimed_from, others = catalog.job_claims(self.engine, self.run.key(), since)
        return record.ours(status.jobs, self.run.vm_name, since, others, mine, claimed_from)

    def decide(self, status: record.BackupStatus, ours: list[record.JobRecord]) -> record.Decision:
        return record.decide(ours, status.boot_time, status.host_job, self.max_attempts, self.run.host, self.run.vm_name)

    def _record_job(self, job: record.JobRecord, attempts: int, restarted: bool) -> None:
        self.record(status=Status.RUNNING, job_started_at=job.start, attempts=attempts, host_restarted=restarted or None)

    # -- snapshot / checkpoint ---------------------------------------------------------

    def snapshot(self, probe: dict[str, Any], last_start: datetime | None = None, window: str = "", catch_up: bool = False,
                 seen: datetime | None = None) -> dict[str, Any] | Wait:
        """Start this VM's job in its turn (or find the one this backup started) and see it through the shadow copy.

        Returns the step's result, or what to wait for before looking again. `last_start` is the
        window's end plus grace (UTC): no job starts after it, also not after waiting; the VM is
        then recorded `deferred` and goes first next time. `catch_up` (a backfilled interval) starts
        no job while another run's catch-up of the VM is under way, and none once one has succeeded.
        A job of ours that already ended (a retry after it failed, or after the host restarted) is
        left to the copy step's decision. `seen`: when the trigger saw the job past its shadow copy.
        """
        vm_id = probe["vm_id"]
        status = self.status(vm_id)
        ours = self.ours(status, probe)
        if not ours:
            if catch_up and self._catch_up_elsewhere() is not None:
                return Wait(None)  # another run's task holds the catch-up: look again later
            if last_start is not None and status.clock > last_start:
                self._window_closed(window, status.clock)
            turn = self.turn()
            if turn != Turn.NOW or status.host_busy() or not self._try_start(vm_id, status.clock, last_start, window):
                since = _parse_time(probe["clock_utc"])
                return Wait(record.Until.TURN, not_after=last_start, since=since,
                            known=tuple(j.start for j in status.jobs if j.start >= since), others_first=turn == Turn.YIELD,
                            trigger_starts=not catch_up)
            status = self.status(vm_id)
            ours = self.ours(status, probe)
            if not ours:
                raise TransientHostError(self.run.host, f"the job started for {self.run.vm_name} is not in the host's job list "
                                         "(Get-WBJob)", "the step looks again on its next try")
        job = ours[-1]
        self._record_job(job, len(ours), self.decide(status, ours).restarted)
        if not record.settled(record.Until.SHADOW_COPY, status, job.start):
            return Wait(record.Until.SHADOW_COPY, job_start=job.start)
        if record.past_shadow_copy(job, status.boot_time):
            seen = seen or status.clock  # nothing on the host marks the end of an online shadow copy: see record.timings
        return {"job_started_at": ours[0].start.isoformat()} | record.sighting(seen)

    def _try_start(self, vm_id: str, clock: datetime, last_start: datetime | None, window: str) -> bool:
        """One Start-HvbVMBackup, claimed first (catalog.start_claimed; `clock`: the host's, just before): True when
        the host took the job, False while another job holds it; NotThisTime (recorded `deferred`) when the host's
        clock says the window has closed."""
        limit = {"NotAfterUtc": last_start.isoformat()} if last_start is not None else {}
        started = catalog.start_claimed(self.engine, self.run.key(), clock, lambda: self.hook.run_script(
            "Start-HvbVMBackup", VMId=vm_id, BackupTarget=self.location(vm_id), **limit))
        if started["started"]:
            self.record(status=Status.RUNNING, job_started_at=_parse_time(started["job"]["start_time_utc"]))
            return True
        if started.get("window_closed"):  # the host's clock decided, right before it would have started
            self._window_closed(window, _parse_time(started["clock_utc"]))
        return False

    def _window_closed(self, window: str, clock: datetime) -> None:
        self.record(status=Status.DEFERRED, error=f"window closed: the backup window {window} ended before this "
                    f"VM's turn (host clock {clock:%Y-%m-%dT%H:%M}Z); it goes first next time")
        raise NotThisTime("window closed")

    # -- verify merge ------------------------------------------------------------------

    def verify_merge(self, probe: dict[str, Any], limit: timedelta, deadline: datetime | None = None) -> dict[str, Any] | Wait:
        """Whether the Recovery checkpoint of ours is merged and the VM runs on its own disks again, or what to wait for.

        The limit is host time (`[hyperv_backup] merge_timeout_minutes`), counted on the host's clock
        from the first look (`deadline`, once set, comes back with the trigger's event). A job of ours
        that ended meanwhile and failed (or was cut by a host restart) ends this wait at once: the copy
        step decides what comes next from the host's record. One that succeeded does not: its Recovery
        checkpoint must still be merged (a fast job ends before this step first looks).
        """
        status = self.status(probe["vm_id"])
        ours = self.ours(status, probe)
        if not ours or not ours[-1].awaits_merge(status.boot_time):
            return {"merged": False, "job_state": ours[-1].state if ours else None}
        if rules.merged(status.vm):
            return {"merged": True}
        deadline = deadline or status.clock + limit
        if status.clock < deadline:
            return Wait(record.Until.MERGED, job_start=ours[-1].start, merge_deadline=deadline)
        names = ", ".join(repr(c["name"]) for c in rules.recovery_checkpoints(status.vm["checkpoints"])) or "(none listed)"
        avhdx = rules.on_avhdx(status.vm["disks"])
        job = ours[-1]  # a job that succeeded keeps its record on the row: the copy is on the target
        done = record.succeeded_values(job, len(ours), self.decide(status, ours).restarted) if job.succeeded else {}
        raise self.fail(
            f"the Recovery checkpoint {names} was not merged within {limit.total_seconds() / 60:.0f} minutes of host time "
            f"and the VM still runs on {', '.join(avhdx) or 'its .avhdx'}; clean up with Remove-VMSnapshot -VMName "
            f"'{self.run.vm_name}' -Name <that name> and let Hyper-V merge (never delete .avhdx files by hand)"
            + (f". The backup job itself succeeded at {job.end:%H:%M} UTC (host clock): its copy is on the target" if done else ""),
            **done)

    # -- copy: the state machine (its waits are the trigger's) ----------------------------

    def advance(self, probe: dict[str, Any], last_start: datetime | None = None, window: str = "",
                seen: datetime | None = None) -> dict[str, Any] | Wait:
        """Read the host's record, decide (record.decide), act, record. Returns what to wait for
        (ours runs; another job holds the host before ours can start again), or ours once it
        succeeded. A job that failed for a reason a new job cures (0x800423F3, a host restart) gets
        a new one, up to `max_attempts` jobs in all. A Recovery checkpoint our cut job left behind is
        removed first, also when no new job follows (the attempts are used up, the window has closed):
        the VM would otherwise run on its .avhdx until the next night (Remove-HvbRecoveryCheckpoint
        refuses any other kind). `seen`: when the wait on our job first saw it past its shadow copy (for verify:
        record.timings)."""
        status = self.status(probe["vm_id"])
        ours = self.ours(status, probe)
        decision = self.decide(status, ours)
        if decision.action == record.Action.FOLLOW:
            self._record_job(decision.job, len(ours), decision.restarted)
            return Wait(record.Until.JOB_ENDED, job_start=decision.job.start, attempts=len(ours), restarted=decision.restarted)
        if decision.action == record.Action.SUCCEEDED:
            self.record(**record.succeeded_values(decision.job, len(ours), decision.restarted))
            return decision.job.to_json() | record.sighting(seen)
        if ours:  # ours ended and failed: a Recovery checkpoint it left (a restart cut it) goes, whatever comes next
            self._remove_our_recovery_checkpoints(status, ours[0].start)
        so_far = {"attempts": len(ours) or None, "host_restarted": decision.restarted or None}  # whatever comes next
        if decision.action == record.Action.FAILED:
            raise self.fail(decision.reason, job_finished_at=decision.job.end if decision.job else None, **so_far)
        closed = f"{decision.reason}; no new job was started because the backup window {window} has closed (the VM goes first next time)"
        if last_start is not None and status.clock > last_start:
            raise self.fail(closed, **so_far)
        if decision.action != record.Action.WAIT_HOST:
            try:
                started = self._try_start(probe["vm_id"], status.clock, last_start, window)
            except NotThisTime:
                raise self.fail(closed, **so_far) from None
            if started:
                self.log.info("%s: new Windows Server Backup job (attempt %d): %s", self.run.vm_name, len(ours) + 1, decision.reason)
                return self.advance(probe, last_start, window)  # follow the new job (its start is the host's)
        return Wait(record.Until.HOST_FREE, not_after=last_start)

    def _remove_our_recovery_checkpoints(self, status: record.BackupStatus, since: datetime) -> None:
        """A Recovery checkpoint made during our jobs is our debris (a restart cut the job before WSB removed it)."""
        for checkpoint in rules.recovery_checkpoints(status.vm["checkpoints"]):
            created = _parse_time(checkpoint.get("created_utc"))
            if created is not None and created >= since:
                self.hook.run_script("Remove-HvbRecoveryCheckpoint", VMId=status.vm["id"], CheckpointId=checkpoint["id"])

    # -- verify --------------------------------------------------------------------------

    def verify(self, probe: dict[str, Any], snap: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        """Check that the backup landed and record what it did, from the host's record: the version that
        holds the VM (Get-WBBackupSet, cross-checked with wbadmin), the job's times, the VM's Saved-state
        spans and Recovery checkpoint (Hyper-V's events), the host's boot time, event 10150."""
        status = self.status(probe["vm_id"], since=snap["job_started_at"])
        ours = self.ours(status, probe)
        final = record.JobRecord.from_json(job)
        ours = [j for j in ours if j.start <= final.start] or [final]
        sightings = tuple(seen for seen in (record.sighted(snap), record.sighted(job)) if seen)
        times = record.timings(ours, status.events, status.boot_time, probe["state"] == "Running", sightings)
        result = self.hook.run_script("Get-HvbVMBackupResult", VMId=probe["vm_id"], VMName=self.run.vm_name,
                                      SinceUtc=final.start.isoformat())
        versions = [v for v in result["versions"] if self.run.vm_name in v.get("vms", [])]
        if not versions:
            raise self.fail(rules.missing_version(self.run.vm_name, self.location(probe["vm_id"]), result["versions"]))
        version_id = versions[-1]["version_id"]
        code, stdout, _ = self.hook.run_text("wbadmin get versions")
        listed = {v.version_identifier for v in parse_wbadmin_versions(stdout)}
        if version_id not in listed:
            raise self.fail(f"backup version {version_id} is not listed by wbadmin get versions (exit code {code})")
        prediction = rules.Prediction(Mode(probe["predicted_mode"]), probe["reasons"])
        mode, reasons = rules.actual_mode(prediction, probe["os_version"], record.logged_during(result["events"], final), times.saw_saved_state,
                                          times.saw_recovery_checkpoint)
        if times.host_restarted:
            reasons = [*reasons, f"the host restarted during the backup; it was backed up again ({len(ours)} jobs in all)"]
        breach = rules.policy_breach(mode, prediction.mode, self.allowed_modes)  # a succeeded backup the policy forbids
        points = sorted(_parse_time(p["backup_time_utc"]) for p in result.get("restore_points", []))  # the host's list, all of it
        self.record(status=Status.SUCCEEDED, error=breach, mode=mode.value, restore_points=len(points),
                    oldest_restore_point=points[0] if points else None, mode_reasons=json.dumps(reasons), backup_version=version_id,
                    job_started_at=times.job_started_at, job_finished_at=times.job_finished_at, snapshot_at=times.snapshot_at,
                    merged_at=times.merged_at, offline_seconds=times.offline_seconds, uptime_reset=times.uptime_reset,
                    host_restarted=times.host_restarted, attempts=len(ours))
        return {"mode": mode.value, "backup_version": version_id}
