"""Shared test set-up: an Airflow home of our own, and simulated fleets started as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

_HOME = tempfile.mkdtemp(prefix="airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

from simulator import harness  # noqa: E402

# `make test` runs the suite in two lanes at once (`pytest -n 2`: pytest-xdist's two workers), each in the suite's
# order: these files in one, every other file in the other. They are the stories that mostly wait on real minutes (a
# schedule's fires, a window's end), the long end-to-end runs, and every user of the session's `demo` (a lane's
# session fixtures are its own: in both lanes the demo would run twice); about as long together as the rest, while
# the machine's two cores work for the other lane. Without `-n` the lanes mean nothing.
SECOND_LANE = frozenset({"test_outage_backfill.py", "test_rpo_alerts.py", "test_audit_approval.py", "test_demo_cluster.py",
                         "test_demo_restore.py", "test_end_to_end.py", "test_long_night.py", "test_fleet_page.py",
                         "test_report_delivery.py"})


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, with a lane for a scope: each worker takes one lane and runs it in order. (Not
    `--dist loadgroup`: pytest-xdist 3.8 marks a group in the test's nodeid through an attribute pytest 9.2 dropped.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "second" if nodeid.split("::")[0].rsplit("/", 1)[-1] in SECOND_LANE else "first"

    return Lanes(config, log)


def winrm_connection(endpoint: harness.Endpoint, ca_path: str | None, *, password: str = "S3cret!",
                     username: str = "backup-svc", **extra: object) -> str:
    """The Airflow connection (JSON form, as an AIRFLOW_CONN_ variable holds it) for a simulated host."""
    options = {"transport": endpoint.transport, "endpoint": endpoint.url, "operation_timeout_sec": 2, "read_timeout_sec": 5}
    if endpoint.transport == "ssl" and ca_path:
        options["ca_trust_path"] = ca_path
    if endpoint.transport == "plaintext":
        options["allow_plaintext"] = True
    options.update(extra)
    return json.dumps({"conn_type": "winrm", "host": "127.0.0.1", "login": username, "password": password, "extra": options})


def run_demo(tmp_path: Path, scenario: dict, *options: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, Path]:
    """`make demo`'s program (with `options`: --cluster, --preflight, --inventory FILE, ...) on `scenario`, into
    tmp_path/out: (the finished process, DEMO_OUT)."""
    root = Path(__file__).resolve().parent.parent
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "include.demo", *options, "--scenario", str(path), "--out", str(out)], cwd=root,
                          env=dict(os.environ, PYTHONPATH=f"{root / 'plugins'}:{root}"), capture_output=True, text=True, timeout=timeout)
    return done, out


def use_connection(monkeypatch, conn_id: str, value: str) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
    return conn_id


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (include/postgres.py), stopped at its end."""
    from include import postgres

    server = postgres.start()
    yield server
    import gc

    gc.collect()  # the tests' engines close their connections while the server still answers
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path):
    """A new, empty catalog database on each backend the catalog supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    import sqlalchemy

    server = request.getfixturevalue("postgres_server")
    name = f"catalog_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**9}"
    with sqlalchemy.create_engine(server.url, isolation_level="AUTOCOMMIT").connect() as db:
        db.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def start_fleet(tmp_path):
    """Start a simulator for a scenario given as a dict; stopped after the test."""
    started: list[harness.RunningSimulator] = []

    def start(scenario: dict) -> harness.RunningSimulator:
        path = tmp_path / f"scenario-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(scenario, allow_unicode=True), encoding="utf-8")
        running = harness.start(path, tmp_path / f"certs-{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`make demo`'s program run once on the demo fleet: (DEMO_OUT, stdout)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, AIRFLOW_HOME=str(out / "airflow-home"), PYTHONPATH=f"{root / 'plugins'}:{root}")
    done = subprocess.run([sys.executable, "-m", "include.demo", "--out", str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


_DAG_TEST = """
import json, subprocess, sys
subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
from airflow.dag_processing.dagbag import DagBag
run = DagBag(dag_folder=sys.argv[1]).get_dag(sys.argv[2]).test(run_conf=json.loads(sys.argv[3]) or None)
print("STATE", run.state)
"""


def dag_test(dags: Path, dag_id: str, env: dict[str, str], run_conf: dict | None = None) -> subprocess.CompletedProcess:
    """One run of a DAG with dag.test(), in a process of its own: its Airflow home (and so its metadata
    database) and connections come from `env`. Prints `STATE <the run's state>` last."""
    env = dict(env, AIRFLOW__CORE__DAGS_FOLDER=str(dags), PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}")
    return subprocess.run([sys.executable, "-c", _DAG_TEST, str(dags), dag_id, json.dumps(run_conf or {})], env=env,
                          capture_output=True, text=True, timeout=300)


def first_trigger_event(trigger, whole: bool = False):
    """A trigger's first event's payload, taken as dag.test takes it: the generator made (and closed) in the loop.
    `whole`: the event itself (one that ends the task carries its XComs, not a payload)."""
    async def first():
        event = await anext(trigger.run())
        return event if whole else event.payload
    return asyncio.run(first())


def until_done(steps, vm_id: str, step, conn_id: str = "hv", poll: float = 0.05):
    """One host step as its operator runs it (HostStepOperator): `step(event)` until it returns a result;
    a wait on the host through BackupJobTrigger, as the triggerer runs it (a turn's trigger writes the
    job's start to this test's catalog, through the Airflow connection); a wait on another task (no Airflow
    here to ask whose turn it is) after `poll`, as dag.test reschedules it."""
    import time

    from hyperv_backup.operators import raise_for_event, trigger_for
    from hyperv_backup.steps import Wait

    key = "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG"
    before = os.environ.get(key)
    os.environ[key] = json.dumps({"conn_type": "sqlite", "host": steps.engine.url.database})
    try:
        event = None
        while True:
            result = step(event)
            if not isinstance(result, Wait):
                return result
            if result.until is None or result.others_first:  # as under dag.test: rescheduled
                event = None
                time.sleep(poll)
                continue
            event = first_trigger_event(trigger_for(result, steps, conn_id, vm_id, poll))
            event = event if isinstance(event, dict) else {}  # an event that ended the task: dag.test resumes the step
            raise_for_event(steps, event)                      # with its state's name (operators.HostStepOperator.resume)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def hv01_steps(engine, vm_name: str = "VM1", run_id: str = "manual__1", target: str = "E:", **options):
    """BackupSteps for one VM of the tests' one-host fleets (host HV01, connection `hv`), polling every 0.05 s."""
    from hyperv_backup.hooks import HyperVHook
    from hyperv_backup.steps import BackupSteps, RunKey

    return BackupSteps(HyperVHook("hv"), engine, RunKey("hyperv_backup_hv01", run_id, None, None, "HV01", vm_name), target,
                       poll_seconds=0.05, **options)


