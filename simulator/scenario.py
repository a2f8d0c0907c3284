"""The scenario file (CONTRACTS.md section 2): load, validate, and fill in defaults.

Validation walks the YAML node tree rather than the loaded data so that every error can
name the key and the line it is on. Unknown keys are errors: a typo such as `guest_vs`
must never silently fall back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hyperv_backup.facts import HOST_VERSIONS, LOCALES, STEPS, CheckpointType, at_least

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


class ScenarioError(ValueError):
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


@dataclass
class Scenario:
    seed: int = 7
    control_port: int = 0
    speed: float = 60.0
    hosts: list[HostSpec] = field(default_factory=list)


# -- node helpers ---------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, node: yaml.Node, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}, line {node.start_mark.line + 1}: {message}")


def _scalar(ctx: _Ctx, node: yaml.Node, key: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, f"`{key}` must be a single value")
    return yaml.safe_load(yaml.serialize(node))


def _string(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _scalar(ctx, node, key)
    if value is None or isinstance(value, (list, dict)):
        raise ctx.fail(node, f"`{key}` must be a string")
    return str(value)


def _choice(options: tuple[str, ...]) -> Callable[[_Ctx, yaml.Node, str], str]:
    def read(ctx: _Ctx, node: yaml.Node, key: str) -> str:
        value = _string(ctx, node, key)
        if value not in options:
            raise ctx.fail(node, f"`{key}` is {value!r}; expected one of: {', '.join(options)}")
        return value

    return read


def _number(minimum: float, maximum: float | None = None, integer: bool = False):
    def read(ctx: _Ctx, node: yaml.Node, key: str) -> float | int:
        value = _scalar(ctx, node, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise ctx.fail(node, f"`{key}` must be {'an integer' if integer else 'a number'}, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ctx.fail(node, f"`{key}` is {value}; it must be {bound}")
        return value

    return read


def _boolean(ctx: _Ctx, node: yaml.Node, key: str) -> bool:
    value = _scalar(ctx, node, key)
    if not isinstance(value, bool):
        raise ctx.fail(node, f"`{key}` must be true or false, not {value!r}")
    return value


_NAME_RE = re.compile(r"^[^\x00-\x1f]{1,100}$")


def _name(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _string(ctx, node, key)
    if not _NAME_RE.match(value):
        raise ctx.fail(node, f"`{key}` must be 1 to 100 printable characters")
    return value


def _host_name(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _string(ctx, node, key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,14}", value):
        raise ctx.fail(node, f"`{key}` {value!r} is not a NetBIOS computer name (letters, digits, '-', at most 15)")
    return value


def _mapping(ctx: _Ctx, node: yaml.Node, what: str, fields: dict[str, Callable], required=()) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, f"{what} must be a mapping of keys to values")
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in fields:
            raise ctx.fail(key_node, f"unknown key `{key}` in {what}; allowed: {', '.join(fields)}")
        if key in out:
            raise ctx.fail(key_node, f"`{key}` is given twice in {what}")
        out[key] = fields[key](ctx, value_node, key)
    for key in required:
        if key not in out:
            raise ctx.fail(node, f"{what} needs `{key}`")
    return out


def _sequence(item: Callable[[_Ctx, yaml.Node, str], Any]):
    def read(ctx: _Ctx, node: yaml.Node, key: str) -> list[Any]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.fail(node, f"`{key}` must be a list")
        return [item(ctx, child, key) for child in node.value]

    return read


# Where a fault strikes when the scenario does not say.
DEFAULT_FAULT_STEP = {"vm_removed": "probe", "merge_stuck": "merge", "target_full": "copy", "job_running": "snapshot",
                      "vss_transient": "snapshot", "host_reboot": "copy"}


def _fault(ctx: _Ctx, node: yaml.Node, key: str) -> Fault:
    fields = {"kind": _choice(FAULT_KINDS), "at": _choice(STEPS), "times": _number(1, integer=True)}
    values = _mapping(ctx, node, "a fault", fields, required=("kind",))
    values.setdefault("at", DEFAULT_FAULT_STEP.get(values["kind"], "probe"))
    return Fault(**values)


def _volume(ctx: _Ctx, node: yaml.Node, key: str) -> Volume:
    fields = {"fs": _choice(FILE_SYSTEMS), "role": _choice(("data", "boot", "system", "efi")), "dynamic": _boolean}
    return Volume(**_mapping(ctx, node, "a volume", fields))


def _checkpoint(ctx: _Ctx, node: yaml.Node, key: str) -> Checkpoint:
    fields = {"name": _name, "type": _choice(tuple(CheckpointType))}
    return Checkpoint(**_mapping(ctx, node, "a checkpoint", fields, required=("name",)))


def _integration_services(ctx: _Ctx, node: yaml.Node, key: str) -> dict[str, bool]:
    values = _mapping(ctx, node, "integration_services", {"vss": _boolean, "heartbeat": _boolean})
    return {"vss": True, "heartbeat": True} | values


def _vm(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[VMSpec, yaml.Node]:
    fields = {
        "name": _name,
        "generation": _number(1, 2, integer=True),
        "state": _choice(VM_STATES),
        "guest": _choice(GUESTS),
        "guest_vss": _choice(GUEST_VSS),
        "integration_services": _integration_services,
        "volumes": _sequence(_volume),
        "disk_gb": _number(0.001),
        "checkpoints": _sequence(_checkpoint),
        "faults": _sequence(_fault),
    }
    return VMSpec(**_mapping(ctx, node, "a VM", fields, required=("name",))), node


def _host(ctx: _Ctx, node: yaml.Node, key: str) -> HostSpec:
    fields = {
        "name": _host_name,
        "os": _choice(HOST_VERSIONS),
        "locale": _choice(LOCALES),
        "port": _number(0, 65535, integer=True),
        "transport": _choice(TRANSPORTS),
        "username": _name,
        "password": _string,
        "backup_target": _string,
        "target_free_gb": _number(0),
        "throughput_mb_s": _number(0.001),
        "timezone": _string,
        "faults": _sequence(_fault),
        "vms": _sequence(_vm),
    }
    values = _mapping(ctx, node, "a host", fields, required=("name",))
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
    ctx = _Ctx(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise ScenarioError(f"{source}: not valid YAML: {error}") from None
    if root is None:
        raise ScenarioError(f"{source}: the scenario is empty; it needs at least `hosts`")
    fields = {
        "seed": _number(0, integer=True),
        "control_port": _number(0, 65535, integer=True),
        "speed": _number(0.001),
        "hosts": _sequence(_host),
    }
    scenario = Scenario(**_mapping(ctx, root, "the scenario", fields))
    names = [host.name.upper() for host in scenario.hosts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScenarioError(f"{source}: host name(s) given more than once: {', '.join(duplicates)}")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"cannot read scenario {path}: {error.strerror}") from None
    return parse_scenario(text, str(path))
