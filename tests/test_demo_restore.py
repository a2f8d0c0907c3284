"""`make demo-restore`: the backups, then one restore test per host on the real scheduler, then the report; every
host is left exactly as it was before the tests (the simulator's state compared before and after)."""

from __future__ import annotations

import email
import email.policy
import json
import sqlite3

from tests.conftest import run_demo

# Two hosts of two VMs: the rotation tests one VM per host, the one that sorts first by name (none was tested before):
# HVR1's WEB-1, and HVR2's A-NOHB, whose guest has no heartbeat service, so its test must fail and still clean up.
# At 10x, the triggerer's first look at a copy (a second or two after its start, as on a real host) comes long before
# its guest has booted (90-120 s of host time), so the heartbeat's moment is seen as it happens.
SCENARIO = {"seed": 4, "speed": 10, "hosts": [
    {"name": "HVR1", "os": "2019", "transport": "ssl", "vms": [{"name": "WEB-1", "disk_gb": 3}, {"name": "WEB-2", "disk_gb": 3}]},
    {"name": "HVR2", "os": "2012 R2", "transport": "ntlm",
     "vms": [{"name": "A-NOHB", "disk_gb": 3, "integration_services": {"vss": True, "heartbeat": False}},
             {"name": "B-LNX", "disk_gb": 3, "guest": "linux"}]},
]}


def _vms(state: dict) -> dict:
    keep = ("id", "name", "state", "generation", "guest", "checkpoints", "disks", "stray_avhdx", "network_connected")
    return {host["name"]: [{k: vm[k] for k in keep} for vm in host["vms"]] for host in state["hosts"]}


def test_demo_restore_boots_a_copy_per_host_records_it_and_leaves_the_hosts_as_they_were(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__HYPERV_BACKUP__RESTORE_HEARTBEAT_MINUTES", "4")  # A-NOHB's wait: 24 s at 10x
    done, out = run_demo(tmp_path, SCENARIO, "--restore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(out / "catalog.sqlite") as db:
        db.row_factory = sqlite3.Row
        tests = {r["host"]: dict(r) for r in db.execute("SELECT * FROM restore_tests")}
        backups = db.execute("SELECT COUNT(*) FROM vm_backups WHERE status = 'succeeded'").fetchone()[0]
    assert backups == 4
    assert {h: t["vm_name"] for h, t in tests.items()} == {"HVR1": "WEB-1", "HVR2": "A-NOHB"}
    assert tests["HVR1"]["status"] == "succeeded" and 90 <= tests["HVR1"]["heartbeat_seconds"] <= 125
    assert tests["HVR2"]["status"] == "failed" and tests["HVR2"]["heartbeat_seconds"] is None
    assert "Heartbeat integration service" in tests["HVR2"]["error"]
    assert all(t["cleaned_up"] == 1 and t["backup_version"] and t["started_at"] < t["finished_at"] for t in tests.values())

    before = json.loads((out / "sim-state-before-restore.json").read_text())
    after = json.loads((out / "sim-state.json").read_text())
    assert _vms(after) == _vms(before)  # the originals untouched, no copy left
    assert all(host["folders"] == {} for host in after["hosts"])
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    imported = [e for e in journal if e["event"] == "vm_imported"]
    originals = {vm["id"] for vms in _vms(before).values() for vm in vms}
    assert sorted(e["vm"] for e in imported) == sorted(t["restored_as"] for t in tests.values())
    assert all(e["id"] not in originals and e["source"] in originals for e in imported)

    (mail,) = sorted((out / "mail").glob("*.eml"))
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    assert "Restore tests" in html and tests["HVR1"]["backup_version"] in html and "no heartbeat from the copy" in html
    assert "RESTORE TEST OF" in done.stdout and "A-NOHB" in done.stdout
