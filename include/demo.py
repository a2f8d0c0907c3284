"""`make demo`: start the simulated fleet, reach every host over WinRM, and write DEMO_OUT.

The inventory and the Airflow connections are derived from the scenario, so any valid
scenario works. What runs against the fleet is the real client (HyperVHook on the
provider's WinRMHook) sending the project's scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hyperv-demo-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

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


def probe_fleet(scenario) -> list[tuple[str, str, str, str]]:
    from hyperv_backup.errors import HostError
    from hyperv_backup.hooks import HyperVHook

    rows = []
    for host in scenario.hosts:
        hook = HyperVHook(connection_id(host.name))
        for vm in host.vms:
            try:
                probe = hook.run_script("Get-VMBackupProbe", VMName=vm.name, BackupTarget=host.backup_target)
                state = probe["vms"][0]["state"] if probe["vms"] else "not found"
                rows.append((host.name, vm.name, state, "reached"))
            except HostError as error:
                rows.append((host.name, vm.name, "?", f"error: {error}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--scenario", default=str(ROOT / "include" / "demo-fleet.yaml"))
    parser.add_argument("--out", default=str(ROOT / "demo-output"))
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    (out / "reports").mkdir(parents=True)
    (out / "mail").mkdir()

    running = harness.start(Path(args.scenario), out / "certs", dump=out)
    try:
        os.environ.update(connection_env(scenario, running))
        rows = probe_fleet(scenario)
    finally:
        code = running.stop()
    if code != 0:
        print(f"error: the simulator exited with {code}", file=sys.stderr)
        return 1
    width = max(len(r[1]) for r in rows) if rows else 4
    print(f"{'HOST':10} {'VM':{width}} {'STATE':10} RESULT")
    for host, vm, state, result in rows:
        print(f"{host:10} {vm:{width}} {state:10} {result}")
    print(f"\nwritten to {out}: sim-state.json, sim-journal.jsonl")
    return 0 if all(r[3] == "reached" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
