"""Backup-mode prediction and outcome classification: the mode table of docs/domain.md as code.

Pure functions over the JSON the scripts return; no Airflow import, so every row of the
table is tested in milliseconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .facts import (
    HRESULT_MEANINGS,
    VMMS_GUEST_COULD_NOT_PARTICIPATE,
    VSS_DISPLAY_NAMES,
    VSS_SERVICE_ID,
    CheckpointType,
    HResult,
    Mode,
    at_least,
    hresult_hex,
)


@dataclass
class Prediction:
    mode: Mode
    reasons: list[str] = field(default_factory=list)


def os_version_of(caption: str) -> str:
    """'Microsoft Windows Server 2012 R2 Datacenter' -> '2012 R2'."""
    for version in ("2008 R2", "2012 R2", "2012", "2016", "2019", "2022", "2025"):
        if f"Server {version}" in caption:
            return version
    raise ValueError(f"cannot tell the Windows Server version from {caption!r}")


def vss_service(services: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The backup integration service: by its language-independent id, else by any of its display names."""
    for service in services:
        if str(service.get("id", "")).upper().endswith(VSS_SERVICE_ID.split(":")[1]):
            return service
    return next((s for s in services if s.get("name") in VSS_DISPLAY_NAMES), None)


def guest_family(guest_os: str | None) -> str:
    name = (guest_os or "").lower()
    if "windows" in name:
        return "windows"
    if "freebsd" in name:
        return "freebsd"
    if any(word in name for word in ("linux", "ubuntu", "debian", "red hat", "centos", "suse", "rocky", "alma", "oracle")):
        return "linux"
    return "unknown"


def predict_mode(os_version: str, vm: dict[str, Any]) -> Prediction:
    """What a host-level backup will do to this VM, and why, in an admin's words."""
    state = vm.get("state")
    if state in ("Off", "Saved"):
        return Prediction(Mode.OFFLINE, [f"the VM is {state}: its files are copied and it is not touched"])
    fallback = Mode.CHECKPOINT if at_least(os_version, "2012 R2") else Mode.SAVED
    consequence = (
        "a Recovery checkpoint is taken: the backup is crash-consistent and the VM's uptime restarts"
        if fallback == Mode.CHECKPOINT
        else "the VM is put in Saved state (offline) for the shadow copy"
    )
    reasons: list[str] = []
    if state != "Running":
        reasons.append(f"the VM is {state}, so its guest cannot take part")
    service = vss_service(vm.get("integration_services") or [])
    if service is None or not service.get("enabled"):
        reasons.append("the backup integration service is disabled: enable it in the VM's settings (Integration Services)")
    elif service.get("primary_status") not in ("OK",):
        reasons.append("the guest does not answer the backup integration service (no VSS in the guest): "
                       "install the Hyper-V integration services, or the hv_vss_daemon on Linux")
    family = guest_family(vm.get("guest_os"))
    if family == "freebsd":
        reasons.append("FreeBSD guests have no backup integration (no guest VSS)")
    elif family == "linux" and not at_least(os_version, "2012 R2"):
        reasons.append(f"Linux guests take part (hv_vss_daemon) only from host 2012 R2; this host is {os_version}")
    elif family == "unknown" and state == "Running":
        reasons.append("the guest's operating system is unknown (no KVP data): assuming it cannot take part")
    if not at_least(os_version, "2012 R2") and state == "Running":
        reasons.extend(_old_host_volume_reasons(vm))
    if reasons:
        return Prediction(fallback, reasons + [consequence])
    return Prediction(Mode.ONLINE, ["the guest's VSS takes part: application-consistent, no interruption"])


def _old_host_volume_reasons(vm: dict[str, Any]) -> list[str]:
    """2012 and older back up online only when every guest volume is NTFS on a basic disk."""
    raw = vm.get("guest_volumes")
    if not raw:
        return ["the guest's volume layout is unknown; hosts of 2012 and older need NTFS on basic disks for an online backup"]
    volumes = json.loads(raw) if isinstance(raw, str) else raw
    reasons = []
    for volume in volumes:
        if volume.get("fs") != "NTFS":
            what = "the EFI system partition (FAT32)" if volume.get("role") == "efi" else f"a {volume.get('fs')} volume"
            reasons.append(f"the guest has {what}; hosts of 2012 and older back up online only NTFS volumes")
        if volume.get("dynamic"):
            reasons.append("the guest uses a dynamic disk; hosts of 2012 and older back up online only basic disks")
    return reasons


def policy_refusal(prediction: Prediction, allowed: list[Mode] | None) -> str | None:
    """Why the inventory's consistency policy (`require`) forbids this backup, in words that say what to change;
    None when it allows the predicted mode. The prediction decides before any job: the policy is only as
    good as the prediction (an actual mode that differs is reported by `policy_breach`)."""
    if allowed is None or prediction.mode in allowed:
        return None
    how = {Mode.SAVED: "put in Saved state (offline) for its snapshot", Mode.CHECKPOINT: "backed up crash-consistent from a Recovery checkpoint",
           Mode.OFFLINE: "backed up while off", Mode.ONLINE: "backed up online"}[prediction.mode]
    return (f"no job: it would be {how} ({'; '.join(prediction.reasons)}), and the inventory's `require` allows only "
            f"{', '.join(allowed)} for it; allow `{prediction.mode}` for it, or change what the reasons name")


