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
                          "execution_timeouts": sorted({{str(getattr(t, "try_timeout", None) or t.execution_timeout) for t in dag.tasks}}),
                          "from_triggerer": sorted(t.task_id for t in dag.tasks if t.start_from_trigger and t.execution_timeout is None),
                          "weights": {{t.task_id: [str(t.weight_rule), t.priority_weight] for t in dag.tasks}},
                          "split_outputs": sorted(t.task_id for t in dag.tasks if getattr(t, "multiple_outputs", False)),
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
    assert sorted(result["dags"]) == ["hyperv_backup_hv01", "hyperv_backup_hv02", "hyperv_backup_preflight", "hyperv_backup_report",
                                      "hyperv_checkpoint_audit", "hyperv_restore_test", "hyperv_rpo_watch"]
    dag = result["dags"]["hyperv_backup_hv01"]
    assert dag["max_active_runs"] == 1 and dag["doc"] and "HV01" in dag["tags"]
    assert dag["params"] == ["force", "plan_only", "vms"]
    for dag_id, built in result["dags"].items():  # the trigger form requires no Param; a new host's DAG runs at once
        assert built["required"] == [] and built["paused_upon_creation"] is False, dag_id
    steps = ["backup_vm.probe", "backup_vm.snapshot", "backup_vm.verify_merge", "backup_vm.copy", "backup_vm.verify"]
    assert set(steps) <= set(dag["tasks"])
    assert set(steps) <= set(dag["spread_retries"])  # a run's VMs retry at different moments
    assert dag["execution_timeouts"] == ["0:30:00"]  # a step's own work; its waits on the host are deferred
    # the steps whose first look would only wait start in the triggerer, their tries bounded by the step's timeout
    assert dag["from_triggerer"] == ["backup_vm.copy", "backup_vm.verify_merge"]
    # short of worker slots, the steps that lead to the host's next job go first, in the run's order (the map index
    # breaks ties): not a VM's later steps, which would leave the host idle (bench/scheduler.py measures it)
    rules = {rule for rule, _ in dag["weights"].values()}
    starts = {dag["weights"][t][1] for t in ("select_vms", "backup_vm.probe", "backup_vm.snapshot")}
    later = {dag["weights"][t][1] for t in steps[2:]}
    assert rules == {"absolute"} and len(starts) == 1 and min(starts) > max(later), dag["weights"]
    for dag_id, built in result["dags"].items():  # a dict pushed key by key costs the worker slot a request per key
        assert built["split_outputs"] == [], (dag_id, built["split_outputs"])
    others = {dag_id: built["weights"] for dag_id, built in result["dags"].items() if not dag_id.startswith("hyperv_backup_hv")}
    for dag_id, weights in others.items():  # the report, the audit, the watch, the restore tests: no window holds them
        assert {rule for rule, _ in weights.values()} == {"absolute"} and max(w for _, w in weights.values()) < min(later), dag_id


