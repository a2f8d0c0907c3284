"""What a simulated host does with a command line that WinRM hands it.

It knows `hostname`, `cd`, `wbadmin get versions|status`, and the project's own
PowerShell scripts sent as `powershell -EncodedCommand` (recognised by the marker line
that `hyperv_backup.invocation` writes, parameters read from the base64 JSON that carries
them). Each script's behaviour is that of the real cmdlets it calls, rendered the way the
script's ConvertTo-Json would render it. Anything else fails as on Windows.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hyperv_backup import invocation
from hyperv_backup.facts import (
    HEARTBEAT_SERVICE_ID,
    RESTORE_COPY_PREFIX,
    SCRIPT_STEPS,
    VMMS_LOG,
    VSS_SERVICE_ID,
    WBADMIN_BANNER,
    WBADMIN_CAN_RECOVER_APPLICATIONS,
    WBADMIN_LOCATION,
    WBADMIN_NO_BACKUPS,
    WBADMIN_VERSION_LABELS,
    WORKER_LOG,
    WSB_COPY_OPERATION,
    WSB_NO_OPERATION,
    WSB_SHADOW_COPY_OPERATION,
    heartbeat_display_name,
    vss_display_name,
)

from . import faults
from .clock import iso
from .exceptions import JobAlreadyRunning, ScriptError
from .host import Host
from .objects import VM, Job

OS_CAPTIONS = {
    "2008 R2": ("Microsoft Windows Server 2008 R2 Datacenter", "6.1.7601"),
    "2012": ("Microsoft Windows Server 2012 Datacenter", "6.2.9200"),
    "2012 R2": ("Microsoft Windows Server 2012 R2 Datacenter", "6.3.9600"),
    "2016": ("Microsoft Windows Server 2016 Datacenter", "10.0.14393"),
    "2019": ("Microsoft Windows Server 2019 Datacenter", "10.0.17763"),
    "2022": ("Microsoft Windows Server 2022 Datacenter", "10.0.20348"),
    "2025": ("Microsoft Windows Server 2025 Datacenter", "10.0.26100"),
}
GUEST_OS_NAMES = {"windows": "Windows Server 2019 Datacenter", "linux": "Ubuntu 24.04 LTS", "freebsd": "FreeBSD 14.1", "other": None}


@dataclass
class Outcome:
    stdout: str
    stderr: str = ""
    exit_code: int = 0
    script: str | None = None
    params: dict[str, Any] | None = None


@dataclass
class Request:
    """A command line, classified before it runs: which script, and at which backup step."""

    command: str
    script: str | None = None
    params: dict[str, Any] | None = None
    body: str | None = None
    step: str | None = None
    vm: VM | None = None


def classify(host: Host, command: str) -> Request:
    request = Request(command=command)
    text = invocation.decode_command(command)
    parsed = invocation.parse_script(text) if text else None
    if parsed is None:
        if command.strip().lower().startswith("wbadmin"):
            request.step = "verify"
        return request
    request.script, request.params, request.body = parsed
    vm_id, vm_name = request.params.get("VMId"), request.params.get("VMName")
    matches = host.find_vm(vm_id=vm_id) if vm_id else host.find_vm(name=vm_name) if vm_name else []
    request.vm = matches[0] if matches else None
    request.step = SCRIPT_STEPS.get(request.script or "")
    if request.script == "Get-HvbVMBackupStatus":
        request.step = _status_step(host, request)
    return request


def _status_step(host: Host, request: Request) -> str:
    """The backup step a status poll belongs to, as a fault's `at` means it: the phase of the VM's running job; the
    verify step's read of the record after it (the one poll that asks for the events since the job's start); the
    copy step's look at a job of the VM that ended since its probe; else a wait before the VM's job (its turn, a
    host held by another job): the snapshot step's."""
    host.tick()
    vm = request.vm
    ours = [j for j in host.jobs if vm is not None and j.vm_id == vm.id and j.kind == "backup" and not j.external]
    job = ours[-1] if ours else None
    if job is not None and job.state == "Running":
        return {"snapshot": "snapshot", "merge": "merge"}.get(job.operation, "copy")
    if (request.params or {}).get("SinceUtc"):
        return "verify"
    if job is not None and vm.probed is not None and job.started >= vm.probed:
        return "copy"
    return "snapshot"


