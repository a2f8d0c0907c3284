"""End to end with the real Airflow scheduler (api-server, scheduler, dag-processor, triggerer):
three scheduled intervals fail while the fleet is unreachable, then `airflow backfill create
--reprocess-behavior failed` catches up; a VM whose catch-up fails is redone by backfilling its
run again, and nothing else is touched. This is `make demo-outage` on a small fleet."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    out = tmp_path_factory.mktemp("outage")
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}")
    done = subprocess.run([sys.executable, "-m", "include.outage", "--scenario", str(ROOT / "tests" / "outage-fleet.yaml"),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(out / "catalog.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM vm_backups ORDER BY interval_end, vm_name")]
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    story = json.loads((out / "outage-story.json").read_text())
    return out, rows, journal, story


def test_three_intervals_failed_and_say_why(outage):
    _, rows, _, story = outage
    outage_runs = story["dags"]["hyperv_backup_hvout"]["outage_runs"]
    assert len(outage_runs) >= 3
    for row in rows:
        assert row["run_id"] in outage_runs  # no other run: the schedule was nightly again during the backfill
        assert row["missed"].startswith("the scheduled run failed: the host's VMs could not be listed"), row
        assert "connection lost" in row["missed"] and "WinRM service runs" in row["missed"], row  # what happened, what to check


def test_each_vm_got_exactly_one_catch_up_job_and_later_intervals_are_covered(outage):
    _, rows, journal, _ = outage
    jobs = Counter(vm for event in journal if event["event"] == "job_started" for vm in event["vms"])
    assert jobs["DC01"] == 1 and jobs["WEB01"] == 1
    # the catch-up took the run's order (none backed up yet, no priority: by name), not the executor's
    started = [event["vms"][0] for event in journal if event["event"] == "job_started"]
    assert started[:3] == ["DB01", "DC01", "WEB01"], started
    first = min(r["interval_end"] for r in rows)
    for vm in ("DC01", "WEB01"):
        mine = [r for r in rows if r["vm_name"] == vm]
        assert [r["status"] for r in mine] == ["succeeded"] + ["covered"] * (len(mine) - 1)
        assert mine[0]["interval_end"] == first and mine[0]["backup_version"]
        assert all(r["backup_version"] == mine[0]["backup_version"] and "covered by the backup of" in r["error"] for r in mine[1:])


def test_rerunning_a_failed_run_redid_only_the_failed_vm(outage):
    _, rows, journal, story = outage
    db01 = [r for r in rows if r["vm_name"] == "DB01"]
    # DB01's target was full for its first three jobs: every backfilled interval tried and failed, then the rerun of
    # the failed runs backed it up once and the later intervals were covered by that backup
    assert Counter(e["hresult"] for e in journal if e["event"] == "job_finished" and e["vms"] == ["DB01"]) == {
        "0x80070070": 3, "0x00000000": 1}
    assert sorted(r["status"] for r in db01) == ["covered"] * (len(db01) - 1) + ["succeeded"]
    assert story["dags"]["hyperv_backup_hvout"]["failed_after_backfill"]
    # a VM is probed once per attempt: DC01 and WEB01 only in the first backfilled run (covered later, and
    # skipped as already succeeded in the rerun), DB01 in each backfilled run and once more in the rerun
    probes = Counter(e["params"]["VMName"] for e in journal if e["event"] == "command" and e.get("script") == "Get-HvbVMBackupProbe")
    assert probes == {"DC01": 1, "WEB01": 1, "DB01": len(db01) + 1}


def test_never_two_jobs_at_once_and_the_report_tells_the_story(outage):
    out, rows, _, _ = outage
    vms = sorted({r["vm_name"] for r in rows})
    state = json.loads((out / "sim-state.json").read_text())
    assert [h["max_concurrent_jobs"] for h in state["hosts"]] == [1]
    assert [h["open_shells"] for h in state["hosts"]] == [0]  # no step or trigger left its WinRM shell open
    mails = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"] for p in sorted((out / "mail").glob("*.eml"))]
    # The reports: the daily one of the day before (nothing ran then), and the outage's. The checkpoint audit and the
    # RPO watch, not paused either, may also have run during the outage (at the hour, for the watch): the audit then
    # told the administrators it could not reach the host, the watch that the host's VMs were past their RPO (never
    # backed up yet: past it from the start, rpo.Exposure.past), or, between the catch-up and DB01's rerun, DB01 alone.
    subjects = [s for s in mails if s.startswith("Hyper-V backups")]

    def past_rpo(subject: str) -> bool:
        told = re.fullmatch(r"Hyper-V backup: (\d+) VM\(s\) past their RPO: (.+)", subject)
        names = told.group(2).split(", ") if told else []
        return bool(names) and int(told.group(1)) == len(names) and set(names) <= {f"HVOUT/{vm}" for vm in vms}

    assert all(s.startswith("Hyper-V backups") or "could not audit HVOUT" in s or past_rpo(s) for s in mails), mails
    covered = sum(r["status"] == "covered" for r in rows)
    assert subjects[-1].endswith(f": 3/{len(rows)} succeeded, {covered} covered"), subjects
    assert all(s.endswith(": nothing ran") for s in subjects[:-1]), subjects


def test_no_password_in_any_file_the_real_airflow_wrote(outage):
    """The scheduler's metadata database (dumped from its PostgreSQL: XCom, connections, runs), every task's log, the
    catalog, reports and mail."""
    out, _, _, _ = outage
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.suffix == ".log" for path in files)
    assert b"COPY public.xcom" in (out / "airflow" / "metadata.sql").read_bytes()
    assert [path for path in files if b"S3cret!" in path.read_bytes()] == []
