"""How long Airflow takes to parse each DAG file of the project, next to a trivial DAG file's, in one run.

Each file is parsed in a fresh process (as the DAG processor does after a change, and as
every task start does) with Airflow already imported, so the figure is the file's own cost:
what it imports and the DAGs it builds. For scale, a file of as many DAGs of 8 empty tasks
with the same three Params: what Airflow itself costs for DAGs of that size. The backup DAG file reads an inventory of
`--hosts` x `--vms` (default 100 x 20). Also printed: the time to serialise the file's DAGs
(what the DAG processor stores), and the parse of the backup DAG file as a task start sees
it, when Airflow's parsing context names one DAG.

    .venv/bin/python -m bench.parse [--hosts 100] [--vms 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL = '''from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("trivial", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    EmptyOperator(task_id="nothing")
'''
# Airflow's own cost of as many DAGs of the backup DAG's size: 8 empty tasks, the same three Params
FLOOR = '''from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

for host in range({hosts}):
    params = {{"vms": Param([], type=["array", "null"]), "plan_only": Param(False, type=["boolean", "null"]),
              "force": Param(False, type=["boolean", "null"])}}
    with DAG(f"floor_{{host}}", schedule="0 22 * * *", start_date=datetime(2026, 1, 1), params=params) as dag:
        tasks = [EmptyOperator(task_id=f"t{{i}}") for i in range(8)]
    globals()[dag.dag_id] = dag
'''


def inventory(hosts: int, vms: int) -> dict:
    return {"hosts": [{"name": f"HV{h:03d}", "connection": f"winrm_hv{h:03d}", "backup_target": "E:",
                       "window": {"start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"},
                       "vms": [f"VM{h:03d}-{v:02d}" for v in range(vms)]} for h in range(hosts)],
            "mail": {"to": ["reports@example.test"]}}


def child(path: str) -> None:
    """Import Airflow, then time the file's parse and the serialisation of its DAGs."""
    import importlib.util

    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    began = time.perf_counter()
    spec = importlib.util.spec_from_file_location("parsed_dag_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parsed = time.perf_counter() - began
    dags = list({id(value): value for value in vars(module).values() if isinstance(value, DAG)}.values())
    began = time.perf_counter()
    for dag in dags:
        DagSerialization.to_dict(dag)
    serialised = time.perf_counter() - began
    heavy = sorted(name for name in ("pandas", "matplotlib", "winrm", "numpy") if name in sys.modules)
    print(json.dumps({"parse": parsed, "serialise": serialised, "dags": len(dags), "heavy": heavy}))


def measure(path: Path, env: dict, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-m", "bench.parse", "--child", str(path)], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"parse": statistics.median(r["parse"] for r in runs), "serialise": statistics.median(r["serialise"] for r in runs),
            "dags": runs[0]["dags"], "heavy": runs[0]["heavy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.parse", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="parses per file (the median is printed)")
    parser.add_argument("--child")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        inventory_path, trivial = Path(tmp) / "inventory.yaml", Path(tmp) / "trivial.py"
        inventory_path.write_text(yaml.safe_dump(inventory(args.hosts, args.vms)))
        trivial.write_text(TRIVIAL)
        floor = Path(tmp) / "floor.py"
        floor.write_text(FLOOR.format(hosts=args.hosts))
        env = os.environ | {"HYPERV_BACKUP_INVENTORY": str(inventory_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                            "AIRFLOW_HOME": tmp, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
                            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}  # as deployed: the runs' deadlines built
        files = {"trivial DAG file": trivial, f"{args.hosts} DAGs of 8 empty tasks": floor,
                 **{f"dags/{p.name}": p for p in sorted((ROOT / "dags").glob("*.py"))}}
        results = {label: measure(path, env, args.repeat) for label, path in files.items()}
        one_host = env | {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "hyperv_backup_hv007",
                          "_AIRFLOW_PARSING_CONTEXT_TASK_ID": "vm.snapshot"}
        results["dags/hyperv_backup.py, a task's parse"] = measure(ROOT / "dags" / "hyperv_backup.py", one_host, args.repeat)
    print(f"inventory: {args.hosts} hosts x {args.vms} VMs; median of {args.repeat} parses, each in a fresh process\n")
    print(f"{'':40} {'DAGs':>5} {'parse s':>8} {'serialise s':>12}  heavy modules imported")
    for label, r in results.items():
        print(f"{label:40} {r['dags']:>5} {r['parse']:>8.3f} {r['serialise']:>12.3f}  {', '.join(r['heavy']) or '-'}")
    base = results["trivial DAG file"]["parse"]
    worst = max((r["parse"], label) for label, r in results.items() if label.startswith("dags/"))
    print(f"\nslowest DAG file / trivial: {worst[0] / base:.1f}x ({worst[1]}: {worst[0]:.3f} s; goal <= 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
