"""The five steps of one VM's backup, as functions the DAG's tasks call.

probe -> snapshot/checkpoint -> verify merge -> copy -> verify. Each step reads the host
through HyperVHook, decides with the pure `rules`, and writes what it learned to the
catalog before it returns, so a worker that dies leaves a row that says how far it got.
The copy step's wait lives in `triggers.BackupJobTrigger`, so it holds no worker slot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import catalog, hygiene, record, rules, windows
from .errors import HostBusyError, PermanentHostError, TransientHostError
from .facts import DEFAULT_JOB_ATTEMPTS, WSB_SHADOW_COPY_OPERATION, Mode
from .hooks import HyperVHook
from .parsers import parse_wbadmin_versions

SHADOW_COPY_TEXTS = frozenset(WSB_SHADOW_COPY_OPERATION.values())
TURN_GRACE_SECONDS = 30.0  # how long a VM lets an earlier one that is still on its way go first
ACTIVE, COMING = "running", frozenset({None, "none", "scheduled", "queued", "up_for_retry", "up_for_reschedule", "restarting"})


def ahead_of(states: dict[str, str | None], task_id: str, map_index: int) -> tuple[int, int]:
    """From the states of a run's mapped step (`{"<task_id>_<map index>": state}`, as Airflow's
    get_task_states answers): how many VMs earlier in the run's order are in that step now (active),
    and how many have it still to come (their probe, a worker slot)."""
    active = coming = 0
    for key, state in states.items():
        name, _, index = key.rpartition("_")
        if name == task_id and index.isdigit() and int(index) < map_index:
            state = getattr(state, "value", state)
            active += state == ACTIVE
            coming += state in COMING
    return active, coming


@dataclass
class RunKey:
    dag_id: str
    run_id: str
    interval_start: datetime | None
    interval_end: datetime | None
    host: str
    vm_name: str

    def key(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "host": self.host, "vm_name": self.vm_name}


_parse_time = record.parse_time


class NotThisTime(Exception):
    """This VM is not backed up in this run, for a reason the catalog already holds (covered, deferred, done)."""


class BackupSteps:
    """One VM on one host in one DAG run."""

    def __init__(self, hook: HyperVHook, engine, run: RunKey, target: str, poll_seconds: float = 0.5,
                 clean_recovery_checkpoints: bool = False, run_alive: Callable[[str, str], bool] | None = None,
                 ahead: Callable[[], tuple[int, int]] | None = None, max_attempts: int = DEFAULT_JOB_ATTEMPTS):
        """`run_alive(dag_id, run_id)` tells whether another Airflow run still runs: a `running` row of
        a run that died (a killed worker) must not keep this run waiting for its backup. `ahead()` says
        how many VMs earlier in this run's order are in their snapshot step now, and how many have it
        still to come (`ahead_of`): the host goes to them first."""
        self.hook, self.engine, self.run, self.target, self.poll = hook, engine, run, target, poll_seconds
        self.clean = clean_recovery_checkpoints
        self.run_alive = run_alive or (lambda dag_id, run_id: True)
        self.ahead = ahead or (lambda: (0, 0))
        self.max_attempts = max_attempts
        self.log = logging.getLogger(__name__)

    def record(self, **values: Any) -> None:
        base = {"interval_start": self.run.interval_start, "interval_end": self.run.interval_end}
        catalog.upsert(self.engine, self.run.key(), base | values, datetime.now(UTC))

    def fail(self, error: str, **values: Any) -> PermanentHostError:
        self.record(status="failed", error=error, **values)
        return PermanentHostError(self.run.host, error, script=None)

    # -- before the probe: does this run back the VM up at all? ---------------------

    def begin(self, run_type: str, force: bool = False) -> None:
        """Raise NotThisTime when the catalog says this VM needs no job in this run.

        A rerun of a run (a retry, a cleared task, a backfill reprocessing failed runs) does not
        redo a VM that already succeeded or was covered in it. A backfilled interval is covered
        by a good backup taken after it ended, if there is one (`force` takes a new one anyway).
        """
        existing = catalog.row(self.engine, self.run.key())
        if existing and existing["status"] in ("succeeded", "covered"):
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
            self.record(status="covered", error=f"missed; covered by the backup of {when} (run {cover['run_id']}), no second job",
                        **{k: cover[k] for k in ("vm_id", "predicted_mode", "mode", "mode_reasons", "backup_version")})
            raise NotThisTime(f"covered by the backup of {when}")

    def _catch_up_elsewhere(self) -> str | None:
        """For a backfilled interval, right before its job would start: None when this run takes the
        catch-up; a description of another run's catch-up of this VM still under way, to wait for;
        NotThisTime when that one has succeeded and covers this interval. Concurrent backfill runs
        thus take one catch-up per VM; the host alone would only keep their jobs from overlapping."""
        self._raise_if_covered()
        for other in catalog.backups_under_way(self.engine, self.run.host, self.run.vm_name, self.run.interval_end,
                                               self.run.dag_id, self.run.run_id):
            if self.run_alive(other["dag_id"], other["run_id"]):
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
        return self.hook.run_script("Get-VMBackupProbe", VMName=self.run.vm_name, BackupTarget=self.target)

    def _judge(self, result: dict[str, Any]) -> dict[str, Any]:
        os_version = rules.os_version_of(result["host"]["os_caption"])
        vms = result["vms"]
        if not vms:
            raise self.fail(f"no VM named {self.run.vm_name!r} on {self.run.host}: check the inventory")
        if len(vms) > 1:
            raise self.fail(f"{len(vms)} VMs are named {self.run.vm_name!r} on {self.run.host}: rename one so the backup is unambiguous")
        vm = vms[0]
        prediction = rules.predict_mode(os_version, vm)
        values = {"vm_id": vm["id"], "predicted_mode": prediction.mode.value, "mode_reasons": json.dumps(prediction.reasons)}
        leftovers = rules.recovery_checkpoints(vm["checkpoints"])
        if leftovers:
            names = ", ".join(repr(c["name"]) for c in leftovers)
            raise self.fail(
                f"a Recovery checkpoint left by an earlier failed backup blocks this one ({names}); remove it with "
                f"Remove-VMSnapshot -VMName '{vm['name']}' -Name <name> and let Hyper-V merge, then rerun", **values)
        size = sum(int(d.get("size_bytes") or 0) for d in vm["disks"])
        if not result["target"]["exists"]:
            raise self.fail(f"the backup target {self.target} does not exist on {self.run.host}", **values)
        if result["target"]["free_bytes"] < size:
            free_gb, need_gb = result["target"]["free_bytes"] / 1024**3, size / 1024**3
            raise self.fail(f"the backup target {self.target} has {free_gb:.1f} GB free; this VM needs {need_gb:.1f} GB", **values)
        self.record(status="running", error=None, **values)
        return {"vm_id": vm["id"], "os_version": os_version, "predicted_mode": prediction.mode.value,
                "reasons": prediction.reasons, "uptime_seconds": vm["uptime_seconds"], "state": vm["state"],
                "clock_utc": result["host"]["clock_utc"], "size_bytes": size}

    # -- the host's record, and what it says to do -----------------------------------------

    def status(self, vm_id: str, since: str | None = None) -> record.BackupStatus:
        """Get-VMBackupStatus, retried through transient failures (a dropped connection is not an answer;
        a rebooting host answers again after its restart)."""
        params = {"VMId": vm_id} | ({"SinceUtc": since} if since else {})
        for attempt in range(6):
            try:
                return record.BackupStatus.from_json(self.hook.run_script("Get-VMBackupStatus", **params))
            except TransientHostError:
                if attempt == 5:
                    raise
                time.sleep(min(30.0, self.poll * 2 ** attempt))
        raise AssertionError("unreachable")

    def ours(self, status: record.BackupStatus, probe: dict[str, Any]) -> list[record.JobRecord]:
        """This VM's jobs that this backup started: they hold the VM, started after this run's probe (host
        clock), and no other run's row claims them (a concurrent run's job is waited for, never adopted)."""
        since = _parse_time(probe["clock_utc"])
        return [job for job in status.jobs if self.run.vm_name in job.vms and job.start >= since
                and catalog.job_owner(self.engine, self.run.host, self.run.vm_name, job.start) in (None, (self.run.dag_id, self.run.run_id))]

    def decide(self, status: record.BackupStatus, probe: dict[str, Any]) -> record.Decision:
        return record.decide(self.ours(status, probe), status.boot_time, status.host_job, self.max_attempts,
                             self.run.host, self.run.vm_name)

    def _record_job(self, job: record.JobRecord, attempts: int, restarted: bool) -> None:
        self.record(status="running", job_started_at=job.start, attempts=attempts, host_restarted=restarted or None)

    # -- snapshot / checkpoint ---------------------------------------------------------

    def snapshot(self, probe: dict[str, Any], busy_timeout: float = 3600, last_start: datetime | None = None,
                 window: str = "", catch_up: bool = False) -> dict[str, Any]:
        """Start this VM's job (or find the one this backup started) and follow it through the shadow copy.

        `last_start` is the window's end plus grace (UTC): no job starts after it, also not
        after waiting for another job; the VM is then recorded `deferred` and goes first next time.
        `catch_up` (a backfilled interval) starts no job while another run's catch-up of the VM
        is under way, and none once one has succeeded. A job of ours that already ended (a retry
        after it failed, or after the host restarted) is left to the copy step's decision.
        """
        vm_id = probe["vm_id"]
        status = self.status(vm_id)
        if self.decide(status, probe).action in (record.Action.START, record.Action.WAIT_HOST):
            self._start_job(vm_id, busy_timeout, last_start, window, catch_up)
            status = self.status(vm_id)
        ours = self.ours(status, probe)
        if not ours:
            raise TransientHostError(self.run.host, f"the job started for {self.run.vm_name} is not in the host's job list "
                                     "(Get-WBJob)", "the step looks again on its next try")
        self._record_job(ours[-1], len(ours), self.decide(status, probe).restarted)
        seen_past = None
        while True:
            job = self.ours(status, probe)[-1]
            if not job.running or status.boot_time > job.start:
                break
            if job.operation not in SHADOW_COPY_TEXTS:
                seen_past = status.clock  # nothing on the host marks the end of an online shadow copy: see record.timings
                break
            time.sleep(self.poll)
            status = self.status(vm_id)
        return {"job_started_at": ours[0].start.isoformat(), "snapshot_seen_at": seen_past.isoformat() if seen_past else None}

    def _my_turn(self, waiting_since: float) -> bool:
        """Whether this VM may ask for the host now. The run's VMs wait for the host side by side, so
        whoever polled first after a job ended would take it; instead the order of the run (priority,
        then the oldest good backup) holds: not while an earlier VM is in its snapshot step (waiting for
        the host, or its job starting), nor, for TURN_GRACE_SECONDS, while one is still on its way
        (bounded, so a VM that waits for a worker slot never holds the others up for long)."""
        active, coming = self.ahead()
        return not active and (not coming or time.monotonic() - waiting_since > TURN_GRACE_SECONDS)

    def _start_job(self, vm_id: str, busy_timeout: float, last_start: datetime | None, window: str, catch_up: bool) -> None:
        """Start-VMBackup, in this VM's turn, until the host takes the job; its start time is in the
        catalog before anything else."""
        began = time.monotonic()
        deadline = began + busy_timeout
        while True:
            elsewhere = self._catch_up_elsewhere() if catch_up else None
            if elsewhere is None and self._my_turn(began) and self._try_start(vm_id, last_start, window):
                return
            if time.monotonic() > deadline:
                raise HostBusyError(self.run.host, elsewhere or "another Windows Server Backup job kept the host busy", "rerun later")
            time.sleep(self.poll)

    def _try_start(self, vm_id: str, last_start: datetime | None, window: str) -> bool:
        """One Start-VMBackup: True when the host took the job, False while another job holds it;
        NotThisTime (recorded `deferred`) when the host's clock says the window has closed."""
        limit = {"NotAfterUtc": last_start.isoformat()} if last_start is not None else {}
        started = self.hook.run_script("Start-VMBackup", VMId=vm_id, BackupTarget=self.target, **limit)
        if started["started"]:
            self.record(status="running", job_started_at=_parse_time(started["job"]["start_time_utc"]))
            return True
        if started.get("window_closed"):  # the host's clock decided, right before it would have started
            self.record(status="deferred", error=f"window closed: the backup window {window} ended before this "
                        f"VM's turn (host clock {started['clock_utc'][:16]}Z); it goes first next time")
            raise NotThisTime("window closed")
        return False

    # -- verify merge ------------------------------------------------------------------

    def verify_merge(self, probe: dict[str, Any], limit: timedelta) -> dict[str, Any]:
        """Wait until no Recovery checkpoint of ours is left and the VM runs on its own disks again.

        The limit is host time (`[hyperv_backup] merge_timeout_minutes`), counted on the host's clock
        from the first look. A job of ours that ended meanwhile (failed, or cut by a host restart)
        ends this wait at once: the copy step decides what comes next from the host's record.
        """
        first_look = None
        while True:
            status = self.status(probe["vm_id"])
            ours = self.ours(status, probe)
            if not ours or not ours[-1].running or status.boot_time > ours[-1].start:
                return {"merged": False, "job_state": ours[-1].state if ours else None}
            checkpoints = status.vm["checkpoints"]
            recovery = rules.recovery_checkpoints(checkpoints)
            others = [c for c in checkpoints if c not in recovery]
            avhdx = rules.on_avhdx(status.vm["disks"])
            if not recovery and (not avhdx or others):
                return {"merged": True}
            first_look = first_look or status.clock
            if status.clock - first_look > limit:
                names = ", ".join(repr(c["name"]) for c in recovery) or "(none listed)"
                raise self.fail(
                    f"the Recovery checkpoint {names} was not merged within {limit.total_seconds() / 60:.0f} minutes of host time "
                    f"and the VM still runs on {', '.join(avhdx) or 'its .avhdx'}; clean up with Remove-VMSnapshot -VMName "
                    f"'{self.run.vm_name}' -Name <that name> and let Hyper-V merge (never delete .avhdx files by hand)")
            time.sleep(self.poll)

    # -- copy: the state machine (its waits are the trigger's) ----------------------------

    def advance(self, probe: dict[str, Any], last_start: datetime | None = None, window: str = "") -> dict[str, Any]:
        """Read the host's record, decide (record.decide), act, record. Returns what to wait for:
        `{"wait": "job"}` (ours runs), `{"wait": "host"}` (another job holds the host before ours can
        start again), or `{"job": ...}` once ours succeeded. A job that failed for a reason a new job
        cures (0x800423F3, a host restart) gets a new one, up to `max_attempts` jobs in all; the
        Recovery checkpoint our cut job left behind is removed first (Remove-RecoveryCheckpoint
        refuses any other kind)."""
        status = self.status(probe["vm_id"])
        decision = self.decide(status, probe)
        ours = self.ours(status, probe)
        if decision.action == record.Action.FOLLOW:
            self._record_job(decision.job, len(ours), decision.restarted)
            return {"wait": "job"}
        if decision.action == record.Action.SUCCEEDED:
            job = decision.job
            self.record(job_started_at=job.start, job_finished_at=job.end, bytes_copied=job.bytes_transferred,
                        attempts=len(ours), host_restarted=decision.restarted)
            return {"job": job.to_json()}
        if decision.action == record.Action.FAILED:
            raise self.fail(decision.reason, attempts=len(ours) or None, host_restarted=decision.restarted or None,
                            job_finished_at=decision.job.end if decision.job else None)
        if decision.action == record.Action.WAIT_HOST:
            return {"wait": "host"}
        if ours:
            self._remove_our_recovery_checkpoints(status, ours[0].start)
        try:
            started = self._try_start(probe["vm_id"], last_start, window)
        except NotThisTime:
            raise self.fail(f"{decision.reason}; no new job was started because the backup window {window} has closed "
                            "(the VM goes first next time)") from None
        if started:
            self.log.info("%s: new Windows Server Backup job (attempt %d): %s", self.run.vm_name, len(ours) + 1, decision.reason)
        return {"wait": "job" if started else "host"}

    def _remove_our_recovery_checkpoints(self, status: record.BackupStatus, since: datetime) -> None:
        """A Recovery checkpoint made during our jobs is our debris (a restart cut the job before WSB removed it)."""
        for checkpoint in rules.recovery_checkpoints(status.vm["checkpoints"]):
            created = _parse_time(checkpoint.get("created_utc"))
            if created is not None and created >= since:
                self.hook.run_script("Remove-RecoveryCheckpoint", VMId=status.vm["id"], CheckpointId=checkpoint["id"])

    # -- verify --------------------------------------------------------------------------

    def verify(self, probe: dict[str, Any], snap: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        """Check that the backup landed and record what it did, from the host's record: the version that
        holds the VM (Get-WBBackupSet, cross-checked with wbadmin), the job's times, the VM's Saved-state
        spans and Recovery checkpoint (Hyper-V's events), the host's boot time, event 10150."""
        status = self.status(probe["vm_id"], since=snap["job_started_at"])
        ours = self.ours(status, probe)
        final = record.JobRecord.from_json(job)
        ours = [j for j in ours if j.start <= final.start] or [final]
        times = record.timings(ours, status.events, status.boot_time, probe["state"] == "Running",
                               _parse_time(snap.get("snapshot_seen_at")))
        result = self.hook.run_script("Get-VMBackupResult", VMId=probe["vm_id"], VMName=self.run.vm_name,
                                      SinceUtc=final.start.isoformat())
        versions = [v for v in result["versions"] if self.run.vm_name in v.get("vms", [])]
        if not versions:
            raise self.fail("the job reported success but no backup version contains this VM")
        version_id = versions[-1]["version_id"]
        code, stdout, _ = self.hook.run_text("wbadmin get versions")
        listed = {v.version_identifier for v in parse_wbadmin_versions(stdout)}
        if version_id not in listed:
            raise self.fail(f"backup version {version_id} is not listed by wbadmin get versions (exit code {code})")
        prediction = rules.Prediction(Mode(probe["predicted_mode"]), probe["reasons"])
        mode, reasons = rules.actual_mode(prediction, probe["os_version"], result["events"], times.saw_saved_state,
                                          times.saw_recovery_checkpoint)
        if times.host_restarted:
            reasons = [*reasons, f"the host restarted during the backup; it was backed up again ({len(ours)} jobs in all)"]
        self.record(status="succeeded", error=None, mode=mode.value, mode_reasons=json.dumps(reasons), backup_version=version_id,
                    job_started_at=times.job_started_at, job_finished_at=times.job_finished_at, snapshot_at=times.snapshot_at,
                    merged_at=times.merged_at, offline_seconds=times.offline_seconds, uptime_reset=times.uptime_reset,
                    host_restarted=times.host_restarted, attempts=len(ours))
        return {"mode": mode.value, "backup_version": version_id}
