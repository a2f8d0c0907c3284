"""Restore tests (docs/restore-tests.md): the rotation and the verdicts as pure functions, and the DAG run for real
(dag.test) through the real WinRM client against simulated hosts, which must be left exactly as they were."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from conftest import dag_test, winrm_connection
from hyperv_backup import catalog, report, restore
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.inventory import parse_inventory

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_the_rotation_tests_the_never_tested_then_the_longest_ago_and_enough_to_cover_the_fleet_in_time():
    vms = [f"VM{i:02d}" for i in range(10)]
    tested = {f"VM{i:02d}": NOW - timedelta(days=i) for i in range(1, 10)}  # VM00 never; VM09 the longest ago
    weekly = timedelta(days=7)
    assert restore.choose(vms, tested, 30, weekly) == ["VM00", "VM09", "VM08"]  # ceil(10 * 7 / 30) = 3 a week
    assert restore.choose(vms, tested, 7, weekly) == ["VM00", *[f"VM{i:02d}" for i in range(9, 0, -1)]]  # all, every week
    assert restore.choose(vms[:2], {}, 365, weekly) == ["VM00"]  # at least one a run
    assert restore.choose(vms, tested, 30, weekly, count=1) == ["VM00"]  # the Param per_host
    assert restore.choose([], {}, 30, weekly) == []
    assert restore.period("0 12 * * 6", NOW) == weekly and restore.period("0 3 * * *", NOW) == timedelta(days=1)


def test_a_copy_is_named_and_kept_where_it_cannot_be_taken_for_a_vm_of_the_fleet():
    name = restore.copy_name('SQL: "prod"?', NOW)
    assert name == 'HvbRestoreTest-SQL: "prod"?-20261121120000'
    assert restore.folder("D:\\HvbRestoreTests\\", name) == "D:\\HvbRestoreTests\\HvbRestoreTest-SQL_ _prod__-20261121120000"
    entry = parse_inventory("hosts: [{name: HV01, connection: c}]\n", "inv.yaml").hosts[0]
    assert entry.selected(["DB01", name]) == ["DB01"]  # never backed up as one of the fleet


def test_restore_test_path_must_be_a_folder_of_its_own():
    for path in ("D:\\", "D:", "restore", "\\\\server\\share"):
        try:
            parse_inventory(f"hosts: [{{name: HV01, connection: c, restore_test_path: '{path}'}}]\n", "inv.yaml")
        except Exception as error:  # noqa: BLE001
            assert "restore_test_path" in str(error) and "folder of its own" in str(error)
        else:
            raise AssertionError(f"{path!r} was accepted")
    entry = parse_inventory("hosts: [{name: HV01, connection: c, restore_test_path: D:\\Tests\\Hvb}]\n", "inv.yaml").hosts[0]
    assert entry.restore_test_path == "D:\\Tests\\Hvb" and entry.restore_test_days == 30


def _status(**overrides) -> restore.TestStatus:
    document = {"clock_utc": "2026-11-21T12:05:00Z", "host_job": None, "recovery": None, "copy": None, "files": [], "change_key": "k"}
    return restore.TestStatus.from_json(document | overrides)


def test_each_wait_ends_on_the_hosts_record_or_at_its_limit_in_host_time():
    later, sooner = NOW + timedelta(hours=1), NOW - timedelta(hours=1)
    busy = _status(host_job={"job_state": "Running"})
    assert not restore.wait_over(restore.Phase.HOST, busy, later) and restore.wait_over(restore.Phase.HOST, busy, sooner)
    assert restore.wait_over(restore.Phase.HOST, _status(), later)
    copying = _status(recovery={"job_state": "Running", "hresult": 0})
    assert not restore.wait_over(restore.Phase.RECOVERY, copying, later) and copying.recovered is None
    failed = _status(recovery={"job_state": "Failed", "hresult": -2147024784, "error_description": "disk full"})
    assert restore.wait_over(restore.Phase.RECOVERY, failed, later) and failed.recovered is False
    booting = _status(copy={"state": "Running", "heartbeat": ""})
    assert not restore.wait_over(restore.Phase.BOOT, booting, later)
    answered = _status(copy={"state": "Running", "heartbeat": "OK"})
    assert restore.wait_over(restore.Phase.BOOT, answered, later)
    started = datetime(2026, 11, 21, 12, 3, 20, tzinfo=UTC)
    assert restore.boot_verdict(answered, started, timedelta(minutes=20)) == (100.0, None)
    seconds, error = restore.boot_verdict(booting, started, timedelta(minutes=20))
    assert seconds is None and "no heartbeat from the copy within 20 minutes" in error and "integration services" in error
    assert "stopped (Off)" in restore.boot_verdict(_status(copy={"state": "Off", "heartbeat": ""}), started, timedelta(minutes=20))[1]


def test_the_report_lists_each_vms_last_restore_test_failed_and_due_first():
    known = pd.DataFrame({"host": ["HV01", "HV01", "HV01"], "vm_name": ["A", "B", "C"], "last_good": [NOW] * 3})
    tests = pd.DataFrame({"host": ["HV01", "HV01"], "vm_name": ["A", "B"], "finished_at": [NOW - timedelta(days=2), NOW - timedelta(days=40)],
                          "status": ["failed", "succeeded"], "heartbeat_seconds": [None, 95.0], "backup_version": ["11/20/2026-22:00"] * 2,
                          "restored_as": ["x", "y"], "error": ["no heartbeat", None], "cleaned_up": [True, True]})
    table = report.restore_table(known, tests, NOW, {"HV01": 30})
    assert list(table["vm_name"]) == ["A", "B", "C"]  # failed, then due (40 days > 30, never tested)
    assert list(table["due"]) == [False, True, True] and table.loc[1, "heartbeat_seconds"] == 95.0


def _backed_up(running, tmp_path, names: list[str]) -> str:
    """Back each VM up once on the simulated host (a real WSB job each, through the real client) and record it in a
    catalog as the backup DAG would: the restore test's precondition. Returns the catalog's path."""
    os.environ["AIRFLOW_CONN_HV01_SETUP"] = winrm_connection(running.endpoints["HV01"], running.ca_path)
    path = tmp_path / "catalog.sqlite"
    engine = catalog.engine_for(f"sqlite:///{path}")
    with HyperVHook("hv01_setup").session() as hook:
        for vm in hook.run_script("Get-HvbHostVMs")["vms"]:
            if vm["name"] not in names:
                continue
            started = hook.run_script("Start-HvbVMBackup", VMId=vm["id"], BackupTarget="E:")["job"]["start_time_utc"]
            while (status := hook.run_script("Get-HvbVMBackupStatus", VMId=vm["id"]))["job"]["job_state"] == "Running":
                time.sleep(0.2)
            assert status["job"]["job_state"] == "Completed"
            catalog.upsert(engine, {"dag_id": "hyperv_backup_hv01", "run_id": "manual__1", "host": "HV01", "vm_name": vm["name"]},
                           {"status": "succeeded", "vm_id": vm["id"], "job_started_at": datetime.fromisoformat(started.replace("Z", "+00:00"))},
                           datetime.now(UTC))
    del os.environ["AIRFLOW_CONN_HV01_SETUP"]
    return str(path)


def _vms(state: dict) -> list[dict]:
    keep = ("id", "name", "state", "generation", "guest", "checkpoints", "disks", "stray_avhdx", "network_connected")
    return [{k: vm[k] for k in keep} for host in state["hosts"] for vm in host["vms"]]


def test_the_dag_boots_a_copy_of_each_backup_and_leaves_the_host_as_it_was(start_fleet, tmp_path):
    odd = 'NO: "1"?'  # a name YAML would mangle, with characters Windows forbids in a folder's name
    running = start_fleet({"seed": 5, "speed": 120, "hosts": [{"name": "HV01", "os": "2019", "vms": [
        {"name": "WEB01", "disk_gb": 2}, {"name": odd, "disk_gb": 2, "guest": "linux"},
        {"name": "NOHB", "disk_gb": 2, "integration_services": {"vss": True, "heartbeat": False}},
        {"name": "UNTESTED", "disk_gb": 2}]}]})
    catalog_path = _backed_up(running, tmp_path, ["WEB01", odd, "NOHB"])
    before = running.state()
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(json.dumps({"hosts": [{"name": "HV01", "connection": "winrm_hv01", "restore_test_path": "D:\\HvbRestoreTests"}]}))
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"), HYPERV_BACKUP_INVENTORY=str(inventory),
               AIRFLOW__HYPERV_BACKUP__POLL_SECONDS="0.1", AIRFLOW__HYPERV_BACKUP__RESTORE_HEARTBEAT_MINUTES="5",
               AIRFLOW_CONN_HYPERV_BACKUP_CATALOG=json.dumps({"conn_type": "sqlite", "host": catalog_path}),
               AIRFLOW_CONN_WINRM_HV01=winrm_connection(running.endpoints["HV01"], running.ca_path))
    done = dag_test(ROOT / "dags", "hyperv_restore_test", env, {"vms": ["WEB01", f"HV01/{odd}", "NOHB"]})
    assert done.stdout.splitlines()[-1] == "STATE failed", done.stdout[-3000:] + done.stderr[-3000:]  # NOHB never answers

    rows = {r["vm_name"]: r for r in _restore_rows(catalog_path)}
    assert set(rows) == {"WEB01", odd, "NOHB"}
    for name in ("WEB01", odd):
        assert rows[name]["status"] == "succeeded" and rows[name]["error"] is None, rows[name]
        # the guest's boot (90-120 s of host time), seen within the client's round trip (tens of ms: seconds at 120x)
        assert 90 <= rows[name]["heartbeat_seconds"] <= 135
    assert rows["NOHB"]["status"] == "failed" and rows["NOHB"]["heartbeat_seconds"] is None
    assert "no heartbeat from the copy within 5 minutes" in rows["NOHB"]["error"]
    assert all(r["cleaned_up"] == 1 and r["restored_as"].startswith("HvbRestoreTest-") for r in rows.values())
    originals = {vm["name"]: vm["id"] for vm in _vms(before)}
    assert all(r["vm_id"] == originals[name] for name, r in rows.items())  # the id the recovered configuration holds

    journal = running.journal()
    imported = [e for e in journal if e["event"] == "vm_imported"]
    assert sorted(e["vm"] for e in imported) == sorted(r["restored_as"] for r in rows.values())
    assert not {e["id"] for e in imported} & set(originals.values())  # new ids, never an original's
    assert [e for e in journal if e["event"] == "recovery_started" and e["vm"] == "UNTESTED"] == []
    after = running.state()
    assert _vms(after) == _vms(before)  # every original VM as it was: id, state, checkpoints, disks, network
    assert after["hosts"][0]["folders"] == {} and after["hosts"][0]["open_shells"] == 0
    assert [j["kind"] for j in after["hosts"][0]["jobs"]].count("recovery") == 3


def _restore_rows(path: str) -> list[dict]:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM restore_tests")]


def test_a_catalog_of_version_4_gains_restore_tests_and_a_retried_test_updates_its_row(catalog_url):
    import sqlalchemy

    engine = sqlalchemy.create_engine(catalog_url)
    old = sqlalchemy.MetaData()
    sqlalchemy.Table("vm_backups", old, *[sqlalchemy.Column(c.name, c.type, primary_key=c.primary_key) for c in catalog.vm_backups.columns])
    version = sqlalchemy.Table(catalog.SCHEMA_VERSION_TABLE, old, sqlalchemy.Column("version", sqlalchemy.Integer, primary_key=True))
    old.create_all(engine)
    with engine.begin() as db:
        db.execute(version.insert().values(version=4))
    assert catalog.migrate(engine) == 4 and "restore_tests" in sqlalchemy.inspect(engine).get_table_names()
    key = {"dag_id": "hyperv_restore_test", "run_id": "scheduled__1", "host": "HV01", "vm_name": "A"}
    first = {"status": "failed", "error": "no heartbeat", "finished_at": NOW, "cleaned_up": False}
    catalog.record_restore_test(engine, key, first, NOW)
    catalog.record_restore_test(engine, key, first | {"status": "succeeded", "error": None, "heartbeat_seconds": 97.5, "cleaned_up": True},
                                NOW + timedelta(minutes=5))
    catalog.record_restore_test(engine, key | {"run_id": "scheduled__0", "vm_name": "B"}, first | {"finished_at": NOW - timedelta(days=9)}, NOW)
    assert catalog.last_tested(engine, "HV01") == {"A": NOW, "B": NOW - timedelta(days=9)}
    last = {r["vm_name"]: r for r in catalog.last_restore_tests(engine, NOW + timedelta(hours=1))}
    assert len(last) == 2 and last["A"]["status"] == "succeeded" and last["A"]["heartbeat_seconds"] == 97.5
    assert last["A"]["finished_at"] == NOW and last["A"]["finished_at"].tzinfo == UTC  # aware, whatever the backend
    assert [r["vm_name"] for r in catalog.last_restore_tests(engine, NOW)] == ["B"]  # A's test ended at NOW, not before it
