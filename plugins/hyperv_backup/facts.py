"""Facts about Windows Server, Hyper-V and Windows Server Backup, each stated once.

The rules, the parsers, the reports and the simulator all read these tables, so a
display name, an HResult or an event id is corrected in one place only. Pure data:
no Airflow import, no I/O.
"""

from __future__ import annotations

from enum import StrEnum

# Host versions, oldest first. Order matters: several facts hold "from 2012 R2".
HOST_VERSIONS: tuple[str, ...] = ("2008 R2", "2012", "2012 R2", "2016", "2019", "2022", "2025")

LOCALES: tuple[str, ...] = ("en-US", "ja-JP")


def version_rank(os_version: str) -> int:
    """Position of a host version in HOST_VERSIONS; raises ValueError for an unknown one."""
    try:
        return HOST_VERSIONS.index(os_version)
    except ValueError:
        raise ValueError(
            f"unknown Windows Server version {os_version!r}; expected one of {', '.join(HOST_VERSIONS)}"
        ) from None


def at_least(os_version: str, minimum: str) -> bool:
    return version_rank(os_version) >= version_rank(minimum)


class Mode(StrEnum):
    """How a host-level backup treated a VM (docs/domain.md, the mode table)."""

    ONLINE = "online"  # guest VSS took part: application-consistent, no interruption
    CHECKPOINT = "checkpoint"  # 2012 R2+: Recovery checkpoint, crash-consistent, uptime restarts
    SAVED = "saved"  # 2012 and older: VM put in Saved state for the shadow copy
    OFFLINE = "offline"  # VM was Off or Saved: files copied, VM untouched


class Status(StrEnum):
    """How a VM's backup of one run ended (the catalog's `status`, docs/catalog.md)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # with the cause and what to do in `error`
    SKIPPED = "skipped"  # nothing to back up (plan only, the VM is gone, ...)
    COVERED = "covered"  # an earlier catch-up backup covers this (backfilled) interval
    DEFERRED = "deferred"  # the window closed before the VM's turn
    RUNNING = "running"  # not ended: under way (a job-holding step to be tried again too), or a worker died mid-step



class CheckpointType(StrEnum):
    STANDARD = "Standard"
    PRODUCTION = "Production"
    RECOVERY = "Recovery"
    PLANNED = "Planned"
    MISSING = "Missing"
    REPLICA = "Replica"
    APP_CONSISTENT_REPLICA = "AppConsistentReplica"
    SYNCED_REPLICA = "SyncedReplica"


# Only these are ever removed by this project: debris of a host-level backup.
# A VM's checkpoint setting (Set-VM -CheckpointType); Disabled also rules out the Recovery
# checkpoint a 2012 R2+ host needs for a backup that the guest cannot take part in.
CHECKPOINT_SETTINGS: tuple[str, ...] = ("Disabled", "Production", "ProductionOnly", "Standard")

REMOVABLE_CHECKPOINT_TYPES = frozenset({CheckpointType.RECOVERY})

# The backup integration service. Get-VMIntegrationService's language-independent id
# is the same on every version; its display name changed twice and is localized.
VSS_SERVICE_ID = "Microsoft:5CED1297-4598-4915-A5FC-AD21BB4D02A4"
_VSS_DISPLAY_NAMES: dict[str, dict[str, str]] = {
    # era -> locale -> display name
    "snapshot": {"en-US": "Backup (volume snapshot)", "ja-JP": "バックアップ (ボリューム スナップショット)"},
    "checkpoint": {"en-US": "Backup (volume checkpoint)", "ja-JP": "バックアップ (ボリューム チェックポイント)"},
    "shadow copy": {"en-US": "Backup (volume shadow copy)", "ja-JP": "バックアップ (ボリューム シャドウ コピー)"},
}
VSS_DISPLAY_NAMES: frozenset[str] = frozenset(
    name for by_locale in _VSS_DISPLAY_NAMES.values() for name in by_locale.values()
) | {"VSS"}

HEARTBEAT_SERVICE_ID = "Microsoft:84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47"
# The name every restore test's copy starts with (hyperv_backup.restore): such VMs are short-lived copies of a backup,
# never backed up, audited or reported as the fleet's, and the only VMs a restore test's clean-up may remove.
RESTORE_COPY_PREFIX = "HvbRestoreTest-"
_HEARTBEAT_DISPLAY_NAMES = {"en-US": "Heartbeat", "ja-JP": "ハートビート"}


def vss_display_name(os_version: str, locale: str) -> str:
    """The backup integration service's display name as that host shows it."""
    if version_rank(os_version) <= version_rank("2012"):
        era = "snapshot"
    elif os_version == "2012 R2":
        era = "checkpoint"  # the renaming slip of 2012 R2, in every language
    else:
        era = "shadow copy"
    return _VSS_DISPLAY_NAMES[era][locale]


