"""The host's record of a VM's backup, and the decisions taken from it.

A backup's truth lives on the host: Windows Server Backup's job history (start, end, HResult),
the host's boot time, and the event logs where Hyper-V writes when it saved or restored a VM and
created or merged a checkpoint (ids in `facts.HostEvent`). This module types what
Get-HvbVMBackupStatus returns (`BackupStatus`, the one contract the hook's callers read and the
simulator builds) and decides from it, purely:

- `decide`: what a VM backup does next (start a job, follow ours, take a new job after a transient
  failure or a host restart, stop), whoever asks and however often: a retry, a re-attached
  trigger and a fresh worker all decide the same from the same record;
- `settled`: whether what a step waits for (its turn, the shadow copy, the merge, the job's end)
  has happened, for the triggers that wait and the steps that decide whether to wait;
- `timings`: the catalog's times and the evidence of the mode, from the host's timestamps, never
  from the moment a poll looked.

No Airflow import, no I/O: tested in milliseconds against constructed records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from .facts import WSB_SHADOW_COPY_OPERATION, HostEvent, HResult
from .rules import describe_hresult, merged

SHADOW_COPY_TEXTS = frozenset(WSB_SHADOW_COPY_OPERATION.values())  # Get-WBJob's CurrentOperation, in every locale


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _need(document: dict[str, Any], key: str, what: str) -> Any:
    if key not in document:
        raise ValueError(f"{what} lacks {key!r}: the host's script and this version of the project disagree")
    return document[key]


@dataclass(frozen=True)
class JobRecord:
    """One Windows Server Backup job as Get-WBJob (or its history) shows it."""

    state: str  # Running | Completed | Failed
    start: datetime
    end: datetime | None
    hresult: int
    error: str
    vms: tuple[str, ...]
    operation: str = ""
    version_id: str | None = None
    bytes_transferred: int = 0
    bytes_total: int = 0

    @property
    def running(self) -> bool:
        return self.state == "Running"

    @property
    def succeeded(self) -> bool:
        return self.state == "Completed" and not self.hresult

    def runs_after(self, boot_time: datetime) -> bool:
        """Whether the job still runs: Running, and no restart of the host since it began (a job the restart
        cut may still read Running until the host rewrites its history)."""
        return self.running and not boot_time > self.start

    def awaits_merge(self, boot_time: datetime) -> bool:
        """Whether the merge of the Recovery checkpoint this job made is still to be awaited: the job runs on, or it
        succeeded (a job does not wait for the merge). One that failed, or that a restart cut, leaves the next step
        to the copy step's decision."""
        return self.runs_after(boot_time) or self.succeeded

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JobRecord:
        return cls(state=str(_need(document, "job_state", "a job")), start=parse_time(_need(document, "start_time_utc", "a job")),
                   end=parse_time(document.get("end_time_utc")), hresult=int(document.get("hresult") or 0) & 0xFFFFFFFF,
                   error=str(document.get("error_description") or ""), vms=tuple(document.get("vms") or ()),
                   operation=str(document.get("operation") or ""), version_id=document.get("version_id"),
                   bytes_transferred=int(document.get("bytes_transferred") or 0), bytes_total=int(document.get("bytes_total") or 0))

    def to_json(self) -> dict[str, Any]:
        """The form the copy step hands on (XCom): plain JSON, times as ISO 8601."""
        return {"job_state": self.state, "start_time_utc": self.start.isoformat(), "end_time_utc": self.end.isoformat() if self.end else None,
                "hresult": self.hresult, "error_description": self.error, "vms": list(self.vms), "version_id": self.version_id,
                "bytes_transferred": self.bytes_transferred, "bytes_total": self.bytes_total}


@dataclass(frozen=True)
class EventRecord:
    log: str
    id: int
    time: datetime
    message: str

    def is_(self, event: tuple[str, int]) -> bool:
        return (self.log, self.id) == event


