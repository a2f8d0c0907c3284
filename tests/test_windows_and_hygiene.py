"""Backup windows (across midnight and DST), run kinds, VM selection order, and the checkpoint audit.

The pure rules first; then the audit and its remediation against a simulated host with debris,
through the real client, where a user's Standard checkpoint must survive.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hyperv_backup import hygiene, windows
from hyperv_backup.errors import PermanentHostError
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.inventory import parse_inventory

from include.mailsink import MailSink
from simulator import harness
from tests.conftest import dag_test, until_done, use_connection, winrm_connection

BERLIN = windows.Window("22:00", "06:00", "Europe/Berlin", grace_minutes=30)


def test_a_window_across_midnight_is_the_one_that_opened_last():
    start, end = BERLIN.bounds(datetime(2026, 11, 23, 21, 0, tzinfo=UTC))  # 22:00 Berlin (CET, UTC+1)
    assert (start, end) == (datetime(2026, 11, 23, 21, 0, tzinfo=UTC), datetime(2026, 11, 24, 5, 0, tzinfo=UTC))
    assert BERLIN.bounds(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))[0] == start  # 04:00 Berlin: still that window
    assert BERLIN.bounds(datetime(2026, 11, 23, 20, 59, tzinfo=UTC))[0] == start - timedelta(days=1)


def test_a_window_follows_daylight_saving_time():
    # 2026-03-29: Berlin goes from UTC+1 to UTC+2 at 02:00, inside the night's window
    start, end = BERLIN.bounds(datetime(2026, 3, 28, 21, 30, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 3, 28, 21, 0, tzinfo=UTC), datetime(2026, 3, 29, 4, 0, tzinfo=UTC))
    assert end - start == timedelta(hours=7)  # the short night: one hour less of window
    assert BERLIN.last_start(start) == end + timedelta(minutes=30)


def test_a_window_within_one_day():
    day = windows.Window("01:00", "05:00", "Asia/Tokyo")
    assert day.bounds(datetime(2026, 11, 23, 17, 0, tzinfo=UTC)) == (  # 02:00 Tokyo
        datetime(2026, 11, 23, 16, 0, tzinfo=UTC), datetime(2026, 11, 23, 20, 0, tzinfo=UTC))


def test_only_scheduled_runs_are_held_to_the_window():
    due = datetime(2026, 11, 23, 21, 0, tzinfo=UTC)
    assert windows.job_deadline(BERLIN, "scheduled", due, force=False) == datetime(2026, 11, 24, 5, 30, tzinfo=UTC)
    assert windows.job_deadline(BERLIN, "scheduled", due, force=True) is None
    assert windows.job_deadline(BERLIN, "manual", due, force=False) is None
    assert windows.job_deadline(BERLIN, "backfill", due, force=False) is None


def test_a_backfilled_interval_says_why_it_was_missed():
    assert windows.missed_reason("scheduled") is None
    assert "Airflow was down" in windows.missed_reason("backfill")
    assert windows.missed_reason("backfill", "failed", "WinRM refused the credentials") == \
        "the scheduled run failed: WinRM refused the credentials"
    assert windows.missed_reason("backfill", "deferred", "window closed: ...") == "the scheduled run left it deferred: window closed: ..."


def test_vm_order_is_priority_then_oldest_good_backup_and_patterns_match_exactly():
    entry = parse_inventory("hosts:\n  - name: HV01\n    connection: c\n    vms: ['SQL*', 'WEB01', 'APP?']\n"
                            "    exclude: ['SQL-TEST']\n    priority: {WEB01: 5}\n", "inv.yaml").hosts[0]
    names = ["SQL02", "SQL01", "sql03", "SQL-TEST", "WEB01", "APP1", "APP10", "DC01"]
    last = {"SQL01": datetime(2026, 11, 22, tzinfo=UTC), "SQL02": datetime(2026, 11, 20, tzinfo=UTC)}
    assert entry.selected(names, last) == ["WEB01", "APP1", "SQL02", "SQL01"]  # APP1 never backed up: before SQL02


def test_inventory_rejects_a_bad_grace_with_file_and_line():
    text = "hosts:\n  - name: HV01\n    connection: c\n    window: {grace_minutes: -5}\n"
    with pytest.raises(Exception, match=r"inv.yaml.*line 4.*grace_minutes"):
        parse_inventory(text, "inv.yaml")


def _vm(name, checkpoints=(), chain=(), files=(), setting="Production"):
    return {"name": name, "id": name + "-ID", "checkpoint_type": setting, "disks": [{"path": (list(chain) or ["x.vhdx"])[0]}],
            "checkpoints": [{"id": f"{name}-{c}", "name": c, "type": t} for c, t in checkpoints],
            "chain": list(chain), "avhdx_files": list(files)}


def test_audit_finds_the_three_kinds_of_debris_and_only_recovery_checkpoints_are_removable():
    answer = {"running_job_vms": ["BUSY"], "vms": [
        _vm("LEFT", [("LEFT - Backup - (11/23/2026)", "Recovery"), ("before-patch", "Standard")], ["a.avhdx", "b.avhdx", "x.vhdx"],
            ["a.avhdx", "b.avhdx"]),
        _vm("STRAY", [], ["x.vhdx"], ["C:\\VMs\\STRAY\\old_1234.avhdx"]),
        _vm("OFF", setting="Disabled"),
        _vm("BUSY", [("BUSY - Backup", "Recovery")], ["c.avhdx", "x.vhdx"], ["c.avhdx"]),
        _vm("CLEAN", [("monthly", "Standard"), ("replica", "Replica")], ["d.avhdx", "e.avhdx", "x.vhdx"], ["d.avhdx", "e.avhdx"]),
    ]}
    found = {(f.vm_name, f.kind, f.removable) for f in hygiene.audit_host(answer)}
    assert found == {("LEFT", hygiene.RECOVERY_LEFT, True), ("STRAY", hygiene.UNEXPLAINED_AVHDX, False),
                     ("OFF", hygiene.CHECKPOINTS_DISABLED, False)}


def test_merged_counts_one_avhdx_per_remaining_checkpoint():
    assert hygiene.merged(_vm("A", [("p", "Standard")], ["p.avhdx", "x.vhdx"]))
    assert not hygiene.merged(_vm("A", [("p", "Standard")], ["p.avhdx", "r.avhdx", "x.vhdx"]))  # the removed one still merging


def test_the_audit_subject_says_what_an_administrator_must_know():
    finding = {"vm_name": "WEB01", "kind": hygiene.UNEXPLAINED_AVHDX, "subject": "x.avhdx", "what_to_do": "..."}
    clean = hygiene.AuditSummary("2026-11-24", [{"host": "HV01", "findings": [], "remediated": [], "error": None}])
    assert clean.subject == "Hyper-V checkpoint audit 2026-11-24: clean" and not clean.worth_mailing
    mixed = hygiene.AuditSummary("2026-11-24", [
        {"host": "HV01", "findings": [finding], "remediated": [{"vm_name": "DB01", "removed": "r", "merged": True},
                                                                {"vm_name": "SQL01", "removed": "s", "merged": False}]},
        {"host": "HV02", "findings": [finding, finding], "remediated": []},
        {"host": "HV03", "error": "the host could not be reached"}])
    assert mixed.worth_mailing and mixed.subject == (
        "Hyper-V checkpoint audit 2026-11-24: could not audit HV03; 3 findings need an administrator (HV01: 1, HV02: 2); "
        "removed 2 Recovery checkpoints, 1 merge not finished")
    removed_only = hygiene.AuditSummary("2026-11-24", [{"host": "HV01", "findings": [], "remediated": [
        {"vm_name": "DB01", "removed": "r", "merged": True}]}])
    assert removed_only.worth_mailing and removed_only.subject.endswith(": removed 1 Recovery checkpoint")


# -- against the simulator ------------------------------------------------------------------


def _debris_fleet(start_fleet, monkeypatch):
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "DB01", "checkpoints": [{"name": "DB01 - Backup - (11/20/2026 - 10:02:11 PM)", "type": "Recovery"},
                                         {"name": "before-upgrade", "type": "Standard"}]},
        {"name": "WEB01", "stray_avhdx": 2},
        {"name": "LAB01", "checkpoint_type": "Disabled"},
        {"name": "OK01"}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    return running, HyperVHook("hv")


def test_audit_and_remediation_remove_only_the_recovery_checkpoint(start_fleet, monkeypatch):
    running, hook = _debris_fleet(start_fleet, monkeypatch)
    findings = hygiene.audit_host(hook.run_script("Get-HvbHostVMs"))
    assert sorted((f.vm_name, f.kind) for f in findings) == [
        ("DB01", hygiene.RECOVERY_LEFT), ("LAB01", hygiene.CHECKPOINTS_DISABLED),
        ("WEB01", hygiene.UNEXPLAINED_AVHDX), ("WEB01", hygiene.UNEXPLAINED_AVHDX)]

    done = hygiene.remediate(hook.run_script, findings, poll=0.1, timeout=30)
    assert done == [{"vm_name": "DB01", "vm_id": done[0]["vm_id"], "removed": "DB01 - Backup - (11/20/2026 - 10:02:11 PM)",
                     "merged": True}]
    after = {f.kind for f in hygiene.audit_host(hook.run_script("Get-HvbHostVMs"))}
    assert after == {hygiene.CHECKPOINTS_DISABLED, hygiene.UNEXPLAINED_AVHDX}  # files and settings are reported, never touched
    db01 = next(vm for vm in running.state()["hosts"][0]["vms"] if vm["name"] == "DB01")
    assert [(c["name"], c["type"]) for c in db01["checkpoints"]] == [("before-upgrade", "Standard")]
    removed = [e for e in running.journal() if e["event"] == "checkpoint_removed"]
    assert [(e["vm"], e["type"]) for e in removed] == [("DB01", "Recovery")]


def test_the_host_script_refuses_to_remove_a_users_checkpoint(start_fleet, monkeypatch):
    running, hook = _debris_fleet(start_fleet, monkeypatch)
    db01 = next(vm for vm in hook.run_script("Get-HvbHostVMs")["vms"] if vm["name"] == "DB01")
    standard = next(c for c in db01["checkpoints"] if c["type"] == "Standard")
    with pytest.raises(PermanentHostError, match="Standard checkpoint, not backup debris"):
        hook.run_script("Remove-HvbRecoveryCheckpoint", VMId=db01["id"], CheckpointId=standard["id"])
    assert len(next(vm for vm in running.state()["hosts"][0]["vms"] if vm["name"] == "DB01")["checkpoints"]) == 2


def test_a_window_that_closes_mid_run_defers_the_rest(start_fleet, monkeypatch, tmp_path):
    """The first VM's job starts inside the window; then the host clock passes the window's end: the
    second VM is recorded `deferred` and no job is started for it, and next time it goes first."""
    from hyperv_backup import catalog
    from hyperv_backup.inventory import HostEntry
    from hyperv_backup.steps import BackupSteps, NotThisTime, RunKey

    running = start_fleet({"seed": 2, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "FIRST", "disk_gb": 2}, {"name": "SECOND", "disk_gb": 2}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    clock = datetime.fromisoformat(running.state()["clock_utc"].replace("Z", "+00:00"))
    window = windows.Window(f"{clock - timedelta(hours=1):%H:%M}", f"{clock + timedelta(hours=1):%H:%M}", "UTC", grace_minutes=10)
    deadline = windows.job_deadline(window, "scheduled", clock, force=False)

    def steps(vm):
        run = RunKey("hyperv_backup_hv01", "scheduled__x", clock, clock, "HV01", vm)
        return BackupSteps(HyperVHook("hv"), engine, run, "E:", poll_seconds=0.05)

    first = steps("FIRST")
    probed = first.probe()
    assert until_done(first, probed["vm_id"], lambda event: first.snapshot(probed, last_start=deadline, window=window.describe()))[
        "job_started_at"]
    running.advance(2 * 3600)  # the night goes on: the window (and its grace) is over
    second = steps("SECOND")
    probed = second.probe()
    with pytest.raises(NotThisTime, match="window closed"):
        second.snapshot(probed, last_start=deadline, window=window.describe())
    rows = {r["vm_name"]: r for r in catalog.rows(engine)}
    assert rows["SECOND"]["status"] == "deferred" and rows["SECOND"]["error"].startswith("window closed")
    assert [e["vms"] for e in running.journal() if e["event"] == "job_started"] == [["FIRST"]]
    entry = HostEntry(name="HV01", connection="hv")
    assert entry.selected(["FIRST", "SECOND"], {"FIRST": clock}) == ["SECOND", "FIRST"]  # deferred goes first next time


def test_a_vms_turn_waits_deferred_only_on_deferred_vms_before_it():
    from airflow.sdk.api.datamodels._generated import TaskInstanceState
    from hyperv_backup.steps import Turn, turn_of

    step = "backup_vm.snapshot"
    states = {f"{step}_0": "success", f"{step}_1": TaskInstanceState.DEFERRED, f"{step}_2": "upstream_failed",
              f"{step}_3": "deferred", f"{step}_4": "queued", f"{step}_9": "running", "backup_vm.probe_0": "running"}
    assert turn_of(states, step, 0) == Turn.NOW  # nobody before it
    assert turn_of(states, step, 1) == Turn.NOW  # the first is past the step (its own state does not count)
    assert turn_of(states, step, 3) == Turn.WAIT  # 1 waits in the triggerer: so can 3
    assert turn_of(states, step, 5) == Turn.YIELD  # 4 needs a worker to go on: 5 gives its slot back
    assert turn_of({f"{step}_0": None}, step, 1) == Turn.YIELD  # not even started (dag.test runs tasks in any order)
    assert turn_of(states, step, 5, frozenset({4})) == Turn.WAIT  # 4's job has started: it had its turn (the catalog says)
    assert turn_of(states, step, 5, frozenset({1, 3, 4})) == Turn.NOW


def test_the_host_goes_to_the_vms_in_the_runs_order_not_to_whoever_polls_first(start_fleet, monkeypatch, tmp_path):
    """FIRST's job runs; THIRD already waits for the host, SECOND (earlier in the order) is still on its
    way (its task queued) when FIRST's job ends. THIRD gives way to SECOND; without its turn it would
    have taken the free host at once."""
    import threading
    import time

    from hyperv_backup import catalog
    from hyperv_backup.steps import BackupSteps, RunKey, Turn

    running = start_fleet({"seed": 2, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "FIRST", "disk_gb": 2}, {"name": "SECOND", "disk_gb": 2}, {"name": "THIRD", "disk_gb": 2}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    second_is = {"state": "queued"}  # what Airflow would say of SECOND's snapshot task

    def steps(vm, turn=None):
        run = RunKey("hyperv_backup_hv01", "scheduled__x", None, None, "HV01", vm)
        return BackupSteps(HyperVHook("hv"), engine, run, "E:", poll_seconds=0.05, turn=turn)

    def snapshot(vm_steps, probed):
        return until_done(vm_steps, probed["vm_id"], lambda event: vm_steps.snapshot(probed))

    first = steps("FIRST")
    snapshot(first, first.probe())
    third = steps("THIRD", turn=lambda: Turn.NOW if second_is["state"] == "success" else Turn.YIELD)
    second = steps("SECOND")
    probes = {"THIRD": third.probe(), "SECOND": second.probe()}
    waiting = threading.Thread(target=snapshot, args=(third, probes["THIRD"]))
    waiting.start()
    time.sleep(1.0)  # FIRST's job (2 GB at 600x) is over by now: the host is free, and THIRD looks again and again
    second_is["state"] = "running"
    snapshot(second, probes["SECOND"])
    second_is["state"] = "success"
    waiting.join(timeout=60)
    assert [e["vms"] for e in running.journal() if e["event"] == "job_started"] == [["FIRST"], ["SECOND"], ["THIRD"]]


def test_run_kind_reads_the_task_sdks_enum_as_its_value():
    from airflow.sdk.api.datamodels._generated import DagRunType

    assert windows.run_kind(DagRunType.BACKFILL) == "backfill" and windows.run_kind("scheduled") == "scheduled"


def _closed_endpoint() -> harness.Endpoint:
    """Where no host listens: a port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return harness.Endpoint("HV02", "ssl", f"https://127.0.0.1:{port}/wsman")


