"""`make demo-outage`: an outage and its backfill, on the real Airflow scheduler.

1. Airflow runs for real (api-server, scheduler, dag-processor, triggerer; LocalExecutor, its metadata on
   PostgreSQL: on SQLite, `airflow backfill create` racing the scheduler's writes fails half-way and leaves
   an empty backfill that blocks the next one until the scheduler closes it),
   the backup DAGs scheduled every minute, while the fleet is unreachable (its hosts do not listen):
   a few scheduled runs fail, and the catalog records each VM's failure and why.
2. The fleet comes back. The administrator pauses the schedule and backfills the failed intervals:
   `airflow backfill create --reprocess-behavior failed`. The first backfilled run takes one
   catch-up backup per VM; the later intervals are `covered` by it, with no second job.
3. A VM whose catch-up failed is redone by backfilling its run again: only that VM gets a job.
4. The report DAG mails the story. DEMO_OUT gets the same files as `make demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from include import postgres  # noqa: E402
from include.cluster import AirflowCluster, Topology, free_port  # noqa: E402
from include.demo import connection_env, inventory_for  # noqa: E402
from include.demo_out import ForeignFiles, prepare, stop_on_signals  # noqa: E402
from include.mailsink import MailSink  # noqa: E402
from simulator import harness  # noqa: E402
from simulator.certs import make_certificates  # noqa: E402
from simulator.scenario import ScenarioError, load_scenario  # noqa: E402

FINISHED = ("success", "failed")


def _scenario_with_ports(source: Path, target: Path) -> dict[str, int]:
    """The scenario with a fixed free port per host, so the connections exist before the hosts listen."""
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    ports = {}
    for host in document["hosts"]:
        host["port"] = ports[host["name"]] = free_port()
    target.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return ports


def _unreachable_fleet(scenario, ports: dict[str, int], cert_dir: Path) -> harness.RunningSimulator:
    """The simulator's endpoints, known before it starts (nothing listens there yet). A CA file exists
    from the start, so the clients fail as they would against a host that is down: connection refused
    (the simulator writes its own CA over it when it starts)."""
    make_certificates(cert_dir, [h.name for h in scenario.hosts])
    endpoints = {h.name: harness.Endpoint(h.name, h.transport, f"{'https' if h.transport == 'ssl' else 'http'}://127.0.0.1:"
                                                                 f"{ports[h.name]}/wsman") for h in scenario.hosts}
    return harness.RunningSimulator(process=None, endpoints=endpoints, ca_path=str(cert_dir / "ca.pem"))


def _compressed_schedule(intervals: int) -> tuple[list[datetime], str]:
    """The nightly schedule, compressed: one run a minute, `intervals` times, starting in 2-3 minutes, on this
    date only (so the first run is the first of these, and no later scheduled run competes with the backfill)."""
    first = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=3)
    if (first + timedelta(minutes=intervals - 1)).hour != first.hour:
        first = first.replace(minute=0) + timedelta(hours=1)  # keep the fires within one hour: one cron line
    fires = [first + timedelta(minutes=i) for i in range(intervals)]
    return fires, f"{fires[0].minute}-{fires[-1].minute} {first.hour} {first.day} {first.month} *"


@contextmanager
def _metadata_database(stoppers: list, dump: Path) -> Iterator[Topology]:
    """Airflow's metadata on a PostgreSQL server of its own, for the story's length, then dumped to `dump` (plain
    SQL: what the scheduler recorded, kept). PostgreSQL detaches from this process: its stop is also added to
    `stoppers`, which a signal's handler runs."""
    database = postgres.start()
    stoppers.append(database.stop)
    try:
        yield Topology(metadata_url=database.create_database("airflow"))
        database.dump("airflow", dump)
    finally:
        database.stop()


