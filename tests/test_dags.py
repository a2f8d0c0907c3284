"""DAG integrity: the inventory builds one DAG per host; a wrong inventory is one clear import error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHECK = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="{dags}")
out = {{"errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "dags": {{}}}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {{"tags": sorted(dag.tags), "max_active_runs": dag.max_active_runs, "doc": bool(dag.doc_md),
                          "tasks": sorted(dag.task_ids), "params": sorted(dag.params.keys()),
                          "paused_upon_creation": dag.is_paused_upon_creation,
                          "spread_retries": sorted(t.task_id for t in dag.tasks if type(t.retry_policy).__name__ == "SpreadRetries"),
                          "execution_timeouts": sorted({{str(t.execution_timeout) for t in dag.tasks}}),
                          "required": sorted(k for k, p in dag.params.items() if "null" not in p.schema.get("type", ["null"]))}}
print("RESULT" + json.dumps(out))
"""


def _load(inventory: Path, tmp_path: Path) -> dict:
    import json

    env = dict(os.environ, HYPERV_BACKUP_INVENTORY=str(inventory), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW_HOME=str(tmp_path), PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}")
    done = subprocess.run([sys.executable, "-c", _CHECK.format(dags=ROOT / "dags")], env=env, capture_output=True,
                          text=True, timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_one_dag_per_host_with_the_five_steps(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - {name: HV01, connection: winrm_hv01, vms: [A, B]}\n"
                         "  - {name: HV02, connection: winrm_hv02, window: {timezone: Asia/Tokyo}}\n")
    result = _load(inventory, tmp_path)
    assert result["errors"] == {}
    assert sorted(result["dags"]) == ["hyperv_backup_hv01", "hyperv_backup_hv02", "hyperv_backup_report", "hyperv_checkpoint_audit"]
    dag = result["dags"]["hyperv_backup_hv01"]
    assert dag["max_active_runs"] == 1 and dag["doc"] and "HV01" in dag["tags"]
    assert dag["params"] == ["force", "plan_only", "vms"]
    for dag_id, built in result["dags"].items():  # the trigger form requires no Param; a new host's DAG runs at once
        assert built["required"] == [] and built["paused_upon_creation"] is False, dag_id
    steps = ["backup_vm.probe", "backup_vm.snapshot", "backup_vm.verify_merge", "backup_vm.copy", "backup_vm.verify"]
    assert set(steps) <= set(dag["tasks"])
    assert set(steps) <= set(dag["spread_retries"])  # a run's VMs retry at different moments
    assert dag["execution_timeouts"] == ["0:30:00"]  # a step's own work; its waits on the host are deferred


def test_a_wrong_inventory_is_one_import_error_naming_file_line_and_key(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - name: HV01\n    connection: winrm_hv01\n    windw: {start: '22:00'}\n")
    result = _load(inventory, tmp_path)
    assert sorted(result["dags"]) == ["hyperv_backup_report", "hyperv_checkpoint_audit"]  # the other DAG file keeps loading
    (path, error), = result["errors"].items()
    assert path.endswith("hyperv_backup.py")
    assert f"{inventory}, line 4: unknown key `windw` in a host" in error
