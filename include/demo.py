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
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("AIRFLOW__HYPERV_BACKUP__POLL_SECONDS", "0.5")  # the simulator's clock runs 60x faster than a host's

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


def run_backups(scenario, running, report: bool = True) -> int:
    """Run every host's backup DAG once on the embedded default (SQLite metadata, in-process), then the report."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"error: {path}: {error}", file=sys.stderr)
        return 1
    for host in scenario.hosts:
        bag.get_dag(f"hyperv_backup_{host.name.lower()}").test()
    if report:
        # Two clocks: a row belongs to its run's data interval, on Airflow's clock, while its job's times and the
        # recovery-point ages are the hosts', which run `speed` times faster. The report's interval starts 24 h
        # before now on Airflow's clock (every run the demo made is in it) and ends at the later of the two
        # clocks (every job has started by then), whatever the speed.
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        fleet = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
        interval = {"interval_start": (now - timedelta(days=1)).isoformat(),
                    "interval_end": (max(now, fleet) + timedelta(minutes=1)).isoformat()}
        run = bag.get_dag("hyperv_backup_report").test(run_conf=interval)
        if str(run.state) != "success":
            print(f"error: the report run ended {run.state}", file=sys.stderr)
            return 1
    return 0


def summary(catalog_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(catalog_path) as db:
        return db.execute(
            "SELECT host, vm_name, COALESCE(mode, predicted_mode), status, job_started_at, job_finished_at, bytes_copied, error "
            "FROM vm_backups ORDER BY host, id").fetchall()


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
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return _run(args, load_scenario(args.scenario), Path(args.out))
    try:
        load_scenario(args.scenario)
        out = prepare(Path(args.out))
    except (ScenarioError, ForeignFiles) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The run itself is a child process: dag.test() runs tasks in its process, and Airflow's task runner takes
    # SIGTERM for itself there (a task's on_kill). This process keeps the signals and stops the whole tree.
    inside = [sys.executable, "-m", "include.demo", "--scenario", args.scenario, "--out", str(out), "--inside"]
    with stop_on_signals(f"the fleet and Airflow were; {out} holds what was written until then"):
        return subprocess.call(inside + (["--no-report"] if args.no_report else []), cwd=ROOT)


def _run(args, scenario, out: Path) -> int:
    (out / "reports").mkdir()
    (out / "mail").mkdir()
    os.environ["AIRFLOW_HOME"] = str(out / "airflow")  # the demo's Airflow lives with its output: `make ui` serves it

    import yaml

    inventory = out / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(inventory_for(scenario), allow_unicode=True), encoding="utf-8")
    os.environ["HYPERV_BACKUP_INVENTORY"] = str(inventory)
    os.environ["AIRFLOW_CONN_HYPERV_BACKUP_CATALOG"] = json.dumps({"conn_type": "sqlite", "host": str(out / "catalog.sqlite")})
    os.environ["AIRFLOW__HYPERV_BACKUP__REPORTS_PATH"] = str(out / "reports")
    from include.mailsink import MailSink

    running = harness.start(Path(args.scenario), out / "certs", dump=out)
    try:
        with MailSink(out / "mail") as mail:
            os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = mail.connection()
            os.environ.update(connection_env(scenario, running))
            finished = run_backups(scenario, running, report=not args.no_report)
    finally:
        code = running.stop()
    if code != 0 or finished != 0:
        print(f"error: the run did not finish (simulator exit {code})", file=sys.stderr)
        return 1
    rows = summary(out / "catalog.sqlite")
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