def _finished(cluster: AirflowCluster, dag_id: str, count: int, run_type: str | None = None):
    runs = [r for r in cluster.runs(dag_id) if run_type is None or r["run_id"].startswith(f"{run_type}__")]
    done = [r for r in runs if r["state"] in FINISHED]
    return done if len(done) >= count and len(done) == len(runs) else None


def _say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def play(scenario_path: Path, out: Path, intervals: int, stoppers: list) -> dict:
    scenario = load_scenario(scenario_path)
    (out / "reports").mkdir()
    ports = _scenario_with_ports(scenario_path, out / "scenario.yaml")
    fires, cron = _compressed_schedule(intervals)
    inventory = inventory_for(scenario)
    for host in inventory["hosts"]:
        host |= {"schedule": cron, "window": {"start": "00:00", "end": "00:00", "timezone": "UTC"}}
    (out / "inventory.yaml").write_text(yaml.safe_dump(inventory, allow_unicode=True), encoding="utf-8")
    dag_ids = [f"hyperv_backup_{h.name.lower()}" for h in scenario.hosts]
    env = connection_env(scenario, _unreachable_fleet(scenario, ports, out / "certs")) | {
        "HYPERV_BACKUP_INVENTORY": str(out / "inventory.yaml"),
        "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps({"conn_type": "sqlite", "host": str(out / "catalog.sqlite")}),
        "AIRFLOW__HYPERV_BACKUP__POLL_SECONDS": "0.5",
        # an unreachable host fails its run within seconds (one more try, 2-4 s later); the backfill is the catch-up. The
        # one retry is the product's answer to a try Airflow itself failed (README, "Tasks Airflow itself would fail")
        "AIRFLOW__HYPERV_BACKUP__RETRIES": "1",
        "AIRFLOW__HYPERV_BACKUP__RETRY_DELAY_SECONDS": "2",
        "AIRFLOW__HYPERV_BACKUP__REPORTS_PATH": str(out / "reports"),
    }
    story: dict = {"dags": {}}
    with _metadata_database(stoppers, out / "airflow" / "metadata.sql") as topology, MailSink(out / "mail") as mail:
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = mail.connection()
        with AirflowCluster(out / "airflow", env, topology) as cluster:
            cluster.wait_for_dags([*dag_ids, "hyperv_backup_report"])
            if datetime.now(UTC) > fires[0]:
                raise RuntimeError("Airflow took more than 2 minutes to start; the outage's schedule has passed")
            _say(f"Airflow is up; the fleet is unreachable. {', '.join(dag_ids)} run at {cron!r} (UTC).")
            for dag_id in dag_ids:
                cluster.cli("dags", "unpause", dag_id)
            for dag_id in dag_ids:
                failed = cluster.wait(lambda d=dag_id: _finished(cluster, d, intervals, "scheduled"),
                                      f"{intervals} scheduled runs of {dag_id}",
                                      timeout=(fires[0] - datetime.now(UTC)).total_seconds() + 90 * intervals + 120)
                story["dags"][dag_id] = {"outage_runs": [r["run_id"] for r in failed]}
                _say(f"{dag_id}: {len(failed)} scheduled runs ended {dict(Counter(r['state'] for r in failed))}")
            running = harness.start(out / "scenario.yaml", out / "certs", dump=out)
            try:
                _say("The fleet is back. Backfilling the failed intervals (airflow backfill create --reprocess-behavior failed).")
                for dag_id in dag_ids:
                    _backfill(cluster, dag_id, story["dags"][dag_id]["outage_runs"])
                for dag_id in dag_ids:
                    still = [r for r in cluster.runs(dag_id) if r["state"] == "failed"]
                    story["dags"][dag_id]["failed_after_backfill"] = [r["run_id"] for r in still]
                    if still:
                        _say(f"{dag_id}: {len(still)} run(s) still failed: backfilling them again redoes only their failed VMs")
                        story["dags"][dag_id]["rerun_started"] = datetime.now(UTC).isoformat()
                        _backfill(cluster, dag_id, [r["run_id"] for r in still])
                _say("Building and mailing the report.")
                # the story's own span: from the first missed interval to the host's clock, which runs
                # `speed` times faster than Airflow's, so the catch-up jobs are stamped ahead of real time
                clock = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
                end = max(clock, datetime.now(UTC)) + timedelta(minutes=1)
                conf = {"interval_start": (fires[0] - timedelta(minutes=1)).isoformat(), "interval_end": end.isoformat()}
                cluster.cli("dags", "unpause", "hyperv_backup_report")
                cluster.cli("dags", "trigger", "hyperv_backup_report", "--conf", json.dumps(conf))
                cluster.wait(lambda: _finished(cluster, "hyperv_backup_report", 1, "manual"), "the report", timeout=300)
            finally:
                running.stop()
        story["mails"] = [p.name for p in mail.messages()]
    return story


