"""Report frames on catalog data built here: a normal night, nothing ran, all failed, a VM never
backed up, a window across midnight, and a night with a daylight saving time change. Each case
is written to a real (in-memory SQLite) catalog and read back as the report reads it."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hyperv_backup import catalog, mailer, render, report
from hyperv_backup.windows import Window

NIGHT = report.Interval(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), datetime(2026, 11, 24, 7, 0, tzinfo=UTC))
DUE = datetime(2026, 11, 23, 21, 0, tzinfo=UTC)  # 22:00 Berlin
WINDOWS = {"HV01": Window("22:00", "06:00", "Europe/Berlin"), "HV02": Window("22:00", "00:00", "Europe/Berlin")}


def row(host, vm, status="succeeded", start=0.0, minutes=30.0, mode="online", due=DUE, **extra):
    started = due + timedelta(minutes=start)
    finished = started + timedelta(minutes=minutes)
    base = {"dag_id": f"hyperv_backup_{host.lower()}", "run_id": f"scheduled__{due:%Y-%m-%dT%H}", "interval_start": due,
            "interval_end": due, "host": host, "vm_name": vm, "vm_id": vm + "-id", "predicted_mode": mode, "mode": mode,
            "mode_reasons": json.dumps([f"{vm} reason"]), "status": status, "error": None if status == "succeeded" else "boom",
            "job_started_at": started, "job_finished_at": finished, "snapshot_at": started + timedelta(minutes=1),
            "merged_at": started + timedelta(minutes=2), "bytes_copied": 60 * 1024**3, "offline_seconds": 0.0,
            "uptime_reset": False, "backup_version": f"{finished:%m/%d/%Y-%H:%M}", "missed": None, "updated_at": finished,
            "attempts": 1, "host_restarted": False, "host_fault": False, "run_kind": "scheduled"}
    return base | extra


def build(rows, interval=NIGHT, windows=WINDOWS):
    engine = catalog.engine_for("sqlite://")
    if rows:
        with engine.begin() as db:
            db.execute(catalog.vm_backups.insert(), rows)
    return report.build(report.read(engine, interval), interval, windows, {"HV01": 24, "HV02": 24})


def test_a_normal_night_with_one_overrun_and_impact():
    built = build([
        row("HV01", "DC01"), row("HV01", "SQL01", start=30, minutes=60, mode="checkpoint", uptime_reset=True),
        row("HV02", "FS01", minutes=150, mode="saved", offline_seconds=42.0),  # HV02's window ends at midnight: overrun
        row("HV02", "WEB01", status="failed", start=150, minutes=5),
    ])
    vms = built.vms.set_index("vm_name")
    assert vms.loc["DC01", "duration_s"] == 1800 and vms.loc["DC01", "gb"] == 60
    assert vms.loc["DC01", "mb_s"] == pytest.approx(60 * 1024 / (29 * 60))  # from the shadow copy to the end
    assert vms.loc["SQL01", "merge_s"] == 60 and pd.isna(vms.loc["DC01", "merge_s"])  # only a checkpoint merges
    assert pd.isna(vms.loc["WEB01", "mb_s"])
    windows = built.windows.set_index("host")
    assert windows.loc["HV01", "held"] and not windows.loc["HV02", "held"]
    assert windows.loc["HV02", "overran"] == "FS01, WEB01"
    assert windows.loc["HV02", "planned_end"] == datetime(2026, 11, 23, 23, 0, tzinfo=UTC)
    assert list(built.impact["vm_name"]) == ["SQL01", "FS01"]
    assert list(built.impact["impact"]) == ["uptime restarted", "offline 42 s"]
    assert built.summary.subject == "Hyper-V backups 2026-11-23: 3/4 succeeded, 1 failed, window overran on HV02, 1 VM past RPO"


def test_nothing_ran():
    built = build([])
    assert built.vms.empty and built.impact.empty and built.rpo.empty
    assert built.summary.subject == "Hyper-V backups 2026-11-23: nothing ran"
    assert list(built.windows["held"]) == [None, None]
    assert len(built.trend) == 30 and built.trend["vms"].sum() == 0


def test_all_failed_and_a_vm_never_backed_up_comes_first():
    earlier = DUE - timedelta(days=3)
    built = build([row("HV01", "OLD", due=earlier), row("HV01", "OLD", status="failed"), row("HV01", "NEW", status="failed")])
    assert built.summary.subject == "Hyper-V backups 2026-11-23: 0/2 succeeded, 2 failed, 2 VMs past RPO"
    assert list(built.rpo["vm_name"]) == ["NEW", "OLD"]  # never backed up first, then the oldest
    assert pd.isna(built.rpo.loc[0, "last_good"]) and built.rpo.loc[1, "age_h"] == pytest.approx(3 * 24 + 10)


def test_the_trend_covers_30_days_and_a_report_is_the_same_every_time():
    rows = [row("HV01", "A", due=DUE - timedelta(days=d), status="failed" if d % 2 else "succeeded") for d in range(40)]
    first, second = build(rows), build(rows)
    assert len(first.trend) == 30 and first.trend["day"].iloc[-1] == pd.Timestamp("2026-11-24", tz="UTC")
    assert first.trend["vms"].sum() == 29  # the 29 nights before the end that fall in the window (the 30th is tomorrow's)
    pd.testing.assert_frame_equal(first.vms, second.vms)
    pd.testing.assert_frame_equal(first.trend, second.trend)


def test_a_night_when_daylight_saving_time_ends():
    # 2026-10-25 03:00 CEST -> 02:00 CET in Berlin: the window 22:00-06:00 is 9 hours long, ending at 05:00 UTC
    due = datetime(2026, 10, 24, 20, 0, tzinfo=UTC)  # 22:00 CEST
    night = report.Interval(datetime(2026, 10, 24, 6, 0, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC))
    built = build([row("HV01", "A", due=due, minutes=8 * 60 + 30), row("HV01", "B", due=due, start=8 * 60 + 30, minutes=40)],
                  interval=night)
    window = built.windows.set_index("host").loc["HV01"]
    assert (window["planned_start"], window["planned_end"]) == (due, datetime(2026, 10, 25, 5, 0, tzinfo=UTC))
    assert not window["held"] and window["overran"] == "B"


def test_rows_belong_to_the_interval_their_run_was_due_in():
    before = row("HV01", "A", due=NIGHT.start - timedelta(minutes=1))
    at_end = row("HV01", "B", due=NIGHT.end)  # the next interval's
    inside = row("HV01", "C", due=NIGHT.end - timedelta(seconds=1))
    assert list(build([before, at_end, inside]).vms["vm_name"]) == ["C"]


def test_a_manual_run_neither_holds_nor_overruns_a_window():
    built = build([row("HV01", "A", run_id="manual__2026-11-23T14:00", run_kind="manual", start=600, minutes=600)])
    window = built.windows.set_index("host").loc["HV01"]
    assert window["held"] is None and window["overran"] == ""
    assert built.vms["run_kind"].tolist() == ["manual"]
    assert "overran" not in built.summary.subject


def test_a_backfilled_scheduled_run_is_not_held_to_the_window():
    built = build([row("HV01", "A", start=600, minutes=60, run_kind="backfill", missed="the scheduled run failed: the host could not be reached")])
    assert built.windows.set_index("host").loc["HV01", "held"] is None
    assert built.vms["run_kind"].tolist() == ["backfill"]


def test_a_manual_interval_is_named_by_its_end():
    interval = report.Interval(datetime(2026, 11, 23, 18, 5, tzinfo=UTC), datetime(2026, 11, 24, 18, 5, tzinfo=UTC), nightly=False)
    assert interval.label == "24 h to 2026-11-24 18:05 UTC"
    assert NIGHT.label == "2026-11-23"


def test_a_host_restart_is_named_as_the_cause_of_the_uptime_reset_not_the_backup():
    built = build([row("HV01", "DC01", uptime_reset=True, host_restarted=True, attempts=2)])
    assert list(built.impact["impact"]) == ["uptime restarted (the host restarted during the backup)"]
    assert list(built.impact["mode"]) == ["online"] and built.vms["attempts"].tolist() == [2]


def test_a_vm_backed_up_in_another_mode_than_predicted_comes_first_with_the_reason():
    built = build([row("HV01", "DC01"), row("HV01", "APP01", start=40, predicted_mode="online", mode="checkpoint",
                                           mode_reasons=json.dumps(["Hyper-V-VMMS event 10150: the guest could not take part"]))])
    assert built.vms["vm_name"].tolist() == ["APP01", "DC01"]
    assert "backed up checkpoint where online was predicted: Hyper-V-VMMS event 10150" in built.vms["surprise"][0]
    assert "1 backed up in another mode than predicted" in built.summary.subject


def test_a_failed_vm_in_the_impact_table_shows_its_predicted_mode_not_nan():
    built = build([row("HV01", "DC01", status="failed", mode=None, predicted_mode="saved", offline_seconds=12.0)])
    assert built.impact["mode"].tolist() == ["saved (predicted)"]


def test_a_job_with_no_recorded_end_is_drawn_open_and_the_legend_shows_only_what_is_drawn():
    from hyperv_backup import charts

    built = build([row("HV01", "DC01"), row("HV01", "SQL01", status="failed", start=40, job_finished_at=None)])
    spans = charts.job_spans(built.vms)
    open_job = spans[spans["vm_name"] == "SQL01"].iloc[0]
    assert open_job["open"] and open_job["finished"] > open_job["started"]
    labels = [p.get_label() for p in charts.legend_entries(spans, window_drawn=False)]
    assert labels == ["online", "failed", "no end recorded"]
    assert charts.gantt(built.vms, built.windows.iloc[0:0]).startswith(b"\x89PNG")


def test_a_host_that_could_not_be_reached_is_told_once_with_the_vms_it_kept_from_their_backup():
    unreachable = "HV02: connection lost (refused, cut or timed out); check that the host is up"
    built = build([row("HV01", "DC01"), row("HV01", "SQL01", status="failed", error="0x80070070 target full", host_fault=False),
                   *(row("HV02", vm, status="failed", error=unreachable, host_fault=True, minutes=0) for vm in ("FS01", "WEB01"))])
    assert built.summary.subject == "Hyper-V backups 2026-11-23: 1/4 succeeded, 3 failed, HV02 failed as a whole (2 VMs), 3 VMs past RPO"
    windows = built.windows.set_index("host")
    assert windows.loc["HV02", "fault"] == unreachable and windows.loc["HV02", "fault_vms"] == 2
    assert windows.loc["HV01", "fault"] == "" and windows.loc["HV01", "fault_vms"] == 0  # a VM's own failure is its own
    html = render.render(built, Path(tempfile.mkdtemp()), "night").html.read_text()
    assert html.count(unreachable) == 1 and html.count("the host&#39;s fault (see Backup windows)") == 2
    assert "0x80070070 target full" in html


def test_a_fleet_night_lists_the_vms_that_need_attention_and_counts_the_others():
    """Past mailer.TABLE_ROWS rows a per-VM table lists the rows that need attention and counts the rest; the CSV
    keeps every VM. A small night lists every VM."""
    night = [row("HV01", f"VM{i:03d}", start=i, minutes=1) for i in range(150)]
    night[7] = row("HV01", "VM007", status="failed", start=7, minutes=1, error="0x800423F3 <the VSS writer>")
    built = build(night)
    listed = report.page_tables(built)
    assert [v["vm_name"] for v in listed["vms"].rows] == ["VM007"] and listed["vms"].others == 149
    assert listed["rpo"].total == 150 and [r["vm_name"] for r in listed["rpo"].rows] == ["VM007"]
    rendered = render.render(built, Path(tempfile.mkdtemp()), "night")
    page = rendered.html.read_text()
    assert "The VMs that need attention" in page and "Every VM</h2>" not in page
    assert "149 more VM(s) not listed: they succeeded as predicted" in page
    before_restore_tests = page.split("<h2>Restore tests")[0]  # which, never run, are due for every VM: 100 listed
    assert "0x800423F3 &lt;the VSS writer&gt;" in page and "VM008" not in before_restore_tests
    assert "50 more VM(s) not listed, 50 of them failed or due. Every VM is on Airflow&#39;s Hyper-V fleet page." in page
    assert len(pd.read_csv(rendered.csv)) == 150

    small = report.page_tables(build(night[:20]))
    assert len(small["vms"].rows) == 20 and small["vms"].others == 0


def test_a_night_where_more_vms_need_attention_than_a_table_lists_says_how_many_more_do():
    built = build([row("HV01", f"VM{i:03d}", status="failed", start=i, minutes=1) for i in range(130)])
    listed = report.page_tables(built)["vms"]
    assert (len(listed.rows), listed.others, listed.others_need_attention) == (mailer.TABLE_ROWS, 30, 30)
    page = render.render(built, Path(tempfile.mkdtemp()), "night").html.read_text()
    assert "30 more VM(s) not listed, 30 of them need attention. Every VM is in the attached night-vms.csv." in page
