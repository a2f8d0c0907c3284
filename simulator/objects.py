"""The host's objects, as Windows keeps them: VMs and their checkpoints, Windows Server Backup's jobs and
versions, the folders a recovery wrote, and the event logs' records. Plain state with its JSON form; what
changes them is the host's behaviour (`host.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyperv_backup.facts import Mode

from .clock import iso
from .faults import Armed
from .scenario import VMSpec


@dataclass
class Checkpoint:
    id: str
    name: str
    type: str
    created: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type, "created_utc": iso(self.created)}


@dataclass
class VM:
    id: str
    spec: VMSpec
    state: str
    started: datetime | None  # when the VM last started running (uptime origin)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    faults: list[Armed] = field(default_factory=list)  # its own, still to strike
    merging: list[str] = field(default_factory=list)  # .avhdx of removed checkpoints, until Hyper-V has merged them
    stray: list[str] = field(default_factory=list)  # .avhdx files no checkpoint explains (debris)
    home: str | None = None  # where an imported VM's files live (a restore test's copy); else Hyper-V's default folder
    network_connected: bool = True  # its network adapter is connected to a virtual switch
    boot_seconds: float = 0.0  # from its start until the guest's heartbeat answers (a VM started here boots first)
    probed: datetime | None = None  # when a probe (Get-HvbVMBackupProbe) last asked for it: its backup's steps begin

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def folder(self) -> str:
        return self.home or f"C:\\ProgramData\\Microsoft\\Windows\\Hyper-V\\Virtual Hard Disks\\{self.id}"

    def heartbeat(self, now: datetime) -> bool:
        """The heartbeat integration service reports OK: the guest runs, has the service, and has booted."""
        spec = self.spec
        return (self.state == "Running" and spec.integration_services.heartbeat and spec.guest != "other"
                and self.uptime_seconds(now) >= self.boot_seconds)

    def avhdx_of(self, checkpoint: Checkpoint) -> str:
        return f"{self.folder}\\{self.id}-disk0_{checkpoint.id}.avhdx"

    def uptime_seconds(self, now: datetime) -> int:
        if self.state != "Running" or self.started is None:
            return 0
        return int((now - self.started).total_seconds())

    def chain(self) -> list[str]:
        """The VM's disk chain, newest first: one .avhdx per checkpoint (and per removed one until merged), then the .vhdx."""
        return [*(self.avhdx_of(cp) for cp in reversed(self.checkpoints)), *reversed(self.merging), f"{self.folder}\\{self.id}-disk0.vhdx"]

    def disks(self) -> list[dict[str, Any]]:
        chain = self.chain()[::-1]
        return [
            {
                "path": chain[-1],
                "vhd_type": "Differencing" if len(chain) > 1 else "Dynamic",
                "parent_path": chain[-2] if len(chain) > 1 else None,
                "size_bytes": int(self.spec.disk_gb * 1024**3),
            }
        ]


@dataclass
class Job:
    """One Windows Server Backup job (a one-time Start-WBBackup) for one VM."""

    id: int
    vm_id: str
    vm_name: str
    mode: Mode
    started: datetime
    target: str
    bytes_total: int
    state: str = "Running"  # Running | Completed | Failed
    operation: str = "snapshot"  # snapshot | merge | copy | done
    copy_started: datetime | None = None
    copy_seconds: float = 0.0
    bytes_done: int = 0
    hresult: int = 0
    error: str = ""
    finished: datetime | None = None
    version_id: str | None = None
    external: bool = False  # started by someone else (the job_running fault)
    kind: str = "backup"  # backup | recovery (Get-WBJob's JobType): a recovery holds the host as a backup does

    def progress(self, now: datetime) -> int:
        if self.operation != "copy" or self.copy_started is None or self.copy_seconds <= 0:
            return self.bytes_done
        share = min(1.0, (now - self.copy_started).total_seconds() / self.copy_seconds)
        return int(self.bytes_total * share)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm_id": self.vm_id,
            "vms": [self.vm_name],
            "job_state": self.state,
            "operation": self.operation,
            "start_time_utc": iso(self.started),
            "end_time_utc": iso(self.finished) if self.finished else None,
            "hresult": self.hresult,
            "error_description": self.error,
            "bytes_transferred": self.progress(now),
            "bytes_total": self.bytes_total,
            "version_id": self.version_id,
            "external": self.external,
            "kind": self.kind,
        }


@dataclass
class BackupVersion:
    version_id: str  # as wbadmin prints it: MM/DD/YYYY-HH:MM, in UTC
    backup_time: datetime
    target: str
    vms: list[str]
    sources: dict[str, tuple[str, VMSpec]] = field(default_factory=dict)  # per VM name: its id and itself as backed up

    def to_json(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "backup_time_utc": iso(self.backup_time), "target": self.target, "vms": self.vms}


@dataclass
class RecoveredFiles:
    """A folder a recovery wrote (Start-WBHyperVRecovery -TargetPath, files only): the VM as it was backed up."""

    vm_id: str  # the original's id, in the recovered configuration
    spec: VMSpec
    files: list[str] = field(default_factory=list)


@dataclass
class Event:
    log: str
    id: int
    time: datetime
    message: str
    vm: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"log": self.log, "id": self.id, "time_utc": iso(self.time), "message": self.message, "vm": self.vm}