def policy_breach(mode: Mode, predicted: Mode, allowed: list[Mode] | None) -> str | None:
    """The words for a backup that happened in a mode the policy forbids (the prediction said otherwise), or None."""
    if allowed is None or mode in allowed:
        return None
    return (f"backed up {mode}, which the inventory's `require` does not allow for it (only {', '.join(allowed)}); "
            f"the probe predicted {predicted}: see the mode's reasons")


def is_share(target: str) -> bool:
    """Whether the inventory's backup target is a network share (\\\\server\\share), not a volume."""
    return target.startswith("\\\\")


SHARE_UNREACHABLE = ("check that the share exists and that the account may write to it; a WinRM logon reaches another "
                     "computer's share only where the host is trusted for delegation (Kerberos constrained delegation, or CredSSP)")


def folder_name(name: str) -> str:
    """`name` as a Windows folder's name: what Windows forbids in a file name (a VM's name may hold `:` or `?`)
    becomes `_`, and a trailing dot or space (which Windows drops) goes."""
    return re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", name).rstrip(". ") or "_"


def backup_location(target: str, vm_name: str, vm_id: str) -> str:
    """Where the VM's backup goes. A volume keeps many versions, so every VM's backup goes to the volume itself.
    A network share folder keeps one version, and each backup into it replaces the one before, whichever VM it held:
    so on a share each VM has a folder of its own (created by Start-HvbVMBackup), and a night's later VM no longer
    replaces the one before. The folder is the VM's name as a folder's name and the first 8 characters of its id:
    two names that read alike once cleaned, or a VM named CON, still get folders of their own."""
    if not is_share(target):
        return target
    share = target.rstrip("\\")
    return f"{share}\\{folder_name(vm_name)}_{vm_id[:8].lower()}"


def missing_version(vm_name: str, location: str, since_ours: list[dict[str, Any]]) -> str:
    """Why no backup version holds the VM after its job succeeded, from the versions made since the job began
    (Get-WBBackupSet). On a network share (`location`: the VM's folder there) a later backup into the same folder
    replaces the version: not a fault of the job. Another backup (a second schedule, another tool) wrote there."""
    later = [v for v in since_ours if vm_name not in v.get("vms", []) and v.get("target", "").lower() == location.lower()]
    if not is_share(location) or not later:
        return "the job reported success but no backup version contains this VM"
    last = later[-1]
    return (f"its backup in {location} was already replaced by a later one ({', '.join(last.get('vms') or ['another backup'])}, "
            f"version {last.get('version_id')}): a network share folder keeps one version, and this folder is this VM's; "
            "find what else backs up into it (another schedule or tool) and give that its own folder")


def recovery_checkpoints(checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in checkpoints if c.get("type") == CheckpointType.RECOVERY]


def on_avhdx(disks: list[dict[str, Any]]) -> list[str]:
    return [d["path"] for d in disks if str(d.get("path", "")).lower().endswith(".avhdx")]


def merged(vm: dict[str, Any]) -> bool:
    """Whether the VM runs on its own disks again after a backup: no Recovery checkpoint is left, and no
    .avhdx is in use but for a user's own checkpoint."""
    recovery = recovery_checkpoints(vm["checkpoints"])
    users = [c for c in vm["checkpoints"] if c not in recovery]
    return not recovery and (not on_avhdx(vm["disks"]) or bool(users))


@dataclass
class Outcome:
    """What the verify step concludes from the evidence."""

    mode: Mode
    reasons: list[str]
    succeeded: bool
    error: str | None


def actual_mode(predicted: Prediction, os_version: str, events: list[dict[str, Any]], saw_saved_state: bool,
                saw_recovery_checkpoint: bool) -> tuple[Mode, list[str]]:
    """The mode that really happened: never `online` if anything says the guest did not take part."""
    if predicted.mode == Mode.OFFLINE:
        return Mode.OFFLINE, predicted.reasons
    fallback = Mode.CHECKPOINT if at_least(os_version, "2012 R2") else Mode.SAVED
    evidence = []
    if any(e.get("id") == VMMS_GUEST_COULD_NOT_PARTICIPATE for e in events):
        evidence.append("Hyper-V-VMMS event 10150: the guest could not take part in the backup")
    if saw_saved_state:
        evidence.append("the VM was put in Saved state during the backup")
        fallback = Mode.SAVED
    if saw_recovery_checkpoint and predicted.mode == Mode.ONLINE and not evidence:
        evidence.append("a Recovery checkpoint was taken while the guest was expected to take part")
    if evidence:
        return fallback, evidence
    if predicted.mode == Mode.ONLINE:
        return Mode.ONLINE, predicted.reasons
    return predicted.mode, predicted.reasons


def describe_hresult(hresult: int) -> str:
    return HRESULT_MEANINGS.get(hresult & 0xFFFFFFFF, f"Windows Server Backup failed with {hresult_hex(hresult)}")


def is_transient(hresult: int) -> bool:
    return hresult & 0xFFFFFFFF == HResult.VSS_WRITER_TRANSIENT