def execute(host: Host, request: Request) -> Outcome:
    command = request.command.strip()
    word = command.split()[0].lower() if command else ""
    if request.script is not None:
        return _run_script(host, request)
    if word in ("hostname", "hostname.exe"):
        return Outcome(host.name + "\r\n")
    if command.lower() == "cd":
        return Outcome(f"C:\\Users\\{host.spec.username}\r\n")
    if word in ("wbadmin", "wbadmin.exe") and host.spec.wsb_installed:  # without the feature, there is no wbadmin
        return _wbadmin(host, command)
    if word in ("powershell", "powershell.exe"):
        return Outcome("", "The term is not recognized as the name of a cmdlet, function, script file, or operable program.\r\n", 1)
    name = command.split()[0] if command else command
    return Outcome("", f"'{name}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n", 1)


# -- scripts ------------------------------------------------------------------------------


def _run_script(host: Host, request: Request) -> Outcome:
    handler = SCRIPTS.get(request.script or "")
    if handler is None:
        return _error_outcome(request, ScriptError(f"The script {request.script!r} is not installed on this host.", "ObjectNotFound"))
    declared = set(invocation.declared_parameters(request.body or ""))
    unknown = sorted(set(request.params or {}) - declared)
    if unknown:
        return _error_outcome(request, ScriptError(
            f"A parameter cannot be found that matches parameter name '{unknown[0]}'.", "InvalidArgument",
            error_id="NamedParameterNotFound"))
    try:
        _may_run(host, request.body or "")
        result = handler(host, request)
    except ScriptError as error:
        return _error_outcome(request, error)
    return Outcome(json.dumps(result, ensure_ascii=False, separators=(",", ":")), script=request.script, params=request.params)


# What a script's cmdlets need on the host: their module (the Windows Server Backup feature) and the account's rights.
_WSB_CMDLET = re.compile(r"\b(?:Get|Start|Stop|New|Add|Set|Remove)-WB\w+")
_HYPERV_CMDLET = re.compile(r"\b(?:Get|Remove|Checkpoint|Start|Stop)-VM\w*|\bGet-VHD\b")
POWERSHELL_VERSIONS = {"2008 R2": "2.0", "2012": "3.0", "2012 R2": "4.0", "2016": "5.1.14393.0", "2019": "5.1.17763.1",
                       "2022": "5.1.20348.1", "2025": "5.1.26100.1"}  # Windows PowerShell as each release ships it


def _may_run(host: Host, body: str) -> None:
    """Raise what PowerShell says when a script's cmdlets cannot run here: the WindowsServerBackup module is
    missing without the feature; Hyper-V's cmdlets need Administrators or Hyper-V Administrators, WSB's
    Administrators or Backup Operators."""
    groups = set(host.spec.account_groups)
    wsb = _WSB_CMDLET.search(body)
    if wsb and not host.spec.wsb_installed:
        raise ScriptError(f"The term '{wsb.group(0)}' is not recognized as the name of a cmdlet, function, script file, or "
                          "operable program.", "ObjectNotFound", error_id="CommandNotFoundException")
    if wsb and not groups & {"Administrators", "Backup Operators"}:
        raise ScriptError("Access is denied.", "PermissionDenied", hresult=-2147024891, error_id="UnauthorizedAccessException")
    if _HYPERV_CMDLET.search(body) and not groups & {"Administrators", "Hyper-V Administrators"}:
        raise ScriptError("You do not have the required permission to complete this task. Contact the administrator of the "
                          "authorization policy for the computer.", "PermissionDenied", hresult=-2147024891,
                          error_id="InvalidOperation,Microsoft.HyperV.PowerShell.Commands.GetVM")


def _error_outcome(request: Request, error: ScriptError) -> Outcome:
    document = {"error": {"message": str(error), "category": error.category, "hresult": error.hresult, "id": error.error_id}}
    return Outcome(json.dumps(document, ensure_ascii=False), "", 1, request.script, request.params)