def like_a_task(steps, step, retries: int = 3, retry_delay: float = 1.5):
    """`step()` as an Airflow task runs it: tried again on a transient error, `retries` times, `retry_delay` apart,
    each failed try recorded as the task's end records it (BackupSteps.failed_try)."""
    import time

    from hyperv_backup.errors import TransientHostError

    for attempt in range(retries + 1):
        try:
            return step()
        except TransientHostError as error:
            steps.tried_again = lambda: attempt < retries  # noqa: B023 - asked right here, in this iteration
            steps.failed_try(str(error), error.host_wide)
            if attempt == retries:
                raise
            time.sleep(retry_delay)


def through_the_copy(steps, conn_id: str = "hv", retries: int = 3, retry_delay: float = 1.5, poll: float = 0.05,
                     probe: dict | None = None, copy_window=None, **snapshot_options) -> tuple[dict, dict, dict]:
    """One VM's backup up to its verify, as the DAG's tasks run it: probe -> snapshot -> verify merge -> copy (the
    state machine), their waits in BackupJobTrigger, each step retried as `like_a_task` (`probe`: one already
    taken). `copy_window`: (a function that says the last moment a new job may start, asked when the copy step
    begins; the window's words) for the copy step. Returns the probe's, snapshot's and copy's answers, which the
    verify step takes; a permanent error is raised."""
    from datetime import timedelta

    from hyperv_backup.record import parse_time, sighted

    def waiting(step):
        return like_a_task(steps, lambda: until_done(steps, probe["vm_id"], step, conn_id, poll), retries, retry_delay)

    probe = probe or like_a_task(steps, steps.probe, retries, retry_delay)
    snap = waiting(lambda event: steps.snapshot(probe, seen=sighted(event), **snapshot_options))
    waiting(lambda event: steps.verify_merge(probe, timedelta(minutes=60), parse_time((event or {}).get("merge_deadline"))))
    window = (copy_window[0](), copy_window[1]) if copy_window else ()
    return probe, snap, waiting(lambda event: steps.advance(probe, *window, seen=sighted(event)))


def backup_like_the_dag(steps, conn_id: str = "hv", retries: int = 3, retry_delay: float = 1.5, poll: float = 0.05,
                        probe: dict | None = None, copy_window=None, **snapshot_options) -> dict:
    """One VM's whole backup as the DAG's tasks run it: `through_the_copy`, then verify. Returns verify's answer."""
    probe, snap, job = through_the_copy(steps, conn_id, retries, retry_delay, poll, probe, copy_window, **snapshot_options)
    return like_a_task(steps, lambda: steps.verify(probe, snap, job), retries, retry_delay)
