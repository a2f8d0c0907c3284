"""The scenario file (docs/scenario.md): load, validate, and fill in defaults.

Validation walks the YAML node tree rather than the loaded data so that every error can
name the key and the line it is on. Unknown keys are errors: a typo such as `guest_vs`
must never silently fall back to a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hyperv_backup.facts import CHECKPOINT_SETTINGS, HOST_VERSIONS, LOCALES, STEPS, CheckpointType, at_least
from hyperv_backup.yamlcheck import Ctx, YamlError, boolean, choice, compose, mapping, name, number, sequence, string

FAULT_KINDS = (
    "connection_drop",
    "slow",
    "soap_fault",
    "auth_fail",
    "vss_transient",
    "target_full",
    "job_running",
    "merge_stuck",
    "host_reboot",
    "vm_removed",
)
TRANSPORTS = ("plaintext", "ssl", "ntlm")
VM_STATES = ("Running", "Off", "Saved", "Paused")
GUESTS = ("windows", "linux", "freebsd", "other")
GUEST_VSS = ("ok", "missing", "fails")
FILE_SYSTEMS = ("NTFS", "ReFS", "FAT32", "FAT", "exFAT", "ext4", "ext3", "xfs", "btrfs", "ufs", "zfs")


WINRM_DEFAULTS = {"max_shells_per_user": 30, "max_memory_per_shell_mb": 1024, "idle_timeout_s": 7200}  # Windows' defaults


class ScenarioError(YamlError):
    """A scenario file that cannot be used; the message names the file, line and key."""


@dataclass
class Fault:
    kind: str
    at: str
    times: int = 1


@dataclass
class Volume:
    fs: str = "NTFS"
    role: str = "data"
    dynamic: bool = False


@dataclass
class Checkpoint:
    name: str
    type: str = "Standard"


@dataclass
class VMSpec:
    name: str
    generation: int = 2
    state: str = "Running"
    guest: str = "windows"
    guest_vss: str = "ok"
    integration_services: dict[str, bool] = field(default_factory=lambda: {"vss": True, "heartbeat": True})
    volumes: list[Volume] | None = None
    disk_gb: float = 40.0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    checkpoint_type: str = "Production"  # extension: the VM's checkpoint setting (Disabled turns checkpoints off)
    stray_avhdx: int = 0  # extension: .avhdx files beside the disks that no checkpoint explains (debris)


@dataclass
class HostSpec:
    name: str
    os: str = "2022"
    locale: str = "en-US"
    port: int = 0
    transport: str = "ssl"
    username: str = "backup-svc"
    password: str = "S3cret!"
    backup_target: str = "E:"
    target_free_gb: float = 2000.0
    throughput_mb_s: float = 200.0
    timezone: str = "UTC"
    faults: list[Fault] = field(default_factory=list)
    vms: list[VMSpec] = field(default_factory=list)
    # what the preflight reads (CONTRACTS 5.1): the WSB feature, the host's clock against the real one, the
    # account's groups, and WinRM's limits
    wsb_installed: bool = True
    clock_skew_seconds: float = 0.0
    account_groups: list[str] = field(default_factory=lambda: ["Administrators"])
    winrm: dict[str, int] = field(default_factory=lambda: dict(WINRM_DEFAULTS))


@dataclass
class Scenario:
    seed: int = 7
    control_port: int = 0
    speed: float = 60.0
    hosts: list[HostSpec] = field(default_factory=list)


def _host_name(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = string(ctx, node, key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,14}", value):
        raise ctx.fail(node, f"`{key}` {value!r} is not a NetBIOS computer name (letters, digits, '-', at most 15)")
    return value


# Where a fault strikes when the scenario does not say.
DEFAULT_FAULT_STEP = {"vm_removed": "probe", "merge_stuck": "merge", "target_full": "copy", "job_running": "snapshot",
                      "vss_transient": "snapshot", "host_reboot": "copy"}


# Where each kind can strike: the protocol's faults at any step's command; the host's own at the step
# whose work they spoil (model.Host._plan, commands._start, commands._probe take them there).
FAULT_STEPS: dict[str, tuple[str, ...]] = {kind: STEPS for kind in ("connection_drop", "slow", "soap_fault", "auth_fail", "host_reboot")} | {
    "vss_transient": ("snapshot", "copy"), "target_full": ("copy",), "job_running": ("snapshot",), "merge_stuck": ("merge",),
    "vm_removed": ("probe",)}
assert set(FAULT_STEPS) == set(FAULT_KINDS)


def _fault(ctx: Ctx, node: yaml.Node, key: str) -> Fault:
    fields = {"kind": choice(FAULT_KINDS), "at": choice(STEPS), "times": number(1, integer=True)}
    values = mapping(ctx, node, "a fault", fields, required=("kind",))
    values.setdefault("at", DEFAULT_FAULT_STEP.get(values["kind"], "probe"))
    if values["at"] not in FAULT_STEPS[values["kind"]]:
        raise ctx.fail(node, f"a `{values['kind']}` fault cannot strike at `{values['at']}`; it strikes at "
                             f"{' or '.join(FAULT_STEPS[values['kind']])}")
    return Fault(**values)


def _volume(ctx: Ctx, node: yaml.Node, key: str) -> Volume:
    fields = {"fs": choice(FILE_SYSTEMS), "role": choice(("data", "boot", "system", "efi")), "dynamic": boolean}
    return Volume(**mapping(ctx, node, "a volume", fields))


def _checkpoint(ctx: Ctx, node: yaml.Node, key: str) -> Checkpoint:
    fields = {"name": name, "type": choice(tuple(CheckpointType))}
    return Checkpoint(**mapping(ctx, node, "a checkpoint", fields, required=("name",)))


def _integration_services(ctx: Ctx, node: yaml.Node, key: str) -> dict[str, bool]:
    values = mapping(ctx, node, "integration_services", {"vss": boolean, "heartbeat": boolean})
    return {"vss": True, "heartbeat": True} | values


def _winrm(ctx: Ctx, node: yaml.Node, key: str) -> dict[str, int]:
    return WINRM_DEFAULTS | mapping(ctx, node, "winrm", {name: number(1, integer=True) for name in WINRM_DEFAULTS})


def _vm(ctx: Ctx, node: yaml.Node, key: str) -> tuple[VMSpec, yaml.Node]:
    fields = {
        "name": name,
        "generation": number(1, 2, integer=True),
        "state": choice(VM_STATES),
        "guest": choice(GUESTS),
        "guest_vss": choice(GUEST_VSS),
        "integration_services": _integration_services,
        "volumes": sequence(_volume),
        "disk_gb": number(0.001),
        "checkpoints": sequence(_checkpoint),
        "faults": sequence(_fault),
        "checkpoint_type": choice(CHECKPOINT_SETTINGS),
        "stray_avhdx": number(0, 100, integer=True),
    }
    return VMSpec(**mapping(ctx, node, "a VM", fields, required=("name",))), node


def _host(ctx: Ctx, node: yaml.Node, key: str) -> HostSpec:
    fields = {
        "name": _host_name,
        "os": choice(HOST_VERSIONS),
        "locale": choice(LOCALES),
        "port": number(0, 65535, integer=True),
        "transport": choice(TRANSPORTS),
        "username": name,
        "password": string,
        "backup_target": string,
        "target_free_gb": number(0),
        "throughput_mb_s": number(0.001),
        "timezone": string,
        "faults": sequence(_fault),
        "vms": sequence(_vm),
        "wsb_installed": boolean,
        "clock_skew_seconds": number(-10**9),
        "account_groups": sequence(string),
        "winrm": _winrm,
    }
    values = mapping(ctx, node, "a host", fields, required=("name",))
    vms_with_nodes = values.pop("vms", [])
    host = HostSpec(**values, vms=[vm for vm, _ in vms_with_nodes])
    seen: set[str] = set()
    for vm, vm_node in vms_with_nodes:
        if vm.generation == 2 and not at_least(host.os, "2012 R2"):
            raise ctx.fail(vm_node, f"VM {vm.name!r} is generation 2, which needs a host of 2012 R2 or newer (host {host.name} is {host.os})")
        if vm.name.lower() in seen:
            raise ctx.fail(vm_node, f"VM name {vm.name!r} appears twice on host {host.name}")
        seen.add(vm.name.lower())
        if vm.volumes is None:
            vm.volumes = [Volume(fs="FAT32", role="efi"), Volume(fs="NTFS", role="boot")] if vm.generation == 2 else [Volume(fs="NTFS", role="boot")]
    return host


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    ctx, root = compose(text, source, ScenarioError)
    if root is None:
        raise ScenarioError(f"{source}: the scenario is empty; it needs at least `hosts`")
    fields = {
        "seed": number(0, integer=True),
        "control_port": number(0, 65535, integer=True),
        "speed": number(0.001),
        "hosts": sequence(_host),
    }
    scenario = Scenario(**mapping(ctx, root, "the scenario", fields))
    names = [host.name.upper() for host in scenario.hosts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScenarioError(f"{source}: host name(s) given more than once: {', '.join(duplicates)}")
    passwords: dict[str, set[str]] = {}
    for host in scenario.hosts:
        if host.transport == "ntlm":
            passwords.setdefault(host.username.lower(), set()).add(host.password)
    clashing = sorted(user for user, given in passwords.items() if len(given) > 1)
    if clashing:  # one NTLM account store serves the whole simulated fleet, as one domain would
        raise ScenarioError(f"{source}: ntlm hosts share the user name(s) {', '.join(clashing)} with different passwords; "
                            "give them one password (a domain account) or different user names")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"cannot read scenario {path}: {error.strerror}") from None
    return parse_scenario(text, str(path))
