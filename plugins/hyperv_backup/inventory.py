"""The backup inventory: which hosts, which VMs, when, and who is told. Pure: no Airflow import.

Validated when the DAG file is parsed, without touching the network or a database: a
mistake becomes one import error naming the file, the line and the key.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .windows import Window
from .yamlcheck import Ctx, YamlError, boolean, compose, mapping, name, number, sequence, string

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "include" / "inventory.yaml"
ENV_VAR = "HYPERV_BACKUP_INVENTORY"


class InventoryError(YamlError):
    pass


@dataclass
class HostEntry:
    name: str
    connection: str
    backup_target: str = "E:"
    schedule: str = "0 22 * * *"
    window: Window = field(default_factory=lambda: Window("22:00", "06:00", "UTC"))
    vms: list[str] = field(default_factory=list)  # names or fnmatch patterns
    exclude: list[str] = field(default_factory=list)
    priority: dict[str, int] = field(default_factory=dict)
    rpo_hours: float = 24.0  # recovery-point objective: the oldest a VM's last good backup may be
    clean_recovery_checkpoints: bool = False  # let the probe remove a Recovery checkpoint a failed backup left

    @property
    def patterns(self) -> list[str]:
        return [p for p in self.vms or ["*"] if any(ch in p for ch in "*?[")]

    def selected(self, names: list[str], last_good: dict[str, datetime] | None = None) -> list[str]:
        """The VM names this entry backs up, in the order their jobs should run.

        Names match the host's VMs exactly (as Hyper-V does, case and all); patterns are fnmatch.
        Order: highest priority first, then the oldest last good backup (never backed up first),
        then the name, so VMs a closed window deferred go first next time.
        """
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.vms or ["*"])
                  and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)]
        last_good = last_good or {}
        never = datetime.min.replace(tzinfo=UTC)
        return sorted(chosen, key=lambda n: (-self.priority.get(n, 0), last_good.get(n) or never, n))


@dataclass
class Inventory:
    source: str
    hosts: list[HostEntry]
    mail_to: list[str] = field(default_factory=list)  # stakeholders: the backup report
    mail_admins: list[str] = field(default_factory=list)  # administrators: the checkpoint audit (default: mail_to)

    @property
    def admin_recipients(self) -> list[str]:
        return self.mail_admins or self.mail_to


def _time(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = string(ctx, node, key)
    hours, _, minutes = value.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2):
        raise ctx.fail(node, f"`{key}` is {value!r}; expected HH:MM")
    return value


def _timezone(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = string(ctx, node, key)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ctx.fail(node, f"`{key}` {value!r} is not a known time zone (IANA name, e.g. Europe/Berlin)") from None
    return value


def _schedule(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = string(ctx, node, key)
    if not (value.startswith("@") or len(value.split()) == 5):
        raise ctx.fail(node, f"`{key}` {value!r} is not a cron expression (five fields) or a preset like @daily")
    return value


def _window(ctx: Ctx, node: yaml.Node, key: str) -> Window:
    fields = {"start": _time, "end": _time, "timezone": _timezone, "grace_minutes": number(0, 24 * 60, integer=True)}
    return Window(**{"start": "22:00", "end": "06:00", "timezone": "UTC"} | mapping(ctx, node, "a window", fields))


def _priority(ctx: Ctx, node: yaml.Node, key: str) -> dict[str, int]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, "`priority` must map VM names to numbers")
    return {k.value: number(-1000, 1000, integer=True)(ctx, v, k.value) for k, v in node.value}


def _host(ctx: Ctx, node: yaml.Node, key: str) -> HostEntry:
    fields = {"name": name, "connection": name, "backup_target": string, "schedule": _schedule, "window": _window,
              "vms": sequence(name), "exclude": sequence(name), "priority": _priority,
              "rpo_hours": number(1, 24 * 366), "clean_recovery_checkpoints": boolean}
    return HostEntry(**mapping(ctx, node, "a host", fields, required=("name", "connection")))


def parse_inventory(text: str, source: str) -> Inventory:
    ctx, root = compose(text, source, InventoryError)
    if root is None:
        raise InventoryError(f"{source}: the inventory is empty; it needs `hosts`")
    mail_fields = lambda c, n, k: mapping(c, n, "mail", {"to": sequence(string), "admins": sequence(string)})  # noqa: E731
    values = mapping(ctx, root, "the inventory", {"hosts": sequence(_host), "mail": mail_fields}, required=("hosts",))
    hosts = values["hosts"]
    seen = [h.name.upper() for h in hosts]
    if len(seen) != len(set(seen)):
        raise InventoryError(f"{source}: a host is listed twice")
    mail = values.get("mail", {})
    return Inventory(source, hosts, mail.get("to", []), mail.get("admins", []))


def load_inventory(path: str | Path | None = None) -> Inventory:
    path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InventoryError(f"cannot read inventory {path}: {error.strerror}") from None
    return parse_inventory(text, str(path))
