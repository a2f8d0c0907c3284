"""Each fault kind of the scenario, met through the real client at the step it names."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException
from hyperv_backup import catalog
from hyperv_backup.errors import HostBusyError, PermanentHostError, TransientHostError, told_once
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.operators import outcome
from hyperv_backup.record import BackupStatus, parse_time
from hyperv_backup.steps import BackupSteps, RunKey

from simulator.host import MERGE_SECONDS
from tests.conftest import first_trigger_event, use_connection, winrm_connection


def _fleet(start_fleet, monkeypatch, faults, vm_faults=(), os_version="2022", speed=1200, transport="ssl", **vm):
    running = start_fleet({"seed": 5, "speed": speed, "hosts": [{
        "name": "HV01", "os": os_version, "transport": transport, "faults": list(faults),
        "vms": [{"name": "VM1", "disk_gb": 2, "faults": list(vm_faults)} | vm]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    return running, HyperVHook("hv")


def _probe(hook):
    return hook.run_script("Get-HvbVMBackupProbe", VMName="VM1", BackupTarget="E:")


def _start(hook):
    vm_id = _probe(hook)["vms"][0]["id"]
    return vm_id, hook.run_script("Start-HvbVMBackup", VMId=vm_id, BackupTarget="E:")


def _wait(hook, vm_id, until=lambda s: s["job"]["job_state"] != "Running", timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)
            if until(status):
                return status
        except TransientHostError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _fault_events(running):
    """The faults that struck, (kind, step), from the journal; every line of which says when, in ISO 8601 (a fault's
    step once took the key `at`, and its line said "verify" where the time belongs)."""
    journal = running.journal()
    assert all(datetime.fromisoformat(line["at"]) for line in journal)
    return [(line["kind"], line["step"]) for line in journal if line["event"] == "fault"]


def test_connection_drop_is_transient_and_the_next_call_works(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "connection_drop", "at": "probe"}])
    with pytest.raises(TransientHostError, match="connection lost"):
        _probe(hook)
    assert _probe(hook)["vms"][0]["name"] == "VM1"
    assert _fault_events(running) == [("connection_drop", "probe")]


def test_slow_reply_runs_the_clients_receive_retry(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "slow", "at": "probe"}])
    began = time.monotonic()
    assert _probe(hook)["vms"][0]["name"] == "VM1"
    assert time.monotonic() - began >= 2.0  # past the client's 2 s operation timeout: at least one TimedOut fault
    assert _fault_events(running) == [("slow", "probe")]


def test_soap_fault_is_transient(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "soap_fault", "at": "probe", "times": 2}])
    for _ in range(2):
        with pytest.raises(TransientHostError, match="no longer knew our remote shell"):
            _probe(hook)
    assert _probe(hook)["vms"]


def test_auth_fail_is_permanent(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "auth_fail", "at": "probe"}])
    with pytest.raises(PermanentHostError, match="refused the credentials"):
        _probe(hook)


def test_vss_transient_fails_the_job_with_0x800423F3(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "vss_transient", "at": "snapshot"}])
    vm_id, started = _start(hook)
    status = _wait(hook, vm_id)
    assert (status["job"]["job_state"], status["job"]["hresult"]) == ("Failed", 0x800423F3)
    assert not status["vm"]["checkpoints"]


def test_target_full_fails_the_copy_with_0x80070070_and_backup_event_50(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "target_full", "at": "copy"}])
    vm_id, started = _start(hook)
    status = _wait(hook, vm_id)
    assert (status["job"]["job_state"], status["job"]["hresult"]) == ("Failed", 0x80070070)
    result = hook.run_script("Get-HvbVMBackupResult", VMId=vm_id, VMName="VM1", SinceUtc=started["job"]["start_time_utc"])
    assert {50, 5} <= {e["id"] for e in result["events"]}
    assert result["versions"] == []


def test_a_target_without_room_fails_the_same_way(start_fleet, monkeypatch):
    running = start_fleet({"speed": 1200, "hosts": [{"name": "HV01", "target_free_gb": 1, "vms": [{"name": "VM1", "disk_gb": 2}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    hook = HyperVHook("hv")
    vm_id, _ = _start(hook)
    assert _wait(hook, vm_id)["job"]["hresult"] == 0x80070070


def test_job_running_makes_the_host_busy_until_the_other_job_ends(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "job_running", "at": "snapshot"}])
    vm_id, started = _start(hook)
    assert started["started"] is False and started["job"]["job_state"] == "Running"
    running.advance(200)  # the console job takes 120 simulated seconds
    assert hook.run_script("Start-HvbVMBackup", VMId=vm_id, BackupTarget="E:")["started"] is True
    assert running.state()["hosts"][0]["max_concurrent_jobs"] == 1


def test_a_second_job_while_one_runs_is_refused_and_counted(start_fleet, monkeypatch):
    running = start_fleet({"speed": 60, "hosts": [{"name": "HV01", "vms": [{"name": "VM1", "disk_gb": 50}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    hook = HyperVHook("hv")
    vm_id, started = _start(hook)
    assert started["started"]
    # What the script prevents, the host itself refuses: Start-WBBackup while a job runs.
    from simulator.exceptions import JobAlreadyRunning  # noqa: F401 - documents which refusal this is
    again = hook.run_script("Start-HvbVMBackup", VMId=vm_id, BackupTarget="E:")
    assert again["started"] is False
    assert running.state()["hosts"][0]["max_concurrent_jobs"] == 1


def test_merge_stuck_leaves_the_recovery_checkpoint(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "merge_stuck", "at": "merge"}], guest_vss="missing")
    vm_id, _ = _start(hook)
    status = _wait(hook, vm_id)
    assert [c["type"] for c in status["vm"]["checkpoints"]] == ["Recovery"]
    assert status["vm"]["disks"][0]["path"].endswith(".avhdx")


@pytest.mark.parametrize("speed", [60, 1200])
def test_host_reboot_in_the_merge_makes_the_job_vanish_and_the_merge_resume_after_the_boot(start_fleet, monkeypatch, speed):
    """The restart is the host's own moment, halfway through the merge, also where the merge's 15 host seconds are a
    hundredth of a real second (1200x) and no poll lands in it: the next request meets the restarted host."""
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "host_reboot", "at": "merge"}], guest_vss="missing", speed=speed)
    vm_id, _ = _start(hook)
    with pytest.raises(TransientHostError, match="connection lost"):
        for _ in range(200):  # poll through the snapshot into the merge, where the host restarts
            hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)
            time.sleep(0.02 * 60 / speed)
    status = _wait(hook, vm_id)  # the host answers again after its pause
    assert status["job"]["job_state"] == "Failed" and status["boot_time_utc"] > status["job"]["start_time_utc"]
    assert status["vm"]["checkpoints"] == []  # WSB had removed the Recovery checkpoint; its .avhdx was merging
    status = _wait(hook, vm_id, until=lambda s: not s["vm"]["disks"][0]["path"].endswith(".avhdx"))
    journal = running.journal()
    events = [line["event"] for line in journal]
    assert "job_vanished" in events and events.index("merge_finished") > events.index("host_reboot")
    at = {line["event"]: datetime.fromisoformat(line["at"].replace("Z", "+00:00")) for line in journal}
    assert at["host_reboot"] - at["checkpoint_removed"] == timedelta(seconds=MERGE_SECONDS / 2)  # the merge began there


def test_a_job_that_never_ends_is_given_up_at_its_limit_in_host_time_and_left_running(start_fleet, monkeypatch):
    """Airflow bounds a deferral only by defer()'s timeout: the trigger holds the job to its own limit, on the
    host's clock from the job's start, and says what happened, instead of polling a hung job forever."""
    from hyperv_backup.record import Until
    from hyperv_backup.triggers import BackupJobTrigger

    running, hook = _fleet(start_fleet, monkeypatch, [], disk_gb=2000, speed=60)  # hours of copying
    vm_id, started = _start(hook)
    trigger = BackupJobTrigger("hv", vm_id, "VM1", Until.JOB_ENDED, poll_interval=0.05, job_start=started["job"]["start_time_utc"],
                               job_timeout_seconds=600)  # ten host minutes: ten real seconds at 60x
    began = time.monotonic()
    event = first_trigger_event(trigger)
    assert event["status"] == "error" and "longer than the 10 minutes allowed" in event["message"], event
    assert "wbadmin stop job" in event["message"] and 9 < time.monotonic() - began < 30
    assert hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)["job"]["job_state"] == "Running"  # never stopped for us
    assert running.state()["hosts"][0]["open_shells"] == 0


def test_vm_removed_after_the_probe_is_permanent(start_fleet, monkeypatch):
    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "vm_removed", "at": "probe"}])
    vm_id = _probe(hook)["vms"][0]["id"]
    with pytest.raises(PermanentHostError, match="unable to find a virtual machine"):
        hook.run_script("Start-HvbVMBackup", VMId=vm_id, BackupTarget="E:")


def test_a_host_error_met_in_a_trigger_is_recorded_in_a_workers_words(start_fleet, monkeypatch, tmp_path):
    """The VM is gone when the copy step's trigger asks for it: the step fails with the host's words, the host named
    once (the trigger's message had it already, and the step named it again: 'HV01: HV01 (...)')."""
    from hyperv_backup.operators import raise_for_event
    from hyperv_backup.record import Until
    from hyperv_backup.triggers import BackupJobTrigger

    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "vm_removed", "at": "probe"}])
    vm_id = _probe(hook)["vms"][0]["id"]
    event = first_trigger_event(BackupJobTrigger("hv", vm_id, "VM1", Until.JOB_ENDED, poll_interval=0.05,
                                                 job_start=hook.run_script("Get-HvbHostVMs")["clock_utc"]))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    steps = BackupSteps(hook, engine, RunKey("hyperv_backup_hv01", "manual__1", None, None, "HV01", "VM1"), "E:")
    with pytest.raises(AirflowFailException) as failed, outcome(steps):
        raise_for_event(steps, event)
    error = catalog.row(engine, steps.run.key())["error"]
    assert error == str(failed.value) == "HV01 (Get-HvbVMBackupStatus): " + event["message"].rstrip(".") + "; " + event["advice"], (error, event)
    assert "unable to find a virtual machine" in error and error.count("HV01") == 1
    assert running.state()["hosts"][0]["open_shells"] == 0