def heartbeat_display_name(locale: str) -> str:
    return _HEARTBEAT_DISPLAY_NAMES[locale]


# HResults that Windows Server Backup and VSS report, with what an admin should know.
class HResult:
    OK = 0
    VSS_WRITER_TRANSIENT = 0x800423F3  # VSS_E_WRITERERROR_RETRYABLE
    DISK_FULL = 0x80070070  # ERROR_DISK_FULL
    FILE_EXISTS = 0x80070050  # ERROR_FILE_EXISTS: a leftover recovery checkpoint
    BACKUP_FAILED = 0x8078011E


HRESULT_MEANINGS: dict[int, str] = {
    HResult.VSS_WRITER_TRANSIENT: "a VSS writer hit a transient error (0x800423F3)",  # a new job is started: record.decide
    HResult.DISK_FULL: "the backup target is full (0x80070070); free space on the target or add a disk",
    HResult.FILE_EXISTS: (
        "a file already exists (0x80070050), usually a Recovery checkpoint left by an earlier failed backup; "
        "remove it with Remove-VMSnapshot and let Hyper-V merge"
    ),
    HResult.BACKUP_FAILED: "Windows Server Backup reported the backup failed (0x8078011E); see the Backup event log",
}


def hresult_hex(code: int) -> str:
    return f"0x{code & 0xFFFFFFFF:08X}"


# Event ids, by log.
BACKUP_LOG = "Microsoft-Windows-Backup"
VMMS_LOG = "Microsoft-Windows-Hyper-V-VMMS-Admin"


class BackupEvent:
    STARTED = 1
    SUCCEEDED = 4
    FAILED = 5
    COMPLETED = 14
    TARGET_FULL = 50


VMMS_GUEST_COULD_NOT_PARTICIPATE = 10150  # unverified against Microsoft's docs (docs/domain.md)

# Where the host records what a backup did to a VM, by log and event id. The ids below are
# from field reports and this project's reading, NOT verified against Microsoft's docs: each is
# stated once, here, so a correction is one line. Messages name the VM and its id, which is how
# the scripts pick a VM's events (Get-WinEvent has no per-VM filter).
WORKER_LOG = "Microsoft-Windows-Hyper-V-Worker-Admin"


class HostEvent:
    """(log, id) of the host's own record of a VM's state and its checkpoints."""

    VM_SAVED = (WORKER_LOG, 18510)  # the VM was saved (Saved state) - unverified id
    VM_RESTORED = (WORKER_LOG, 18516)  # the VM was restored from Saved state (running again) - unverified id
    CHECKPOINT_CREATED = (VMMS_LOG, 18304)  # a (Recovery) checkpoint was created - unverified id
    MERGE_STARTED = (VMMS_LOG, 19070)  # the checkpoint was removed; its .avhdx merges in the background - unverified id
    MERGE_DONE = (VMMS_LOG, 19080)  # the background merge ended (per field reports) - unverified id
    MERGE_FAILED = (VMMS_LOG, 19100)  # the background merge failed (per field reports) - unverified id