@dataclass(frozen=True)
class BackupStatus:
    """Get-HvbVMBackupStatus: where one VM's backup stands, in the host's words and times."""

    clock: datetime  # the host's clock when it answered
    boot_time: datetime  # Win32_OperatingSystem.LastBootUpTime
    host_job: JobRecord | None  # the job running on the host now, whichever VM it holds
    jobs: tuple[JobRecord, ...]  # this VM's jobs in the host's history (and the running one), oldest first
    vm: dict[str, Any]  # id, name, state, uptime_seconds, checkpoints, disks
    events: tuple[EventRecord, ...]  # this VM's state and checkpoint events (HostEvent) since the asked time
    change_key: str = ""  # what -WaitSeconds watches; echoed back as -Seen, never interpreted here

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> BackupStatus:
        what = "Get-HvbVMBackupStatus's answer"
        host_job = document.get("host_job")
        return cls(
            clock=parse_time(_need(document, "clock_utc", what)),
            boot_time=parse_time(_need(document, "boot_time_utc", what)),
            host_job=JobRecord.from_json(host_job) if host_job else None,
            jobs=tuple(sorted((JobRecord.from_json(j) for j in _need(document, "jobs", what)), key=lambda j: j.start)),
            vm=_need(document, "vm", what),
            events=tuple(sorted((EventRecord(e["log"], int(e["id"]), parse_time(e["time_utc"]), e.get("message") or "")
                                 for e in document.get("events") or []), key=lambda e: e.time)),
            change_key=str(document.get("change_key") or ""),
        )

    @property
    def job(self) -> JobRecord | None:
        """This VM's latest job."""
        return self.jobs[-1] if self.jobs else None

    def host_busy(self) -> bool:
        return self.host_job is not None and self.host_job.running

    def job_started_at(self, start: datetime | None) -> JobRecord | None:
        """This VM's job that started at `start` (host clock), if the host still lists it."""
        return next((j for j in self.jobs if j.start == start), None)


class Action(StrEnum):
    START = "start"  # no job of ours yet: start one (in the VM's turn, when the host is free)
    FOLLOW = "follow"  # ours runs: follow it
    WAIT_HOST = "wait_host"  # ours must be (re)started but another job holds the host
    NEW_JOB = "new_job"  # ours failed for a reason a new job cures: start another
    SUCCEEDED = "succeeded"  # ours succeeded (whether or not anyone saw it end)
    FAILED = "failed"  # ours failed for good, or the attempts are used up


@dataclass(frozen=True)
class Decision:
    action: Action
    job: JobRecord | None = None
    reason: str = ""
    restarted: bool = False  # the host restarted while one of our jobs ran


SHUTDOWN_ALLOWANCE = timedelta(minutes=15)  # a restart's shutdown and firmware: a cut job's last record precedes the boot


def restarted_during(job: JobRecord, boot_time: datetime) -> bool:
    """Whether the host's restart cut this job: it started before the last boot, did not succeed,
    and has no end, or an end within the restart's own span before the boot (a job that had
    failed well before the restart was not cut by it)."""
    return (boot_time > job.start and not job.succeeded
            and (job.end is None or job.end >= boot_time - SHUTDOWN_ALLOWANCE))


def ours(jobs: tuple[JobRecord, ...] | list[JobRecord], vm_name: str, since: datetime, recorded_by_others: set[datetime],
         mine: datetime | None, claimed_from: datetime | None) -> list[JobRecord]:
    """The jobs of a VM that one backup started, in the host's order: each holds the VM, started at or after
    `since` (the backup's probe, host clock), is not recorded by another run's row (a concurrent run's job is
    waited for, never adopted), and is either the one this backup's row records (`mine`) or started since the
    row's claim (`claimed_from`, catalog.start_claimed): an earlier job of its own (the row records the latest),
    or one it asked for whose start it could not write down (the answer was lost, the worker died). A backup
    that never asked the host for a job owns none but the one its row records."""
    return [job for job in jobs if vm_name in job.vms and job.start >= since and job.start not in recorded_by_others
            and (job.start == mine or (claimed_from is not None and job.start >= claimed_from))]


