"""`make demo-cluster`: the backups and the report on the distributed engine users grow into: the
CeleryExecutor with two workers, Redis as the broker, PostgreSQL for Airflow's metadata and the
catalog (Debian's servers, started on 127.0.0.1 and stopped with the demo)."""

from __future__ import annotations

import json
import sqlite3
import subprocess

from tests.conftest import run_demo


def test_the_demo_runs_on_two_celery_workers_with_redis_and_postgresql(tmp_path):
    scenario = {"seed": 5, "speed": 300, "hosts": [
        {"name": "HVC1", "os": "2019", "transport": "ssl", "vms": [{"name": f"C1-{i}", "disk_gb": 5} for i in range(3)]},
        {"name": "HVC2", "os": "2012 R2", "transport": "ssl", "vms": [{"name": f"C2-{i}", "disk_gb": 5} for i in range(3)]},
    ]}
    done, out = run_demo(tmp_path, scenario, "--cluster")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    cluster = json.loads((out / "cluster.json").read_text())
    assert {k: cluster[k] for k in ("executor", "metadata_db", "catalog_db", "workers")} == {
        "executor": "CeleryExecutor", "metadata_db": "postgresql", "catalog_db": "postgresql", "workers": ["worker1", "worker2"]}
    by_worker = cluster["task_instances_by_worker"]
    # per host: select_vms, the 3 steps of each of its 3 VMs that a worker runs (probe, snapshot, verify: verify_merge
    # and copy start in the triggerer and end there, here), catalog_updated, every_vm_accounted_for; then the report's tasks
    assert sum(by_worker.values()) >= 2 * (1 + 3 * 3 + 2) + 1, by_worker
    assert all(count > 0 for count in by_worker.values()), by_worker  # both workers took tasks from the broker

    # the PostgreSQL catalog, exported with the same table and columns
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT host, vm_name, status, job_started_at, job_finished_at, run_kind FROM vm_backups ORDER BY vm_name").fetchall()
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [("HVC1", f"C1-{i}", "succeeded", "manual") for i in range(3)] + [
        ("HVC2", f"C2-{i}", "succeeded", "manual") for i in range(3)]
    assert all(start < end for _, _, _, start, end, _ in rows)
    assert len(list((out / "mail").glob("*.eml"))) == 1 and list((out / "reports").glob("*.html"))
    state = json.loads((out / "sim-state.json").read_text())
    assert [h["max_concurrent_jobs"] for h in state["hosts"]] == [1, 1]
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert leftovers == []  # the fleet, Airflow and the workers are gone
