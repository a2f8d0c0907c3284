"""A real Airflow on this machine: api-server, scheduler, dag-processor and triggerer as child
processes sharing one AIRFLOW_HOME, for `make demo`, `make demo-outage` and the tests that need the
real scheduler rather than `dags test`. By default SQLite metadata and the LocalExecutor (the
embedded default); with a `Topology` of Celery workers, a broker and a PostgreSQL metadata
database, the distributed engine users grow into (`make demo-cluster`). Everything listens on 127.0.0.1;
the log servers are skipped (the api-server reads the task logs from the same disk). The demo's
runs are triggered and followed through the REST API (`trigger`, `run_state`, `runs`), as the UI does: an
`airflow` CLI command costs seconds of CPU to start, which a 2-core machine would take from the
tasks.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every component waits up to 30 s for SQLite's one writer (sqlite3's default is 5 s): four processes share it.
SQLITE_CONNECT_ARGS = {"timeout": 30}
PASSWORDS = "simple_auth_manager_passwords.json.generated"  # written by the api-server's simple auth manager
COMPONENTS = {
    "api-server": [],
    "scheduler": ["--skip-serve-logs"],
    "dag-processor": [],
    "triggerer": ["--skip-serve-logs"],
}


WORKER_NAME = "HYPERV_BACKUP_WORKER_NAME"
# The LocalExecutor's task processes at once (`[core] parallelism`; Airflow's default is 32 whatever the machine):
# two per core. The backups' waits are deferred and hold no slot; their tries are short and CPU-bound, and more
# at once than the cores can run make each one wait, the next VM's first steps too (README, Benchmarks).
PARALLELISM = 2 * (os.cpu_count() or 1)

# `[workers] min_heartbeat_interval` (Airflow's default: 5 s). It also bounds how long a try's supervisor sleeps when it
# has read the task's last output before the process is gone: it notices the exit only at its next wake-up, and the
# slot stays taken meanwhile. That was 5 s after one try in ten under bench.scheduler (README, Run it for real).
TRY_EXIT_SECONDS = "1"


@dataclass(frozen=True)
class Topology:
    """Which engine runs the tasks: the LocalExecutor on SQLite (the default), or Celery `workers` (their names)
    taking tasks from `broker_url` (Redis), with Airflow's metadata at `metadata_url` (PostgreSQL)."""

    metadata_url: str | None = None
    broker_url: str | None = None
    workers: tuple[str, ...] = ()
    concurrency: int = 8  # task slots per Celery worker

    @property
    def executor(self) -> str:
        return "CeleryExecutor" if self.workers else "LocalExecutor"