@pytest.mark.parametrize("at", ["snapshot", "copy", "verify"])
def test_a_fault_strikes_at_its_step_also_where_steps_share_a_command(start_fleet, monkeypatch, tmp_path, at):
    """Get-HvbVMBackupStatus serves every step that waits. A fault `at: verify` strikes the verify step's read of
    the record after the job (it had struck the snapshot step's look at the host before the job started, since
    no job of the VM ran then); `at: snapshot` the looks before the job and during its shadow copy."""
    from tests.conftest import backup_like_the_dag

    running, hook = _fleet(start_fleet, monkeypatch, [], [{"kind": "connection_drop", "at": at}], speed=600)
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    steps = BackupSteps(hook, engine, RunKey("hyperv_backup_hv01", "manual__1", None, None, "HV01", "VM1"), "E:", poll_seconds=0.05)
    assert backup_like_the_dag(steps)["mode"] == "online"
    journal = running.journal()
    events = [line["event"] for line in journal]
    struck = events.index("fault")
    assert _fault_events(running) == [("connection_drop", at)]
    if at == "snapshot":
        assert struck < events.index("job_finished")
    else:
        assert struck > events.index("job_started")
    if at == "verify":
        assert struck > events.index("job_finished")
        assert [line.get("script") for line in journal[struck:] if line["event"] == "command"][-2:] == \
            ["Get-HvbVMBackupResult", "wbadmin get versions"]  # ... then the verify step's own reads
    assert running.state()["hosts"][0]["open_shells"] == 0