# How many Windows Server Backup jobs one VM backup may take when a job fails for a reason a new
# job cures (a transient VSS error, a host restart): `[hyperv_backup] job_attempts` overrides it.
DEFAULT_JOB_ATTEMPTS = 3

# The project's PowerShell scripts and the backup step each serves. The simulator uses the
# same map to decide where a scenario fault strikes.
SCRIPT_STEPS: dict[str, str] = {
    "Get-HvbVMBackupProbe": "probe",
    "Start-HvbVMBackup": "snapshot",
    "Get-HvbVMBackupStatus": "copy",  # the simulator refines this by the job's phase
    "Get-HvbVMBackupResult": "verify",
    "Get-HvbHostVMs": "probe",
    "Get-HvbHostReadiness": "probe",  # the preflight's
    "Remove-HvbRecoveryCheckpoint": "probe",  # clean-up happens before a backup, or in the audit
}
STEPS: tuple[str, ...] = ("probe", "snapshot", "merge", "copy", "verify")

# `wbadmin` text, by locale. The tool's wording is localized; these are the labels the
# parser looks for and the simulator prints.
WBADMIN_BANNER: dict[str, tuple[str, str]] = {
    "en-US": ("wbadmin 1.0 - Backup command-line tool", "(C) Copyright Microsoft Corporation. All rights reserved."),
    "ja-JP": ("wbadmin 1.0 - バックアップ コマンドライン ツール", "(C) Copyright Microsoft Corporation. All rights reserved."),
}
WBADMIN_VERSION_LABELS: dict[str, dict[str, str]] = {
    # field -> locale -> label (without the colon)
    "backup_time": {"en-US": "Backup time", "ja-JP": "バックアップ時間"},
    "backup_location": {"en-US": "Backup location", "ja-JP": "バックアップの場所"},
    "version_identifier": {"en-US": "Version identifier", "ja-JP": "バージョン識別子"},
    "can_recover": {"en-US": "Can recover", "ja-JP": "回復できる項目"},
    "snapshot_id": {"en-US": "Snapshot ID", "ja-JP": "スナップショット ID"},
}
# How `Backup time:` prints a host-local time (strftime / strptime forms).
WBADMIN_TIME_FORMATS: dict[str, tuple[str, ...]] = {
    "en-US": ("%m/%d/%Y %I:%M %p",),
    "ja-JP": ("%Y/%m/%d %H:%M",),
}
WBADMIN_LOCATION: dict[str, str] = {"en-US": "Fixed Disk labeled {target}", "ja-JP": "固定ディスク (ラベル {target})"}
WBADMIN_CAN_RECOVER_APPLICATIONS: dict[str, str] = {"en-US": "Application(s)", "ja-JP": "アプリケーション"}
WBADMIN_NO_BACKUPS: dict[str, str] = {
    "en-US": "ERROR - No backups were found.",
    "ja-JP": "エラー - バックアップが見つかりませんでした。",
}
# Windows Server Backup's CurrentOperation while it takes the shadow copy (the snapshot step).
WSB_SHADOW_COPY_OPERATION: dict[str, str] = {
    "en-US": "Creating a shadow copy of the volumes specified for backup...",
    "ja-JP": "バックアップ対象として指定されたボリュームのシャドウ コピーを作成しています...",
}
WSB_COPY_OPERATION: dict[str, str] = {
    "en-US": "Running backup of the virtual machine ({percent}% copied).",
    "ja-JP": "仮想マシンのバックアップを実行しています ({percent}% コピー済み)。",
}
WSB_NO_OPERATION: dict[str, str] = {
    "en-US": "There is no backup or recovery operation currently running.",
    "ja-JP": "実行中のバックアップ操作または回復操作はありません。",
}
