"""Checkpoint hygiene: what a failed backup leaves on a host, and what may be cleaned. Pure.

A backup that dies between its Recovery checkpoint and the merge leaves that checkpoint
behind, and the VM keeps writing to its .avhdx; every later backup of the VM then fails
until someone removes it. A merge that died leaves .avhdx files outside every disk chain.
A VM whose checkpoints are disabled cannot get the Recovery checkpoint a 2012 R2+ host
needs when its guest cannot take part. This module finds all three in the answer of
Get-HvbHostVMs.ps1, and says which findings may be remediated automatically: only Recovery
checkpoints, and only while no backup job is using them. Standard, Production and Replica
checkpoints belong to people and to Hyper-V Replica; files are never deleted by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .facts import REMOVABLE_CHECKPOINT_TYPES

RECOVERY_LEFT = "recovery_checkpoint_left"
UNEXPLAINED_AVHDX = "unexplained_avhdx"
CHECKPOINTS_DISABLED = "checkpoints_disabled"


@dataclass(frozen=True)
class Finding:
    vm_name: str
    vm_id: str
    kind: str
    subject: str  # the checkpoint's name or the file's path
    what_to_do: str
    checkpoint_id: str | None = None

    @property
    def removable(self) -> bool:
        """Whether remediation may remove it: a Recovery checkpoint a backup left, nothing else."""
        return self.kind == RECOVERY_LEFT and self.checkpoint_id is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def leftover_recovery_checkpoints(vm: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in vm.get("checkpoints", []) if c.get("type") in REMOVABLE_CHECKPOINT_TYPES]


def audit_vm(vm: dict[str, Any], busy: bool = False) -> list[Finding]:
    """The findings for one VM of Get-HvbHostVMs; `busy` when a backup job holds it (its checkpoint is in use)."""
    name, vm_id, findings = vm["name"], vm["id"], []
    if not busy:
        for checkpoint in leftover_recovery_checkpoints(vm):
            findings.append(Finding(
                name, vm_id, RECOVERY_LEFT, checkpoint["name"],
                f"Remove-VMSnapshot -VMName '{name}' -Name '{checkpoint['name']}', then wait for the merge "
                "(or enable remediation: clean_recovery_checkpoints in the inventory)", checkpoint["id"]))
    chain = {path.lower() for path in vm.get("chain", [])}
    for path in vm.get("avhdx_files", []):
        if path.lower() not in chain:
            findings.append(Finding(
                name, vm_id, UNEXPLAINED_AVHDX, path,
                "no checkpoint or disk uses this differencing disk: check it with Get-VHD and Inspect-VHD, move it "
                "aside only once no VM needs it (never merge or delete it while the VM runs on another chain)"))
    if vm.get("checkpoint_type") == "Disabled":
        findings.append(Finding(
            name, vm_id, CHECKPOINTS_DISABLED, "checkpoints disabled",
            f"Set-VM -Name '{name}' -CheckpointType Production: without checkpoints a host from 2012 R2 cannot "
            "back this VM up while it runs unless its guest takes part"))
    return findings


def audit_host(answer: dict[str, Any]) -> list[Finding]:
    """Every finding on one host, from Get-HvbHostVMs' answer."""
    busy = set(answer.get("running_job_vms") or [])
    return [finding for vm in answer.get("vms", []) for finding in audit_vm(vm, vm["name"] in busy)]


def merged(vm: dict[str, Any]) -> bool:
    """Whether Hyper-V has merged every removed checkpoint of a VM of Get-HvbHostVMs: each disk's chain
    holds one .avhdx per remaining checkpoint and no more."""
    in_chain = sum(1 for path in vm.get("chain", []) if path.lower().endswith(".avhdx"))
    return in_chain <= len(vm.get("checkpoints", [])) * max(1, len(vm.get("disks", [])))


def remediate(run_script: Callable[..., dict[str, Any]], findings: list[Finding], vm_name: str | None = None,
              timeout: float = 600, poll: float = 5.0) -> list[dict[str, Any]]:
    """Remove the removable findings (of one VM, or all), then wait until Hyper-V has merged them.

    `run_script` is HyperVHook.run_script. The host script refuses anything but a Recovery
    checkpoint too, so a finding that went stale cannot make it remove a user's checkpoint.
    Returns what was done, one entry per checkpoint, with the merge's outcome.
    """
    done = []
    for finding in findings:
        if finding.removable and (vm_name is None or finding.vm_name == vm_name):
            run_script("Remove-HvbRecoveryCheckpoint", VMId=finding.vm_id, CheckpointId=finding.checkpoint_id)
            done.append({"vm_name": finding.vm_name, "vm_id": finding.vm_id, "removed": finding.subject, "merged": False})
    pending = {entry["vm_id"] for entry in done}
    deadline = time.monotonic() + timeout
    while pending:
        answer = run_script("Get-HvbHostVMs")
        vms = {vm["id"]: vm for vm in answer["vms"]}
        pending = {vm_id for vm_id in pending if vm_id in vms and not merged(vms[vm_id])}
        for entry in done:
            entry["merged"] = entry["vm_id"] not in pending
        if pending and time.monotonic() > deadline:
            break
        if pending:
            time.sleep(poll)
    return done


def approval_options(results: list[dict[str, Any]]) -> dict[str, tuple[str, Finding]]:
    """What an administrator is asked to approve (remediate: ask): one option per Recovery checkpoint a backup left,
    labelled `HOST / VM: checkpoint name`, with its host and finding (the checkpoint's id decides, not the label)."""
    offered = {}
    for result in results:
        for finding in (Finding(**f) for f in result.get("findings") or []):
            if finding.removable:
                offered[f"{result['host']} / {finding.vm_name}: {finding.subject}"] = (result["host"], finding)
    return offered


KIND_LABELS = {RECOVERY_LEFT: "Recovery checkpoint left by a backup", UNEXPLAINED_AVHDX: ".avhdx that no checkpoint explains",
               CHECKPOINTS_DISABLED: "checkpoints disabled"}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class AuditSummary:
    """One audit run over the fleet, for the administrators' mail.

    `results` holds one entry per host as the audit task writes it: `host`, `findings` and
    `remediated` (lists of dicts), and `error` (why the host could not be audited, or None).
    """

    day: str
    results: list[dict[str, Any]]

    @property
    def unaudited(self) -> list[str]:
        return [r["host"] for r in self.results if r.get("error")]

    @property
    def findings(self) -> int:
        return sum(len(r.get("findings") or []) for r in self.results)

    @property
    def removed(self) -> list[dict[str, Any]]:
        return [entry for r in self.results for entry in r.get("remediated") or []]

    @property
    def worth_mailing(self) -> bool:
        """Only what an administrator should read: a finding, a host not audited, a checkpoint removed."""
        return bool(self.findings or self.unaudited or self.removed)

    @property
    def subject(self) -> str:
        parts = []
        if self.unaudited:
            parts.append(f"could not audit {', '.join(self.unaudited)}")
        if self.findings:
            per_host = ", ".join(f"{r['host']}: {len(r['findings'])}" for r in self.results if r.get("findings"))
            parts.append(f"{_count(self.findings, 'finding')} need{'s' if self.findings == 1 else ''} an administrator ({per_host})")
        if self.removed:
            unmerged = sum(not entry["merged"] for entry in self.removed)
            parts.append(f"removed {_count(len(self.removed), 'Recovery checkpoint')}"
                         + (f", {_count(unmerged, 'merge')} not finished" if unmerged else ""))
        return f"Hyper-V checkpoint audit {self.day}: {'; '.join(parts) or 'clean'}"