def _audit(tmp_path, connections: dict[str, str], remediate: bool = True) -> tuple[str, list]:
    """The audit DAG run once (dag.test, in its own process) over `connections` (host name -> connection),
    with a real SMTP server: (the run's final state line, the mails received)."""
    hosts = "".join(f"  - {{name: {name}, connection: winrm_{name.lower()}}}\n" for name in connections)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"hosts:\n{hosts}mail: {{to: [reports@example.test], admins: [admins@example.test]}}\n")
    root = Path(__file__).resolve().parent.parent
    with MailSink(tmp_path / "mail") as mail:
        env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"), HYPERV_BACKUP_INVENTORY=str(inventory),
                   AIRFLOW__HYPERV_BACKUP__REPORTS_PATH=str(tmp_path / "reports"),
                   AIRFLOW__HYPERV_BACKUP__POLL_SECONDS="0.1", AIRFLOW__HYPERV_BACKUP__RETRIES="0",
                   AIRFLOW_CONN_SMTP_DEFAULT=mail.connection(),
                   AIRFLOW_CONN_HYPERV_BACKUP_CATALOG=json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "catalog.sqlite")}),
                   **{f"AIRFLOW_CONN_WINRM_{name.upper()}": value for name, value in connections.items()})
        done = dag_test(root / "dags", "hyperv_checkpoint_audit", env, {"remediate": remediate})
        messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in mail.messages()]
    state = next((line for line in done.stdout.splitlines() if line.startswith("STATE ")), "")
    assert state, done.stdout[-2000:] + done.stderr[-2000:]
    return state, messages


