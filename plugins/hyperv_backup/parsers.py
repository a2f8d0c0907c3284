"""Text and JSON from the hosts into dataclasses. Pure: no Airflow, no I/O.

`wbadmin` output is localized and laid out for people; read it only where the cmdlets'
objects do not tell (the caller cross-checks the backup version it lists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from .facts import WBADMIN_TIME_FORMATS, WBADMIN_VERSION_LABELS

# label (any locale) -> field name
_LABELS: dict[str, str] = {label: field_name for field_name, by_locale in WBADMIN_VERSION_LABELS.items() for label in by_locale.values()}
_LINE_RE = re.compile(r"^\s*(?P<label>[^:：]+?)\s*[:：]\s*(?P<value>.*?)\s*$")
_TIME_FORMATS = tuple(fmt for formats in WBADMIN_TIME_FORMATS.values() for fmt in formats)


@dataclass
class BackupVersion:
    """One block of `wbadmin get versions`."""

    version_identifier: str  # as printed: MM/DD/YYYY-HH:MM (UTC)
    backup_time: datetime | None  # as printed: host-local, naive
    backup_location: str
    can_recover: list[str] = field(default_factory=list)
    snapshot_id: str | None = None

    def __getitem__(self, key: str):
        """Mapping-style access, so callers may treat an item as a dict."""
        return getattr(self, key)


def _parse_time(text: str) -> datetime | None:
    text = re.sub(r"\s+", " ", text.strip())
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    # Japanese hosts may print 午前/午後 (AM/PM) in 12-hour form.
    match = re.fullmatch(r"(\d{4})/(\d{1,2})/(\d{1,2}) (午前|午後) ?(\d{1,2}):(\d{2})", text)
    if match:
        year, month, day, half, hour, minute = match.groups()
        hour_24 = int(hour) % 12 + (12 if half == "午後" else 0)
        return datetime(int(year), int(month), int(day), hour_24, int(minute))
    return None


def _split_items(text: str) -> list[str]:
    return [item.strip() for item in re.split(r"[,、，]", text) if item.strip()]


def parse_wbadmin_versions(text: str) -> list[BackupVersion]:
    """All versions in the stdout of `wbadmin get versions` (English or Japanese), oldest first."""
    versions: list[BackupVersion] = []
    current: dict[str, str] = {}

    def flush() -> None:
        if "version_identifier" in current:
            versions.append(
                BackupVersion(
                    version_identifier=current["version_identifier"],
                    backup_time=_parse_time(current.get("backup_time", "")),
                    backup_location=current.get("backup_location", ""),
                    can_recover=_split_items(current.get("can_recover", "")),
                    snapshot_id=current.get("snapshot_id"),
                )
            )
        current.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            flush()
            continue
        match = _LINE_RE.match(line)
        if not match:
            continue
        field_name = _LABELS.get(match.group("label").strip())
        if field_name is None:
            continue
        if field_name == "backup_time" and "version_identifier" in current:
            flush()  # a new block without a blank line between
        current[field_name] = match.group("value")
    flush()
    return sorted(versions, key=_version_sort_key)


def _version_sort_key(version: BackupVersion) -> datetime:
    try:
        return datetime.strptime(version.version_identifier, "%m/%d/%Y-%H:%M")
    except ValueError:
        return version.backup_time or datetime.min