def _vm_by_id(host: Host, request: Request) -> VM:
    vm_id = (request.params or {}).get("VMId", "")
    if request.vm is None or request.vm not in host.vms:
        raise ScriptError(f"Hyper-V was unable to find a virtual machine with ID \"{vm_id}\".", "ObjectNotFound",
                          error_id="InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM")
    return request.vm


def _services(host: Host, vm: VM) -> list[dict[str, Any]]:
    spec = vm.spec
    running = vm.state == "Running"
    guest_has_vss = spec.guest in ("windows", "linux") and spec.guest_vss != "missing"
    vss_status = "OK" if running and spec.integration_services.vss and guest_has_vss else (
        "No Contact" if running and spec.integration_services.vss else "")
    heartbeat_ok = vm.heartbeat(host.now())
    return [
        {"name": heartbeat_display_name(host.spec.locale), "id": HEARTBEAT_SERVICE_ID,
         "enabled": spec.integration_services.heartbeat, "primary_status": "OK" if heartbeat_ok else ""},
        {"name": vss_display_name(host.spec.os, host.spec.locale), "id": VSS_SERVICE_ID,
         "enabled": spec.integration_services.vss, "primary_status": vss_status},
    ]


def _kvp_volumes(vm: VM) -> str | None:
    """The guest publishes its volume layout through KVP only while it runs and has integration."""
    if vm.state != "Running" or vm.spec.guest == "other":
        return None
    return json.dumps([{"fs": v.fs, "role": v.role, "dynamic": v.dynamic} for v in vm.spec.volumes or []])


