"""The backup pipeline under the real Airflow scheduler, as users run it: how busy it keeps the hosts,
what it holds of the workers, and how little it asks of each host.

Starts the simulator (4 hosts x 12 online VMs by default, at 10x) and a real Airflow (api-server,
scheduler, dag-processor, triggerer; LocalExecutor; `include/cluster.py`), lets the other DAGs' first runs end
(a fresh Airflow runs each DAG's latest interval at once: the report's, the audit's, the restore tests' and the
RPO watch's, which on a real night run at their own hours, away from the windows), then adds the hosts to the
inventory, so that every host's backup DAG runs last midnight's scheduled run (a whole-day window); samples the
metadata database every 0.2 s for task instances in the `running` state, and prints, from the simulator's journal
(host time) and Airflow's logs:

- per host, the idle gap between one job's end and the next one's start, as a share of job time;
- the fleet's makespan (first job start to last job end) over its longest host's job time;
- worker-slot seconds (real) of the backup's tasks over job seconds (host time, the time the jobs
  would take on real hosts: the simulator's speed shrinks the jobs, not Airflow's overheads). A slot is
  held from the try's fork to its supervisor's end (the "Workload finished" durations the LocalExecutor's
  workers log in the scheduler's log); beside it, the seconds the task instances were `running`, which
  leave out the try's start and exit (the measure before 2026-11-27's tenth session);
- how far apart the hosts' first jobs started (host time: the makespan's cold start);
- the tries Airflow failed in its deferral race (apache/airflow#67287: the scheduler's log says the
  executor "reported that the task instance ... finished with state success, but the task instance's
  state attribute is queued"), which the steps' retries recover;
- HTTP requests per VM (the simulator counts every request it serves) against what the stock
  provider's WinRMOperator would need for the same work: 5 requests a command (open shell, command,
  receive, signal, delete shell) for each one-shot script, plus 5 a poll of the job's status every
  `poll_seconds` while the VM waits for its turn and its job (host time).

    .venv/bin/python -m bench.scheduler [--hosts 4] [--vms 12] [--speed 10] [--parallelism N]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from include import postgres  # noqa: E402
from include.cluster import PARALLELISM, AirflowCluster, Topology  # noqa: E402
from include.demo import connection_env, inventory_for  # noqa: E402
from include.mailsink import MailSink  # noqa: E402
from simulator import harness  # noqa: E402
from simulator.scenario import load_scenario  # noqa: E402

STEPS = ("probe", "snapshot", "verify_merge", "copy", "verify")  # a VM's steps
POLL_SECONDS = 5.0  # the product's default `[hyperv_backup] poll_seconds`
RACE = "finished with state success, but the task instance's state attribute is"  # Airflow's deferral race, in its words
OTHER_DAGS = ["hyperv_backup_report", "hyperv_checkpoint_audit", "hyperv_restore_test", "hyperv_rpo_watch"]
ONE_SHOT = ("Get-HvbHostVMs", "Get-HvbVMBackupProbe", "Start-HvbVMBackup", "Get-HvbVMBackupResult", "wbadmin get versions")


def scenario(hosts: int, vms: int, speed: float) -> dict:
    return {"seed": 7, "speed": speed, "hosts": [{
        "name": f"HV{h + 1:02d}", "os": "2019", "transport": "ssl", "throughput_mb_s": 200,
        "vms": [{"name": f"VM{h + 1:02d}-{i:02d}", "generation": 2, "guest": "windows", "disk_gb": 20} for i in range(vms)],
    } for h in range(hosts)]}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class SlotSampler(threading.Thread):
    """Task instances in the `running` state (a worker slot each), sampled from the metadata database."""

    def __init__(self, url: str, every: float = 0.2):
        super().__init__(daemon=True)
        from sqlalchemy import create_engine

        self.engine, self.every, self.stop_at = create_engine(url), every, threading.Event()
        self.slot_seconds: Counter = Counter()

    def finished_runs(self, dag_ids: list[str]) -> dict[str, str] | None:
        """Each DAG's run state once every one has finished, else None. Read in the metadata database, as the slots are:
        the REST API cost the api-server 0.2-0.3 s of CPU a look, taken from the tasks being measured."""
        from sqlalchemy import bindparam, text
        from sqlalchemy.exc import SQLAlchemyError

        query = text("SELECT dag_id, state FROM dag_run WHERE dag_id IN :ids AND state IN ('success', 'failed')")
        try:
            with self.engine.connect() as db:
                states = dict(db.execute(query.bindparams(bindparam("ids", expanding=True)), {"ids": dag_ids}).all())
        except SQLAlchemyError:  # SQLite held by a write for a moment: look again
            return None
        return states if len(states) == len(dag_ids) else None

    def quiet(self) -> bool:
        """Whether every parsed DAG has had the runs it was due (the scheduler moves `next_dagrun_create_after` past now
        as it creates one) and none of them is queued or running."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        query = text("SELECT (SELECT COUNT(*) FROM dag WHERE NOT is_paused AND next_dagrun_create_after <= CURRENT_TIMESTAMP)"
                     " + (SELECT COUNT(*) FROM dag_run WHERE state IN ('queued', 'running'))")
        try:
            with self.engine.connect() as db:
                return db.execute(query).scalar() == 0
        except SQLAlchemyError:  # SQLite held by a write for a moment: look again
            return False

    def run(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        query = text("SELECT task_id, COUNT(*) FROM task_instance WHERE state = 'running' AND dag_id LIKE 'hyperv_backup_hv%' "
                     "GROUP BY task_id")
        while not self.stop_at.is_set():
            began = time.monotonic()
            try:
                with self.engine.connect() as db:
                    for task_id, count in db.execute(query):
                        self.slot_seconds[task_id.rpartition(".")[2]] += count * self.every
            except SQLAlchemyError:
                pass  # a write held SQLite for a moment (or the tables are not there yet): that sample is lost, not counted
            time.sleep(max(0.0, self.every - (time.monotonic() - began)))
        self.engine.dispose()


def run(hosts: int, vms: int, speed: float, out: Path, metadata: str, parallelism: int | None = None) -> dict:
    path = out / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario(hosts, vms, speed)))
    loaded = load_scenario(path)
    running = harness.start(path, out / "certs", dump=out)
    database = postgres.start() if metadata == "postgresql" else None
    try:
        inventory = inventory_for(loaded)
        for host in inventory["hosts"]:  # last midnight's run, scheduled as soon as the DAGs are parsed, all in one file
            host |= {"schedule": "0 0 * * *", "window": {"start": "00:00", "end": "00:00", "timezone": "UTC"}}
        (out / "inventory.yaml").write_text(yaml.safe_dump(inventory | {"hosts": []}))  # the hosts come once the rest is quiet
        env = connection_env(loaded, running) | {
            "HYPERV_BACKUP_INVENTORY": str(out / "inventory.yaml"),
            "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps({"conn_type": "sqlite", "host": str(out / "catalog.sqlite")}),
        } | ({"AIRFLOW__CORE__PARALLELISM": str(parallelism)} if parallelism else {})
        dag_ids = [f"hyperv_backup_{h.name.lower()}" for h in loaded.hosts]
        topology = Topology()
        if database:  # the catalog, too, where a deployment keeps it
            topology = Topology(metadata_url=database.create_database("airflow"))
            database.create_database("hyperv_catalog")
            env["AIRFLOW_CONN_HYPERV_BACKUP_CATALOG"] = json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": database.port,
                                                                    "login": "postgres", "schema": "hyperv_catalog"})
        with MailSink(out / "mail") as mail, AirflowCluster(out / "airflow", env | {"AIRFLOW_CONN_SMTP_DEFAULT": mail.connection()},
                                                              topology) as cluster:  # the report mails, as deployed
            sampler = SlotSampler(topology.metadata_url or f"sqlite:///file:{out / 'airflow' / 'airflow.db'}?mode=ro&uri=true")
            sampler.start()
            cluster.wait_for_dags(OTHER_DAGS)
            cluster.wait(sampler.quiet, "the other DAGs' first runs", timeout=600, every=1)
            (out / "inventory.yaml").write_text(yaml.safe_dump(inventory))  # parsed again within min_file_process_interval
            cluster.wait_for_dags(dag_ids)
            began = time.monotonic()
            states = cluster.wait(lambda: sampler.finished_runs(dag_ids), "the hosts' runs", timeout=3600, every=1)
            wall = time.monotonic() - began
            sampler.stop_at.set()
            sampler.join()
    finally:
        running.stop()
        if database:
            database.stop()
    return {"states": states, "wall": wall, "slots": dict(sampler.slot_seconds)}


