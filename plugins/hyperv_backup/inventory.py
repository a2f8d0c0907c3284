"""The backup inventory: which hosts, which VMs, when, and who is told. Pure: no Airflow import.

Validated when the DAG file is parsed, without touching the network or a database: a
mistake becomes one import error naming the file, the line and the key.
"""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .facts import RESTORE_COPY_PREFIX, Mode
from .windows import Window
from .yamlcheck import NULL_IS_EMPTY, Boolean, Integer, Name, Number, YamlError, compose, validate

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "include" / "inventory.yaml"
ENV_VAR = "HYPERV_BACKUP_INVENTORY"


class InventoryError(YamlError):
    pass


def _cron(value: str) -> str:
    if not (value.startswith("@") or len(value.split()) == 5):
        raise ValueError(f"{value!r} is not a cron expression (five fields) or a preset like @daily")
    return value


def _restore_path(value: str) -> str:
    """A folder below a drive or share (never a drive's root, where the clean-up would look among everything)."""
    parts = [p for p in value.replace("/", "\\").split("\\") if p]
    if not (value[1:3] in (":\\", ":/") and len(parts) >= 2) and not (value.startswith("\\\\") and len(parts) >= 3):
        raise ValueError(f"{value!r} is not a folder of its own on a drive or share, such as D:\\HvbRestoreTests")
    return value


def _host_name(value: str) -> str:
    """A computer's name or FQDN: it names the host's DAG (hyperv_backup_<name>), whose id Airflow limits to these
    characters; one host with another would lose every host's DAG to one import error."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-', '.' and '_', as a computer's name or FQDN)")
    return value


Names = Annotated[list[Name], NULL_IS_EMPTY]
FORBID = {"extra": "forbid"}  # an unknown key is a mistake, named with its line


class HostEntry(BaseModel):
    """One host of the inventory. Each field is declared here once: its type, its bounds, its default."""

    model_config = ConfigDict(**FORBID, title="a host")

    name: Annotated[Name, AfterValidator(_host_name)]
    connection: Name
    backup_target: str = "E:"
    schedule: Annotated[str, AfterValidator(_cron)] = "0 22 * * *"
    window: Window = Window()
    vms: Names = []  # names or fnmatch patterns
    exclude: Names = []
    priority: dict[str, Annotated[Integer, Field(ge=-1000, le=1000)]] = {}
    rpo_hours: Annotated[Number, Field(ge=1, le=24 * 366)] = 24.0  # recovery-point objective: the oldest a last good backup may be
    clean_recovery_checkpoints: Boolean = False  # let the probe remove a Recovery checkpoint a failed backup left
    # the consistency policy: VM names or patterns -> the modes their backups may be taken in (docs/inventory.md)
    require: dict[Name, Annotated[list[Mode], Field(min_length=1)]] = {}
    min_restore_points: Annotated[Integer, Field(ge=0, le=10000)] = 1  # fewer versions holding a VM on its target: flagged
    restore_test_days: Annotated[Integer, Field(ge=1, le=3660)] = 30  # every VM's backup is restore-tested within this many days
    # a folder of the restore tests' own on a volume with room for the largest VM (each test's copy lives there for minutes)
    restore_test_path: Annotated[str, AfterValidator(_restore_path)] = "C:\\HvbRestoreTests"

    @property
    def patterns(self) -> list[str]:
        return [p for p in self.vms or ["*"] if any(ch in p for ch in "*?[")]

    @property
    def named(self) -> list[str]:
        """The VMs the entry names outright (not by a pattern): each is probed, and recorded missing while the host lacks it."""
        return [v for v in self.vms if v not in self.patterns]

    def vanished(self, standing: list[str], listed: list[str]) -> list[str]:
        """The VMs to retire (catalog.standing): those the catalog still follows (`standing`) that this entry selects by a
        pattern and the host no longer lists (`listed`). A VM the entry names is not retired: its probe says it is missing,
        until the inventory changes."""
        here = set(listed)
        return [name for name in self.selected([n for n in standing if n not in here]) if name not in self.named]

    def allowed_modes(self, vm_name: str) -> list[Mode] | None:
        """The modes `require` allows this VM's backup to be taken in (every pattern that matches it applies: the
        modes all of them allow), or None when no pattern names it (any mode)."""
        matching = [set(modes) for pattern, modes in self.require.items() if fnmatch.fnmatchcase(vm_name, pattern)]
        return [m for m in Mode if all(m in allowed for allowed in matching)] if matching else None

    def selected(self, names: list[str], last_good: dict[str, datetime] | None = None) -> list[str]:
        """The VM names this entry backs up, in the order their jobs should run.

        Names match the host's VMs exactly (case and all, as the probe matches them); patterns are fnmatch.
        Order: highest priority first, then the oldest last good backup (never backed up first),
        then the name, so VMs a closed window deferred go first next time. Each name once: Hyper-V lets
        two VMs share a name (an imported copy keeps its source's), and the probe fails that name once,
        with the VMs to rename, rather than twice under one catalog row.
        """
        chosen = [n for n in dict.fromkeys(names) if any(fnmatch.fnmatchcase(n, p) for p in self.vms or ["*"])
                  and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)
                  and not n.startswith(RESTORE_COPY_PREFIX)]  # a restore test's copy is never the fleet's
        last_good = last_good or {}
        never = datetime.min.replace(tzinfo=UTC)
        return sorted(chosen, key=lambda n: (-self.priority.get(n, 0), last_good.get(n) or never, n))


class Mail(BaseModel):
    model_config = ConfigDict(**FORBID, title="mail")

    to: Names = []  # stakeholders: the backup report
    admins: Names = []  # administrators: the checkpoint audit (default: to)


class Inventory(BaseModel):
    model_config = ConfigDict(**FORBID, title="the inventory")

    source: str
    hosts: Annotated[list[HostEntry], NULL_IS_EMPTY]
    mail: Mail = Mail()

    @model_validator(mode="after")
    def _hosts_once(self) -> Inventory:
        names = [h.name.upper() for h in self.hosts]
        if len(names) != len(set(names)):
            raise ValueError("a host is listed twice")
        return self

    @property
    def mail_to(self) -> list[str]:
        return self.mail.to

    @property
    def admin_recipients(self) -> list[str]:
        return self.mail.admins or self.mail.to


def followed(hosts: list[HostEntry], rows: list[dict]) -> list[dict]:
    """The catalog's per-VM rows (`host`, `vm_name`) that these inventory entries still back up: the host's entry selects
    the VM. The RPO watch, the report's RPO and restore tables and the fleet page follow only these: a host taken out of
    the inventory, or a VM its entry no longer selects, is no one's RPO. (A VM its host no longer lists is left out by
    the catalog's reads themselves: catalog.standing.)"""
    chosen = {(h.name, name) for h in hosts for name in h.selected([r["vm_name"] for r in rows if r["host"] == h.name])}
    return [row for row in rows if (row["host"], row["vm_name"]) in chosen]


def parse_inventory(text: str, source: str) -> Inventory:
    ctx, root = compose(text, source, InventoryError)
    if root is None:
        raise InventoryError(f"{source}: the inventory is empty; it needs `hosts`")
    return validate(Inventory, ctx, root, "the inventory", source=source)


def load_inventory(path: str | Path | None = None) -> Inventory:
    path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InventoryError(f"cannot read inventory {path}: {error.strerror}") from None
    return parse_inventory(text, str(path))
