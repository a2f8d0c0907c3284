"""`make demo`: start the simulated fleet, back it up, report, and write DEMO_OUT.

The inventory and the Airflow connections are derived from the scenario, so any valid
scenario works. What runs against the fleet is the real client (HyperVHook on the
provider's WinRMHook) sending the project's scripts; the report goes through the SMTP
provider to a real SMTP server on 127.0.0.1 that keeps each message as an .eml file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("success", "failed")
WORKERS = ("worker1", "worker2")  # the Celery workers of `make demo-cluster`
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("AIRFLOW__HYPERV_BACKUP__POLL_SECONDS", "0.5")  # the simulator's clock runs 60x faster than a host's

from hyperv_backup import catalog  # noqa: E402
from hyperv_backup.inventory import InventoryError, load_inventory  # noqa: E402

from include.demo_out import ForeignFiles, prepare, stop_on_signals  # noqa: E402
from simulator import harness  # noqa: E402
from simulator.scenario import ScenarioError, load_scenario  # noqa: E402


def connection_env(scenario, running: harness.RunningSimulator) -> dict[str, str]:
    """One Airflow connection per simulated host (AIRFLOW_CONN_<ID> values), TLS validated against the simulator's CA."""
    env = {}
    for host in scenario.hosts:
        endpoint = running.endpoints[host.name]
        extra: dict[str, object] = {"transport": endpoint.transport, "endpoint": endpoint.url,
                                    "operation_timeout_sec": 10, "read_timeout_sec": 15}
        if endpoint.transport == "ssl":
            extra["ca_trust_path"] = running.ca_path
        if endpoint.transport == "plaintext":
            extra["allow_plaintext"] = True  # the scenario asked for plaintext: an explicit opt-in
        value = {"conn_type": "winrm", "host": host.name, "login": host.username, "password": host.password, "extra": extra}
        env[f"AIRFLOW_CONN_{connection_id(host.name).upper()}"] = json.dumps(value)
    return env


def connection_id(host_name: str) -> str:
    return f"winrm_{host_name.lower()}"


def inventory_for(scenario) -> dict:
    """The inventory a scenario implies: every host, every VM, nightly at 22:00 host time."""
    return {
        "hosts": [
            {"name": host.name, "connection": connection_id(host.name), "backup_target": host.backup_target,
             "schedule": "0 22 * * *", "window": {"start": "22:00", "end": "06:00", "timezone": host.timezone},
             "vms": [vm.name.replace("[", "[[]") if "[" in vm.name else vm.name for vm in host.vms]}
            for host in scenario.hosts
        ],
        "mail": {"to": ["backup-reports@example.test"]},
    }


RESTORE_TEST = "hyperv_restore_test"