def test_busy_is_its_own_error_class():
    assert issubclass(HostBusyError, Exception) and not issubclass(HostBusyError, PermanentHostError)


def test_a_turns_trigger_follows_the_job_it_started_through_its_shadow_copy(start_fleet, monkeypatch, tmp_path):
    """The trigger that takes a VM's turn starts its job, writes the start to the catalog, and once the host says the
    shadow copy is over, ends the snapshot step itself with the step's result: no worker takes the step up again. It
    starts the job at once, but answers no sooner than `settle_seconds` after it began (Airflow's deferral race): the
    shadow copy takes 20-30 host seconds, half a real second at 60x."""
    import json

    from airflow.triggers.base import TaskSuccessEvent
    from hyperv_backup.record import SHADOW_COPY_TEXTS, BackupStatus, Until, parse_time
    from hyperv_backup.triggers import BackupJobTrigger

    running, hook = _fleet(start_fleet, monkeypatch, [], disk_gb=200, speed=60)  # copying outlasts the settle
    vm_id = _probe(hook)["vms"][0]["id"]
    path = tmp_path / "catalog.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_HYPERV_BACKUP_CATALOG", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    since = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)["clock_utc"]
    key = {"dag_id": "hyperv_backup_hv01", "run_id": "scheduled__1", "host": "HV01", "vm_name": "VM1"}
    trigger = BackupJobTrigger("hv", vm_id, "VM1", Until.TURN, poll_interval=0.05, since=since, start={"target": "E:", **key},
                               settle_seconds=3)
    began = time.monotonic()
    event = first_trigger_event(trigger, whole=True)
    assert time.monotonic() - began >= 3
    status = BackupStatus.from_json(hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id))
    (job,) = status.jobs
    assert isinstance(event, TaskSuccessEvent), event
    result = event.xcoms["return_value"]  # what the step returns (steps.BackupSteps.snapshot), for verify to read
    assert result["job_started_at"] == job.start.isoformat()
    assert (job.start - parse_time(since)).total_seconds() < 90  # the host was not kept waiting: 1.5 real s at 60x
    assert job.running and job.operation not in SHADOW_COPY_TEXTS, job  # answered past the shadow copy, before the end
    assert job.start < parse_time(result["snapshot_seen_at"]) <= status.clock
    (row,) = catalog.rows(catalog.engine_for(f"sqlite:///{path}"), **key)
    assert row["status"] == "running" and row["job_started_at"].replace(tzinfo=job.start.tzinfo) == job.start  # SQLite: naive UTC
    assert row["attempts"] == 1
    assert running.state()["hosts"][0]["open_shells"] == 0


