"""The host's behaviour, in the manner of moto's backends: what a Hyper-V host with Windows Server Backup does.

The layers around it only read and change it: the WinRM listener (`server.py`, `wsman.py`) and the cmdlets
(`commands.py`). Its objects are in `objects.py`, its time in `clock.py` (a job's phases are planned on the
host's clock and applied lazily), its faults in `faults.py`.

**Its mode table is its own, on purpose.** Which backup mode a VM gets (online through the guest's VSS, a
Recovery checkpoint, Saved state, offline) is decided here from the host's version and the guest's
facts, written apart from the client's rules (`hyperv_backup.rules`) and never importing them: the
simulator is the independent oracle a test checks the client's prediction against, so the two can disagree.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from hyperv_backup.facts import (
    BACKUP_LOG,
    VMMS_GUEST_COULD_NOT_PARTICIPATE,
    VMMS_LOG,
    BackupEvent,
    CheckpointType,
    HostEvent,
    HResult,
    Mode,
    at_least,
    hresult_hex,
)

from . import faults
from .clock import Clock, Schedule, iso
from .exceptions import JobAlreadyRunning
from .objects import VM, BackupVersion, Checkpoint, Event, Job, RecoveredFiles
from .scenario import HostSpec, Scenario, VMSpec

SHADOW_COPY_SECONDS = 20.0  # simulated seconds for the VSS snapshot (plus jitter)
SAVE_RESTORE_SECONDS = 12.0  # extra time a VM spends saving and restoring in Saved-state mode
MERGE_SECONDS = 15.0  # simulated seconds for Hyper-V to merge a recovery checkpoint
REBOOT_REAL_SECONDS = 3.0  # how long a rebooting host does not answer, in real seconds
GUEST_BOOT_SECONDS = 90.0  # simulated seconds a started guest takes to boot before its heartbeat answers (plus jitter)


class Host:
    def __init__(self, spec: HostSpec, fleet: Fleet):
        self.spec = spec
        self.fleet = fleet
        rng = fleet.rng
        now = fleet.clock.now()
        self.vms: list[VM] = []
        for vm_spec in spec.vms:
            running = vm_spec.state in ("Running", "Paused")
            vm = VM(
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper(),
                spec=vm_spec,
                state=vm_spec.state,
                started=now - timedelta(seconds=rng.randint(3600, 90 * 86400)) if running else None,
                faults=faults.armed(vm_spec.faults),
            )
            for cp in vm_spec.checkpoints:
                vm.checkpoints.append(self._new_checkpoint(cp.name, cp.type, now - timedelta(days=rng.randint(1, 30))))
            vm.stray = [f"{vm.folder}\\{vm.id}-disk0_{str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()}.avhdx"
                        for _ in range(vm_spec.stray_avhdx)]
            self.vms.append(vm)
        self.faults = faults.armed(spec.faults)
        self.booted = now - timedelta(days=120)  # Win32_OperatingSystem.LastBootUpTime: before every VM started
        self.jobs: list[Job] = []
        self.versions: list[BackupVersion] = []
        self.events: list[Event] = []
        self.target_free_bytes = int(spec.target_free_gb * 1024**3)
        self.folders: dict[str, RecoveredFiles] = {}  # folders a recovery wrote (restore tests)
        self.max_concurrent_jobs = 0
        self.requests = 0
        self.down_until = 0.0  # monotonic time until which the host does not answer (reboot)
        self.schedule = Schedule(fleet.clock)

    # -- basics -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    def now(self) -> datetime:
        return self.schedule.now()

    def tick(self) -> None:
        """Bring the host up to its clock: apply every planned change that is due."""
        self.schedule.tick()

    def journal(self, event: str, **fields: Any) -> None:
        self.fleet.journal(self.name, event, when=self.now(), **fields)

    def log_event(self, log: str, event_id: int, message: str, vm: str | None = None, when: datetime | None = None) -> None:
        self.events.append(Event(log, event_id, when or self.now(), message, vm))

    def log_vm_event(self, event: tuple[str, int], vm: VM, what: str) -> None:
        """One of the host's own records of a VM (HostEvent): the message names the VM and its id, as Windows' do."""
        log, event_id = event
        self.log_event(log, event_id, f"'{vm.name}' {what}. (Virtual machine ID {vm.id})", vm.name)

    def _new_checkpoint(self, name: str, type_: str, created: datetime) -> Checkpoint:
        return Checkpoint(id=str(uuid.UUID(int=self.fleet.rng.getrandbits(128), version=4)).upper(), name=name, type=type_, created=created)

    def find_vm(self, vm_id: str | None = None, name: str | None = None) -> list[VM]:
        if vm_id is not None:
            return [vm for vm in self.vms if vm.id.lower() == vm_id.lower()]
        return [vm for vm in self.vms if vm.name == name]

    def running_job(self) -> Job | None:
        self.tick()
        return next((job for job in self.jobs if job.state == "Running"), None)

    def last_job(self) -> Job | None:
        self.tick()
        return self.jobs[-1] if self.jobs else None

    # -- faults -------------------------------------------------------------------------

    def take_fault(self, step: str, layer: str, vm: VM | None = None) -> str | None:
        """Consume one strike of a fault this layer delivers at this step (the VM's own first), if any is left."""
        kinds = faults.striking(layer, step)
        for owner, armed in ((vm.name if vm else None, vm.faults if vm else []), (None, self.faults)):
            fault = faults.take(armed, step, kinds)
            if fault is not None:
                self.journal("fault", kind=fault.kind, step=step, vm=owner)
                return fault.kind
        return None

    # -- the mode table (docs/domain.md) ------------------------------------------------------

    def guest_can_take_part(self, vm: VM) -> bool:
        """Whether the guest's own VSS can answer the host's backup request."""
        spec = vm.spec
        if vm.state != "Running" or not spec.integration_services.vss or spec.guest_vss == "missing":
            return False
        if spec.guest == "windows":
            pass
        elif spec.guest == "linux":
            if not at_least(self.spec.os, "2012 R2"):
                return False  # hv_vss_daemon is used from host 2012 R2
        else:
            return False  # FreeBSD and others have no backup integration
        if not at_least(self.spec.os, "2012 R2"):
            volumes = spec.volumes or []
            if any(v.fs != "NTFS" or v.dynamic for v in volumes):
                return False  # 2012 and older: every guest volume NTFS on a basic disk
        return True

    def backup_mode(self, vm: VM) -> Mode:
        if vm.state in ("Off", "Saved"):
            return Mode.OFFLINE
        if self.guest_can_take_part(vm) and vm.spec.guest_vss != "fails":
            return Mode.ONLINE
        return Mode.CHECKPOINT if at_least(self.spec.os, "2012 R2") else Mode.SAVED

    # -- Windows Server Backup -----------------------------------------------------------

    def on_target(self, path: str, folders: bool) -> bool:
        """Whether `path` is the host's backup target (a volume, or a network share), or with `folders` also a folder
        in the share (New-WBBackupTarget -NetworkPath takes any folder of a share, which Start-HvbVMBackup creates)."""
        target = self.spec.backup_target.rstrip(":\\").upper()
        path = path.rstrip(":\\").upper()
        return path == target or (folders and target.startswith("\\\\") and path.startswith(target + "\\") and "\\" not in path[len(target) + 1:])

    def start_job(self, vm: VM, target: str) -> Job:
        """Start-WBBackup for one VM; raises JobAlreadyRunning while another job runs."""
        running = self.running_job()
        if running is not None:
            # Windows refuses the second job; we still count the attempt, so a client that
            # ever asks for two jobs at once on a host shows up in max_concurrent_jobs.
            self.max_concurrent_jobs = max(self.max_concurrent_jobs, 2)
            self.journal("job_rejected", vms=[vm.name], running=running.vm_name)
            raise JobAlreadyRunning(running.id)
        now = self.now()
        mode = self.backup_mode(vm)
        job = Job(
            id=len(self.jobs) + 1,
            vm_id=vm.id,
            vm_name=vm.name,
            mode=mode,
            started=now,
            target=target,
            bytes_total=int(vm.spec.disk_gb * 1024**3),
        )
        self.jobs.append(job)
        self.max_concurrent_jobs = max(self.max_concurrent_jobs, 1)
        self.journal("job_started", vms=[vm.name], job=job.id, mode=mode.value)
        self.log_event(BACKUP_LOG, BackupEvent.STARTED, "The backup operation has started.", vm.name)
        self._plan(job, vm)
        return job

    def start_external_job(self) -> None:
        """Someone started a backup at the console (the job_running fault): busy for a while."""
        now = self.now()
        job = Job(id=len(self.jobs) + 1, vm_id="", vm_name="(console backup)", mode=Mode.OFFLINE, started=now,
                  target=self.spec.backup_target, bytes_total=0, operation="copy", external=True)
        self.jobs.append(job)
        self.journal("job_started", vms=[], job=job.id, external=True)
        self.schedule.at(now + timedelta(seconds=120), lambda: self._finish(job, None, HResult.OK, ""))

    def _plan(self, job: Job, vm: VM) -> None:
        rng = self.fleet.rng
        t = job.started
        shadow = SHADOW_COPY_SECONDS + rng.uniform(0, 10)
        at_snapshot = self.take_fault("snapshot", faults.HOST, vm)
        transient_at_snapshot = at_snapshot == "vss_transient"
        falls_back = job.mode != Mode.OFFLINE and vm.spec.guest_vss == "fails" and self.guest_can_take_part(vm)

        if falls_back:
            self.schedule.at(t + timedelta(seconds=2), lambda: self.log_event(
                VMMS_LOG, VMMS_GUEST_COULD_NOT_PARTICIPATE,
                f"Could not create backup checkpoint for virtual machine '{vm.name}': the guest's VSS could not "
                f"take part. The virtual machine is backed up offline instead. (Virtual machine ID {vm.id})", vm.name))
        if job.mode == Mode.CHECKPOINT:
            self.schedule.at(t + timedelta(seconds=1), lambda: self._create_recovery_checkpoint(vm))
        elif job.mode == Mode.SAVED:
            self.schedule.at(t + timedelta(seconds=1), lambda: self._set_state(vm, "Saved"))
            shadow += SAVE_RESTORE_SECONDS
            self.schedule.at(t + timedelta(seconds=shadow), lambda: self._resume(vm))

        if at_snapshot == "host_reboot":
            self.schedule.at(t + timedelta(seconds=shadow / 2), self.reboot)
        if transient_at_snapshot:
            def fail_snapshot() -> None:
                self._remove_recovery_checkpoints(vm)
                self._finish(job, vm, HResult.VSS_WRITER_TRANSIENT,
                             "A Volume Shadow Copy Service operation failed: a VSS writer reported a transient error.")
            self.schedule.at(t + timedelta(seconds=shadow), fail_snapshot)
            return

        t_snapshot = t + timedelta(seconds=shadow)
        self.schedule.at(t_snapshot, lambda: self._set_operation(job, "merge" if job.mode == Mode.CHECKPOINT else "copy", t_snapshot))
        t_copy = t_snapshot
        if job.mode == Mode.CHECKPOINT:
            # The shadow copy is done: WSB removes the Recovery checkpoint and Hyper-V merges it, then the copy starts.
            t_copy = t_snapshot + timedelta(seconds=MERGE_SECONDS)
            at_merge = self.take_fault("merge", faults.HOST, vm)
            if at_merge == "merge_stuck":
                self.schedule.at(t_snapshot, lambda: self.journal("merge_stuck", vm=vm.name))
            else:
                self.schedule.at(t_snapshot, lambda: self._remove_recovery_checkpoints(vm))
            if at_merge == "host_reboot":
                self.schedule.at(t_snapshot + timedelta(seconds=MERGE_SECONDS / 2), self.reboot)
            self.schedule.at(t_copy, lambda: self._set_operation(job, "copy", t_copy))

        copy_seconds = job.bytes_total / (self.spec.throughput_mb_s * 1024**2) * rng.uniform(0.95, 1.05)
        job.copy_seconds = copy_seconds
        copy_fault = self.take_fault("copy", faults.HOST, vm)
        if copy_fault is None and job.bytes_total > self.target_free_bytes:
            copy_fault = "target_full"
        if copy_fault == "target_full":
            share = min(1.0, self.target_free_bytes / job.bytes_total) if job.bytes_total else 0
            self.schedule.at(t_copy + timedelta(seconds=copy_seconds * share), lambda: self._target_full(job, vm))
        elif copy_fault == "host_reboot":
            self.schedule.at(t_copy + timedelta(seconds=copy_seconds / 2), self.reboot)
        elif copy_fault == "vss_transient":
            self.schedule.at(t_copy + timedelta(seconds=copy_seconds / 2), lambda: self._finish(
                job, vm, HResult.VSS_WRITER_TRANSIENT, "A VSS writer reported a transient error during the copy."))
        else:
            self.schedule.at(t_copy + timedelta(seconds=copy_seconds), lambda: self._finish(job, vm, HResult.OK, ""))

    def _set_operation(self, job: Job, operation: str, when: datetime) -> None:
        if job.state != "Running":
            return
        job.operation = operation
        if operation == "copy":
            job.copy_started = when
        self.journal("job_phase", job=job.id, vms=[job.vm_name], operation=operation)

    def _set_state(self, vm: VM, state: str) -> None:
        self.journal("vm_state", vm=vm.name, **{"from": vm.state, "to": state})
        if state == "Saved":
            self.log_vm_event(HostEvent.VM_SAVED, vm, "was saved successfully")
        elif vm.state == "Saved" and state == "Running":
            self.log_vm_event(HostEvent.VM_RESTORED, vm, "was restored successfully")
        vm.state = state

    def _resume(self, vm: VM) -> None:
        if vm.state == "Saved":
            self._set_state(vm, "Running")
            vm.started = self.now()  # a restored VM's uptime counts from its resume

    def _create_recovery_checkpoint(self, vm: VM) -> None:
        if vm not in self.vms:
            return
        checkpoint = self._new_checkpoint(f"{vm.name} - Backup - ({self.now():%m/%d/%Y - %I:%M:%S %p})", CheckpointType.RECOVERY, self.now())
        vm.checkpoints.append(checkpoint)
        vm.started = self.now()  # the uptime counter restarts at the recovery checkpoint
        self.log_vm_event(HostEvent.CHECKPOINT_CREATED, vm, f"created the {checkpoint.type} checkpoint '{checkpoint.name}'")
        self.journal("checkpoint_created", vm=vm.name, name=checkpoint.name, type=checkpoint.type)
        self.journal("uptime_reset", vm=vm.name)

    def _remove_recovery_checkpoints(self, vm: VM) -> None:
        for checkpoint in [cp for cp in vm.checkpoints if cp.type == CheckpointType.RECOVERY]:
            self.remove_checkpoint_and_merge(vm, checkpoint)

    def remove_checkpoint(self, vm: VM, checkpoint: Checkpoint) -> None:
        vm.checkpoints.remove(checkpoint)
        self.journal("checkpoint_removed", vm=vm.name, name=checkpoint.name, type=checkpoint.type)

    def remove_checkpoint_and_merge(self, vm: VM, checkpoint: Checkpoint) -> None:
        """Remove-VMSnapshot: the checkpoint goes at once, its .avhdx is merged into the parent in the background."""
        avhdx = vm.avhdx_of(checkpoint)
        self.remove_checkpoint(vm, checkpoint)
        vm.merging.append(avhdx)
        self.log_vm_event(HostEvent.MERGE_STARTED, vm, f"removed the checkpoint '{checkpoint.name}'; merging {avhdx}")

        self.schedule.at(self.now() + timedelta(seconds=MERGE_SECONDS), lambda: self._merge_done(vm, avhdx))

    def _merge_done(self, vm: VM, avhdx: str) -> None:
        if avhdx in vm.merging:
            vm.merging.remove(avhdx)
            self.log_vm_event(HostEvent.MERGE_DONE, vm, f"merged {avhdx} into its parent")
            self.journal("merge_finished", vm=vm.name, path=avhdx)

    def _target_full(self, job: Job, vm: VM) -> None:
        self.log_event(BACKUP_LOG, BackupEvent.TARGET_FULL, f"The backup operation to '{job.target}' failed: there is not enough disk space on the target.", vm.name)
        self._finish(job, vm, HResult.DISK_FULL, "There is not enough space on the disk.")

    def _finish(self, job: Job, vm: VM | None, hresult: int, error: str) -> None:
        if job.state != "Running":
            return
        now = self.now()
        job.bytes_done = job.progress(now) if hresult else job.bytes_total
        job.state = "Completed" if hresult == HResult.OK else "Failed"
        job.operation = "done"
        job.hresult = hresult
        job.error = error
        job.finished = now
        if vm is not None and hresult == HResult.OK:
            job.version_id = self._add_version(now, job)
            self.target_free_bytes = max(0, self.target_free_bytes - job.bytes_total)
            self.log_event(BACKUP_LOG, BackupEvent.SUCCEEDED, "The backup operation has finished successfully.", vm.name)
        elif vm is not None:
            self.log_event(BACKUP_LOG, BackupEvent.FAILED,
                           f"The backup operation that started at '{iso(job.started)}' has failed with following error code "
                           f"'{hresult_hex(hresult)}' ({error}).", vm.name)
        self.log_event(BACKUP_LOG, BackupEvent.COMPLETED, "The backup operation has completed.", vm.name if vm else None)
        self.journal("job_finished", job=job.id, vms=[job.vm_name] if vm else [], hresult=hresult_hex(hresult),
                     bytes=job.bytes_done, external=job.external)

    def _add_version(self, when: datetime, job: Job) -> str:
        moment = when.replace(second=0, microsecond=0)
        existing = {v.version_id for v in self.versions}
        while (version_id := moment.strftime("%m/%d/%Y-%H:%M")) in existing:
            moment += timedelta(minutes=1)  # WSB versions are per minute; never reuse one
        if job.target.startswith("\\\\"):  # a network share folder keeps one version: each backup into it replaces the last
            self.versions = [v for v in self.versions if v.target.lower() != job.target.lower()]
        source = next((vm for vm in self.vms if vm.id == job.vm_id), None)
        sources = {job.vm_name: (job.vm_id, source.spec.model_copy(deep=True))} if source else {}
        self.versions.append(BackupVersion(version_id, when, job.target, [job.vm_name], sources))
        return version_id

    # -- recovery (restore tests) ---------------------------------------------------------

    def start_recovery(self, version: BackupVersion, vm_name: str, folder: str) -> Job:
        """Start-WBHyperVRecovery of one VM of a version to `folder`, files only (no -UseAlternateLocation: nothing
        is registered with Hyper-V, the original is not touched). One WSB operation at a time: raises
        JobAlreadyRunning while a backup or another recovery runs."""
        running = self.running_job()
        if running is not None:
            raise JobAlreadyRunning(running.id)
        vm_id, spec = version.sources[vm_name]
        now = self.now()
        job = Job(id=len(self.jobs) + 1, vm_id="", vm_name=vm_name, mode=Mode.OFFLINE, started=now, target=folder,
                  bytes_total=int(spec.disk_gb * 1024**3), operation="copy", copy_started=now, version_id=version.version_id,
                  kind="recovery")
        job.copy_seconds = job.bytes_total / (self.spec.throughput_mb_s * 1024**2) * self.fleet.rng.uniform(0.95, 1.05)
        self.jobs.append(job)
        self.journal("recovery_started", job=job.id, vm=vm_name, version=version.version_id, folder=folder)
        self.schedule.at(now + timedelta(seconds=job.copy_seconds), lambda: self._recovered(job, folder, vm_id, spec))
        return job

    def _recovered(self, job: Job, folder: str, vm_id: str, spec: VMSpec) -> None:
        if job.state != "Running":
            return
        job.state, job.operation, job.finished, job.bytes_done = "Completed", "done", self.now(), job.bytes_total
        self.folders[folder] = RecoveredFiles(vm_id, spec, [f"{folder}\\Virtual Machines\\{vm_id}.vmcx",
                                                            f"{folder}\\Virtual Hard Disks\\{vm_id}-disk0.vhdx"])
        self.journal("recovery_finished", job=job.id, vm=job.vm_name, folder=folder)

    def import_copy(self, folder: str, name: str) -> VM:
        """Import-VM -Copy -GenerateNewId from a recovered folder into its own subfolder, then Rename-VM: a VM that
        shares nothing with the original (a new id, a new name, its own files), off."""
        recovered = self.folders[folder]
        spec = recovered.spec.model_copy(update={"name": name, "state": "Off", "checkpoints": [], "faults": [], "stray_avhdx": 0})
        vm = VM(id=str(uuid.UUID(int=self.fleet.rng.getrandbits(128), version=4)).upper(), spec=spec, state="Off", started=None,
                home=f"{folder}\\Import")
        recovered.files += [f"{vm.home}\\Virtual Machines\\{vm.id}.vmcx", vm.chain()[-1]]
        self.vms.append(vm)
        self.journal("vm_imported", vm=name, id=vm.id, source=recovered.vm_id)
        return vm

    def start_vm(self, vm: VM) -> None:
        """Start-VM: the guest boots; its heartbeat answers once it has."""
        self._set_state(vm, "Running")
        vm.started = self.now()
        vm.boot_seconds = GUEST_BOOT_SECONDS + self.fleet.rng.uniform(0, 30)

    def stop_vm(self, vm: VM) -> None:
        """Stop-VM -TurnOff."""
        if vm.state != "Off":
            self._set_state(vm, "Off")
            vm.started = None

    def remove_folder(self, folder: str) -> int:
        """Remove-Item -Recurse of a recovered folder; the number of files removed."""
        removed = self.folders.pop(folder, None)
        count = len(removed.files) if removed else 0
        self.journal("folder_removed", folder=folder, files=count)
        return count

    # -- faults that change the host itself -----------------------------------------------

    def reboot(self) -> None:
        """The host restarts: the running job vanishes and its debris stays, VMs restart, and its boot time
        moves (so the restarted WinRM service knows no shell of before: `wsman.Shells`)."""
        now = self.now()
        for job in self.jobs:
            if job.state == "Running":
                job.state = "Failed"
                job.operation = "done"
                job.hresult = HResult.BACKUP_FAILED
                job.error = "The backup operation was stopped because the computer restarted."
                job.finished = now
                self.journal("job_vanished", job=job.id, vms=[job.vm_name])
        self.schedule.clear()
        self.booted = now
        for vm in self.vms:
            if vm.state in ("Running", "Saved") and vm.spec.state == "Running":
                vm.state = "Running"
                vm.started = now
            for avhdx in vm.merging:  # Hyper-V resumes an interrupted merge after the boot
                self.schedule.at(now + timedelta(seconds=MERGE_SECONDS), lambda vm=vm, avhdx=avhdx: self._merge_done(vm, avhdx))
        self.down_until = time.monotonic() + REBOOT_REAL_SECONDS
        self.journal("host_reboot", seconds=REBOOT_REAL_SECONDS)

    def remove_vm(self, vm: VM) -> None:
        self.vms.remove(vm)
        self.journal("vm_removed", vm=vm.name)

    # -- observation -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        self.tick()
        now = self.now()
        return {
            "name": self.name,
            "os": self.spec.os,
            "locale": self.spec.locale,
            "transport": self.spec.transport,
            "port": self.fleet.ports.get(self.name),
            "clock_utc": iso(now),
            "boot_time_utc": iso(self.booted),
            "backup_target": self.spec.backup_target,
            "target_free_bytes": self.target_free_bytes,
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "requests": self.requests,
            "vms": [
                {
                    "id": vm.id,
                    "name": vm.name,
                    "state": vm.state,
                    "generation": vm.spec.generation,
                    "guest": vm.spec.guest,
                    "uptime_seconds": vm.uptime_seconds(now),
                    "checkpoint_type": vm.spec.checkpoint_type,
                    "checkpoints": [cp.to_json() for cp in vm.checkpoints],
                    "disks": vm.disks(),
                    "stray_avhdx": vm.stray,
                    "network_connected": vm.network_connected,
                }
                for vm in self.vms
            ],
            "jobs": [job.to_json(now) for job in self.jobs],
            "backup_versions": [v.to_json() for v in self.versions],
            "folders": {path: recovered.files for path, recovered in self.folders.items()},
            "events": [e.to_json() for e in self.events],
        }


class Fleet:
    """Every simulated host, one clock, one journal, one lock."""

    def __init__(self, scenario: Scenario, clock: Clock | None = None):
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.clock = clock or Clock(scenario.speed)
        self.lock = threading.RLock()
        self.ports: dict[str, int] = {}
        self._journal: list[dict[str, Any]] = []
        self.hosts = {spec.name.upper(): Host(spec, self) for spec in scenario.hosts}

    def host(self, name: str) -> Host:
        return self.hosts[name.upper()]

    def journal(self, host: str | None, event: str, when: datetime | None = None, **fields: Any) -> None:
        self._journal.append({"at": iso(when or self.clock.now()), "host": host, "event": event, **fields})

    def journal_lines(self) -> list[dict[str, Any]]:
        with self.lock:
            for host in self.hosts.values():
                host.tick()
            return list(self._journal)

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"clock_utc": iso(self.clock.now()), "speed": self.clock.speed, "seed": self.scenario.seed,
                    "hosts": [host.to_json() for host in self.hosts.values()]}
