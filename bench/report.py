"""The report for one year of nightly backups of 2,000 VMs (730,000 catalog rows).

Builds a SQLite catalog of that size, then runs, each in its own process so peak memory is its
own: (1) just reading the rows from the catalog into pandas, (2) the whole report: reading,
every report frame, the charts and the HTML/CSV files. Prints both times, their ratio, and
each process's peak memory (max RSS).

    .venv/bin/python -m bench.report [--vms 2000] [--nights 365]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from hyperv_backup import catalog, render, report  # noqa: E402
from hyperv_backup.windows import Window  # noqa: E402

LAST_NIGHT = datetime(2026, 11, 23, 21, 0, tzinfo=UTC)


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
        "backup_version": None, "missed": None, "updated_at": finished,
    })


def child(kind: str, db: Path, out: Path) -> None:
    engine = catalog.engine_for(f"sqlite:///{db}")
    began = time.perf_counter()
    frame = catalog.frame(engine)
    if kind == "report":
        interval = report.Interval(LAST_NIGHT - timedelta(hours=14), LAST_NIGHT + timedelta(hours=10))
        windows = {f"HV{h:02d}": Window("22:00", "06:00", "UTC") for h in range(20)}
        built = report.build(frame, interval, windows, {})
        render.render(built, out, "bench")
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(frame), "seconds": seconds, "peak_mb": peak_mb}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--child", choices=["read", "report"])
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
        results = {}
        for kind in ("read", "report"):
            done = subprocess.run([sys.executable, "-m", "bench.report", "--child", kind, "--db", str(db), "--out", tmp],
                                  cwd=ROOT, check=True, capture_output=True, text=True)
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    read, full = results["read"], results["report"]
    print(f"{'':28} {'seconds':>8} {'peak MB':>8}")
    print(f"{'read the catalog (pandas)':28} {read['seconds']:>8.1f} {read['peak_mb']:>8.0f}")
    print(f"{'the whole report':28} {full['seconds']:>8.1f} {full['peak_mb']:>8.0f}")
    print(f"\nreport / read: {full['seconds'] / read['seconds']:.2f}x the time, {full['peak_mb'] / read['peak_mb']:.2f}x the memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