@pytest.mark.parametrize("fault", [None, "vss_transient"])
def test_a_wait_for_the_jobs_end_ends_the_copy_step_itself_once_the_job_succeeded(start_fleet, monkeypatch, tmp_path, fault):
    """The copy step's wait records the job's success as the step does (its times, bytes, the jobs it took) and ends the
    step with the job's record, for verify to read: no worker takes the step up again. A job that failed goes back to
    the step, which decides (a new job, here), and the trigger records nothing."""
    import json

    from airflow.triggers.base import TaskSuccessEvent
    from hyperv_backup.record import Until
    from hyperv_backup.triggers import BackupJobTrigger

    faults = [{"kind": fault, "at": "copy"}] if fault else []
    running, hook = _fleet(start_fleet, monkeypatch, faults, disk_gb=20, speed=60)
    vm_id, started = _start(hook)
    path = tmp_path / "catalog.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_HYPERV_BACKUP_CATALOG", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    key = {"dag_id": "hyperv_backup_hv01", "run_id": "scheduled__1", "host": "HV01", "vm_name": "VM1"}
    engine = catalog.engine_for(f"sqlite:///{path}")
    catalog.upsert(engine, key, {"status": "running", "job_started_at": parse_time(started["job"]["start_time_utc"])}, datetime.now(UTC))
    trigger = BackupJobTrigger("hv", vm_id, "VM1", Until.JOB_ENDED, poll_interval=0.05, job_start=started["job"]["start_time_utc"],
                               finish={**key, "attempts": 2, "host_restarted": True})
    event = first_trigger_event(trigger, whole=True)
    (job,) = BackupStatus.from_json(hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)).jobs
    (row,) = catalog.rows(engine, **key)
    if fault:
        assert not isinstance(event, TaskSuccessEvent) and event.payload["status"] == "changed", event
        assert not job.succeeded and row["job_finished_at"] is None and row["attempts"] is None
    else:
        assert isinstance(event, TaskSuccessEvent), event
        result = event.xcoms["return_value"]
        seen = parse_time(result.pop("snapshot_seen_at"))  # the wait saw the job past its shadow copy, within it
        assert result == job.to_json() and job.start < seen < job.end  # else what the step returns (BackupSteps.advance)
        assert job.succeeded and row["status"] == "running"  # verify, which checks the version landed, says succeeded
        assert (row["job_finished_at"].replace(tzinfo=UTC), row["bytes_copied"], row["attempts"], row["host_restarted"]) == (
            job.end, job.bytes_transferred, 2, True)
    assert running.state()["hosts"][0]["open_shells"] == 0