def workload_seconds(scheduler_log: Path) -> tuple[Counter, Counter]:
    """Real seconds the backup DAGs' tries held a worker slot, and the tries, by step: each try's supervisor, from the
    task's fork to its own end, as the LocalExecutor's workers log it ("Workload finished ... duration=... workload_id=<ti
    id>"), matched to its task by the scheduler's "TaskInstance Finished" line of the same id. A step Airflow started
    and ended in the triggerer has none."""
    text = scheduler_log.read_text(errors="replace")
    steps = {ti: task.rpartition(".")[2] for dag, task, ti in re.findall(
        r"TaskInstance Finished: dag_id=(\S+), task_id=(\S+), .*?ti_id=([\w-]+)", text) if dag.startswith("hyperv_backup_hv")}
    seconds: Counter = Counter()
    tries: Counter = Counter()
    for duration, ti in re.findall(r"Workload finished .*?duration=([\d.]+) .*?workload_id=([\w-]+)", text):
        if ti in steps:
            seconds[steps[ti]] += float(duration)
            tries[steps[ti]] += 1
    return seconds, tries


def figures(out: Path, result: dict, vms: int) -> dict:
    state = json.loads((out / "sim-state.json").read_text())
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    jobs: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    started: dict[tuple[str, str], datetime] = {}
    for event in journal:
        key = (event["host"], ",".join(event.get("vms") or []))
        if event["event"] == "job_started":
            started[key] = _parse(event["at"])
        elif event["event"] == "job_finished" and key in started:
            jobs[event["host"]].append((started.pop(key), _parse(event["at"])))
    hosts = {}
    for host, spans in sorted(jobs.items()):
        spans.sort()
        busy = sum((end - start).total_seconds() for start, end in spans)
        idle = sum(max(0.0, (nxt[0] - prev[1]).total_seconds()) for prev, nxt in zip(spans, spans[1:], strict=False))
        hosts[host] = {"jobs": len(spans), "busy": busy, "idle": idle}
    first = min(s[0][0] for s in jobs.values())
    last = max(max(end for _, end in s) for s in jobs.values())
    job_seconds = sum(h["busy"] for h in hosts.values())
    commands = [e for e in journal if e["event"] == "command"]
    scripts = Counter(e.get("script") for e in commands)
    vm_count = vms * len(hosts)
    one_shot = sum(n for script, n in scripts.items() if script in ONE_SHOT)
    # the stock operator polls every POLL_SECONDS of the VM's wait: from its run's first job start to its own job's end
    waits = sum((end - first).total_seconds() for spans in jobs.values() for _, end in spans)
    stock = 5 * one_shot + 5 * waits / POLL_SECONDS
    requests = sum(h["requests"] for h in state["hosts"])
    scheduler_log = out / "airflow" / "scheduler.log"
    raced = scheduler_log.read_text(errors="replace").count(RACE)
    workloads, tries = workload_seconds(scheduler_log)
    return {"first_starts": {host: (spans[0][0] - first).total_seconds() for host, spans in sorted(jobs.items())}, "raced": raced,
            "hosts": hosts, "makespan": (last - first).total_seconds(), "longest": max(h["busy"] for h in hosts.values()),
            "job_seconds": job_seconds, "slot_seconds": sum(workloads.values()), "slots": dict(workloads), "tries": dict(tries),
            "running_seconds": sum(result["slots"].values()),
            "requests_per_vm": requests / vm_count, "stock_per_vm": stock / vm_count,
            "scripts_per_vm": {k: v / vm_count for k, v in sorted(scripts.items())},
            "open_shells": sum(h["open_shells"] for h in state["hosts"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--vms", type=int, default=12)
    parser.add_argument("--speed", type=float, default=10)
    parser.add_argument("--metadata", choices=("postgresql", "sqlite"), default="postgresql",
                        help="Airflow's metadata database: PostgreSQL, as deployments run it (default), or SQLite, the embedded default")
    parser.add_argument("--parallelism", type=int, help="Airflow's [core] parallelism: the LocalExecutor's task processes "
                        "at once (default: include/cluster.py's, two per core; Airflow's own is 32)")
    parser.add_argument("--keep", metavar="DIR", help="keep the run's files (catalog, journal, Airflow home and logs) in DIR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        out = Path(args.keep or tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = run(args.hosts, args.vms, args.speed, out, args.metadata, args.parallelism)
        f = figures(out, result, args.vms)
    slots = args.parallelism or f"{PARALLELISM} (two per core)"
    print(f"{args.hosts} hosts x {args.vms} online VMs of 20 GB (2019), simulator at {args.speed:g}x, real scheduler "
          f"(LocalExecutor, parallelism {slots}, {args.metadata} metadata), the hosts' scheduled runs; runs: {result['states']}, "
          f"{result['wall']:.0f} s\n")
    print(f"{'host':>6} {'jobs':>5} {'job time (host s)':>18} {'idle (host s)':>14} {'idle gap/busy':>14}")
    for host, h in f["hosts"].items():
        print(f"{host:>6} {h['jobs']:>5} {h['busy']:>18.0f} {h['idle']:>14.0f} {h['idle'] / h['busy']:>14.1%}")
    print(f"\nfleet makespan / longest host's job time: {f['makespan']:.0f} / {f['longest']:.0f} host s = "
          f"{f['makespan'] / f['longest']:.3f}")
    print("hosts' first jobs, host s after the first: " + ", ".join(f"{h} +{s:.0f}" for h, s in f["first_starts"].items()))
    print(f"tries Airflow failed in its deferral race (apache/airflow#67287), retried by the steps: {f['raced']}")
    print(f"worker-slot seconds (real) / job seconds (host): {f['slot_seconds']:.0f} / {f['job_seconds']:.0f} = "
          f"{f['slot_seconds'] / f['job_seconds']:.1%}  (by step: "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(f["slots"].items())) + ")")
    print(f"  of which the task instances were running: {f['running_seconds']:.0f} = {f['running_seconds'] / f['job_seconds']:.1%}")
    print("worker tries by step: " + ", ".join(f"{k} {v}" for k, v in sorted(f["tries"].items()))
          + f"; {sum(f['tries'].get(s, 0) for s in STEPS) / args.vms / args.hosts:.2f} a VM")
    print(f"HTTP requests per VM: {f['requests_per_vm']:.1f}; the stock WinRMOperator for the same work: "
          f"{f['stock_per_vm']:.1f} ({f['requests_per_vm'] / f['stock_per_vm']:.2f}x)")
    print("script calls per VM: " + ", ".join(f"{k} {v:.1f}" for k, v in f["scripts_per_vm"].items()))
    print(f"shells left open on the hosts: {f['open_shells']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