def test_a_wrong_inventory_is_one_import_error_naming_file_line_and_key(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - name: HV01\n    connection: winrm_hv01\n    windw: {start: '22:00'}\n")
    result = _load(inventory, tmp_path)
    assert sorted(result["dags"]) == ["hyperv_backup_preflight", "hyperv_backup_report", "hyperv_checkpoint_audit",
                                      "hyperv_restore_test", "hyperv_rpo_watch"]  # the others keep loading
    (path, error), = result["errors"].items()
    assert path.endswith("hyperv_backup.py")
    assert f"{inventory}, line 4: unknown key `windw` in a host" in error


_IMPORTS = """
import importlib.util, json, sys
found = {{}}
for path in {paths!r}:
    spec = importlib.util.spec_from_file_location("dag_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found[path] = sorted(name for name in ("pandas", "matplotlib", "winrm", "numpy") if name in sys.modules)
    built = sorted(v.dag_id for v in vars(module).values() if type(v).__name__ == "DAG")
    found[path + " DAGs"] = built
print("RESULT" + json.dumps(found))
"""


def _parse(tmp_path: Path, paths: list[str], **env_extra: str) -> dict:
    import json

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - {name: HV01, connection: winrm_hv01, vms: [A]}\n  - {name: HV02, connection: winrm_hv02}\n")
    env = dict(os.environ, HYPERV_BACKUP_INVENTORY=str(inventory), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW_HOME=str(tmp_path), PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}", **env_extra)
    done = subprocess.run([sys.executable, "-c", _IMPORTS.format(paths=paths)], env=env, capture_output=True, text=True,
                          timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_the_dag_files_import_nothing_heavy_when_parsed(tmp_path):
    """WinRM, pandas and matplotlib are imported by the tasks that use them, not by each parse (Airflow imports Jinja)."""
    paths = sorted(str(p) for p in (ROOT / "dags").glob("*.py"))
    found = _parse(tmp_path, paths)
    assert {path: found[path] for path in paths} == dict.fromkeys(paths, [])


def test_a_task_start_builds_only_its_own_hosts_dag(tmp_path):
    path = str(ROOT / "dags" / "hyperv_backup.py")
    assert _parse(tmp_path, [path])[path + " DAGs"] == ["hyperv_backup_hv01", "hyperv_backup_hv02"]
    found = _parse(tmp_path, [path], _AIRFLOW_PARSING_CONTEXT_DAG_ID="hyperv_backup_hv02",
                   _AIRFLOW_PARSING_CONTEXT_TASK_ID="backup_vm.probe")
    assert found[path + " DAGs"] == ["hyperv_backup_hv02"]


def test_airflow_services_preload_the_backup_steps_and_winrm_but_not_the_reports(tmp_path):
    """As include/cluster.py and docker-compose.yaml run Airflow (plugins loaded as a service starts), the services
    hold the backup's task code and WinRM before any task: a task try, forked from the executor's worker, imports
    neither again. pandas and matplotlib, which only the daily report uses, are not loaded into every service."""
    from include.cluster import AirflowCluster

    cluster = AirflowCluster(tmp_path / "airflow", {})
    script = ("import sys, airflow\nprint('RESULT', sorted(m for m in ('hyperv_backup.operators', 'hyperv_backup.steps', "
              "'hyperv_backup.hooks', 'hyperv_backup.retrying', 'winrm', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT")), done.stderr[-2000:])
    assert line == "RESULT ['hyperv_backup.hooks', 'hyperv_backup.operators', 'hyperv_backup.retrying', 'hyperv_backup.steps', 'winrm']"


def test_a_waiting_step_names_its_vm_from_the_probe_in_one_request_or_from_its_place_in_the_run(monkeypatch):
    """A step pulls the probe's result by its map index (no XComArg: the Task SDK would ask for the group's task
    count twice more), and that result names the VM. A probe of the version before named none (a night that
    went on across an upgrade): the step's place in select_vms's list does."""
    from hyperv_backup import operators

    pulls, results = [], {"select_vms": ["A", "B", "C"]}

    class TaskInstance:
        map_index = 1

        def xcom_pull(self, task_ids, map_indexes):
            pulls.append((task_ids, map_indexes))
            return results[task_ids]

    monkeypatch.setattr(operators, "steps_for", lambda context, host, conn, target, vm_name, *args, **kwargs: vm_name)
    step = operators.VerifyMergeOperator(task_id="verify_merge", host="HV01", winrm_conn_id="winrm_hv01", backup_target="E:",
                                         probe_task_id="backup_vm.probe")
    results["backup_vm.probe"] = {"vm_name": "B", "vm_id": "9F0C"}
    context = {"ti": TaskInstance()}
    assert step._steps(context) == "B" == context["vm_name"] and pulls == [("backup_vm.probe", 1)]
    pulls.clear()
    results["backup_vm.probe"] = {"vm_id": "9F0C"}
    assert step._steps(context) == "B" and pulls == [("backup_vm.probe", 1), ("select_vms", None)]


def test_a_step_airflow_starts_in_the_triggerer_bounds_each_worker_try_by_the_steps_timeout():
    """Airflow would bound a step started in the triggerer, its whole wait included, by its execution_timeout
    (TaskInstance.defer_task): the copy of a large VM would fail after 30 minutes. The step's timeout bounds each try
    a worker makes of it instead, as execution_timeout bounds the other steps' tries."""
    import time
    from datetime import timedelta

    import pytest
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from hyperv_backup.operators import WaitForBackupJobOperator

    copy = WaitForBackupJobOperator(task_id="copy", host="HV01", winrm_conn_id="hv", backup_target="E:", probe_task_id="probe",
                                    execution_timeout=timedelta(seconds=1))
    assert copy.start_from_trigger and copy.execution_timeout is None and copy.try_timeout == timedelta(seconds=1)
    began = time.monotonic()
    with pytest.raises(AirflowTaskTimeout, match="copy worked longer than"), copy._bounded():
        time.sleep(5)
    assert time.monotonic() - began < 3