def test_the_audit_dag_cleans_the_fleet_and_leaves_what_is_not_backup_debris(start_fleet, tmp_path):
    """The daily audit, run as a DAG (dag.test) with remediation on, over a fleet with debris and a
    host that is down; the administrators get one mail that says all of it."""
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "DB01", "checkpoints": [{"name": "DB01 - Backup - (11/20/2026 - 10:02:11 PM)", "type": "Recovery"},
                                         {"name": "before-upgrade", "type": "Standard"}]},
        {"name": "WEB01", "stray_avhdx": 1}, {"name": "OK01"}]}]})
    state, messages = _audit(tmp_path, {"HV01": winrm_connection(running.endpoints["HV01"], running.ca_path),
                                        "HV02": winrm_connection(_closed_endpoint(), running.ca_path)})  # HV02 is down
    assert state == "STATE failed"  # debris an admin must handle is left, and a host was not audited
    (written,) = (tmp_path / "reports").glob("checkpoint-audit-HV01-*.json")
    result = json.loads(written.read_text())
    assert [(d["vm_name"], d["removed"], d["merged"]) for d in result["remediated"]] == [
        ("DB01", "DB01 - Backup - (11/20/2026 - 10:02:11 PM)", True)]
    assert [(f["vm_name"], f["kind"]) for f in result["findings"]] == [("WEB01", hygiene.UNEXPLAINED_AVHDX)]
    db01 = next(vm for vm in running.state()["hosts"][0]["vms"] if vm["name"] == "DB01")
    assert [(c["name"], c["type"]) for c in db01["checkpoints"]] == [("before-upgrade", "Standard")]

    (message,) = messages  # one mail for the run, to the administrators, saying what was done and what is left
    assert message["To"] == "admins@example.test"
    assert message["Subject"] == (f"Hyper-V checkpoint audit {written.stem[-10:]}: could not audit HV02; "
                                  "1 finding needs an administrator (HV01: 1); removed 1 Recovery checkpoint")
    body = message.get_body(("html",)).get_content()
    assert "DB01 - Backup - (11/20/2026 - 10:02:11 PM)" in body and "WEB01" in body and "Not audited" in body


def test_a_clean_fleet_audits_green_and_mails_nobody(start_fleet, tmp_path):
    running = start_fleet({"seed": 3, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "transport": "ssl", "vms": [
        {"name": "OK01", "checkpoints": [{"name": "monthly", "type": "Standard"}]}, {"name": "OK02"}]}]})
    state, messages = _audit(tmp_path, {"HV01": winrm_connection(running.endpoints["HV01"], running.ca_path)}, remediate=False)
    assert state == "STATE success" and messages == []
    (written,) = (tmp_path / "reports").glob("checkpoint-audit-HV01-*.json")
    assert json.loads(written.read_text())["findings"] == []
