"""The host's record is the truth: the state machine and the catalog's times, decided from it.

First the pure decisions on constructed records, then every fault that a new job cures (a
transient VSS error, a host restart) at every step where it strikes, on a 2012 and a 2019 host,
once and persistent, through the real client against the simulator: the outcome, the number of
jobs, the catalog's times against the simulator's journal, the user's checkpoint, the shells.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hyperv_backup import catalog
from hyperv_backup.errors import HostError, PermanentHostError
from hyperv_backup.facts import HostEvent, HResult
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.inventory import parse_inventory
from hyperv_backup.record import Action, EventRecord, JobRecord, decide, logged_during, ours, parse_time, timings
from hyperv_backup.rules import missing_version
from hyperv_backup.steps import BackupSteps, RunKey

from tests.conftest import (
    backup_like_the_dag,
    dag_test,
    hv01_steps,
    through_the_copy,
    until_done,
    use_connection,
    winrm_connection,
)

T0 = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)
LONG_AGO = T0 - timedelta(days=40)


def _job(state="Completed", start=T0, minutes=10, hresult=0, error=""):
    end = None if state == "Running" else start + timedelta(minutes=minutes)
    return JobRecord(state, start, end, hresult, error, ("VM1",))


def _decide(jobs, boot=LONG_AGO, host_job=None, attempts=3):
    return decide(jobs, boot, host_job, attempts, "HV01", "VM1")


# -- the state machine --------------------------------------------------------------------


def test_no_job_of_ours_starts_one_unless_another_holds_the_host():
    assert _decide([]).action == Action.START
    assert _decide([], host_job=_job("Running")).action == Action.WAIT_HOST


def test_ours_running_is_followed_and_ours_succeeded_counts_even_if_nobody_saw_it_end():
    assert _decide([_job("Running")]).action == Action.FOLLOW
    assert _decide([_job()]).action == Action.SUCCEEDED


def test_a_transient_vss_error_gets_a_new_job_until_the_attempts_are_used_up():
    failed = _job("Failed", hresult=HResult.VSS_WRITER_TRANSIENT)
    assert _decide([failed]).action == Action.NEW_JOB
    assert _decide([failed], host_job=_job("Running", start=T0 + timedelta(minutes=11))).action == Action.WAIT_HOST
    last = _decide([failed] * 3)
    assert last.action == Action.FAILED
    assert "3 Windows Server Backup jobs" in last.reason and "vssadmin list writers" in last.reason and "0x800423F3" in last.reason


def test_a_full_target_is_final_at_once():
    outcome = _decide([_job("Failed", hresult=HResult.DISK_FULL)])
    assert outcome.action == Action.FAILED and "0x80070070" in outcome.reason


def test_a_job_cut_by_a_restart_gets_a_new_one_and_names_the_restart():
    cut = _job("Failed", hresult=HResult.BACKUP_FAILED, minutes=3)
    decision = _decide([cut], boot=T0 + timedelta(minutes=4))
    assert decision.action == Action.NEW_JOB and decision.restarted and "restarted" in decision.reason
    vanished = _job("Running")  # a host that lists the cut job as still running, or has no end for it
    assert _decide([vanished], boot=T0 + timedelta(minutes=4)).action == Action.NEW_JOB
    after = _decide([cut, _job(start=T0 + timedelta(minutes=10))], boot=T0 + timedelta(minutes=4))
    assert after.action == Action.SUCCEEDED and after.restarted


def test_a_job_that_failed_long_before_a_restart_was_not_cut_by_it():
    failed = _job("Failed", hresult=HResult.BACKUP_FAILED, minutes=3)
    decision = _decide([failed], boot=T0 + timedelta(hours=2))
    assert decision.action == Action.FAILED and not decision.restarted


def test_a_backup_owns_the_jobs_it_recorded_or_claimed_and_never_another_runs():
    first, second = _job("Failed", minutes=3), _job("Running", start=T0 + timedelta(minutes=5))
    someone_elses = _job("Running", start=T0 + timedelta(minutes=1))
    probed = T0 - timedelta(minutes=1)
    # its row records the second job and claimed from before the first: both are its own, oldest first
    assert ours([first, second], "VM1", probed, set(), second.start, T0) == [first, second]
    # a job another run's row records is that run's, whatever this row claims
    assert ours([first, second], "VM1", probed, {first.start}, second.start, T0) == [second]
    # started by another run that has not written it down yet: not this one's, which never asked (or was refused)
    assert ours([someone_elses], "VM1", probed, set(), None, None) == []
    # its own Start whose answer was lost: the claim finds the job
    assert ours([someone_elses], "VM1", probed, set(), None, T0) == [someone_elses]
    # before the probe, or of another VM: never
    assert ours([_job(start=probed - timedelta(seconds=1)), JobRecord("Completed", T0, T0, 0, "", ("VM2",))],
                "VM1", probed, set(), None, probed - timedelta(hours=1)) == []


# -- the catalog's times, from the host's events ------------------------------------------


def _event(kind, seconds):
    return EventRecord(kind[0], kind[1], T0 + timedelta(seconds=seconds), "'VM1'")


def test_checkpoint_times_come_from_hyperv_events_not_polls():
    events = [_event(HostEvent.CHECKPOINT_CREATED, 1), _event(HostEvent.MERGE_STARTED, 25), _event(HostEvent.MERGE_DONE, 40)]
    times = timings([_job()], events, LONG_AGO, was_running=True, sightings=(T0 + timedelta(minutes=7),))
    assert times.snapshot_at == T0 + timedelta(seconds=25) and times.merged_at == T0 + timedelta(seconds=40)
    assert times.saw_recovery_checkpoint and times.uptime_reset and not times.host_restarted and times.offline_seconds == 0


def test_saved_state_is_timed_from_the_workers_events():
    events = [_event(HostEvent.VM_SAVED, 1), _event(HostEvent.VM_RESTORED, 36)]
    times = timings([_job()], events, LONG_AGO, was_running=True)
    assert times.offline_seconds == 35 and times.snapshot_at == T0 + timedelta(seconds=36) and times.saw_saved_state


def test_a_restart_resets_uptime_but_is_no_checkpoint():
    cut = _job("Failed", hresult=HResult.BACKUP_FAILED, minutes=3)
    good = _job(start=T0 + timedelta(minutes=10))
    times = timings([cut, good], [], T0 + timedelta(minutes=4), was_running=True, sightings=(T0 + timedelta(hours=5),))
    assert times.host_restarted and times.uptime_reset and not times.saw_recovery_checkpoint
    assert times.job_started_at == good.start and times.snapshot_at == good.end  # a late poll is kept within the job


def test_a_sighting_of_an_earlier_job_past_its_shadow_copy_is_not_taken_for_the_last_ones():
    """The snapshot step saw the first job past its shadow copy; that job then failed (0x800423F3) and the copy step
    started another, whose shadow copy no event marks: its time is the copy step's wait's sighting, or unknown
    without one, never the first job's."""
    failed = _job("Failed", hresult=HResult.VSS_WRITER_TRANSIENT, minutes=2)
    good = _job(start=T0 + timedelta(minutes=10))
    times = timings([failed, good], [], LONG_AGO, was_running=True, sightings=(T0 + timedelta(seconds=30),))
    assert times.snapshot_at is None and times.merged_at is None and times.job_started_at == good.start
    copy_wait_saw = good.start + timedelta(seconds=40)  # the copy step's wait saw the new job past it (triggers._sight)
    times = timings([failed, good], [], LONG_AGO, was_running=True, sightings=(T0 + timedelta(seconds=30), copy_wait_saw))
    assert times.snapshot_at == times.merged_at == copy_wait_saw