def decide(ours: list[JobRecord], boot_time: datetime, host_job: JobRecord | None, max_attempts: int, host: str,
           vm_name: str) -> Decision:
    """The state machine of one VM backup, from the host's record alone.

    `ours`: this VM's jobs that this backup started, oldest first. A transient VSS error
    (0x800423F3) or a host restart gets a new job until `max_attempts` jobs were taken; any other
    failure is final. A success counts however it became known (the answer that said so may have
    been lost on the way).
    """
    busy = host_job is not None and host_job.running
    if not ours:
        return Decision(Action.WAIT_HOST if busy else Action.START)
    last = ours[-1]
    restarted = any(restarted_during(job, boot_time) for job in ours)
    if last.runs_after(boot_time):
        return Decision(Action.FOLLOW, last, restarted=restarted)
    if last.succeeded:
        return Decision(Action.SUCCEEDED, last, restarted=restarted)
    cut = restarted_during(last, boot_time)
    transient = last.hresult == HResult.VSS_WRITER_TRANSIENT
    if cut:
        why = f"the host restarted at {boot_time:%Y-%m-%d %H:%M:%S} UTC, during the job that started {last.start:%H:%M:%S} UTC"
    else:
        why = describe_job_failure(last)
    if not (cut or transient):
        return Decision(Action.FAILED, last, why, restarted)
    if len(ours) >= max_attempts:
        advice = (f"check the host's System event log for why {host} restarted" if cut else
                  f"run `vssadmin list writers` on {host} and look for a writer in a failed state; the Backup and "
                  "Application event logs name it")
        return Decision(Action.FAILED, last, f"{len(ours)} Windows Server Backup jobs of {vm_name} failed, the last because "
                        f"{why}; {advice}, then rerun the backup", restarted)
    return Decision(Action.WAIT_HOST if busy else Action.NEW_JOB, last, why, restarted)


def succeeded_values(job: JobRecord, attempts: int, restarted: bool) -> dict[str, Any]:
    """What the catalog records of a backup whose last job succeeded (the copy step's end, or its trigger's):
    the job's own times and bytes, and how many jobs it took."""
    return {"job_started_at": job.start, "job_finished_at": job.end, "bytes_copied": job.bytes_transferred,
            "attempts": attempts, "host_restarted": restarted}


class Until(StrEnum):
    """What a step waits for on the host, deferred to the triggerer (BackupJobTrigger)."""

    TURN = "turn"  # the VM's turn in the run's order (Airflow's part), then a free host
    HOST_FREE = "host"  # no job holds the host, so ours can be started (again)
    SHADOW_COPY = "shadow_copy"  # our job is past its shadow copy
    MERGED = "merged"  # the Recovery checkpoint is merged into the VM's disks
    JOB_ENDED = "job"  # our job no longer runs


def new_job(status: BackupStatus, since: datetime, known: tuple[datetime, ...] = ()) -> JobRecord | None:
    """A job of this VM started at or after `since` (host clock) that is not one of the `known` starts."""
    return next((j for j in reversed(status.jobs) if j.start >= since and j.start not in known), None)


def past_shadow_copy(job: JobRecord, boot_time: datetime) -> bool:
    """Whether a poll sees the job past its shadow copy: the sighting that times an online shadow copy's end, for
    which Windows logs nothing (`timings`). A job seen already succeeded was past it too (`timings` keeps such a
    sighting within the job)."""
    return job.succeeded or (job.runs_after(boot_time) and job.operation not in SHADOW_COPY_TEXTS)


SIGHTING = "snapshot_seen_at"  # the key under which a step's result or a wait's event carries a sighting


def sighting(seen: datetime | None) -> dict[str, str]:
    """A sighting (`past_shadow_copy`) as a step's result or a wait's event carries it on: empty without one."""
    return {SIGHTING: seen.isoformat()} if seen else {}


def sighted(document: dict[str, Any] | None) -> datetime | None:
    """The sighting a step's result or a wait's event carries (`sighting`), if any."""
    return parse_time((document or {}).get(SIGHTING))


def settled(until: Until, status: BackupStatus, job_start: datetime | None = None, not_after: datetime | None = None,
            merge_deadline: datetime | None = None) -> bool:
    """Whether the wait `until` is over, by the host's record: the step must look again and decide.

    A wait on our job (`job_start`) is over as soon as the job no longer runs, vanished, or the host
    restarted under it, whatever it waited for; a wait for the host is over at `not_after` (the
    window's end, host clock), and a merge's at `merge_deadline` (host clock), so the step can say so.
    A merge is waited for also after our job succeeded: the job does not wait for it, and a Recovery
    checkpoint Hyper-V never merged leaves the VM on its .avhdx whatever the job's result.
    A turn's wait is also over once a new job of the VM exists (the trigger started it: see
    triggers.BackupJobTrigger), which the trigger checks with `new_job`.
    """
    if until in (Until.TURN, Until.HOST_FREE):
        return not status.host_busy() or (not_after is not None and status.clock >= not_after)
    job = status.job_started_at(job_start)
    if job is None or not (job.awaits_merge(status.boot_time) if until == Until.MERGED else job.runs_after(status.boot_time)):
        return True
    if until == Until.SHADOW_COPY:
        return job.operation not in SHADOW_COPY_TEXTS
    if until == Until.MERGED:
        return merged(status.vm) or (merge_deadline is not None and status.clock >= merge_deadline)
    return False


