"""`make demo INVENTORY=file`: the demo backs the fleet up with the administrator's inventory instead of
the one derived from the scenario; a wrong inventory is refused before anything starts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import run_demo

SCENARIO = {"seed": 2, "speed": 300, "hosts": [{"name": "HVI1", "os": "2019", "transport": "ssl",
                                                "vms": [{"name": n, "disk_gb": 5} for n in ("APP-1", "APP-2", "LAB-1")]}]}
INVENTORY = """# the administrator's own inventory: only the APP VMs, APP-2 first
hosts:
  - name: HVI1
    connection: winrm_hvi1
    backup_target: "E:"
    vms: ["APP-*"]
    priority: {APP-2: 10}
mail:
  to: [app-owners@example.test]
"""


def _demo(tmp_path: Path, inventory: str) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "inventory.yaml").write_text(inventory)
    return run_demo(tmp_path, SCENARIO, "--inventory", str(tmp_path / "inventory.yaml"))


def test_the_demo_backs_up_what_the_given_inventory_selects_in_its_order(tmp_path):
    done, out = _demo(tmp_path, INVENTORY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "inventory.yaml").read_text() == INVENTORY  # kept as written, comments and all
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT vm_name, status FROM vm_backups ORDER BY vm_name").fetchall()
    assert rows == [("APP-1", "succeeded"), ("APP-2", "succeeded")]  # LAB-1 is not in the inventory
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    assert [e["vms"][0] for e in journal if e["event"] == "job_started"] == ["APP-2", "APP-1"]  # priority first
    mails = list((out / "mail").glob("*.eml"))
    assert len(mails) == 1 and b"app-owners@example.test" in mails[0].read_bytes()


def test_a_wrong_inventory_is_refused_before_anything_starts(tmp_path):
    done, out = _demo(tmp_path, INVENTORY.replace("backup_target", "backup_targit"))
    assert done.returncode == 2
    assert "inventory.yaml" in done.stderr and "line 5" in done.stderr and "backup_targit" in done.stderr, done.stderr
    assert not out.exists()  # nothing was started or written


POLICY_SCENARIO = {"seed": 6, "speed": 300, "hosts": [
    {"name": "HVOLD", "os": "2012", "transport": "ssl",
     "vms": [{"name": "LNX-1", "generation": 1, "guest": "linux", "disk_gb": 5}, {"name": "WIN-1", "generation": 1, "disk_gb": 5}]},
    {"name": "HVNEW", "os": "2019", "transport": "ssl", "vms": [{"name": "SQL-1", "guest_vss": "fails", "disk_gb": 5}]},
]}
POLICY_INVENTORY = """hosts:
  - name: HVOLD
    connection: winrm_hvold
    require: {"LNX-*": [online, checkpoint], "*": [online, checkpoint, offline]}
  - name: HVNEW
    connection: winrm_hvnew
    require: {SQL-1: [online]}
mail:
  to: [owners@example.test]
"""


def test_the_consistency_policy_skips_what_it_forbids_and_reports_what_broke_it_first(tmp_path):
    (tmp_path / "inventory.yaml").write_text(POLICY_INVENTORY)
    done, out = run_demo(tmp_path, POLICY_SCENARIO, "--inventory", str(tmp_path / "inventory.yaml"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = {r[0]: r[1:] for r in db.execute("SELECT vm_name, status, predicted_mode, mode, error FROM vm_backups")}
    # Linux on 2012 would be put in Saved state: the policy forbids it, so no job, and the row says what to change
    assert rows["LNX-1"][:3] == ("skipped", "saved", None)
    assert "would be put in Saved state" in rows["LNX-1"][3] and "allow `saved` for it" in rows["LNX-1"][3]
    assert rows["WIN-1"][:3] == ("succeeded", "online", "online") and rows["WIN-1"][3] is None
    # the guest's VSS failed: a checkpoint where online was predicted and is the only mode allowed
    assert rows["SQL-1"][:3] == ("succeeded", "online", "checkpoint") and "does not allow" in rows["SQL-1"][3]
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    assert sorted(e["vms"][0] for e in journal if e["event"] == "job_started") == ["SQL-1", "WIN-1"]
    csv = next((out / "reports").glob("*.csv")).read_text().splitlines()
    assert "SQL-1" in csv[1] and "against the consistency policy" in csv[1]  # the breach comes first