def test_an_online_backup_without_events_resets_nothing():
    times = timings([_job()], [], LONG_AGO, was_running=True, sightings=(T0 + timedelta(seconds=30),))
    assert not times.uptime_reset and times.merged_at == times.snapshot_at == T0 + timedelta(seconds=30)


# -- against the simulator: the faults a new job cures --------------------------------------

USER_CHECKPOINT = {"name": "before-patch", "type": "Standard"}


def _fleet(start_fleet, monkeypatch, os_version, faults, guest_vss="ok", speed=60):
    vm = {"name": "VM1", "disk_gb": 10, "guest_vss": guest_vss, "checkpoints": [USER_CHECKPOINT], "faults": faults}
    neighbour = {"name": "VM2", "disk_gb": 5}
    gen = {} if os_version >= "2012 R2" else {"generation": 1, "volumes": [{"fs": "NTFS"}]}
    running = start_fleet({"seed": 3, "speed": speed, "hosts": [{"name": "HV01", "os": os_version, "transport": "ssl",
                                                                 "vms": [vm | gen, neighbour | gen]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    return running


def _backup(engine, vm_name):
    try:
        return backup_like_the_dag(hv01_steps(engine, vm_name))
    except HostError as error:
        return error


def test_a_recovery_checkpoint_never_merged_fails_the_backup_also_once_its_job_succeeded(start_fleet, monkeypatch, tmp_path):
    """Hyper-V never merges the Recovery checkpoint: the VM runs on its .avhdx, whatever the job's result. The job does
    not wait for the merge, and a fast one has succeeded before the verify merge step first looks (seen under the real
    scheduler at 60x: the row said `succeeded` and the checkpoint stayed). The step still waits for the merge up to its
    limit in host time, then fails with what to do."""
    running = _fleet(start_fleet, monkeypatch, "2019", [{"kind": "merge_stuck", "at": "merge"}], "missing")
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    run = RunKey("hyperv_backup_hv01", "manual__1", None, None, "HV01", "VM1")
    steps, hook = BackupSteps(HyperVHook("hv"), engine, run, "E:", poll_seconds=0.05), HyperVHook("hv")
    probe = steps.probe()
    until_done(steps, probe["vm_id"], lambda event: steps.snapshot(probe))
    while (status := hook.run_script("Get-HvbVMBackupStatus", VMId=probe["vm_id"]))["job"]["job_state"] == "Running":
        time.sleep(0.05)
    assert status["job"]["job_state"] == "Completed" and [c["type"] for c in status["vm"]["checkpoints"]] == ["Standard", "Recovery"]
    with pytest.raises(PermanentHostError, match="was not merged within 2 minutes of host time"):
        until_done(steps, probe["vm_id"], lambda event: steps.verify_merge(probe, timedelta(minutes=2),
                                                                           parse_time((event or {}).get("merge_deadline"))))
    after = hook.run_script("Get-HvbVMBackupStatus", VMId=probe["vm_id"])
    assert parse_time(after["clock_utc"]) - parse_time(status["clock_utc"]) >= timedelta(minutes=2) * 0.9  # it waited, host time
    row = catalog.row(engine, run.key())
    assert row["status"] == "failed" and "Remove-VMSnapshot" in row["error"] and ".avhdx" in row["error"]
    assert "The backup job itself succeeded" in row["error"]  # ... and the row keeps the job's record
    assert catalog._utc(row["job_finished_at"]) == parse_time(status["job"]["end_time_utc"]) and row["bytes_copied"] > 0
    assert running.state()["hosts"][0]["open_shells"] == 0


CURED = [  # (os, the VM's guest VSS, fault kind, at)
    ("2019", "ok", "vss_transient", "snapshot"),
    ("2019", "ok", "vss_transient", "copy"),
    ("2019", "missing", "host_reboot", "merge"),
    ("2019", "ok", "host_reboot", "copy"),
    ("2012", "ok", "vss_transient", "copy"),
    ("2012", "missing", "host_reboot", "snapshot"),
    ("2012", "ok", "host_reboot", "copy"),
]


def _scheduled_steps(engine) -> BackupSteps:
    """VM1's steps in a scheduled run: the only kind of run whose window can close."""
    return hv01_steps(engine, run_id="scheduled__1")


def _closed_at_the_job_start(engine) -> tuple:
    """A copy window of 22:00-06:00 whose last moment was the job's start: no new job may start after it."""
    return (lambda: catalog.rows(engine)[0]["job_started_at"].replace(tzinfo=UTC)), "22:00-06:00 (UTC)"


@pytest.mark.parametrize("times", [1, 5])
@pytest.mark.parametrize(("os_version", "guest_vss", "kind", "at"), CURED)
def test_a_fault_a_new_job_cures(start_fleet, monkeypatch, tmp_path, os_version, guest_vss, kind, at, times):
    running = _fleet(start_fleet, monkeypatch, os_version, [{"kind": kind, "at": at, "times": times}], guest_vss)
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    outcome = _backup(engine, "VM1")
    neighbour = _backup(engine, "VM2")

    journal = running.journal()
    struck = sum(1 for line in journal if line["event"] == "fault" and line["kind"] == kind)
    jobs = [line for line in journal if line["event"] == "job_started" and line["vms"] == ["VM1"]]
    row = {r["vm_name"]: r for r in catalog.rows(engine)}
    vm1 = row["VM1"]
    assert len(catalog.rows(engine)) == 2 and row["VM2"]["status"] == "succeeded", (outcome, neighbour)
    state = running.state()["hosts"][0]
    assert state["max_concurrent_jobs"] == 1 and state["open_shells"] == 0
    assert USER_CHECKPOINT["name"] in [c["name"] for vm in state["vms"] if vm["name"] == "VM1" for c in vm["checkpoints"]]
    assert not [c for vm in state["vms"] for c in vm["checkpoints"] if c["type"] == "Recovery"]  # no debris, even after a restart
    if times == 1:
        assert vm1["status"] == "succeeded", (outcome, vm1["error"])
        assert vm1["attempts"] == len(jobs)
        restarted_mid_job = kind == "host_reboot"  # at snapshot: during the shadow copy
        assert bool(vm1["host_restarted"]) == restarted_mid_job
        if kind == "host_reboot":
            assert vm1["uptime_reset"] is True  # the restart restarted it ...
        expected = {"ok": "online", "missing": "checkpoint" if os_version >= "2012 R2" else "saved"}[guest_vss]
        assert vm1["mode"] == expected  # ... and is never taken for a checkpoint
        assert not (restarted_mid_job and expected == "online") or "restarted" in vm1["mode_reasons"]
    else:
        assert vm1["status"] == "failed" and struck >= 1
        assert "Traceback" not in vm1["error"] and "retried with backoff" not in vm1["error"]
        if kind == "vss_transient":
            assert len(jobs) == 3 and "vssadmin" in vm1["error"]
        else:
            assert "restarted" in vm1["error"] or "WinRM service runs" in vm1["error"]


@pytest.mark.parametrize(("guest_vss", "at"), [("ok", "copy"), ("missing", "merge")])
def test_a_restart_after_the_window_closed_starts_no_new_job_and_says_so(start_fleet, monkeypatch, tmp_path, guest_vss, at):
    """The host restarted under the job of a scheduled run whose window closed while the job ran: no new job starts
    (it would run into the working day); the row is failed, names the restart and what happens next, and the VM
    runs on its own disks (a restart during the copy, or during the merge, which Hyper-V resumes after the boot)."""
    from hyperv_backup.errors import PermanentHostError

    running = _fleet(start_fleet, monkeypatch, "2019", [{"kind": "host_reboot", "at": at}], guest_vss)
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    steps = _scheduled_steps(engine)

    with pytest.raises(PermanentHostError, match="restarted") as raised:  # the restart drops the connection: retried
        backup_like_the_dag(steps, retries=4, copy_window=_closed_at_the_job_start(engine))

    assert "no new job was started because the backup window 22:00-06:00 (UTC) has closed" in str(raised.value)
    (row,) = catalog.rows(engine)
    assert row["status"] == "failed" and row["host_restarted"] and row["error"] in str(raised.value), row
    journal = running.journal()
    assert [(line["kind"], line["step"]) for line in journal if line["event"] == "fault"] == [("host_reboot", at)]
    assert sum(line["event"] == "job_started" for line in journal) == 1
    state = running.state()["hosts"][0]
    vm = next(vm for vm in state["vms"] if vm["name"] == "VM1")
    assert USER_CHECKPOINT["name"] in [c["name"] for c in vm["checkpoints"]]
    assert not [c for c in vm["checkpoints"] if c["type"] == "Recovery"], vm["checkpoints"]
    assert state["open_shells"] == 0


@pytest.mark.parametrize("window_closed", [False, True])
def test_a_restart_during_the_shadow_copy_leaves_no_recovery_checkpoint_behind(start_fleet, monkeypatch, tmp_path, window_closed):
    """The host restarted while our job's Recovery checkpoint existed (the shadow copy, before WSB removes it): Hyper-V
    keeps it, and the VM runs on its .avhdx. The copy step removes it whether a new job follows (the window is open)
    or not (it has closed): the VM does not run on its differencing disk until the next night."""
    import time

    from hyperv_backup.errors import PermanentHostError
    from hyperv_backup.steps import Wait

    running = _fleet(start_fleet, monkeypatch, "2019", [], "missing", speed=5)  # no guest VSS: a Recovery checkpoint
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    steps = _scheduled_steps(engine)

    def recovery_checkpoints() -> list[dict]:
        vm = next(vm for vm in running.state()["hosts"][0]["vms"] if vm["name"] == "VM1")
        return [c for c in vm["checkpoints"] if c["type"] == "Recovery"]

    probe = steps.probe()
    assert isinstance(steps.snapshot(probe), Wait)  # the job started; its shadow copy is under way
    given_up = time.monotonic() + 30
    while not recovery_checkpoints():
        assert time.monotonic() < given_up, "the job made no Recovery checkpoint"
        time.sleep(0.02)
    running.reboot("HV01")
    assert recovery_checkpoints(), "the restart removed the Recovery checkpoint: nothing is left to test"

    if window_closed:
        with pytest.raises(PermanentHostError, match="restarted") as raised:
            backup_like_the_dag(steps, retries=4, probe=probe, copy_window=_closed_at_the_job_start(engine))
        assert "no new job was started because the backup window 22:00-06:00 (UTC) has closed" in str(raised.value)
    else:
        backup_like_the_dag(steps, retries=4, probe=probe)
    (row,) = catalog.rows(engine)
    assert row["host_restarted"] and row["status"] == ("failed" if window_closed else "succeeded"), row
    journal = running.journal()
    assert sum(line["event"] == "job_started" for line in journal) == (1 if window_closed else 2)
    assert [line["type"] for line in journal if line["event"] == "checkpoint_removed"] == ["Recovery"] * (1 if window_closed else 2)
    assert recovery_checkpoints() == []
    state = running.state()["hosts"][0]
    assert USER_CHECKPOINT["name"] in [c["name"] for vm in state["vms"] if vm["name"] == "VM1" for c in vm["checkpoints"]]
    assert state["open_shells"] == 0


def test_catalog_times_are_the_hosts_on_a_fast_fleet(start_fleet, monkeypatch, tmp_path):
    """At 1200x a poll is minutes of host time late: the catalog's times must still match the host's journal."""
    vms = [{"name": "SAVED", "guest_vss": "missing", "disk_gb": 20}, {"name": "ONLINE", "disk_gb": 20}]
    old = start_fleet({"seed": 9, "speed": 1200, "hosts": [{"name": "HV01", "os": "2012", "transport": "ssl",
                                                            "vms": [v | {"generation": 1, "volumes": [{"fs": "NTFS"}]} for v in vms]}]})
    use_connection(monkeypatch, "hv", winrm_connection(old.endpoints["HV01"], old.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'old.sqlite'}")
    for vm in vms:
        _backup(engine, vm["name"])
    journal = old.journal()

    def at(event, vm, **match):
        return [datetime.fromisoformat(line["at"].replace("Z", "+00:00")) for line in journal if line["event"] == event
                and (vm in line.get("vms", []) or line.get("vm") == vm) and all(line.get(k) == v for k, v in match.items())]

    rows = {r["vm_name"]: r for r in catalog.rows(engine)}
    for name, row in rows.items():
        assert row["status"] == "succeeded"
        assert abs((catalog._utc(row["job_started_at"]) - at("job_started", name)[0]).total_seconds()) <= 5
        assert abs((catalog._utc(row["job_finished_at"]) - at("job_finished", name)[0]).total_seconds()) <= 5
        assert catalog._utc(row["job_started_at"]) <= catalog._utc(row["snapshot_at"]) <= catalog._utc(row["job_finished_at"])
    saved, resumed = at("vm_state", "SAVED", to="Saved")[0], at("vm_state", "SAVED", to="Running")[0]
    assert rows["SAVED"]["mode"] == "saved" and abs(rows["SAVED"]["offline_seconds"] - (resumed - saved).total_seconds()) <= 5
    assert rows["ONLINE"]["offline_seconds"] == 0 and rows["ONLINE"]["uptime_reset"] is False

    new = start_fleet({"seed": 9, "speed": 1200, "hosts": [{"name": "HV02", "os": "2019", "transport": "ssl",
                                                            "vms": [{"name": "CKPT", "guest_vss": "missing", "disk_gb": 20}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(new.endpoints["HV02"], new.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'new.sqlite'}")
    run = RunKey("hyperv_backup_hv02", "manual__1", None, None, "HV02", "CKPT")
    backup_like_the_dag(BackupSteps(HyperVHook("hv"), engine, run, "E:", poll_seconds=0.05))
    journal = new.journal()
    row = catalog.rows(engine)[0]
    removed = at("checkpoint_removed", "CKPT")[0]
    merged = at("merge_finished", "CKPT")[0]
    assert row["mode"] == "checkpoint" and row["uptime_reset"] is True
    assert abs((catalog._utc(row["snapshot_at"]) - removed).total_seconds()) <= 5
    assert abs((catalog._utc(row["merged_at"]) - merged).total_seconds()) <= 5


def test_the_retries_of_a_runs_vms_are_spread_not_fired_together():
    """Airflow's backoff draws its jitter without the map index: every VM of a run would retry at the same
    second. The policy's delay differs per VM, doubles per try, and is the same when asked again."""
    from types import SimpleNamespace

    from hyperv_backup.retrying import SpreadRetries, spread_delay

    base = timedelta(seconds=30)
    first = [spread_delay(base, 1, f"hyperv_backup_hv01#scheduled__x#backup_vm.probe#{i}").total_seconds() for i in range(12)]
    assert len(set(first)) == 12 and all(30 <= d < 60 for d in first) and max(first) - min(first) > 10
    assert all(60 <= spread_delay(base, 2, f"k{i}").total_seconds() < 120 for i in range(12))
    ti = SimpleNamespace(dag_id="hyperv_backup_hv01", run_id="scheduled__x", task_id="backup_vm.probe", map_index=3)
    decision = SpreadRetries(base).evaluate(RuntimeError("x"), 1, 3, {"ti": ti})
    assert decision.retry_delay == spread_delay(base, 1, "hyperv_backup_hv01#scheduled__x#backup_vm.probe#3")


def test_another_vms_event_10150_is_not_this_vms_evidence(start_fleet, monkeypatch, tmp_path):
    """VM2's guest cannot take part, and Hyper-V logs event 10150 naming 'VM2' during VM2's job, which runs before
    VM's verify step looks (dag.test runs the steps in no set order). VM was backed up online: the event came after
    its job ended, and its name is in the message only as part of another's ('VM2'), as a short name can be in
    another VM's id (A3 in "...-4A36-..."). Both made VM's row say `checkpoint`."""
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl",
                                                               "vms": [{"name": "VM", "disk_gb": 2},
                                                                       {"name": "VM2", "disk_gb": 2, "guest_vss": "fails"}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")

    first = hv01_steps(engine, "VM")
    probe, snap, job = through_the_copy(first)
    assert backup_like_the_dag(hv01_steps(engine, "VM2"))["mode"] == "checkpoint"  # its own event: the guest did not take part
    assert first.verify(probe, snap, job)["mode"] == "online"
    assert any(e["id"] == 10150 and "'VM2'" in e["message"] for h in running.state()["hosts"] for e in h["events"])


def test_events_after_the_job_are_not_its_own():
    job = _job(start=T0, minutes=10)
    events = [{"id": 10150, "time_utc": (T0 + timedelta(minutes=m)).isoformat()} for m in (-1, 0, 5, 10, 11)]
    assert [e["time_utc"] for e in logged_during(events, job)] == [(T0 + timedelta(minutes=m)).isoformat() for m in (0, 5, 10)]
    assert len(logged_during(events, _job(state="Running", start=T0))) == 4  # a job still running: all from its start


def test_on_a_network_share_each_vm_keeps_its_backup_in_a_folder_of_its_own(start_fleet, monkeypatch, tmp_path):
    """Windows Server Backup keeps one version in a network share folder, and a backup into it replaces the one before.
    Each VM's backup goes to its own folder: VM2's job, between VM1's copy and VM1's verify (dag.test runs the steps in
    no set order), leaves VM1's version alone, and both VMs succeed with one restore point. VM1's next backup replaces
    only its own version."""
    share = "\\\\nas01\\hv-backups"
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "backup_target": share,
                                                               "vms": [{"name": "VM1", "disk_gb": 2}, {"name": "VM:2", "disk_gb": 2}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")

    first = hv01_steps(engine, target=share)
    probe, snap, job = through_the_copy(first)
    assert backup_like_the_dag(hv01_steps(engine, "VM:2", target=share))["backup_version"]
    assert first.verify(probe, snap, job)["backup_version"]
    rows = {r["vm_name"]: r for r in catalog.rows(engine, dag_id="hyperv_backup_hv01", run_id="manual__1")}
    assert [(r["status"], r["restore_points"]) for r in rows.values()] == [("succeeded", 1)] * 2
    folders = {v["vms"][0]: v["target"] for v in running.state()["hosts"][0]["backup_versions"]}
    assert folders == {"VM1": f"{share}\\VM1_{probe['vm_id'][:8].lower()}", "VM:2": folders["VM:2"]}
    assert folders["VM:2"].startswith(f"{share}\\VM_2_")  # a colon cannot be in a folder's name

    assert backup_like_the_dag(hv01_steps(engine, "VM1", "manual__2", share))["backup_version"]
    after = running.state()["hosts"][0]["backup_versions"]
    assert sorted(v["vms"][0] for v in after) == ["VM1", "VM:2"] and all(v["target"] in folders.values() for v in after)


def test_vms_that_share_a_name_fail_once_with_what_to_rename_and_a_name_in_another_case_is_another_vm(start_fleet, monkeypatch,
                                                                                                    tmp_path):
    """Hyper-V lets two VMs share a name (an imported copy keeps its source's); a backup by that name would be
    ambiguous. The run takes the name once, and its probe fails it with what to do, in one row. `twin` is another
    VM (names match case and all, as the probe compares them) and is backed up."""
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "Twin", "disk_gb": 1}, {"name": "Twin", "disk_gb": 1}, {"name": "twin", "disk_gb": 1}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    listed = [vm["name"] for vm in HyperVHook("hv").run_script("Get-HvbHostVMs")["vms"]]
    entry = parse_inventory("hosts:\n  - name: HV01\n    connection: hv\n", "inventory.yaml").hosts[0]
    assert sorted(listed) == ["Twin", "Twin", "twin"] and entry.selected(listed) == ["Twin", "twin"]

    twins = [vm["id"] for vm in running.state()["hosts"][0]["vms"] if vm["name"] == "Twin"]
    with pytest.raises(PermanentHostError, match=rf"2 VMs are named 'Twin' on HV01 \(ids {twins[0]}, {twins[1]}\): rename one \(Rename-VM\)"):
        hv01_steps(engine, "Twin").probe()
    assert backup_like_the_dag(hv01_steps(engine, "twin"))["backup_version"]
    rows = sorted((r["vm_name"], r["status"]) for r in catalog.rows(engine, dag_id="hyperv_backup_hv01", run_id="manual__1"))
    assert rows == [("Twin", "failed"), ("twin", "succeeded")]
    state = running.state()["hosts"][0]
    assert [v["vms"] for v in state["backup_versions"]] == [["twin"]] and state["max_concurrent_jobs"] == 1


def test_a_version_replaced_in_the_vms_own_share_folder_names_the_backup_that_replaced_it():
    folder = "\\\\nas01\\hv-backups\\VM1_0a1b2c3d"
    others = [{"version_id": "11/27/2026-01:00", "target": "\\\\nas01\\hv-backups\\VM2_99999999", "vms": ["VM2"]}]
    assert missing_version("VM1", folder, others) == "the job reported success but no backup version contains this VM"
    replaced = missing_version("VM1", folder, [*others, {"version_id": "11/27/2026-01:05", "target": folder.upper(), "vms": []}])
    assert "replaced by a later one (another backup, version 11/27/2026-01:05)" in replaced and "another schedule or tool" in replaced
    assert missing_version("VM1", "E:", [{"version_id": "x", "target": "E:", "vms": ["VM2"]}]).startswith("the job reported success")


def test_a_share_the_hosts_winrm_session_cannot_reach_fails_the_probe_with_the_second_hop_named(start_fleet, monkeypatch, tmp_path):
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl",
                                                               "backup_target": "\\\\nas01\\hv-backups", "vms": [{"name": "VM1"}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    steps = hv01_steps(engine, target="\\\\nas02\\hv-backups")
    with pytest.raises(PermanentHostError, match="cannot reach it from a WinRM session.*trusted for delegation"):
        steps.probe()
    assert running.state()["hosts"][0]["jobs"] == []


def test_a_vm_deleted_from_the_host_is_retired_by_the_next_run_and_leaves_the_rpo(start_fleet, tmp_path):
    """The backup DAG twice (dag.test, the real client): B is deleted during the first run (after its probe) and
    fails there; the second run's select_vms no longer finds it on the host and retires it, in one `skipped` row
    that says so, and the run succeeds. From then on B is no one's RPO (the watch and the fleet page read
    latest_per_vm); A, still on the host, is backed up both nights."""
    import json
    import os
    from pathlib import Path

    running = start_fleet({"seed": 4, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "vms": [
        {"name": "A", "disk_gb": 1}, {"name": "B", "disk_gb": 1, "faults": [{"kind": "vm_removed", "at": "probe"}]}]}]})
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(json.dumps({"hosts": [{"name": "HV01", "connection": "winrm_hv01", "backup_target": "E:"}]}))
    catalog_path = tmp_path / "catalog.sqlite"
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"), HYPERV_BACKUP_INVENTORY=str(inventory),
               AIRFLOW__HYPERV_BACKUP__POLL_SECONDS="0.1", AIRFLOW__HYPERV_BACKUP__RETRIES="0",
               AIRFLOW_CONN_HYPERV_BACKUP_CATALOG=json.dumps({"conn_type": "sqlite", "host": str(catalog_path)}),
               AIRFLOW_CONN_WINRM_HV01=winrm_connection(running.endpoints["HV01"], running.ca_path))
    dags = Path(__file__).resolve().parent.parent / "dags"
    states = [dag_test(dags, "hyperv_backup_hv01", env).stdout.splitlines()[-1] for _ in range(2)]
    assert states == ["STATE failed", "STATE success"]

    engine = catalog.engine_for(f"sqlite:///{catalog_path}")
    runs = sorted({r["run_id"] for r in catalog.rows(engine)})
    nights = [{r["vm_name"]: r for r in catalog.rows(engine, dag_id="hyperv_backup_hv01", run_id=run)} for run in runs]
    assert [(n["A"]["status"], n["B"]["status"]) for n in nights] == [("succeeded", "failed"), ("succeeded", "skipped")]
    assert nights[1]["B"]["retired"] and nights[1]["B"]["error"].startswith("no longer on HV01: its VM list no longer has it")
    assert not nights[1]["A"]["retired"] and catalog.standing(engine, "HV01") == ["A"]
    assert [r["vm_name"] for r in catalog.latest_per_vm(engine)] == ["A"]