def test_a_turns_trigger_reads_whose_turn_it_is_in_the_catalog_and_never_asks_airflow(start_fleet, monkeypatch, tmp_path):
    """Earlier VMs' turns are read in the catalog. A trigger's question to Airflow would go through the triggerer's
    one channel (its first one builds Airflow's execution API in the triggerer, holding every trigger's start for
    seconds): there is none here, as in a trigger, and the trigger must not need it. While an earlier VM that has not
    come yet keeps the host free for `task_states_seconds`, the wait ends and starts nothing: the step, in a
    worker, asks Airflow whether that VM's task lives. Once every earlier VM has had its turn, the trigger takes it."""
    import json

    from hyperv_backup.record import Until
    from hyperv_backup.triggers import BackupJobTrigger

    running, hook = _fleet(start_fleet, monkeypatch, [], disk_gb=20, speed=60)
    vm_id = _probe(hook)["vms"][0]["id"]
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    monkeypatch.setenv("AIRFLOW_CONN_HYPERV_BACKUP_CATALOG", json.dumps({"conn_type": "sqlite", "host": engine.url.database}))
    monkeypatch.setenv("AIRFLOW__HYPERV_BACKUP__TASK_STATES_SECONDS", "1")
    run = {"dag_id": "hyperv_backup_hv01", "run_id": "scheduled__1", "host": "HV01"}
    clock = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)["clock_utc"]
    catalog.upsert(engine, run | {"vm_name": "VM0"}, {"status": "running", "job_started_at": parse_time(clock)}, datetime.now(UTC))

    def turn_trigger():
        place = {"dag_id": run["dag_id"], "run_id": run["run_id"], "task_id": "backup_vm.snapshot", "map_index": 2,
                 "earlier": ["VM0", "VMX"]}
        return BackupJobTrigger("hv", vm_id, "VM1", Until.TURN, poll_interval=0.05, since=clock, turn=place,
                                start={"target": "E:", **run, "vm_name": "VM1"})

    began = time.monotonic()
    event = first_trigger_event(turn_trigger())  # VMX has not come: the host stays free
    assert event["status"] == "changed" and event["until"] == Until.TURN and time.monotonic() - began >= 1, event
    assert not [line for line in running.journal() if line["event"] == "job_started"]  # the trigger started nothing
    catalog.upsert(engine, run | {"vm_name": "VMX"}, {"status": "failed", "error": "its probe failed"}, datetime.now(UTC))
    event = first_trigger_event(turn_trigger(), whole=True)  # every VM before it has had its turn: it takes the host
    assert event.xcoms["return_value"]["snapshot_seen_at"], event  # and ends the step past the shadow copy
    assert [line["vms"] for line in running.journal() if line["event"] == "job_started"] == [["VM1"]]
    assert catalog.row(engine, run | {"vm_name": "VM1"})["job_started_at"] is not None
    assert running.state()["hosts"][0]["open_shells"] == 0


