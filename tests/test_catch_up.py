"""Concurrent backfill runs take one catch-up backup per VM.

`airflow backfill create` runs several intervals at once unless told `--max-active-runs 1`.
Two backfilled intervals of the same VM, stepped side by side through the real client against
the simulator: one run takes the catch-up, the other waits for its result and is recorded
`covered`, never starting (or adopting) a second job. A run that died leaves a `running` row
that keeps nobody waiting. Last, what the steps ask of Airflow (is a run alive, is it this VM's
turn) is asked of the real Task SDK, through dag.test.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hyperv_backup import catalog
from hyperv_backup.errors import TransientHostError
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.operators import outcome
from hyperv_backup.steps import BackupSteps, NotThisTime, RunKey, Wait

from tests.conftest import backup_like_the_dag, dag_test, until_done, use_connection, winrm_connection

DAG_ID = "hyperv_backup_hv01"


def _fleet(start_fleet, monkeypatch, tmp_path, disk_gb: int = 20):
    running = start_fleet({"seed": 5, "speed": 60, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "DC01", "disk_gb": disk_gb}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    clock = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
    return running, engine, clock


def _steps(engine, clock, night: int, run_alive=None) -> BackupSteps:
    end = clock - timedelta(days=3 - night)  # nights 1 and 2 of an outage, both long over
    run = RunKey(DAG_ID, f"backfill__night{night}", end - timedelta(days=1), end, "HV01", "DC01")
    return BackupSteps(HyperVHook("hv"), engine, run, "E:", poll_seconds=0.05, run_alive=run_alive)


def _whole_backup(steps: BackupSteps, probed_both: threading.Barrier, ended: dict) -> None:
    """probe -> snapshot -> verify merge -> copy -> verify, as the DAG's tasks call them."""
    try:
        steps.begin("backfill")
        probe = steps.probe()
        probed_both.wait(timeout=30)  # both runs have probed before either starts a job
        ended["result"] = backup_like_the_dag(steps, probe=probe, catch_up=True)
    except NotThisTime as reason:
        ended["result"] = str(reason)
    except BaseException as error:  # noqa: BLE001 - handed to the test's thread, which re-raises it
        ended["error"] = error


