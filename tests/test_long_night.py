"""A long night: one host whose VMs take 16 hours of host time together, through the real DAG (`make demo`'s
path: Airflow's scheduler and triggerer, the real client, the simulator at 600x). Nothing real-time may cut it
short: every VM is backed up, one job at a time, and the host idles no more than 5% of the time its jobs take.
The hours of merging and copying take no worker slot: those steps start in the triggerer and end there."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_a_night_of_16_host_hours_backs_every_vm_up_one_job_at_a_time(tmp_path):
    # 20 GB at 1.4 MB/s: about 4 hours a VM, 16 for the four
    scenario = {"seed": 3, "speed": 600, "hosts": [{"name": "HVLONG", "os": "2019", "transport": "ssl", "throughput_mb_s": 1.4,
                                                    "vms": [{"name": f"VM{i}", "disk_gb": 20} for i in range(4)]}]}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / "out"
    env = dict(os.environ, AIRFLOW_HOME=str(out / "airflow"), AIRFLOW__HYPERV_BACKUP__POLL_SECONDS="0.5")
    done = subprocess.run([sys.executable, "-m", "include.demo", "--scenario", str(path), "--out", str(out), "--no-report"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT vm_name, status, attempts FROM vm_backups ORDER BY vm_name").fetchall()
    assert rows == [(f"VM{i}", "succeeded", 1) for i in range(4)], rows
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    spans = []
    for event in journal:
        at = datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
        if event["event"] == "job_started":
            spans.append([at, None])
        elif event["event"] == "job_finished":
            spans[-1][1] = at  # one job at a time: the one that ends is the last one started
    busy = sum((end - start).total_seconds() for start, end in spans)
    idle = sum((nxt[0] - prev[1]).total_seconds() for prev, nxt in zip(spans, spans[1:], strict=False))
    assert len(spans) == 4 and busy >= 16 * 3600, spans
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    assert idle <= 0.05 * busy, f"the host idled {idle:.0f} s between jobs that took {busy:.0f} s"
    with sqlite3.connect(out / "airflow" / "airflow.db") as db:  # Airflow's metadata: what went to an executor
        steps = db.execute("SELECT task_id, state, queued_dttm IS NULL FROM task_instance WHERE task_id IN "
                           "('backup_vm.verify_merge', 'backup_vm.copy') ORDER BY task_id, map_index").fetchall()
    assert steps == [(task, "success", 1) for task in ("backup_vm.copy", "backup_vm.verify_merge") for _ in range(4)], steps
    state = json.loads((out / "sim-state.json").read_text())["hosts"][0]
    assert state["max_concurrent_jobs"] == 1 and state["open_shells"] == 0