def test_a_waiting_status_answers_when_the_host_changes_and_not_before(start_fleet, monkeypatch):
    """Get-HvbVMBackupStatus -WaitSeconds -Seen waits on the host (over WinRM's long-polled Receive): it answers as
    soon as what the caller saw changes, and otherwise after WaitSeconds of host time."""
    running, hook = _fleet(start_fleet, monkeypatch, [], disk_gb=20, speed=60)
    vm_id, _ = _start(hook)
    seen = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)
    began = time.monotonic()
    changed = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id, WaitSeconds=3600, Seen=seen["change_key"])
    assert changed["change_key"] != seen["change_key"] and time.monotonic() - began < 30  # the job's next phase, not an hour
    done = _wait(hook, vm_id)
    began = time.monotonic()
    same = hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id, WaitSeconds=120, Seen=done["change_key"])  # 2 s real at 60x
    assert same["change_key"] == done["change_key"] and 1.5 < time.monotonic() - began < 15
    assert [e for e in running.journal() if e["event"] == "command"][-1]["script"] == "Get-HvbVMBackupStatus"


@pytest.mark.parametrize("transport", ["ssl", "ntlm"])
def test_a_host_that_refuses_the_credentials_fails_the_vm_as_the_hosts_fault_until_it_answers(start_fleet, monkeypatch, tmp_path,
                                                                                              transport):
    """Through the steps as the DAG's tasks run them: the row says whose fault the failure was, and a later try that
    reaches the host clears it. A VM's own failure (its target missing) is never the host's. Over NTLM the refusal
    comes as Windows gives it: a 401 to a sealed request, and the logon the client then tries refused too (a
    host that took the new logon and could not read the message sealed with the old one said HTTP 400, and the
    step blamed the message encryption setting)."""
    running, hook = _fleet(start_fleet, monkeypatch, [{"kind": "auth_fail", "at": "probe"}], transport=transport)
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    run = RunKey("hyperv_backup_hv01", "manual__1", None, None, "HV01", "VM1")
    with pytest.raises(AirflowFailException, match="refused the credentials"), outcome(steps := BackupSteps(hook, engine, run, "E:")):
        steps.probe()
    first = catalog.row(engine, run.key())
    assert (first["status"], first["host_fault"]) == ("failed", True)
    assert told_once([first, first | {"vm_name": "VM2"}]) == [f"HV01: {first['error']} (the host's fault: 2 VM(s) not backed up: VM1, VM2)"]
    with outcome(steps := BackupSteps(hook, engine, run, "E:")):
        steps.probe()
    assert (catalog.row(engine, run.key())["status"], catalog.row(engine, run.key())["host_fault"]) == ("running", False)
    with pytest.raises(AirflowFailException, match="does not exist"), outcome(steps := BackupSteps(hook, engine, run, "Q:")):
        steps.probe()  # a target the host does not have: the VM's own failure
    last = catalog.row(engine, run.key())
    assert (last["status"], last["host_fault"]) == ("failed", False) and told_once([last]) == [f"VM1: {last['error']}"]


def test_a_restarted_winrm_service_holds_none_of_the_shells_of_before():
    """Windows' WinRM service starts empty after a boot: a shell of before is not found, not counted, and not
    kept in memory until someone asks for it."""
    from datetime import UTC, datetime, timedelta

    from simulator.wsman import Shells

    shells, first = Shells(), datetime(2026, 11, 26, tzinfo=UTC)
    old = [shells.open(first) for _ in range(3)]
    assert shells.count(first) == 3 and shells.find(old[0].id, first) is old[0]
    rebooted = first + timedelta(hours=1)
    new = shells.open(rebooted)
    assert shells.count(rebooted) == 1 and len(shells._by_id) == 1
    assert shells.find(old[1].id, rebooted) is None and shells.find(new.id, rebooted) is new


