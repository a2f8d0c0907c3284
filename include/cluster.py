"""A real Airflow on this machine: api-server, scheduler, dag-processor and triggerer as child
processes sharing one AIRFLOW_HOME (SQLite metadata, LocalExecutor), for `make demo-outage` and
the tests that need the real scheduler rather than `dags test`. Everything listens on 127.0.0.1;
the log servers are skipped (the api-server reads the task logs from the same disk).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every component waits up to 30 s for SQLite's one writer (sqlite3's default is 5 s): four processes share it.
SQLITE_CONNECT_ARGS = {"timeout": 30}
COMPONENTS = {
    "api-server": [],
    "scheduler": ["--skip-serve-logs"],
    "dag-processor": [],
    "triggerer": ["--skip-serve-logs"],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AirflowCluster:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.env = dict(os.environ) | env | {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "include.cluster.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """An `airflow` command against this cluster. SQLite lets one writer in at a time, so a command that
        met the scheduler's write ("database is locked", its transaction rolled back) is run again."""
        for attempt in range(6):
            done = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0 or "database is locked" not in done.stderr:
                break
            time.sleep(1 + attempt)
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def start(self, timeout: float = 120) -> AirflowCluster:
        self.cli("db", "migrate")
        for name, extra in COMPONENTS.items():
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            self.processes[name] = subprocess.Popen([sys.executable, "-m", "airflow", name, *extra], env=self.env, cwd=ROOT,
                                                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api}/api/v2/monitor/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Airflow did not come up ({', '.join(dead) or 'timeout'}); see {self.home}/*.log")
            time.sleep(1)
        return self

    def json(self, *args: str) -> list:
        """An `airflow ... -o json` listing (Airflow prints warnings on stdout too: take the JSON line)."""
        lines = [line for line in self.cli(*args, "-o", "json").stdout.splitlines() if line.startswith("[")]
        return json.loads(lines[-1]) if lines else []

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Until the dag-processor has serialized these DAGs (the scheduler only sees those)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = {d["dag_id"] for d in self.json("dags", "list")}
            if set(dag_ids) <= listed:
                return
            time.sleep(2)
        raise RuntimeError(f"DAGs not parsed in {timeout:.0f} s: {sorted(set(dag_ids) - listed)}")

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs (`airflow dags list-runs`), oldest first."""
        runs = self.json("dags", "list-runs", dag_id)
        return sorted(runs, key=lambda r: r["logical_date"] or r["run_after"])

    def wait(self, condition, what: str, timeout: float = 600, every: float = 3):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
