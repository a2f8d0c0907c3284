"""The scenario file (docs/scenario.md): the simulated fleet as pydantic models, one declaration per key.

Each field is declared once, with its type, bounds and default; `yamlcheck.validate` reads the YAML as
written (no YAML 1.1 guesses) and turns the first error into the file, the line and the key. Unknown keys
are errors: a typo such as `guest_vs` must never silently fall back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from hyperv_backup.facts import CHECKPOINT_SETTINGS, HOST_VERSIONS, LOCALES, STEPS, CheckpointType, at_least
from hyperv_backup.yamlcheck import NULL_IS_EMPTY, Boolean, Integer, Name, Number, compose, error_at, one_of, validate
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .exceptions import ScenarioError
from .faults import KINDS

TRANSPORTS = ("plaintext", "ssl", "ntlm")
VM_STATES = ("Running", "Off", "Saved", "Paused")
GUESTS = ("windows", "linux", "freebsd", "other")
GUEST_VSS = ("ok", "missing", "fails")
FILE_SYSTEMS = ("NTFS", "ReFS", "FAT32", "FAT", "exFAT", "ext4", "ext3", "xfs", "btrfs", "ufs", "zfs")


def _netbios(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,14}", value):
        raise ValueError(f"{value!r} is not a NetBIOS computer name (letters, digits, '-', at most 15)")
    return value


def _config(title: str, **more) -> ConfigDict:
    return ConfigDict(extra="forbid", title=title, **more)  # an unknown key is a mistake, named with its line


class Fault(BaseModel):
    model_config = _config("a fault", frozen=True)

    kind: one_of(tuple(KINDS))
    at: one_of(STEPS)  # not given: the step its kind belongs to (faults.KINDS)
    times: Annotated[Integer, Field(ge=1)] = 1

    @model_validator(mode="before")
    @classmethod
    def _its_step(cls, data):
        if isinstance(data, dict) and data.get("at") is None and data.get("kind") in KINDS:
            return data | {"at": KINDS[data["kind"]].default_step}
        return data

    @model_validator(mode="after")
    def _strikes_there(self) -> Fault:
        kind = KINDS[self.kind]
        if self.at not in kind.steps:
            raise ValueError(f"a `{self.kind}` fault cannot strike at `{self.at}`; it strikes at {' or '.join(kind.steps)}")
        return self


Faults = Annotated[list[Fault], NULL_IS_EMPTY]


class Volume(BaseModel):
    model_config = _config("a volume")

    fs: one_of(FILE_SYSTEMS) = "NTFS"
    role: one_of(("data", "boot", "system", "efi")) = "data"
    dynamic: Boolean = False


class Checkpoint(BaseModel):
    model_config = _config("a checkpoint")

    name: Name
    type: one_of(tuple(CheckpointType)) = "Standard"


class IntegrationServices(BaseModel):
    model_config = _config("integration_services")

    vss: Boolean = True
    heartbeat: Boolean = True


class VMSpec(BaseModel):
    model_config = _config("a VM")

    name: Name
    generation: Annotated[Integer, Field(ge=1, le=2)] = 2
    state: one_of(VM_STATES) = "Running"
    guest: one_of(GUESTS) = "windows"
    guest_vss: one_of(GUEST_VSS) = "ok"
    integration_services: IntegrationServices = IntegrationServices()
    volumes: list[Volume] = []  # none given: the boot volume (and the EFI partition of generation 2)
    disk_gb: Annotated[Number, Field(ge=0.001)] = 40.0
    checkpoints: Annotated[list[Checkpoint], NULL_IS_EMPTY] = []
    faults: Faults = []
    checkpoint_type: one_of(CHECKPOINT_SETTINGS) = "Production"  # the VM's checkpoint setting (Disabled turns checkpoints off)
    stray_avhdx: Annotated[Integer, Field(ge=0, le=100)] = 0  # .avhdx files beside the disks that no checkpoint explains

    @model_validator(mode="after")
    def _default_volumes(self) -> VMSpec:
        if not self.volumes:
            self.volumes = [Volume(fs="FAT32", role="efi"), Volume(fs="NTFS", role="boot")] if self.generation == 2 \
                else [Volume(fs="NTFS", role="boot")]
        return self


class WinRMLimits(BaseModel):
    """WinRM's limits as the preflight reads them; the defaults are Windows' own."""

    model_config = _config("winrm")

    max_shells_per_user: Annotated[Integer, Field(ge=1)] = 30
    max_memory_per_shell_mb: Annotated[Integer, Field(ge=1)] = 1024
    idle_timeout_s: Annotated[Integer, Field(ge=1)] = 7200


class HostSpec(BaseModel):
    model_config = _config("a host")

    name: Annotated[str, AfterValidator(_netbios)]
    os: one_of(HOST_VERSIONS) = "2022"
    locale: one_of(LOCALES) = "en-US"
    port: Annotated[Integer, Field(ge=0, le=65535)] = 0
    transport: one_of(TRANSPORTS) = "ssl"
    username: Name = "backup-svc"
    password: str = "S3cret!"
    backup_target: str = "E:"
    target_free_gb: Annotated[Number, Field(ge=0)] = 2000.0
    throughput_mb_s: Annotated[Number, Field(ge=0.001)] = 200.0
    timezone: str = "UTC"
    faults: Faults = []
    vms: Annotated[list[VMSpec], NULL_IS_EMPTY] = []
    # what the preflight reads (CONTRACTS 5.1): the WSB feature, the host's clock against the real one, the
    # account's groups, and WinRM's limits
    wsb_installed: Boolean = True
    clock_skew_seconds: Number = 0.0
    account_groups: Annotated[list[str], NULL_IS_EMPTY] = ["Administrators"]
    winrm: WinRMLimits = WinRMLimits()

    @field_validator("vms")
    @classmethod
    def _vms_fit_the_host(cls, vms: list[VMSpec], info: ValidationInfo) -> list[VMSpec]:
        """Two VMs may share a name, as on Hyper-V (an imported copy keeps its source's): a VM is its id."""
        os_version = info.data.get("os", "2022")
        for index, vm in enumerate(vms):
            if vm.generation == 2 and not at_least(os_version, "2012 R2"):
                raise error_at((index,), f"VM {vm.name!r} is generation 2, which needs a host of 2012 R2 or newer "
                                         f"(host {info.data.get('name')} is {os_version})")
        return vms


class Scenario(BaseModel):
    model_config = _config("the scenario")

    seed: Annotated[Integer, Field(ge=0)] = 7
    control_port: Annotated[Integer, Field(ge=0, le=65535)] = 0
    speed: Annotated[Number, Field(ge=0.001)] = 60.0
    hosts: Annotated[list[HostSpec], NULL_IS_EMPTY] = []

    @model_validator(mode="after")
    def _one_fleet(self) -> Scenario:
        names = [host.name.upper() for host in self.hosts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host name(s) given more than once: {', '.join(duplicates)}")
        passwords: dict[str, set[str]] = {}
        for host in self.hosts:
            if host.transport == "ntlm":
                passwords.setdefault(host.username.lower(), set()).add(host.password)
        clashing = sorted(user for user, given in passwords.items() if len(given) > 1)
        if clashing:  # one NTLM account store serves the whole simulated fleet, as one domain would
            raise ValueError(f"ntlm hosts share the user name(s) {', '.join(clashing)} with different passwords; "
                             "give them one password (a domain account) or different user names")
        return self


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    ctx, root = compose(text, source, ScenarioError)
    if root is None:
        raise ScenarioError(f"{source}: the scenario is empty; it needs at least `hosts`")
    return validate(Scenario, ctx, root, "the scenario")


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"cannot read scenario {path}: {error.strerror}") from None
    return parse_scenario(text, str(path))