def worker_name() -> str:
    """`[core] hostname_callable` of the demo's Celery workers: each records its own name on the task instances it
    runs (they share this machine, where workers of a real cluster would each have their own)."""
    return os.environ.get(WORKER_NAME) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AirflowCluster:
    def __init__(self, home: Path, env: dict[str, str], topology: Topology = Topology()):
        self.home, self.topology = Path(home), topology
        self.home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {"AIRFLOW__CORE__PARALLELISM": str(PARALLELISM), "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": TRY_EXIT_SECONDS,
                    } | dict(os.environ) | env | {  # the caller's, if it sets them
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),  # the fleet page (plugins/hyperv_backup_plugin.py)
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",  # loaded as each service starts: the task code is preloaded
            "AIRFLOW__CORE__EXECUTOR": topology.executor,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        }
        if topology.metadata_url:
            self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = topology.metadata_url
        else:
            self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "include.cluster.SQLITE_CONNECT_ARGS"
        if topology.workers:
            self.env |= {"AIRFLOW__CELERY__BROKER_URL": topology.broker_url or "",
                         "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(topology.concurrency),
                         "AIRFLOW__CORE__HOSTNAME_CALLABLE": "include.cluster.worker_name"}
        self.processes: dict[str, subprocess.Popen] = {}
        self._token: str | None = None

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
        """Airflow's processes, those that run tasks (the scheduler's LocalExecutor, the Celery workers) once the
        api-server's execution API answers: a task's first call is to it, and a task started before it listens
        fails its try. The first request also builds the execution API's routes (5 s on a quiet machine, 9 s
        on this busy one, which the first tasks waited out); docker-compose.yaml's health check asks the same."""
        self.cli("db", "migrate")
        components = self._components()
        runs_tasks = {"scheduler"} | {name for name, _, _ in components if name.startswith("worker-")}
        self._launch([c for c in components if c[0] not in runs_tasks])
        self._wait_until_healthy(timeout)
        self._launch([c for c in components if c[0] in runs_tasks])
        return self

    def _launch(self, components: list[tuple[str, list[str], dict[str, str]]]) -> None:
        for name, command, env in components:
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            self.processes[name] = subprocess.Popen([sys.executable, "-m", "airflow", *command], env=self.env | env, cwd=ROOT,
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/execution/health", timeout=30) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Airflow did not come up ({', '.join(dead) or 'timeout'}); see {self.home}/*.log")
            time.sleep(1)

    def _components(self) -> list[tuple[str, list[str], dict[str, str]]]:
        """(name, `airflow` arguments, extra environment) of each process: Airflow's four, and the Celery workers."""
        components = [(name, [name, *extra], {}) for name, extra in COMPONENTS.items()]
        return components + [(f"worker-{name}", ["celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs"],
                              {WORKER_NAME: name}) for name in self.topology.workers]

    def api(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        """A call of Airflow's REST API (`/api/v2/...`) as the admin user, with the token the api-server gives for
        the password it generated into the Airflow home."""
        if self._token is None:
            password = json.loads((self.home / PASSWORDS).read_text())["admin"]
            self._token = self._call("/auth/token", {"username": "admin", "password": password})["access_token"]
        return self._call(f"/api/v2/{path.lstrip('/')}", body, method, self._token)

    def _call(self, path: str, body: dict | None = None, method: str | None = None, token: str | None = None) -> dict:
        """One request; a server error is asked again a few times (SQLite lets one writer in at a time, and an
        api-server request that met the scheduler's write fails with 500)."""
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                         method=method, headers={"Content-Type": "application/json"}
                                         | ({"Authorization": f"Bearer {token}"} if token else {}))
        for attempt in range(6):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as error:
                if error.code < 500 or attempt == 5:
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """A manual run of the DAG now (unpaused first: a paused DAG's run would wait); its run id."""
        self.api(f"dags/{dag_id}", {"is_paused": False}, "PATCH")
        return self.api(f"dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api(f"dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Until the dag-processor has serialized these DAGs (the scheduler only sees those); a DAG file that
        does not import is reported at once, in the dag-processor's words."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = {d["dag_id"] for d in self.api("dags?limit=1000")["dags"]}
            if set(dag_ids) <= listed:
                return
            errors = self.api("importErrors")["import_errors"]
            if errors:
                raise RuntimeError("DAG files do not import:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors))
            time.sleep(2)
        raise RuntimeError(f"DAGs not parsed in {timeout:.0f} s: {sorted(set(dag_ids) - listed)}")

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs through the REST API, oldest first, each with its `run_id` (as `airflow dags list-runs`
        names it). Waits look every few seconds: the CLI cost 3 s of CPU a look, taken from the tasks it waited for."""
        listed = self.api(f"dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns?limit=1000")["dag_runs"]
        return sorted((r | {"run_id": r["dag_run_id"]} for r in listed), key=lambda r: r["logical_date"] or r["run_after"])

    def wait(self, condition, what: str, timeout: float = 600, every: float = 3):
        """Until `condition()` is true (its value), for up to `timeout` s; a component that died ends the wait."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"Airflow's {', '.join(dead)} stopped while waiting for {what}; see {self.home}/*.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def stop(self) -> None:
        """Each component asked to stop (SIGTERM), then whatever is left of its process group killed: a component
        started in a session of its own, so that a scheduler that exits, or is killed, slower than its LocalExecutor
        workers leaves none of them behind (seen with two test lanes on a busy machine: four idle workers of the
        outage story outlived it)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # the group is gone: nothing was left behind
                pass
            process.wait()

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