def _probe(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    now = host.now()
    caption, version = OS_CAPTIONS[host.spec.os]
    job = host.running_job()
    target = params.get("BackupTarget", "")
    exists = host.on_target(target, folders=False)
    vms = host.find_vm(name=params.get("VMName"))
    result = {
        "host": {"computer_name": host.name, "os_caption": caption, "os_version": version,
                 "culture": host.spec.locale, "clock_utc": iso(now)},
        "target": {"path": target, "exists": exists, "free_bytes": host.target_free_bytes if exists else 0},
        "wsb_job": _job_brief(host, job) if job else None,
        "vms": [
            {
                "id": vm.id, "name": vm.name, "state": vm.state, "generation": vm.spec.generation,
                "uptime_seconds": vm.uptime_seconds(now), "checkpoint_type": vm.spec.checkpoint_type,
                "guest_os": GUEST_OS_NAMES[vm.spec.guest] if vm.state == "Running" else None,
                "guest_volumes": _kvp_volumes(vm),
                "integration_services": _services(host, vm),
                "checkpoints": [cp.to_json() for cp in vm.checkpoints],
                "disks": vm.disks(),
            }
            for vm in vms
        ],
    }
    for vm in vms:
        vm.probed = now
        if host.take_fault("probe", faults.COMMAND, vm):
            host.remove_vm(vm)
    return result


def _operation_text(host: Host, job: Job) -> str:
    locale = host.spec.locale
    if job.operation in ("snapshot",):
        return WSB_SHADOW_COPY_OPERATION[locale]
    if job.operation in ("merge", "copy"):
        percent = int(100 * job.progress(host.now()) / job.bytes_total) if job.bytes_total else 0
        return WSB_COPY_OPERATION[locale].format(percent=percent)
    return ""


def _job_brief(host: Host, job: Job) -> dict[str, Any]:
    return {"job_state": job.state, "operation": _operation_text(host, job), "start_time_utc": iso(job.started)}


def _start(host: Host, request: Request) -> dict[str, Any]:
    now = host.now()
    not_after = (request.params or {}).get("NotAfterUtc")
    if not_after and now > _parse_since(not_after):
        return {"started": False, "window_closed": True, "clock_utc": iso(now)}
    vm = _vm_by_id(host, request)
    fault = host.take_fault("snapshot", faults.COMMAND, vm)
    if fault == "vm_removed":  # deleted between its probe and its job: Get-VM -Id finds nothing
        host.remove_vm(vm)
        vm = _vm_by_id(host, request)
    before = {"state": vm.state, "uptime_seconds": vm.uptime_seconds(now)}
    if fault == "job_running":
        host.start_external_job()
    running = host.running_job()
    if running is not None:
        return {"started": False, "clock_utc": iso(now), "vm": before, "job": _job_brief(host, running)}
    target = (request.params or {}).get("BackupTarget", "")
    if not host.on_target(target, folders=True):
        raise ScriptError(f"The backup target '{target}' was not found.", "ObjectNotFound")
    try:
        job = host.start_job(vm, target)
    except JobAlreadyRunning as error:
        raise ScriptError(str(error), "ResourceBusy") from None
    return {"started": True, "clock_utc": iso(now), "vm": before, "job": _job_brief(host, job)}


JOB_KEYS = ("job_state", "hresult", "error_description", "version_id", "start_time_utc", "end_time_utc", "bytes_transferred",
            "bytes_total", "vms")
HISTORY = 20  # Get-WBJob -Previous 20


def _job_json(host: Host, job: Job) -> dict[str, Any]:
    full = job.to_json(host.now())
    return {k: full[k] for k in JOB_KEYS} | {"operation": _operation_text(host, job)}


def change_key(host: Host, vm: VM) -> str:
    """What Get-HvbVMBackupStatus -WaitSeconds watches for a change: the job holding the host (start, state,
    phase), the VM's checkpoints and disks, the host's boot. The caller only echoes it back."""
    running = next((j for j in host.jobs if j.state == "Running"), None)
    job = f"{iso(running.started)} {running.state} {running.operation}" if running else "-"
    checkpoints = ",".join(cp.id for cp in vm.checkpoints)
    disks = ",".join(d["path"] for d in vm.disks())
    return f"{job}|{checkpoints}|{disks}|{iso(host.booted)}"


def status_wait(host: Host, request: Request) -> tuple[datetime, str] | None:
    """A status script run with -WaitSeconds N -Seen KEY (Get-HvbVMBackupStatus, Get-HvbRestoreTest) waits on the
    host until its change key differs from KEY or N seconds (host time) pass, then answers: (until, seen), or None
    when this command does not wait."""
    params = request.params or {}
    seconds = float(params.get("WaitSeconds") or 0)
    if request.script not in WAITS or seconds <= 0 or (request.script == "Get-HvbVMBackupStatus" and request.vm is None):
        return None
    return host.now() + timedelta(seconds=seconds), str(params.get("Seen") or "")


def waited(host: Host, request: Request, until: datetime, seen: str) -> bool:
    """Whether the waiting status command answers now (its loop on the host ends)."""
    if request.script == "Get-HvbVMBackupStatus" and request.vm not in host.vms:
        return True
    return host.now() >= until or WAITS[request.script or ""](host, request) != seen


def _status(host: Host, request: Request) -> dict[str, Any]:
    vm = _vm_by_id(host, request)
    since = (request.params or {}).get("SinceUtc")
    now = host.now()
    host.tick()
    running = next((j for j in host.jobs if j.state == "Running"), None)
    history = [j for j in host.jobs if j.state != "Running"][-HISTORY:]
    mine = [_job_json(host, j) for j in host.jobs if j.vm_id == vm.id and (j.state == "Running" or j in history)]
    after = _parse_since(since) if since else None
    return {
        "clock_utc": iso(now),
        "boot_time_utc": iso(host.booted),
        "host_job": _job_json(host, running) if running else None,
        "job": mine[-1] if mine else None,
        "jobs": mine,
        "vm": {"id": vm.id, "name": vm.name, "state": vm.state, "uptime_seconds": vm.uptime_seconds(now),
               "checkpoints": [{"id": cp.id, "name": cp.name, "type": cp.type, "created_utc": iso(cp.created)} for cp in vm.checkpoints],
               "disks": [{"path": d["path"]} for d in vm.disks()]},
        "events": [_event_json(e) for e in host.events
                   if e.log in (WORKER_LOG, VMMS_LOG) and (after is None or e.time >= after) and (vm.id.lower() in e.message.lower() or f"'{vm.name}'" in e.message)],
        "change_key": change_key(host, vm),
    }


def _event_json(event) -> dict[str, Any]:
    """An event as Get-WinEvent gives it: log, id, time, message (the VM is named in the message only)."""
    return {"log": event.log, "id": event.id, "time_utc": iso(event.time), "message": event.message}


def _parse_since(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ScriptError(f"Cannot convert value \"{value}\" to type \"System.DateTime\".", "InvalidArgument") from None


def _result(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    since = _parse_since(params.get("SinceUtc", ""))
    host.tick()
    vm_id, vm_name = params.get("VMId", ""), params.get("VMName", "")
    last_ok = max((v.backup_time for v in host.versions), default=None)
    last_job = next((j for j in reversed(host.jobs) if j.kind == "backup" and not j.external and j.state != "Running"), None)
    return {
        "summary": {"last_backup_result_hr": last_job.hresult if last_job else 0,
                    "last_successful_backup_time_utc": iso(last_ok) if last_ok else None},
        "versions": [v.to_json() for v in host.versions if v.backup_time >= since],
        "restore_points": [{"version_id": v.version_id, "backup_time_utc": iso(v.backup_time)} for v in host.versions if vm_name in v.vms],
        "events": [
            _event_json(e) for e in host.events
            if e.time >= since and (e.id != 10150 or vm_id.lower() in e.message.lower() or f"'{vm_name}'" in e.message)
        ],
    }


def _readiness(host: Host, request: Request) -> dict[str, Any]:
    spec = host.spec
    target = (request.params or {}).get("BackupTarget", "")
    share = target.startswith("\\\\")
    exists = host.on_target(target, folders=False)
    return {
        "host": {"computer_name": host.name, "os_caption": OS_CAPTIONS[spec.os][0], "ps_version": POWERSHELL_VERSIONS[spec.os],
                 # the host's wall clock: the real time plus its skew (the accelerated clock of jobs and events is
                 # the simulation's compression of time, not a clock a host would show)
                 "clock_utc": iso(datetime.now(UTC) + timedelta(seconds=spec.clock_skew_seconds))},
        "features": {"hyperv": True, "windows_server_backup": spec.wsb_installed},
        "account": {"name": f"{host.name}\\{spec.username}",
                    "groups": [g for g in ("Administrators", "Hyper-V Administrators", "Backup Operators") if g in spec.account_groups]},
        "winrm": {"max_shells_per_user": spec.winrm.max_shells_per_user, "max_memory_per_shell_mb": spec.winrm.max_memory_per_shell_mb,
                  "idle_timeout_ms": spec.winrm.idle_timeout_s * 1000},
        "target": {"path": target, "kind": "share" if share else "volume", "exists": exists,
                   "free_bytes": host.target_free_bytes if exists else None},
    }


def _host_vms(host: Host, request: Request) -> dict[str, Any]:
    job = host.running_job()
    return {
        "clock_utc": iso(host.now()),
        "running_job_vms": [job.vm_name] if job and job.kind == "backup" and not job.external else [],
        "vms": [
            {"id": vm.id, "name": vm.name, "state": vm.state, "checkpoint_type": vm.spec.checkpoint_type,
             "checkpoints": [cp.to_json() for cp in vm.checkpoints],
             "disks": [{k: d[k] for k in ("path", "vhd_type", "parent_path")} for d in vm.disks()],
             "chain": (chain := vm.chain()), "avhdx_files": [p for p in chain if p.endswith(".avhdx")] + vm.stray}
            for vm in host.vms
        ],
    }


def _remove_recovery(host: Host, request: Request) -> dict[str, Any]:
    vm = _vm_by_id(host, request)
    wanted = (request.params or {}).get("CheckpointId", "")
    checkpoint = next((cp for cp in vm.checkpoints if cp.id.lower() == wanted.lower()), None)
    if checkpoint is None:
        raise ScriptError(f"The checkpoint {wanted} of '{vm.name}' no longer exists.", "ObjectNotFound")
    if checkpoint.type != "Recovery":
        raise ScriptError(f"'{checkpoint.name}' is a {checkpoint.type} checkpoint, not backup debris; it was left alone.",
                          "InvalidOperation")
    host.remove_checkpoint_and_merge(vm, checkpoint)
    return {"removed": {"id": checkpoint.id, "name": checkpoint.name, "type": checkpoint.type}, "clock_utc": iso(host.now())}


# -- restore tests ----------------------------------------------------------------------------------


def _copy_json(host: Host, vm: VM) -> dict[str, Any]:
    now = host.now()
    return {"id": vm.id, "name": vm.name, "state": vm.state, "uptime_seconds": vm.uptime_seconds(now), "path": vm.folder,
            "network_connected": vm.network_connected, "heartbeat": "OK" if vm.heartbeat(now) else ""}


def _ours(item: str, name: str) -> bool:
    """A restore test's: the copy (or folder) named `name`, or with no name any that bears the copies' prefix."""
    return item == name if name else item.startswith(RESTORE_COPY_PREFIX)


def _start_restore_test(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    now, name, folder = host.now(), params.get("VMName", ""), params.get("Folder", "")
    running = host.running_job()
    if running is not None:
        return {"started": False, "clock_utc": iso(now), "host_job": _job_brief(host, running)}
    holding = [v for v in host.versions if name in v.vms and name in v.sources]
    wanted = params.get("VersionId") or ""
    version = next((v for v in holding if v.version_id == wanted), None) if wanted else (holding[-1] if holding else None)
    if version is None:
        which = f"version {wanted}" if wanted else "any version"
        raise ScriptError(f"No backup of '{name}' was found in {which} on the backup target.", "ObjectNotFound")
    inside = folder.rstrip("\\").lower() + "\\"
    if folder in host.folders or any((vm.folder.lower() + "\\").startswith(inside) for vm in host.vms):
        raise ScriptError(f"The folder '{folder}' already exists; a restore test recovers into a new folder only.", "ResourceExists")
    try:
        job = host.start_recovery(version, name, folder)
    except JobAlreadyRunning as error:
        raise ScriptError(str(error), "ResourceBusy") from None
    return {"started": True, "clock_utc": iso(now), "version_id": version.version_id, "backup_time_utc": iso(version.backup_time),
            "job": _job_brief(host, job)}


def restore_key(host: Host, request: Request) -> str:
    """What Get-HvbRestoreTest -WaitSeconds watches: the host's running job, the recovery's state, the copy's state and
    heartbeat, the folder's files."""
    params = request.params or {}
    running = next((j for j in host.jobs if j.state == "Running"), None)
    copy = next((vm for vm in host.vms if vm.name == params.get("CopyName")), None)
    recovered = host.folders.get(params.get("Folder", ""))
    return "|".join([f"{running.id} {running.state}" if running else "-",
                     f"{copy.state} {copy.heartbeat(host.now())}" if copy else "-", str(len(recovered.files) if recovered else 0)])


def _restore_test(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    host.tick()
    since = _parse_since(params.get("SinceUtc", ""))
    folder = params.get("Folder", "")
    running = next((j for j in host.jobs if j.state == "Running"), None)
    recovery = next((j for j in reversed(host.jobs) if j.kind == "recovery" and j.started >= since), None)
    copy = next((vm for vm in host.vms if vm.name == params.get("CopyName")), None)
    recovered = host.folders.get(folder)
    return {
        "clock_utc": iso(host.now()),
        "host_job": _job_json(host, running) | {"job_type": running.kind} if running else None,
        "recovery": _job_json(host, recovery) if recovery else None,
        "files": list(recovered.files) if recovered else [],
        "copy": _copy_json(host, copy) if copy else None,
        "change_key": restore_key(host, request),
    }


def _start_restore_copy(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    folder, name = params.get("Folder", ""), params.get("CopyName", "")
    if not name.startswith(RESTORE_COPY_PREFIX):
        raise ScriptError(f"'{name}' is not a restore test's name ({RESTORE_COPY_PREFIX}...).", "InvalidArgument")
    recovered = host.folders.get(folder)
    if recovered is None or not any(f.endswith(".vmcx") for f in recovered.files):
        raise ScriptError(f"No virtual machine configuration was found under '{folder}'.", "ObjectNotFound")
    if host.find_vm(name=name):
        raise ScriptError(f"A virtual machine named '{name}' already exists.", "ResourceExists")
    copy = host.import_copy(folder, name)
    copy.network_connected = False  # Disconnect-VMNetworkAdapter: the copy can never meet the original's network
    host.start_vm(copy)
    return {"clock_utc": iso(host.now()), "copy": _copy_json(host, copy), "source_id": recovered.vm_id}


def _remove_restore_copies(host: Host, request: Request) -> dict[str, Any]:
    params = request.params or {}
    root, name = params.get("Root", ""), params.get("Name") or ""
    inside = root.rstrip("\\").lower() + "\\"
    if len(inside) <= 4:
        raise ScriptError(f"'{root}' is no folder of restore tests; nothing was removed.", "InvalidArgument")
    if name and not name.startswith(RESTORE_COPY_PREFIX):
        raise ScriptError(f"'{name}' is not a restore test's name ({RESTORE_COPY_PREFIX}...); nothing was removed.", "InvalidArgument")
    removed = []
    for vm in [vm for vm in host.vms if _ours(vm.name, name) and (vm.folder.lower() + "\\").startswith(inside)]:
        host.stop_vm(vm)
        host.remove_vm(vm)
        removed.append(vm.name)
    folder_name = re.sub(r'[\\/:*?"<>|]', "_", name)  # as hyperv_backup.restore.folder names it
    folders = [f for f in host.folders if f.lower().startswith(inside) and "\\" not in f[len(inside):]
               and _ours(f[len(inside):], folder_name)]
    files = sum(host.remove_folder(f) for f in folders)
    return {"clock_utc": iso(host.now()), "removed_vms": removed, "removed_folders": folders, "removed_files": files}


SCRIPTS = {
    "Get-HvbHostReadiness": _readiness,
    "Get-HvbVMBackupProbe": _probe,
    "Start-HvbVMBackup": _start,
    "Get-HvbVMBackupStatus": _status,
    "Get-HvbVMBackupResult": _result,
    "Get-HvbHostVMs": _host_vms,
    "Remove-HvbRecoveryCheckpoint": _remove_recovery,
    "Start-HvbRestoreTest": _start_restore_test,
    "Get-HvbRestoreTest": _restore_test,
    "Start-HvbRestoreCopy": _start_restore_copy,
    "Remove-HvbRestoreCopy": _remove_restore_copies,
}
# The status scripts that can wait on the host (-WaitSeconds, -Seen): what each watches.
WAITS = {"Get-HvbVMBackupStatus": lambda host, request: change_key(host, request.vm),
         "Get-HvbRestoreTest": restore_key}


# -- wbadmin ------------------------------------------------------------------------------


def _wbadmin(host: Host, command: str) -> Outcome:
    words = command.lower().split()
    locale = host.spec.locale
    banner = "\r\n".join(WBADMIN_BANNER[locale]) + "\r\n\r\n"
    if words[1:3] == ["get", "versions"]:
        host.tick()
        if not host.versions:
            return Outcome(banner, WBADMIN_NO_BACKUPS[locale] + "\r\n", 0)
        return Outcome(banner + "".join(_version_block(host, v) for v in host.versions))
    if words[1:3] == ["get", "status"]:
        job = host.running_job()
        text = _operation_text(host, job) if job else WSB_NO_OPERATION[locale]
        return Outcome(banner + text + "\r\n")
    return Outcome(banner, "ERROR - Command syntax incorrect. See the command syntax below.\r\n", 1)


def _version_block(host: Host, version) -> str:
    locale = host.spec.locale
    local = version.backup_time.astimezone(ZoneInfo(host.spec.timezone))
    label = {field: names[locale] for field, names in WBADMIN_VERSION_LABELS.items()}
    lines = [
        f"{label['backup_time']}: {_wbadmin_time(local, locale)}",
        f"{label['backup_location']}: {WBADMIN_LOCATION[locale].format(target=version.target)}",
        f"{label['version_identifier']}: {version.version_id}",
        f"{label['can_recover']}: {WBADMIN_CAN_RECOVER_APPLICATIONS[locale]}",
        f"{label['snapshot_id']}: {{{uuid.uuid5(uuid.NAMESPACE_URL, host.name + version.version_id)}}}",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def _wbadmin_time(local: datetime, locale: str) -> str:
    """Host-local time as wbadmin prints it: en-US `4/8/2025 10:12 PM`, ja-JP `2025/04/08 22:12`."""
    if locale == "en-US":
        hour = local.hour % 12 or 12
        return f"{local.month}/{local.day}/{local.year} {hour}:{local.minute:02d} {'AM' if local.hour < 12 else 'PM'}"
    return local.strftime("%Y/%m/%d %H:%M")