def _backfill(cluster: AirflowCluster, dag_id: str, run_ids: list[str]) -> None:
    runs = [r for r in cluster.runs(dag_id) if r["run_id"] in run_ids]
    before = {r["run_id"]: r.get("end_date") for r in runs}
    command = ["backfill", "create", "--dag-id", dag_id, "--from-date", runs[0]["logical_date"], "--to-date",
               runs[-1]["logical_date"], "--reprocess-behavior", "failed", "--max-active-runs", "1"]
    _say("airflow " + " ".join(command))

    def created():  # the scheduler marks the previous backfill completed a little after its last run
        done = cluster.cli(*command, check=False)
        if done.returncode != 0 and "AlreadyRunningBackfill" not in done.stderr:
            raise RuntimeError(f"airflow {' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return done.returncode == 0
    cluster.wait(created, "the previous backfill to complete", timeout=180, every=5)

    def done():
        now = {r["run_id"]: r for r in cluster.runs(dag_id) if r["run_id"] in run_ids}
        return all(r["state"] in FINISHED and r.get("end_date") != before.get(i) for i, r in now.items()) and now
    cluster.wait(done, f"the backfill of {dag_id}", timeout=900)


def summary(out: Path) -> str:
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT dag_id, run_id, vm_name, status, COALESCE(error, ''), COALESCE(missed, '') "
                          "FROM vm_backups ORDER BY dag_id, interval_end, vm_name").fetchall()
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    jobs = Counter(vm for e in journal if e["event"] == "job_started" for vm in e["vms"])
    lines = [f"{'RUN':32} {'VM':12} {'STATUS':10} ERROR / MISSED"]
    for _, run_id, vm, status, error, missed in rows:
        lines.append(f"{run_id[:32]:32} {vm[:12]:12} {status:10} {(error or missed)[:90]}")
    lines.append("\nWSB jobs per VM (simulator journal): " + ", ".join(f"{vm} {n}" for vm, n in sorted(jobs.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo-outage")
    parser.add_argument("--scenario", default=str(ROOT / "include" / "demo-fleet.yaml"))
    parser.add_argument("--out", default=str(ROOT / "demo-output"))
    parser.add_argument("--intervals", type=int, default=3, help="scheduled intervals that fail while the fleet is unreachable")
    args = parser.parse_args(argv)
    try:
        load_scenario(args.scenario)
        out = prepare(Path(args.out))
    except (ScenarioError, ForeignFiles) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ["AIRFLOW_HOME"] = str(out / "airflow")
    try:
        with stop_on_signals("the fleet, Airflow's components and their database were") as stoppers:
            story = play(Path(args.scenario), out, args.intervals, stoppers)
    except RuntimeError as error:
        print(f"error: the outage story did not finish: {error}", file=sys.stderr)
        return 1
    (out / "outage-story.json").write_text(json.dumps(story, indent=2))
    print("\n" + summary(out))
    print(f"\nwritten to {out}: catalog.sqlite, sim-state.json, sim-journal.jsonl, reports/, mail/, outage-story.json, "
          "airflow/ (logs, and metadata.sql: Airflow's metadata)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
