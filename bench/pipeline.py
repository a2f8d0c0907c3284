"""How much the backup pipeline asks of a host, and how well it keeps the host busy.

Runs the real pipeline (`include.demo`: the backup DAG under Airflow's real scheduler and triggerer,
LocalExecutor and SQLite as `make demo` runs it, the real WinRM client, the simulator) on one host
with N VMs, once per poll interval, side by side, and prints:

- WinRM HTTP requests per VM backup (the simulator counts every request it serves), and the
  script calls per VM behind them;
- the idle gap: the host's time between one VM's WSB job ending and the next one's starting,
  as a share of the time a job was running (from the simulator's journal, simulated clock).

    .venv/bin/python -m bench.pipeline [--vms 6] [--poll 2 0.5 0.1] [--speed 10]

At 10x a 20 GB job lasts 10 real seconds: long enough against Airflow's own latency (a task's start
costs this 2-core machine about 2 s) that the figure is the pipeline's, not the machine's. At 60x
the jobs last under 2 s and every gap is that latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def scenario(vms: int, speed: float) -> dict:
    return {"seed": 11, "speed": speed, "hosts": [{
        "name": "HVBENCH", "os": "2019", "transport": "ssl", "throughput_mb_s": 200,
        "vms": [{"name": f"VM{i:02d}", "generation": 2, "guest": "windows", "disk_gb": 20} for i in range(vms)],
    }]}


def run_once(scenario_path: Path, out: Path, poll: float) -> None:
    env = os.environ | {"AIRFLOW__HYPERV_BACKUP__POLL_SECONDS": str(poll), "AIRFLOW_HOME": str(out / "airflow")}
    subprocess.run([sys.executable, "-m", "include.demo", "--scenario", str(scenario_path), "--out", str(out), "--no-report"],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True)


def figures(out: Path, vms: int) -> dict:
    state = json.loads((out / "sim-state.json").read_text())
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    host = state["hosts"][0]
    scripts = Counter(e.get("script") or "(other)" for e in journal if e["event"] == "command")
    at = {"job_started": [], "job_finished": []}
    for event in journal:
        if event["event"] in at and not event.get("external"):
            at[event["event"]].append(datetime.fromisoformat(event["at"].replace("Z", "+00:00")))
    starts, ends = sorted(at["job_started"]), sorted(at["job_finished"])
    busy = sum((end - start).total_seconds() for start, end in zip(starts, ends, strict=True))
    idle = sum((nxt - end).total_seconds() for end, nxt in zip(ends, starts[1:], strict=False))
    return {"jobs": len(starts), "requests_per_vm": host["requests"] / vms, "idle_share": idle / busy if busy else float("nan"),
            "idle_per_gap": idle / max(1, len(starts) - 1), "scripts_per_vm": {k: v / vms for k, v in sorted(scripts.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--poll", type=float, nargs="+", default=[2.0, 0.5, 0.1], help="poll intervals to compare (real seconds)")
    parser.add_argument("--speed", type=float, default=10, help="the simulator's speed (host seconds per real second)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(yaml.safe_dump(scenario(args.vms, args.speed)))
        results = {}
        for poll in args.poll:
            out = Path(tmp) / f"poll-{poll}"
            run_once(path, out, poll)
            results[poll] = figures(out, args.vms)
    print(f"one 2019 host, {args.vms} online VMs of 20 GB, the real scheduler (LocalExecutor, SQLite), simulator at "
          f"{args.speed:g}x (a poll of 0.5 s real = {0.5 * args.speed:g} s host time)\n")
    print(f"{'poll (s)':>9} {'jobs':>5} {'HTTP requests/VM':>17} {'idle gap/busy':>14} {'idle s/gap (host)':>18}")
    for poll, r in results.items():
        print(f"{poll:>9} {r['jobs']:>5} {r['requests_per_vm']:>17.1f} {r['idle_share']:>14.1%} {r['idle_per_gap']:>18.0f}")
    print("\nscript calls per VM backup:")
    for poll, r in results.items():
        print(f"  poll {poll}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["scripts_per_vm"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
