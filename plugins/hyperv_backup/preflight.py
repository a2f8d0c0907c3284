"""The preflight check: is a host of the inventory ready for its first backup? Check by check, each
`ok`, `warn` or `fail` with what was found and the fix, in an administrator's words (docs/preflight.md).

Pure functions over what the host answered (Get-HvbHostReadiness, Get-HvbHostVMs, one
Get-HvbVMBackupProbe per VM) and the connection's outcome, so every verdict is tested without a
host; `preflight_dag` asks, these decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from . import rules
from .errors import HostError

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_POWERSHELL = (3, 0)  # the scripts use [ordered], Get-CimInstance and ConvertTo-Json: Windows PowerShell 3.0
CLOCK_WARN, CLOCK_FAIL = timedelta(seconds=60), timedelta(minutes=5)
SHELLS_A_NIGHT = 3  # remote shells the backup keeps open on a host at once: a step's, a wait's, the audit's
TLS_WARN_DAYS = 30
RIGHTS = ({"Administrators"}, {"Hyper-V Administrators", "Backup Operators"})  # either is enough


@dataclass(frozen=True)
class Check:
    host: str
    check: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def connection(host: str, error: HostError | None, endpoint: str, certificate_expires: datetime | None, now: datetime) -> list[Check]:
    """`reachable`, `tls` and `credentials` from the first call's outcome (`error`, None when it answered) and,
    over HTTPS, the host certificate's expiry; the checks stop at the first that fails. A script that failed
    once logged on fails `powershell`."""
    cause = error.cause if error is not None else None
    if cause == "unreachable":
        return [Check(host, "reachable", FAIL, error.message, error.advice)]
    checks = [Check(host, "reachable", OK, f"WinRM answers at {endpoint or 'the connection endpoint'}")]
    if cause in ("tls", "refused", "plaintext"):  # untrusted certificate; unsealed messages refused, or about to be sent
        return [*checks, Check(host, "tls", FAIL, error.message, error.advice)]
    if not endpoint.lower().startswith("https:"):
        checks.append(Check(host, "tls", OK, "HTTP: NTLM or Kerberos seal every WinRM message"))
    elif certificate_expires is not None:
        days = (certificate_expires - now).days
        status = FAIL if days < 0 else WARN if days < TLS_WARN_DAYS else OK
        checks.append(Check(host, "tls", status, f"the certificate is trusted and expires on {certificate_expires:%Y-%m-%d} "
                            f"({days} days)", "" if status == OK else "renew the WinRM HTTPS listener's certificate "
                            "(New-Item WSMan:\\localhost\\Listener ... -CertificateThumbPrint <new>) before it expires"))
    else:
        checks.append(Check(host, "tls", OK, "the certificate is trusted"))
    if cause == "credentials":
        return [*checks, Check(host, "credentials", FAIL, error.message, error.advice)]
    checks.append(Check(host, "credentials", OK, "the account logs on"))
    if error is not None:
        checks.append(Check(host, "powershell", FAIL, f"the preflight's script failed: {error.message}", error.advice))
    return checks


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def readiness(host: str, answer: dict[str, Any], now: datetime, need_bytes: int) -> list[Check]:
    """`powershell`, `hyperv`, `windows_server_backup`, `rights`, `backup_target`, `target_space`, `clock` and
    `winrm_limits` from Get-HvbHostReadiness (`need_bytes`: the size of the VMs the inventory selects)."""
    checks = []
    ps = answer["host"]["ps_version"]
    checks.append(Check(host, "powershell", OK if _version(ps) >= MIN_POWERSHELL else FAIL, f"Windows PowerShell {ps}",
                        "" if _version(ps) >= MIN_POWERSHELL else "install Windows Management Framework 5.1 on the host"))
    features = answer["features"]
    checks.append(Check(host, "hyperv", OK if features["hyperv"] else FAIL,
                        "the Hyper-V role is installed" if features["hyperv"] else "the Hyper-V role is not installed",
                        "" if features["hyperv"] else "this host runs no VMs to back up: check the inventory"))
    checks.append(Check(host, "windows_server_backup", OK if features["windows_server_backup"] else FAIL,
                        "Windows Server Backup is installed" if features["windows_server_backup"] else
                        "Windows Server Backup is not installed (no wbadmin, no WindowsServerBackup cmdlets)",
                        "" if features["windows_server_backup"] else "Install-WindowsFeature Windows-Server-Backup"))
    groups = set(answer["account"]["groups"])
    enough = any(needed <= groups for needed in RIGHTS)
    checks.append(Check(host, "rights", OK if enough else FAIL,
                        f"{answer['account']['name']} is in {', '.join(sorted(groups)) or 'none of the groups that matter'}",
                        "" if enough else "add the account to Administrators, or to both Hyper-V Administrators and Backup "
                        "Operators (Add-LocalGroupMember)"))
    target = answer["target"]
    if not target["exists"] and target["kind"] == "share":
        checks.append(Check(host, "backup_target", FAIL, f"the share {target['path']} does not exist, or this WinRM session "
                            "cannot reach it", rules.SHARE_UNREACHABLE))
    elif not target["exists"]:
        checks.append(Check(host, "backup_target", FAIL, f"the backup target {target['path']} does not exist",
                            "attach the backup volume, or correct backup_target in the inventory"))
    elif target["kind"] == "share":
        checks.append(Check(host, "backup_target", WARN, f"{target['path']} is a network share: each VM's backup goes to a "
                            "folder of its own there, where Windows Server Backup keeps one version and each backup replaces "
                            "the last, so a VM has one restore point and a failed backup can leave it none",
                            "back up to a local volume, which keeps many versions"))
    else:
        checks.append(Check(host, "backup_target", OK, f"{target['path']} is a local volume (many versions)"))
    free = target.get("free_bytes")
    if target["exists"] and free is not None:
        enough_space = free >= need_bytes
        checks.append(Check(host, "target_space", OK if enough_space else FAIL,
                            f"{free / 1024**3:.0f} GB free for {need_bytes / 1024**3:.0f} GB of VMs",
                            "" if enough_space else "free space on the target, or give it a larger volume"))
    elif target["exists"]:
        checks.append(Check(host, "target_space", WARN, "the free space of a share cannot be read from the host",
                            f"make sure the share has {need_bytes / 1024**3:.0f} GB free"))
    clock = datetime.fromisoformat(answer["host"]["clock_utc"].replace("Z", "+00:00"))
    skew = abs(clock - now)
    status = FAIL if skew > CLOCK_FAIL else WARN if skew > CLOCK_WARN else OK
    checks.append(Check(host, "clock", status, f"the host's clock is {(clock - now).total_seconds():+.0f} s from Airflow's",
                        "" if status == OK else "backup windows are in host time: sync the host with your time source "
                        "(w32tm /resync)"))
    winrm = answer["winrm"]
    low = winrm["max_shells_per_user"] < SHELLS_A_NIGHT or winrm["max_memory_per_shell_mb"] < 150
    checks.append(Check(host, "winrm_limits", WARN if low else OK,
                        f"MaxShellsPerUser {winrm['max_shells_per_user']}, MaxMemoryPerShellMB {winrm['max_memory_per_shell_mb']}, "
                        f"IdleTimeout {winrm['idle_timeout_ms'] / 60000:.0f} min",
                        "" if not low else f"raise them: Set-Item WSMan:\\localhost\\Shell\\MaxShellsPerUser {SHELLS_A_NIGHT * 10}; "
                        "Set-Item WSMan:\\localhost\\Shell\\MaxMemoryPerShellMB 1024"))
    return checks


def vms(host: str, chosen: list[str], missing: list[str], listed: list[dict[str, Any]], probes: dict[str, dict[str, Any]]) -> list[Check]:
    """`inventory_vms`, `recovery_checkpoints`, and one `plan` per VM (its predicted mode and why)."""
    checks = [Check(host, "inventory_vms", FAIL if missing or not chosen else OK,
                    f"{len(chosen)} VMs selected" + (f"; not on the host: {', '.join(missing)}" if missing else ""),
                    "correct the names in the inventory's vms" if missing or not chosen else "")]
    leftovers = {vm["name"]: rules.recovery_checkpoints(vm["checkpoints"]) for vm in listed if vm["name"] in chosen}
    leftovers = {name: found for name, found in leftovers.items() if found}
    checks.append(Check(host, "recovery_checkpoints", FAIL if leftovers else OK,
                        "; ".join(f"{name}: {', '.join(repr(c['name']) for c in found)}" for name, found in leftovers.items())
                        or "no Recovery checkpoint left by an earlier backup",
                        "remove each with Remove-VMSnapshot and let Hyper-V merge, or set clean_recovery_checkpoints: true"
                        if leftovers else ""))
    for name in chosen:
        probe = probes.get(name)
        if probe is None:
            continue
        vm = probe["vms"][0]
        prediction = rules.predict_mode(rules.os_version_of(probe["host"]["os_caption"]), vm)
        offline = prediction.mode.value == "saved"
        checks.append(Check(host, "plan", WARN if offline else OK, f"{name}: {prediction.mode.value} ({'; '.join(prediction.reasons)})",
                            "" if not offline else "the VM is put in Saved state for its snapshot: see the reasons for what would keep it online"))
    return checks
