"""The report of the last night of a year of nightly backups of 2,000 VMs (730,000 catalog rows).

Builds a SQLite catalog of that size, then runs, each in its own process so peak memory is its
own: (1) the minimal read: the rows the report needs and nothing else (the night's rows, each
VM's last good backup, 30 days of per-day, per-host totals), (2) the whole report: that read,
every report frame, the charts and the HTML/CSV files, (3) for comparison, reading every row of
the catalog into pandas (what the report did before it asked SQL for its rows). Prints each
one's time and peak memory (max RSS); the last line is the goal's figure (<= 2x, <= 300 MB). The read and
the report run `--repeat` times each, one after the other in turns, and the medians are compared: a single
run of either varies by half on this machine.

    .venv/bin/python -m bench.report [--vms 2000] [--nights 365] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from hyperv_backup import catalog, render, report  # noqa: E402
from hyperv_backup.windows import Window  # noqa: E402

LAST_NIGHT = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)


def fleet_rows(vms: int, nights: int, seed: int = 1) -> pd.DataFrame:
    """Nightly backups: 20 hosts, VMs one after another from 22:00, ~2% failures, modes as in a mixed fleet."""
    rng = np.random.default_rng(seed)
    night = np.repeat(np.arange(nights), vms)
    vm = np.tile(np.arange(vms), nights)
    host = vm % 20
    due = pd.Timestamp(LAST_NIGHT) - pd.to_timedelta(nights - 1 - night, unit="D")
    minutes = rng.gamma(2.0, 4.0, size=night.size)
    slot = pd.Series(minutes).groupby([night, host]).cumsum().to_numpy() - minutes
    started = due + pd.to_timedelta(slot, unit="m")
    finished = started + pd.to_timedelta(minutes, unit="m")
    failed = rng.random(night.size) < 0.02
    mode = np.array(report.MODES)[rng.choice(4, size=night.size, p=[0.7, 0.2, 0.05, 0.05])]
    return pd.DataFrame({
        "dag_id": [f"hyperv_backup_hv{h:02d}" for h in host], "run_id": [f"scheduled__{d:%Y-%m-%dT%H:%M}" for d in due],
        "interval_start": due, "interval_end": due, "host": [f"HV{h:02d}" for h in host], "vm_name": [f"VM{v:04d}" for v in vm],
        "vm_id": None, "predicted_mode": mode, "mode": mode, "mode_reasons": '["a reason"]',
        "status": np.where(failed, "failed", "succeeded"), "error": np.where(failed, "0x800423F3 transient VSS error", None),
        "job_started_at": started, "job_finished_at": finished, "snapshot_at": started + pd.Timedelta(seconds=40),
        "merged_at": started + pd.Timedelta(seconds=70), "bytes_copied": (minutes * 60 * 200 * 1024**2).astype("int64"),
        "offline_seconds": np.where(mode == "saved", 30.0, 0.0), "uptime_reset": mode == "checkpoint",
        "backup_version": None, "missed": None, "run_kind": "scheduled", "updated_at": finished,
    })


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program (VmHWM; ru_maxrss would count the pages
    of the parent it was forked from)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def child(kind: str, db: Path, out: Path) -> None:
    engine = catalog.engine_for(f"sqlite:///{db}")
    interval = report.Interval(LAST_NIGHT - timedelta(hours=14), LAST_NIGHT + timedelta(hours=10))
    began = time.perf_counter()
    if kind == "everything":
        with engine.connect() as connection:
            rows = len(pd.read_sql(sqlalchemy.select(catalog.vm_backups), connection))
    else:
        inputs = report.read(engine, interval)
        rows = len(inputs.rows) + len(inputs.vms) + len(inputs.days)
        if kind == "report":
            windows = {f"HV{h:02d}": Window("22:00", "06:00", "UTC") for h in range(20)}
            built = report.build(inputs, interval, windows, {})
            render.render(built, out, "bench")
    seconds = time.perf_counter() - began
    peak_mb = peak_rss_mb()
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5, help="runs of the read and of the report (medians compared)")
    parser.add_argument("--child", choices=["read", "report", "everything"])
    parser.add_argument("--db")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, Path(args.db), Path(args.out))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        db = Path(tmp) / "catalog.sqlite"
        began = time.perf_counter()
        rows = fleet_rows(args.vms, args.nights)
        rows.to_sql("vm_backups", catalog.engine_for(f"sqlite:///{db}"), if_exists="append", index=False, chunksize=20000)
        print(f"catalog: {len(rows):,} rows ({args.vms} VMs x {args.nights} nights), built in {time.perf_counter() - began:.0f} s\n")
        del rows
        def run(kind: str) -> dict:
            done = subprocess.run([sys.executable, "-m", "bench.report", "--child", kind, "--db", str(db), "--out", tmp],
                                  cwd=ROOT, check=True, capture_output=True, text=True)
            return json.loads(done.stdout.strip().splitlines()[-1])

        turns = [{kind: run(kind) for kind in ("read", "report")} for _ in range(args.repeat)]
        results = {kind: {"rows": turns[0][kind]["rows"], "seconds": statistics.median(t[kind]["seconds"] for t in turns),
                          "peak_mb": max(t[kind]["peak_mb"] for t in turns)} for kind in ("read", "report")}
        results["everything"] = run("everything")
    read, full, everything = results["read"], results["report"], results["everything"]
    print(f"median of {args.repeat} runs each of the read and the report, in turns; the largest peak\n")
    print(f"{'':40} {'rows':>9} {'seconds':>8} {'peak MB':>8}")
    for label, result in (("the minimal read (what the report needs)", read), ("the whole report", full),
                          ("every row into pandas (for comparison)", everything)):
        print(f"{label:40} {result['rows']:>9,} {result['seconds']:>8.2f} {result['peak_mb']:>8.0f}")
    print(f"\nreport/minimal read: {full['seconds'] / read['seconds']:.2f}x time, peak {full['peak_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
