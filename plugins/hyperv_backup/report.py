"""The report's content: what it reads of the catalog (`read`), then pure functions from those frames to
the report's frames. No Airflow import.

Everything is computed from the catalog (`vm_backups`) alone, so the report of any past interval
can be rebuilt and comes out the same every time. The catalog is asked only for what the report
needs (`read`): the interval's rows, each VM's last good backup, and per-day, per-host totals of
the trend, so a year of a large fleet costs about what one night costs. A row belongs to the
interval its run was due in (`catalog.DUE`: `interval_end`, else the job's start, else its last
update). Times are UTC throughout; a host's window is converted from its own time zone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from .errors import host_faults
from .facts import Status
from .mailer import TABLE_ROWS
from .rpo import Exposure
from .rules import is_share
from .windows import Window

MODES = ("online", "checkpoint", "saved", "offline")
STATUS_ORDER = (Status.SUCCEEDED, Status.FAILED, Status.DEFERRED, Status.COVERED, Status.SKIPPED, Status.RUNNING)  # the subject's
TIME_COLUMNS = ("interval_start", "interval_end", "job_started_at", "job_finished_at", "snapshot_at", "merged_at", "updated_at",
                "oldest_restore_point")
VM_COLUMNS = ["host", "vm_name", "run_kind", "status", "predicted_mode", "mode", "reasons", "started", "finished", "duration_s", "gb",
              "mb_s", "offline_s", "uptime_reset", "merge_s", "backup_version", "error", "missed", "attempts", "host_restarted",
              "host_fault", "restore_points", "oldest_restore_point", "few_restore_points", "surprise"]


@dataclass(frozen=True)
class Interval:
    start: datetime  # aware, UTC
    end: datetime
    nightly: bool = True  # a scheduled day's interval, named by the night it starts; else by its end

    @property
    def label(self) -> str:
        """What the report is about, for the subject: `2026-11-23` (the night) or `24 h to 2026-11-24 18:05 UTC`."""
        if self.nightly and self.end - self.start == timedelta(days=1):
            return f"{self.start:%Y-%m-%d}"
        hours = (self.end - self.start).total_seconds() / 3600
        return f"{hours:.0f} h to {self.end:%Y-%m-%d %H:%M} UTC"


def file_prefix(interval: Interval) -> str:
    """The report's file names carry what its title says: the night (scheduled), else the interval's end."""
    if interval.nightly and interval.end - interval.start == timedelta(days=1):
        return f"hyperv-backup-{interval.start:%Y-%m-%d}"
    return f"hyperv-backup-to-{interval.end:%Y-%m-%dT%H%M}"


TREND_DAYS = 30


@dataclass
class Inputs:
    """What the report reads from the catalog (catalog.interval_rows, last_good_per_vm, daily_totals)."""

    rows: pd.DataFrame  # the interval's rows, with `due`
    vms: pd.DataFrame  # every VM known before the interval's end, with `last_good` (NaT: never)
    days: pd.DataFrame  # per UTC day and host over the trend's days: vms, succeeded, first_start, last_end
    tests: pd.DataFrame | None = None  # each VM's last restore test before the interval's end (catalog.last_restore_tests)


def read(engine, interval: Interval, days: int = TREND_DAYS) -> Inputs:
    """Ask the catalog for what the report of `interval` needs, and nothing more."""
    from . import catalog

    return Inputs(catalog.interval_rows(engine, interval.start, interval.end), catalog.last_good_per_vm(engine, interval.end),
                  catalog.daily_totals(engine, interval.end - timedelta(days=days), interval.end),
                  pd.DataFrame(catalog.last_restore_tests(engine, interval.end), columns=list(catalog.RESTORE_TEST_COLUMNS)))


def _utc(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Times as read from any SQL backend (aware, naive or text) as UTC timestamps."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="mixed")
    return frame


def _reasons(series: pd.Series) -> pd.Series:
    return series.fillna("[]").map(lambda text: "; ".join(json.loads(text)) if text.startswith("[") else text)


def vm_table(rows: pd.DataFrame, min_restore_points: dict[str, int] | None = None) -> pd.DataFrame:
    """One line per VM backup of the interval: mode (predicted and actual, why), time, size, speed, impact, outcome,
    and the restore points on the target after it (`few_restore_points`: fewer than the host's `min_restore_points`)."""
    if rows.empty:
        return pd.DataFrame(columns=VM_COLUMNS)
    duration = (rows["job_finished_at"] - rows["job_started_at"]).dt.total_seconds()
    copy_seconds = (rows["job_finished_at"] - rows["snapshot_at"]).dt.total_seconds()  # after the shadow copy: merge and copy
    gb = rows["bytes_copied"].fillna(0).astype(float) / 1024**3
    table = pd.DataFrame({
        "host": rows["host"], "vm_name": rows["vm_name"], "run_kind": rows["run_kind"],
        "status": rows["status"],
        "predicted_mode": rows["predicted_mode"], "mode": rows["mode"], "reasons": _reasons(rows["mode_reasons"]),
        "started": rows["job_started_at"], "finished": rows["job_finished_at"], "duration_s": duration, "gb": gb,
        "mb_s": (gb * 1024 / copy_seconds.where(copy_seconds > 0)).where(rows["status"] == Status.SUCCEEDED),
        "offline_s": rows["offline_seconds"].astype(float), "uptime_reset": rows["uptime_reset"].astype("boolean"),
        "merge_s": (rows["merged_at"] - rows["snapshot_at"]).dt.total_seconds().where(rows["mode"].eq("checkpoint")),
        "backup_version": rows["backup_version"], "error": rows["error"], "missed": rows["missed"],
        "attempts": rows["attempts"].astype("Int64"), "host_restarted": rows["host_restarted"].astype("boolean"),
        "host_fault": rows["host_fault"].astype("boolean").fillna(False),  # NULL: a row from before schema 6, which did not say
        "restore_points": rows["restore_points"].astype("Int64"), "oldest_restore_point": rows["oldest_restore_point"],
    })
    least = rows["host"].map(min_restore_points or {}).fillna(1)
    table["few_restore_points"] = rows["status"].eq(Status.SUCCEEDED) & table["restore_points"].notna() \
        & (table["restore_points"].astype(float) < least)
    table["surprise"] = surprises(table)
    table["_first"] = table["surprise"].isna()
    return (table.sort_values(["_first", "host", "started", "vm_name"], na_position="last")
            .drop(columns="_first").reset_index(drop=True))


def surprises(table: pd.DataFrame) -> pd.Series:
    """Why a VM was backed up in another mode than the probe predicted, or in one the inventory's `require`
    forbids (a succeeded row with an error says so); None where neither: these come first."""
    other = table["status"].eq(Status.SUCCEEDED) & table["mode"].notna() & table["predicted_mode"].notna() \
        & table["mode"].ne(table["predicted_mode"])
    text = "backed up " + table["mode"].astype(str) + " where " + table["predicted_mode"].astype(str) + " was predicted: " \
        + table["reasons"].astype(str)
    breach = table["status"].eq(Status.SUCCEEDED) & table["error"].notna()
    return ("against the consistency policy: " + table["error"].astype(str) + "; " + table["reasons"].astype(str)).where(
        breach, text.where(other, None))


def window_table(vms: pd.DataFrame, rows: pd.DataFrame, windows: dict[str, Window]) -> pd.DataFrame:
    """Per host: the planned window of its run, when its jobs really ran, whether the window held, and who ran past it.

    Only scheduled runs promise the window; a manual run or a backfill is an administrator's
    decision made at any hour, so it neither holds nor overruns one (`held` is None).
    """
    hosts = sorted(set(windows) | set(rows["host"]))
    scheduled = rows["run_kind"] == "scheduled"
    due = rows[scheduled].groupby("host")["due"].min()
    ran = vms.groupby("host").agg(first_start=("started", "min"), last_end=("finished", "max"), vms=("vm_name", "size"))
    faults = host_faults(vms[vms["host_fault"]].to_dict("records"))
    in_scheduled_runs = dict(tuple(vms[vms["run_kind"] == "scheduled"].groupby("host")))  # one pass, not one per host
    records = []
    for host in hosts:
        window = windows.get(host)
        planned = window.bounds(due[host].to_pydatetime()) if window is not None and host in due else (None, None)
        mine = in_scheduled_runs.get(host, vms.iloc[0:0])
        late = mine[(mine["finished"] > planned[1]) | (mine["status"] == Status.DEFERRED)] if planned[1] is not None else mine.iloc[0:0]
        records.append({
            "host": host, "planned_start": planned[0], "planned_end": planned[1],
            "first_start": ran["first_start"].get(host, pd.NaT), "last_end": ran["last_end"].get(host, pd.NaT),
            "vms": int(ran["vms"].get(host, 0)), "held": late.empty if host in due else None,
            "overran": ", ".join(late["vm_name"]),
            "window": window.describe() if window is not None else "",
            "fault": faults[host][0]["error"] if host in faults else "", "fault_vms": len(faults.get(host, [])),
        })
    return pd.DataFrame(records, columns=["host", "planned_start", "planned_end", "first_start", "last_end", "vms", "held",
                                          "overran", "window", "fault", "fault_vms"])


def rpo_table(known: pd.DataFrame, at: datetime, rpo_hours: dict[str, float], default_rpo: float = 24.0) -> pd.DataFrame:
    """Every VM the catalog knows (`last_good_per_vm`), with the age of its last good backup at `at`; past the RPO
    (or never backed up) first."""
    table = _utc(known[["host", "vm_name", "last_good"]], ["last_good"])
    table["age_h"] = (pd.Timestamp(at) - table["last_good"]).dt.total_seconds() / 3600
    table["rpo_h"] = table["host"].map(rpo_hours).fillna(default_rpo).astype(float)
    table["breach"] = pd.Series([Exposure(host, name, None if pd.isna(good) else good.to_pydatetime(), rpo).past(at)  # the one rule
                                 for host, name, good, rpo in zip(table["host"], table["vm_name"], table["last_good"], table["rpo_h"],
                                                                  strict=True)], index=table.index, dtype=bool)
    table["sort_age"] = table["age_h"].fillna(np.inf)
    table = table.sort_values(["breach", "sort_age", "host", "vm_name"], ascending=[False, False, True, True])
    return table.drop(columns="sort_age").reset_index(drop=True)


RESTORE_COLUMNS = ["host", "vm_name", "finished_at", "status", "heartbeat_seconds", "backup_version", "error", "cleaned_up", "age_days",
                   "due"]


def restore_table(known: pd.DataFrame, tests: pd.DataFrame | None, at: datetime, restore_test_days: dict[str, int]) -> pd.DataFrame:
    """Every VM the catalog knows, with its last restore test (docs/restore-tests.md): when, how it went, how long the
    copy took to answer; `due` when it was never tested or longer ago than its host's `restore_test_days` (default 30).
    Failed and due first."""
    vms = known[["host", "vm_name"]]
    if tests is None or tests.empty:
        table = vms.assign(**{c: None for c in RESTORE_COLUMNS[2:8]})
    else:
        table = vms.merge(tests[RESTORE_COLUMNS[:8]], on=["host", "vm_name"], how="left")
    table = _utc(table, ["finished_at"])
    table["age_days"] = (pd.Timestamp(at) - table["finished_at"]).dt.total_seconds() / 86400
    limit = table["host"].map(restore_test_days).fillna(30).astype(float)
    table["due"] = table["finished_at"].isna() | (table["age_days"] > limit)
    table["sort"] = table["status"].eq("failed").astype(int) * 2 + table["due"].astype(int)
    table = table.sort_values(["sort", "host", "vm_name"], ascending=[False, True, True])
    return table.drop(columns="sort").reset_index(drop=True)[RESTORE_COLUMNS]


def trend_table(daily: pd.DataFrame, at: datetime, days: int = TREND_DAYS) -> pd.DataFrame:
    """The last `days` days up to `at` (from `daily_totals`): VMs tried, succeeded, success rate, and the longest
    host window (hours: its first job's start to its last job's end)."""
    since = pd.Timestamp(at) - pd.Timedelta(days=days)
    day_index = pd.date_range((since + pd.Timedelta(days=1)).normalize(), pd.Timestamp(at).normalize(), freq="D", tz="UTC")
    if daily.empty:
        return pd.DataFrame({"day": day_index, "vms": 0, "succeeded": 0, "success_rate": np.nan, "window_h": np.nan})
    spans = _utc(daily, ["first_start", "last_end"]).assign(day=pd.to_datetime(daily["day"], utc=True))
    spans["window_h"] = (spans["last_end"] - spans["first_start"]).dt.total_seconds() / 3600
    table = spans.groupby("day").agg(vms=("vms", "sum"), succeeded=("succeeded", "sum"), window_h=("window_h", "max"))
    table = table.reindex(day_index)
    table.index.name = "day"
    table[["vms", "succeeded"]] = table[["vms", "succeeded"]].fillna(0).astype(int)
    table["success_rate"] = table["succeeded"] / table["vms"].where(table["vms"] > 0)
    return table.reset_index()[["day", "vms", "succeeded", "success_rate", "window_h"]]


def impact_table(vms: pd.DataFrame) -> pd.DataFrame:
    """The VMs whose service the backup touched (Saved state, a checkpoint that restarts uptime), and why."""
    touched = vms[vms["mode"].isin(["saved", "checkpoint"]) | (vms["offline_s"].fillna(0) > 0) | vms["uptime_reset"].fillna(False)]
    restarted = touched["host_restarted"].fillna(False).astype(bool)
    impact = np.where(touched["offline_s"].fillna(0) > 0, "offline " + touched["offline_s"].fillna(0).round().astype(int).astype(str) + " s",
                      np.where(touched["uptime_reset"].fillna(False),
                               np.where(restarted, "uptime restarted (the host restarted during the backup)", "uptime restarted"),
                               "no online backup"))
    mode = touched["mode"].fillna(touched["predicted_mode"].where(touched["predicted_mode"].isna(), touched["predicted_mode"] + " (predicted)"))
    return pd.DataFrame({"host": touched["host"], "vm_name": touched["vm_name"], "mode": mode.fillna("unknown"), "impact": impact,
                         "why": touched["reasons"]}).reset_index(drop=True)


@dataclass(frozen=True)
class Summary:
    label: str
    total: int
    succeeded: int
    failed: int
    by_status: dict[str, int]
    overran: list[str]
    breaches: int
    surprises: int = 0
    host_faults: dict[str, int] = field(default_factory=dict)  # host -> VMs its fault kept from their backup

    @property
    def subject(self) -> str:
        """The truth in one line: counts, failures, windows that overran, recovery points missed."""
        if self.total == 0:
            parts = ["nothing ran"]
        else:
            parts = [f"{self.succeeded}/{self.total} succeeded"]
            parts += [f"{self.by_status[s]} {s}" for s in STATUS_ORDER[1:] if self.by_status.get(s)]
        parts += [f"{host} failed as a whole ({n} VM{'s' if n != 1 else ''})" for host, n in sorted(self.host_faults.items())]
        if self.overran:
            parts.append(f"window overran on {', '.join(self.overran)}")
        if self.breaches:
            parts.append(f"{self.breaches} VM{'s' if self.breaches != 1 else ''} past RPO")
        if self.surprises:
            parts.append(f"{self.surprises} backed up in another mode than predicted")
        return f"Hyper-V backups {self.label}: " + ", ".join(parts)


def summarize(interval: Interval, vms: pd.DataFrame, windows: pd.DataFrame, rpo: pd.DataFrame) -> Summary:
    counts = vms["status"].value_counts()
    return Summary(
        label=interval.label, total=len(vms), succeeded=int(counts.get(Status.SUCCEEDED, 0)), failed=int(counts.get(Status.FAILED, 0)),
        by_status={str(k): int(v) for k, v in counts.items()},
        overran=sorted(windows.loc[windows["held"].eq(False), "host"]), breaches=int(rpo["breach"].sum()),
        surprises=int(vms["surprise"].notna().sum()),
        host_faults={h: int(n) for h, n in windows.loc[windows["fault_vms"] > 0, ["host", "fault_vms"]].itertuples(index=False)})


@dataclass
class Report:
    interval: Interval
    summary: Summary
    vms: pd.DataFrame
    windows: pd.DataFrame
    rpo: pd.DataFrame
    trend: pd.DataFrame
    impact: pd.DataFrame
    restore_tests: pd.DataFrame
    share_targets: dict[str, str]  # host -> its network-share target, which keeps one version


def build(inputs: Inputs, interval: Interval, windows: dict[str, Window], rpo_hours: dict[str, float],
          min_restore_points: dict[str, int] | None = None, restore_test_days: dict[str, int] | None = None,
          targets: dict[str, str] | None = None) -> Report:
    """The whole report of one interval, from what `read` took from the catalog."""
    rows = _utc(inputs.rows, (*TIME_COLUMNS, "due"))
    vms = vm_table(rows, min_restore_points)
    hosts = window_table(vms, rows, windows)
    rpo = rpo_table(inputs.vms, interval.end, rpo_hours)
    shares = {host: target for host, target in (targets or {}).items() if is_share(target)}
    return Report(interval, summarize(interval, vms, hosts, rpo), vms, hosts, rpo, trend_table(inputs.days, interval.end),
                  impact_table(vms), restore_table(inputs.vms, inputs.tests, interval.end, restore_test_days or {}), shares)


# -- what the page lists ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Listing:
    """A per-VM table as the page lists it. A fleet's night is 2,000 rows a table, more than a mail can show
    (`mailer.TABLE_ROWS`), so past that the page lists only the rows that need attention (at most that many) and
    counts the others; the attached CSV and the fleet page have every VM."""

    rows: list[dict]
    total: int
    attention: int  # rows that need attention, listed or not

    @property
    def others(self) -> int:
        return self.total - len(self.rows)

    @property
    def others_need_attention(self) -> int:
        return self.attention - len(self.rows) if self.others else 0  # a cut table lists only rows that need it


def listing(table: pd.DataFrame, attention: pd.Series | bool = True, limit: int = TABLE_ROWS) -> Listing:
    """Every row of a table of at most `limit` rows; of a longer one, its first `limit` rows that need attention."""
    needs = pd.Series(attention, index=table.index, dtype=bool)
    shown = table if len(table) <= limit else table[needs].head(limit)
    return Listing(shown.to_dict("records"), len(table), int(needs.sum()))


def page_tables(report: Report) -> dict[str, Listing]:
    """The per-VM tables as the page lists them, each with what makes a row need attention."""
    vms, rpo, tests = report.vms, report.rpo, report.restore_tests
    return {
        "vms": listing(vms, vms["status"].ne(Status.SUCCEEDED) | vms["surprise"].notna() | vms["few_restore_points"]),
        "surprising": listing(vms[vms["surprise"].notna()]),
        "impact": listing(report.impact),
        "rpo": listing(rpo, rpo["breach"]),
        "restore_tests": listing(tests, tests["status"].eq(Status.FAILED) | tests["due"].fillna(False).astype(bool)),
    }
