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