def run_backups(dag_ids: list[str], running, env: dict[str, str], home: Path, topology=None, report: bool = True,
                restore: Path | None = None) -> int:
    """Run every host's backup DAG once, side by side, on the real scheduler as users run it (api-server,
    scheduler, dag-processor, triggerer; LocalExecutor and SQLite metadata in `home`, or the `topology`'s
    Celery workers and PostgreSQL), then with `restore` one restore test per host (`hyperv_restore_test`; the
    fleet's state just before it is written to that file), then the report DAG.

    The runs are manual, triggered through the REST API; the scheduler makes no run of its own
    (`use_job_schedule` off: the inventory's 22:00 schedule would otherwise run last night's interval at once).
    Each task writes its log into `home`, where `make ui` shows it."""
    from datetime import UTC, datetime, timedelta

    from include.cluster import AirflowCluster, Topology

    env = env | {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    with AirflowCluster(home, env, topology or Topology()) as cluster:
        try:
            cluster.wait_for_dags([*dag_ids, "hyperv_backup_report", *([RESTORE_TEST] if restore else [])])
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        runs = {dag_id: cluster.trigger(dag_id) for dag_id in dag_ids}
        for dag_id, run_id in runs.items():  # a run that fails is a result (its VMs' rows say why), not the demo's failure
            cluster.wait(lambda d=dag_id, r=run_id: cluster.run_state(d, r) in FINISHED, f"the run of {dag_id}", timeout=6 * 3600, every=1)
        if restore:  # a failed test is a result too (its row says why)
            restore.write_text(json.dumps(running.state(), indent=2) + "\n")
            run_id = cluster.trigger(RESTORE_TEST, {"per_host": 1})
            cluster.wait(lambda: cluster.run_state(RESTORE_TEST, run_id) in FINISHED, "the restore tests", timeout=6 * 3600, every=1)
        if not report:
            return 0
        # Two clocks: a row belongs to its run's data interval, on Airflow's clock, while its job's times and the
        # recovery-point ages are the hosts', which run `speed` times faster. The report's interval starts 24 h
        # before now on Airflow's clock (every run the demo made is in it) and ends at the later of the two
        # clocks (every job has started by then), whatever the speed.
        now = datetime.now(UTC)
        fleet = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
        interval = {"interval_start": (now - timedelta(days=1)).isoformat(),
                    "interval_end": (max(now, fleet) + timedelta(minutes=1)).isoformat()}
        run_id = cluster.trigger("hyperv_backup_report", interval)
        state = cluster.wait(lambda: (s := cluster.run_state("hyperv_backup_report", run_id)) in FINISHED and s,
                             "the report", timeout=600, every=1)
        if state != "success":
            print(f"error: the report run ended {state}; its task logs are in {home}/logs", file=sys.stderr)
            return 1
    return 0


PREFLIGHT = "hyperv_backup_preflight"


def run_preflight(running, env: dict[str, str], home: Path, out: Path) -> int:
    """`make preflight`: the preflight DAG once on the real scheduler; every host's checks (the tasks' XCom)
    to `out/preflight.json` and a table. 0 when no check failed, 1 when one did."""
    import urllib.parse

    from include.cluster import AirflowCluster

    with AirflowCluster(home, env | {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}) as cluster:
        cluster.wait_for_dags([PREFLIGHT])
        run_id = cluster.trigger(PREFLIGHT)
        cluster.wait(lambda: cluster.run_state(PREFLIGHT, run_id) in FINISHED, "the preflight", timeout=1800, every=1)
        run = f"dags/{PREFLIGHT}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        checks = []
        for ti in sorted(cluster.api(f"{run}/taskInstances?task_id=check&limit=1000")["task_instances"], key=lambda t: t["map_index"]):
            value = cluster.api(f"{run}/taskInstances/check/xcomEntries/checks?map_index={ti['map_index']}")["value"]
            checks += json.loads(value) if isinstance(value, str) else value
    (out / "preflight.json").write_text(json.dumps(checks, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{'HOST':10} {'CHECK':22} {'STATUS':6} DETAIL")
    for c in checks:
        print(f"{c['host']:10} {c['check']:22} {c['status']:6} {c['detail']}" + (f"\n{'':41}fix: {c['fix']}" if c["fix"] else ""))
    failed = sorted({c["host"] for c in checks if c["status"] == "fail"})
    print(f"\n{len(checks)} checks: " + (f"not ready: {', '.join(failed)}" if failed else "every host is ready") + f" ({out / 'preflight.json'})")
    return 1 if failed else 0


def _dag_ids(inventory: Path) -> list[str]:
    """The backup DAGs of the inventory's hosts."""
    from hyperv_backup.dag_factory import dag_id

    return [dag_id(entry) for entry in load_inventory(inventory).hosts]


def _engine(services: ExitStack, out: Path, cluster: bool, stoppers: list):
    """The engine the demo runs on, and the catalog's connection: the embedded default (LocalExecutor, SQLite
    in DEMO_OUT), or with `cluster` two Celery workers, Redis as their broker, and PostgreSQL for Airflow's
    metadata and the catalog, each started here on 127.0.0.1 and stopped with the demo (`stoppers`: also on a signal)."""
    from include.cluster import Topology

    if not cluster:
        return Topology(), {"conn_type": "sqlite", "host": str(out / "catalog.sqlite")}
    from include import postgres, redis_server

    database = postgres.start()
    services.callback(database.stop)
    stoppers.append(database.stop)  # PostgreSQL detaches from this process: a signal's handler must stop it too
    broker = redis_server.start()
    services.callback(broker.stop)
    topology = Topology(metadata_url=database.create_database("airflow"), broker_url=broker.url, workers=WORKERS)
    database.create_database("hyperv_catalog")
    return topology, {"conn_type": "postgres", "host": "127.0.0.1", "port": database.port, "login": "postgres",
                      "schema": "hyperv_catalog"}


def _cluster_files(out: Path, topology, catalog_conn: dict) -> None:
    """After a cluster demo: the PostgreSQL catalog exported to `catalog.sqlite` (same table and columns), and
    `cluster.json`, read from Airflow's metadata (the worker each task instance ran on)."""
    from hyperv_backup import catalog
    from sqlalchemy import create_engine, text

    source = catalog.engine_for(catalog.sqlalchemy_url("postgres", catalog_conn["host"], "postgres", None, catalog_conn["port"],
                                                       catalog_conn["schema"], {}))
    catalog.export(source, str(out / "catalog.sqlite"))
    source.dispose()
    metadata = create_engine(topology.metadata_url)
    with metadata.connect() as db:
        by_worker = dict(db.execute(text("SELECT hostname, COUNT(*) FROM task_instance WHERE hostname <> '' GROUP BY hostname")).all())
    metadata.dispose()
    (out / "cluster.json").write_text(json.dumps({
        "executor": topology.executor, "metadata_db": "postgresql", "catalog_db": "postgresql", "workers": list(topology.workers),
        "task_instances_by_worker": {name: by_worker.get(name, 0) for name in topology.workers}}, indent=2) + "\n")


def summary(catalog_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(catalog_path) as db:
        return db.execute(
            "SELECT host, vm_name, COALESCE(mode, predicted_mode), status, job_started_at, job_finished_at, bytes_copied, error "
            "FROM vm_backups ORDER BY host, id").fetchall()


def _print_restore_tests(catalog_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(catalog_path) as db:
        tests = db.execute("SELECT host, vm_name, status, heartbeat_seconds, restored_as, cleaned_up, COALESCE(error, '') "
                           "FROM restore_tests ORDER BY host, vm_name").fetchall()
    print(f"\n{'HOST':10} {'RESTORE TEST OF':20} {'STATUS':10} {'HEARTBEAT':>9}  {'CLEANED UP':10} COPY / ERROR")
    for host, vm, status, heartbeat, copy, cleaned, error in tests:
        seconds = f"{heartbeat:.0f} s" if heartbeat is not None else "-"
        print(f"{host:10} {vm:20} {status:10} {seconds:>9}  {'yes' if cleaned else 'NO':10} {error or copy}")


def _duration(start: str | None, end: str | None) -> str:
    from datetime import datetime

    if not start or not end:
        return "-"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--scenario", default=str(ROOT / "include" / "demo-fleet.yaml"))
    parser.add_argument("--out", default=str(ROOT / "demo-output"))
    parser.add_argument("--no-report", action="store_true", help="run the backups only (the benchmarks use this)")
    parser.add_argument("--inventory", help="back up with this inventory instead of the one derived from the scenario "
                                            "(its hosts' connections are winrm_<host in lower case>)")
    parser.add_argument("--preflight", action="store_true", help="check every host instead of backing up (make preflight)")
    parser.add_argument("--cluster", action="store_true", help="run on Celery workers, Redis and PostgreSQL (make demo-cluster)")
    parser.add_argument("--restore", action="store_true", help="after the backups, one restore test per host (make demo-restore)")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        if args.inventory:
            load_inventory(args.inventory)  # a mistake is said before anything starts, with its file, line and key
        out = prepare(Path(args.out))
    except (ScenarioError, InventoryError, ForeignFiles) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with stop_on_signals(f"the fleet and Airflow were; {out} holds what was written until then") as stoppers:
        return _run(args, scenario, out, stoppers)


def _run(args, scenario, out: Path, stoppers: list) -> int:
    (out / "reports").mkdir()
    (out / "mail").mkdir()

    import yaml

    from include.mailsink import MailSink

    inventory = out / "inventory.yaml"
    if args.inventory:  # the administrator's own, as written (its comments too): the DAG files and `make ui` read it
        inventory.write_text(Path(args.inventory).read_text(encoding="utf-8"), encoding="utf-8")
    else:
        inventory.write_text(yaml.safe_dump(inventory_for(scenario), allow_unicode=True), encoding="utf-8")
    dag_ids = _dag_ids(inventory)
    env = {"HYPERV_BACKUP_INVENTORY": str(inventory), "AIRFLOW__HYPERV_BACKUP__REPORTS_PATH": str(out / "reports")}
    with ExitStack() as services:
        topology, catalog_conn = _engine(services, out, args.cluster, stoppers)
        running = harness.start(Path(args.scenario), out / "certs", dump=out)
        try:
            with MailSink(out / "mail") as mail:
                env |= {"AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps(catalog_conn), "AIRFLOW_CONN_SMTP_DEFAULT": mail.connection(),
                        **connection_env(scenario, running)}
                if args.preflight:
                    catalog.engine_for(f"sqlite:///{out / 'catalog.sqlite'}").dispose()  # DEMO_OUT's files: an empty catalog
                    return run_preflight(running, env, out / "airflow", out)
                # the demo's Airflow lives with its output: `make ui` serves it
                finished = run_backups(dag_ids, running, env, out / "airflow", topology, report=not args.no_report,
                                       restore=out / "sim-state-before-restore.json" if args.restore else None)
        finally:
            code = running.stop()
        if code != 0 or finished != 0:
            print(f"error: the run did not finish (simulator exit {code})", file=sys.stderr)
            return 1
        if args.cluster:
            _cluster_files(out, topology, catalog_conn)
    rows = summary(out / "catalog.sqlite")
    if args.restore:
        _print_restore_tests(out / "catalog.sqlite")
    width = max((len(r[1]) for r in rows), default=4)
    print(f"\n{'HOST':10} {'VM':{width}} {'MODE':10} {'STATUS':10} {'DURATION':9} {'GB':>6}  ERROR")
    for host, vm, mode, status, start, end, copied, error in rows:
        gb = f"{(copied or 0) / 1024**3:.1f}"
        print(f"{host:10} {vm:{width}} {mode or '-':10} {status:10} {_duration(start, end):9} {gb:>6}  {error or ''}")
    mails = sorted((out / "mail").glob("*.eml"))
    if mails:
        import email
        import email.policy

        print(f"\nmail: {email.message_from_bytes(mails[-1].read_bytes(), policy=email.policy.default)['Subject']}")
    print(f"written to {out}: catalog.sqlite, sim-state.json, sim-journal.jsonl, inventory.yaml, reports/ "
          f"({len(list((out / 'reports').glob('*.html')))} HTML), mail/ ({len(mails)} .eml), airflow/ (the demo's Airflow home)")
    print(f"to look at the runs in the Airflow UI: make ui DEMO_OUT={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