def describe_job_failure(job: JobRecord) -> str:
    text = describe_hresult(job.hresult) if job.hresult else f"the job ended {job.state} without an HResult"
    return text + (f" (the host said: {job.error})" if job.error and job.error not in text else "")


@dataclass(frozen=True)
class Timings:
    """The catalog's figures of one VM backup, from the host's timestamps."""

    job_started_at: datetime
    job_finished_at: datetime | None
    snapshot_at: datetime | None
    merged_at: datetime | None
    offline_seconds: float
    uptime_reset: bool
    host_restarted: bool
    saw_saved_state: bool
    saw_recovery_checkpoint: bool


def _first(events: list[EventRecord], kind: tuple[str, int], after: datetime, before: datetime | None = None) -> EventRecord | None:
    return next((e for e in events if e.is_(kind) and e.time >= after and (before is None or e.time <= before)), None)


def logged_during(events: list[dict[str, Any]], job: JobRecord) -> list[dict[str, Any]]:
    """The events (Get-HvbVMBackupResult's) logged while `job` ran. The script reads the logs from the job's start
    on; what came after its end is another job's (the next VM's event 10150 is not this VM's evidence)."""
    return [e for e in events if job.start <= parse_time(e["time_utc"]) and (job.end is None or parse_time(e["time_utc"]) <= job.end)]


def timings(ours: list[JobRecord], events: tuple[EventRecord, ...] | list[EventRecord], boot_time: datetime, was_running: bool,
            sightings: tuple[datetime, ...] = ()) -> Timings:
    """What the catalog records of a backup whose last job is `ours[-1]`.

    - offline_seconds: every Saved-state span the host logged (saved -> restored) during our jobs;
    - snapshot_at: the end of the shadow copy. Windows logs no event for it, so it is read from
      what happens right after it: the VM restored from Saved state, or the Recovery checkpoint
      removed for its merge. In online and offline backups nothing marks it; then the first moment
      a poll saw the job past the shadow copy is kept (`sightings`: the snapshot step's and the copy
      step's, `past_shadow_copy`), up to the job's end. A sighting before the job began was of an
      earlier job of ours (one that failed) and says nothing of this one; with no other, no time;
    - merged_at: the merge of the Recovery checkpoint done (VMMS), else the snapshot's end (no
      checkpoint was left then);
    - uptime_reset: the host logged a Recovery checkpoint or a restore from Saved state, or the host
      restarted (the VM ran before); a restart is never taken for a checkpoint.
    """
    events = sorted(events, key=lambda e: e.time)
    first, last = ours[0], ours[-1]
    until = last.end
    offline = 0.0
    for saved in (e for e in events if e.is_(HostEvent.VM_SAVED) and e.time >= first.start and (until is None or e.time <= until)):
        restored = _first(events, HostEvent.VM_RESTORED, saved.time)
        offline += ((restored.time if restored else until or saved.time) - saved.time).total_seconds()
    saved = _first(events, HostEvent.VM_SAVED, last.start, until)
    restored = _first(events, HostEvent.VM_RESTORED, saved.time, until) if saved else None
    created = _first(events, HostEvent.CHECKPOINT_CREATED, last.start, until)
    merge_started = _first(events, HostEvent.MERGE_STARTED, created.time, until) if created else None
    merge_done = _first(events, HostEvent.MERGE_DONE, merge_started.time) if merge_started else None
    if merge_started:
        snapshot_at = merge_started.time
    elif restored:
        snapshot_at = restored.time
    elif (seen := min((t for t in sightings if t >= last.start), default=None)) is not None:
        snapshot_at = min(seen, until or seen)
    else:
        snapshot_at = None
    merged_at = merge_done.time if merge_done else (snapshot_at if not created else None)
    host_restarted = any(restarted_during(job, boot_time) for job in ours)
    any_checkpoint = _first(events, HostEvent.CHECKPOINT_CREATED, first.start, until) is not None
    any_restore = _first(events, HostEvent.VM_RESTORED, first.start, until) is not None
    return Timings(job_started_at=last.start, job_finished_at=last.end, snapshot_at=snapshot_at, merged_at=merged_at,
                   offline_seconds=offline, uptime_reset=was_running and (any_checkpoint or any_restore or host_restarted),
                   host_restarted=host_restarted, saw_saved_state=saved is not None, saw_recovery_checkpoint=created is not None)