def test_a_step_airflow_starts_in_the_triggerer_finds_its_vm_by_its_place_and_ends_itself(start_fleet, monkeypatch, tmp_path):
    """verify_merge and copy are started by the scheduler in the triggerer, with the kwargs their operators declare
    (the same for every VM) and a task instance that says only its place. The trigger finds the VM at that place in
    the run's order (kept by select_vms), follows the job its row names, and ends the step itself: the merge's once
    the Recovery checkpoint is merged, the copy's once the job succeeded, recorded as the copy step records it. A place
    the catalog cannot name (no job under way, or a run whose order is no longer kept) goes to the step's worker."""
    import json
    from types import SimpleNamespace

    from airflow.triggers.base import TaskSuccessEvent
    from hyperv_backup.operators import VerifyMergeOperator, WaitForBackupJobOperator
    from hyperv_backup.triggers import BackupJobTrigger

    running, hook = _fleet(start_fleet, monkeypatch, [], disk_gb=20, speed=60)
    vm_id, started = _start(hook)
    path = tmp_path / "catalog.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_HYPERV_BACKUP_CATALOG", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    engine = catalog.engine_for(f"sqlite:///{path}")
    dag_id, run_id = "hyperv_backup_hv01", "scheduled__1"
    catalog.record_order(engine, dag_id, run_id, "HV01", ["OFF1", "VM1"], datetime.now(UTC))
    catalog.upsert(engine, {"dag_id": dag_id, "run_id": run_id, "host": "HV01", "vm_name": "OFF1"}, {"status": "skipped"}, datetime.now(UTC))
    key = {"dag_id": dag_id, "run_id": run_id, "host": "HV01", "vm_name": "VM1"}
    catalog.upsert(engine, key, {"status": "running", "vm_id": vm_id, "attempts": 1,
                                 "job_started_at": parse_time(started["job"]["start_time_utc"])}, datetime.now(UTC))
    common = {"host": "HV01", "winrm_conn_id": "hv", "backup_target": "E:", "probe_task_id": "backup_vm.probe", "poll_interval": 0.05}
    operators = [VerifyMergeOperator(task_id="verify_merge", **common), WaitForBackupJobOperator(task_id="copy", **common)]

    def started_by_airflow(operator, place: int, run: str = run_id) -> BackupJobTrigger:
        trigger = BackupJobTrigger(**operator.start_trigger_args.trigger_kwargs)
        trigger.task_instance = SimpleNamespace(dag_id=dag_id, run_id=run, task_id=operator.task_id, map_index=place)
        return trigger

    for operator in operators:  # OFF1 took no job (skipped): its place is the worker's to decide
        assert first_trigger_event(started_by_airflow(operator, 0))["status"] == "changed"
    merge, copy = (first_trigger_event(started_by_airflow(operator, 1), whole=True) for operator in operators)
    status = BackupStatus.from_json(hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id))
    (job,) = status.jobs
    assert isinstance(merge, TaskSuccessEvent) and not merge.xcoms  # verify_merge pushes no result
    assert isinstance(copy, TaskSuccessEvent) and job.succeeded
    result = copy.xcoms["return_value"]
    result.pop("snapshot_seen_at", None)
    assert result == job.to_json()  # what the copy step returns (BackupSteps.advance), for verify to read
    (row,) = catalog.rows(engine, **key)
    assert (row["job_finished_at"].replace(tzinfo=UTC), row["bytes_copied"], row["attempts"]) == (job.end, job.bytes_transferred, 1)
    assert first_trigger_event(started_by_airflow(operators[1], 1, "scheduled__0"))["status"] == "changed"  # no order kept
    assert running.state()["hosts"][0]["open_shells"] == 0
