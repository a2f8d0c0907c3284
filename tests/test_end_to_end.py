"""End to end: `make demo`'s program backs up the mixed demo fleet through Airflow and the real client.

Hosts 2012, 2012 R2 (ja-JP) and 2019; Windows gen 1 and gen 2, Linux with and without the VSS
daemon, FreeBSD, a VM that is off, one with a user's checkpoint, one with a hostile name.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "x'; Remove-Item C:\\ -Recurse; '"
EXPECTED_MODES = {
    "FS01": "online", "APP-LEGACY": "saved", "WEB-LNX": "saved",
    "DC01": "online", "DB-LNX": "online", "CACHE-LNX": "checkpoint", "FW-BSD": "checkpoint",
    "SQL01": "online", "ARCHIVE": "offline", HOSTILE: "online", "TOOLS": "checkpoint",
}


def test_every_vm_is_backed_up_in_the_mode_its_host_and_guest_allow(demo):
    out, stdout = demo
    with sqlite3.connect(out / "catalog.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = {r["vm_name"]: dict(r) for r in db.execute("SELECT * FROM vm_backups")}
    assert {name: row["mode"] for name, row in rows.items()} == EXPECTED_MODES
    assert {row["status"] for row in rows.values()} == {"succeeded"}
    for name, row in rows.items():
        assert row["backup_version"] and row["job_started_at"] < row["job_finished_at"], name
        assert row["bytes_copied"] > 0 and json.loads(row["mode_reasons"]), name
        assert row["restore_points"] == 1 and row["oldest_restore_point"], name  # one version of it on the target
    assert rows["APP-LEGACY"]["offline_seconds"] > 0 and rows["APP-LEGACY"]["uptime_reset"]
    assert rows["CACHE-LNX"]["uptime_reset"] and rows["CACHE-LNX"]["offline_seconds"] == 0
    assert not rows["DC01"]["uptime_reset"]
    assert "FS01" in stdout and "succeeded" in stdout


def test_the_fleet_is_left_clean_and_never_ran_two_jobs_at_once(demo):
    out, _ = demo
    state = json.loads((out / "sim-state.json").read_text())
    for host in state["hosts"]:
        assert host["max_concurrent_jobs"] == 1, host["name"]
        assert host["open_shells"] == 0, host["name"]  # every step and trigger deleted the shell it kept
        for vm in host["vms"]:
            assert not [c for c in vm["checkpoints"] if c["type"] == "Recovery"], vm["name"]
    sql01 = next(vm for host in state["hosts"] for vm in host["vms"] if vm["name"] == "SQL01")
    assert [c["name"] for c in sql01["checkpoints"]] == ["before-patch"]  # the user's checkpoint survived
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines()]
    started = [line["vms"][0] for line in journal if line["event"] == "job_started"]
    assert sorted(started) == sorted(EXPECTED_MODES)  # exactly one job per VM
    assert not [line for line in journal if line["event"] == "job_rejected"]


def test_no_password_leaks_into_the_outputs(demo):
    """Not in any file the demo left (catalog, reports, mail, the simulator's journal, Airflow's home
    with its metadata database, XCom and task logs included), nor in what it printed."""
    out, stdout = demo
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {"catalog.sqlite", "sim-journal.jsonl", "airflow.db"} <= {path.name for path in files}
    assert [path for path in files if b"S3cret!" in path.read_bytes()] == []
    assert "S3cret!" not in stdout


def test_make_ui_serves_the_demos_runs_behind_a_login(demo):
    """`make ui`: the api-server over DEMO_OUT/airflow shows the runs the demo made, to the login it prints."""
    from include.cluster import free_port

    out, stdout = demo
    assert f"make ui DEMO_OUT={out}" in stdout
    root = Path(__file__).resolve().parent.parent
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "include.ui", "--out", str(out), "--port", str(port)], cwd=root,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                          env=dict(os.environ, PYTHONPATH=f"{root / 'plugins'}:{root}"))
    try:
        line = ui.stdout.readline()
        assert line.startswith(f"Airflow UI for the demo's runs: http://127.0.0.1:{port}/  login: admin / "), line
        password = line.split("login: admin / ")[1].split()[0]

        def call(path, body=None, token=None):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None,
                                             headers={"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {}))
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        for _ in range(120):  # the login line comes when the password is written; the server may still be starting
            try:
                token = call("/auth/token", {"username": "admin", "password": password})["access_token"]
                break
            except OSError:
                time.sleep(0.5)
        runs = call("/api/v2/dags/hyperv_backup_hv2019/dagRuns", token=token)
        assert runs["total_entries"] >= 1
        dags = {d["dag_id"]: d for d in call("/api/v2/dags", token=token)["dags"]}
        assert not dags["hyperv_backup_hv2019"]["is_paused"]
        # the task logs the UI shows: each task's, as the worker wrote it (the probe's return value is in it)
        run_id = urllib.parse.quote(runs["dag_runs"][0]["dag_run_id"], safe="")
        tasks = call(f"/api/v2/dags/hyperv_backup_hv2019/dagRuns/{run_id}/taskInstances?limit=100", token=token)["task_instances"]
        probe = next(t for t in tasks if t["task_id"] == "backup_vm.probe")
        log = call(f"/api/v2/dags/hyperv_backup_hv2019/dagRuns/{run_id}/taskInstances/backup_vm.probe/logs/"
                   f"{probe['try_number']}?map_index={probe['map_index']}", token=token)
        assert "predicted_mode" in json.dumps(log["content"]), log
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