@pytest.mark.parametrize("write_delay", [0.0, 0.5], ids=["prompt-catalog", "slow-catalog"])
def test_two_backfill_runs_at_once_take_one_catch_up_job(start_fleet, monkeypatch, tmp_path, write_delay):
    """With a slow catalog, the host lists the job that one run started half a second before that run's row
    records it: the other run, which the host refused, must not take it for its own then (catalog.start_claimed),
    or it follows that job and, once the row claims it, starts a second one (seen once in CI without the delay)."""
    running, engine, clock = _fleet(start_fleet, monkeypatch, tmp_path)
    if write_delay:
        upsert = catalog.upsert

        def slow_upsert(engine, key, values, now):
            if values.get("job_started_at") is not None and values.get("attempts") is None:  # a job's start, just taken
                time.sleep(write_delay)
            upsert(engine, key, values, now)
        monkeypatch.setattr(catalog, "upsert", slow_upsert)
    barrier = threading.Barrier(2)
    outcomes = [{}, {}]
    threads = [threading.Thread(target=_whole_backup, args=(_steps(engine, clock, night), barrier, outcomes[night - 1]))
               for night in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    for ended in outcomes:
        if "error" in ended:
            raise ended["error"]

    assert [e["vms"] for e in running.journal() if e["event"] == "job_started"] == [["DC01"]]
    rows = sorted(catalog.rows(engine), key=lambda r: r["status"])
    assert [r["status"] for r in rows] == ["covered", "succeeded"]
    covered, catch_up = rows
    assert covered["backup_version"] == catch_up["backup_version"] and catch_up["run_id"] in covered["error"]
    assert covered["job_started_at"] is None  # it started no job and adopted none
    assert running.state()["hosts"][0]["max_concurrent_jobs"] == 1
    assert running.state()["hosts"][0]["open_shells"] == 0


def test_a_catch_up_that_ends_while_another_run_looks_is_seen_as_covering_it(monkeypatch, tmp_path):
    """The other run's catch-up succeeds between the two reads of `_catch_up_elsewhere` (the row leaves `running`
    for `succeeded` then): this run must see either, never neither (it started a second job then, once in CI)."""
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    clock = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
    first, second = _steps(engine, clock, 1), _steps(engine, clock, 2)
    first.record(status="running", job_started_at=clock - timedelta(minutes=5))
    reads = []

    def then_the_first_succeeds(read):
        def wrapped(*args, **kwargs):
            found = read(*args, **kwargs)
            if not reads:  # the first of the two reads is done: the first run's verify lands now
                first.record(status="succeeded", backup_version="11/27/2026-03:57")
            reads.append(read.__name__)
            return found
        return wrapped

    monkeypatch.setattr(catalog, "covering_backup", then_the_first_succeeds(catalog.covering_backup))
    monkeypatch.setattr(catalog, "backups_under_way", then_the_first_succeeds(catalog.backups_under_way))
    with pytest.raises(NotThisTime, match="covered by the backup"):
        second._catch_up_elsewhere()
    assert reads == ["backups_under_way", "covering_backup"]
    assert catalog.row(engine, second.run.key())["status"] == "covered"


def test_a_dead_runs_running_row_keeps_nobody_waiting(start_fleet, monkeypatch, tmp_path):
    """A worker killed mid-backup leaves its row `running`; once Airflow says that run is over,
    the next backfilled interval takes the catch-up itself instead of waiting for it."""
    running, engine, clock = _fleet(start_fleet, monkeypatch, tmp_path, disk_gb=2)
    dead = _steps(engine, clock, 1)
    dead.record(status="running", job_started_at=clock)  # its job was never finished or verified

    waiting = _steps(engine, clock, 2)  # believes every run alive: gives way to the dead run's catch-up
    probe = waiting.probe()
    assert waiting.snapshot(probe, catch_up=True) == Wait(None)  # another run's task must act first: look again later
    assert not [e for e in running.journal() if e["event"] == "job_started"]

    alive = _steps(engine, clock, 2, run_alive=lambda dag_id, run_id: run_id != "backfill__night1")
    snap = until_done(alive, probe["vm_id"], lambda event: alive.snapshot(probe, catch_up=True))
    assert snap["job_started_at"]
    assert [e["vms"] for e in running.journal() if e["event"] == "job_started"] == [["DC01"]]


@pytest.mark.parametrize("tried_again", [True, False], ids=["retry-pending", "retries-used-up"])
def test_a_catch_up_whose_step_failed_keeps_the_other_run_waiting_while_it_is_tried_again(start_fleet, monkeypatch, tmp_path, tried_again):
    """A run's catch-up job runs; its step fails a try (the host stopped answering) and Airflow will try it again. The
    backup is still under way: its row stays `running` with the error, and the other backfilled interval waits for its
    result rather than start a second catch-up once the host is free. Once the retries are used up the row is `failed`
    and the other run goes ahead (its wait is then for the host, which the failed run's job still holds)."""
    running, engine, clock = _fleet(start_fleet, monkeypatch, tmp_path, disk_gb=200)
    first = _steps(engine, clock, 1)
    first.tried_again = lambda: tried_again
    probe = first.probe()
    assert until_done(first, probe["vm_id"], lambda event: first.snapshot(probe, catch_up=True))["job_started_at"]
    with pytest.raises(TransientHostError), outcome(first):
        raise TransientHostError("HV01", "did not answer 6 times over 2 minutes", "check that WinRM runs and port 5986 is open")
    row = catalog.row(engine, first.run.key())
    assert row["status"] == ("running" if tried_again else "failed") and "did not answer" in row["error"]

    second = _steps(engine, clock, 2)
    wait = second.snapshot(second.probe(), catch_up=True)
    assert (wait.until is None) is tried_again  # None: waits on the other run, not on the host
    assert [e["vms"] for e in running.journal() if e["event"] == "job_started"] == [["DC01"]]


_ALIVE_DAG = """
from datetime import datetime, timedelta
from airflow.sdk import DAG, get_current_context, task, task_group

with DAG("alive", start_date=datetime(2026, 1, 1), schedule=None):
    @task
    def select_vms():
        return ["a", "b", "c"]

    @task
    def double(n):
        return {"twice": n * 2}  # a step's result is a dict (pulled decodes one a trigger pushed)

    @task
    def ask():
        from hyperv_backup.operators import _run_alive
        context = get_current_context()
        alive = _run_alive(context["ti"])
        print("ANSWERS", alive("alive", context["dag_run"].run_id), alive("alive", "backfill__deleted"))

    @task
    def step(n):
        from hyperv_backup.operators import _turn, pulled, run_order
        from hyperv_backup.steps import turn_of
        ti = get_current_context()["ti"]
        states = ti.get_task_states(ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id])[ti.run_id]
        print("TURN", ti.map_index, _turn(ti, [])(), turn_of(states, ti.task_id, 99))
        print("PULLED", ti.map_index, run_order(ti)[ti.map_index], pulled(ti, "vm.double"))

    @task_group
    def vm(n):
        double(n) >> step(n)

    @task(retries=1, retry_delay=timedelta(0))
    def flaky():
        from hyperv_backup.operators import _tried_again
        ti = get_current_context()["ti"]
        print("AGAIN", ti.try_number, _tried_again(ti)())
        if ti.try_number == 1:
            raise RuntimeError("the first try fails")

    ask() >> vm.expand(n=select_vms())
    flaky()
"""

def test_what_the_steps_ask_of_airflow_comes_from_the_task_sdk(tmp_path):
    """The waiting above trusts `run_alive`; in a task it asks Airflow (get_dagrun_state): this run is
    running, a run that does not exist (deleted) is not, and neither answer is an error. The host's
    turns trust `ahead` (get_task_states of the mapped step). A failed try's row trusts `tried_again`:
    true on a try that has a retry left, false on the last."""
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "alive.py").write_text(_ALIVE_DAG)
    done = dag_test(tmp_path / "dags", "alive", dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home")))
    assert "ANSWERS True False" in done.stdout and "STATE success" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "AGAIN 1 True" in done.stdout and "AGAIN 2 False" in done.stdout  # a failed try's row: BackupSteps.failed_try
    # the first in the order has its turn at once; to a VM after all three, each sees one running (itself,
    # in a worker): it would give way, never wait deferred on it
    turns = sorted(line.split("TURN ", 1)[1] for line in done.stdout.splitlines() if "TURN " in line)
    assert len(turns) == 3 and turns[0] == "0 now yield" and all(t.endswith(" yield") for t in turns), turns
    # a step's VM is its place in select_vms's list; the results of its group's earlier tasks are its own VM's
    assert {f"PULLED {i} {n} [{{'twice': '{n * 2}'}}]" for i, n in enumerate("abc")} <= set(done.stdout.splitlines()), done.stdout[-2000:]


def test_a_catch_up_waiting_for_the_host_never_lets_its_trigger_start_the_job(start_fleet, monkeypatch, tmp_path):
    """A backfilled interval that finds the host busy waits for the host, but its trigger must not take the free
    host itself (as a scheduled run's does): the step looks again, since another run's catch-up of the VM,
    started meanwhile, may cover this interval."""
    running = start_fleet({"seed": 5, "speed": 60, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "DC01", "disk_gb": 2}, {"name": "OTHER", "disk_gb": 200}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    clock = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
    waiting = _steps(engine, clock, 2)
    probe = waiting.probe()
    hook = HyperVHook("hv")
    other = next(vm for vm in hook.run_script("Get-HvbHostVMs")["vms"] if vm["name"] == "OTHER")
    assert hook.run_script("Start-HvbVMBackup", VMId=other["id"], BackupTarget="E:")["started"]  # the host is busy
    wait = waiting.snapshot(probe, catch_up=True)
    assert isinstance(wait, Wait) and wait.until is not None and not wait.trigger_starts
    scheduled = waiting.snapshot(probe)
    assert isinstance(scheduled, Wait) and scheduled.trigger_starts
