"""The preflight check: its verdicts as pure functions, and `make preflight` on a fleet with a ready host
and hosts that are not, through the real scheduler and the real client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hyperv_backup import preflight
from hyperv_backup.errors import PermanentHostError, TransientHostError

from tests.conftest import run_demo

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _readiness(**changes) -> dict:
    answer = {"host": {"computer_name": "HV1", "os_caption": "Microsoft Windows Server 2019 Datacenter", "ps_version": "5.1.17763.1",
                       "clock_utc": NOW.isoformat()},
              "features": {"hyperv": True, "windows_server_backup": True},
              "account": {"name": "HV1\\backup-svc", "groups": ["Administrators"]},
              "winrm": {"max_shells_per_user": 30, "max_memory_per_shell_mb": 1024, "idle_timeout_ms": 7200000},
              "target": {"path": "E:", "kind": "volume", "exists": True, "free_bytes": 500 * 1024**3}}
    for path, value in changes.items():
        section, key = path.split("__")
        answer[section][key] = value
    return answer


def _statuses(checks) -> dict[str, str]:
    return {c.check: c.status for c in checks}


def test_a_ready_host_passes_every_check():
    assert set(_statuses(preflight.readiness("HV1", _readiness(), NOW, 100 * 1024**3)).values()) == {"ok"}


@pytest.mark.parametrize(("changes", "check", "status"), [
    ({"host__ps_version": "2.0"}, "powershell", "fail"),
    ({"features__windows_server_backup": False}, "windows_server_backup", "fail"),
    ({"account__groups": ["Hyper-V Administrators"]}, "rights", "fail"),
    ({"account__groups": ["Hyper-V Administrators", "Backup Operators"]}, "rights", "ok"),
    ({"target__exists": False}, "backup_target", "fail"),
    ({"target__kind": "share", "target__free_bytes": None}, "backup_target", "warn"),
    ({"target__free_bytes": 50 * 1024**3}, "target_space", "fail"),
    ({"host__clock_utc": (NOW + timedelta(seconds=90)).isoformat()}, "clock", "warn"),
    ({"host__clock_utc": (NOW - timedelta(minutes=6)).isoformat()}, "clock", "fail"),
    ({"winrm__max_shells_per_user": 2}, "winrm_limits", "warn"),
])
def test_each_check_fails_or_warns_on_what_it_checks(changes, check, status):
    checks = preflight.readiness("HV1", _readiness(**changes), NOW, 100 * 1024**3)
    assert _statuses(checks)[check] == status
    assert all(c.fix for c in checks if c.status != "ok")  # every problem comes with what to do


def test_a_share_target_says_each_vm_keeps_one_restore_point_in_its_folder():
    share = _readiness(target__kind="share", target__free_bytes=None)
    check, = [c for c in preflight.readiness("HV1", share, NOW, 0) if c.check == "backup_target"]
    assert check.status == "warn" and "a folder of its own" in check.detail and "one restore point" in check.detail
    unreachable = _readiness(target__kind="share", target__exists=False, target__free_bytes=None)
    check, = [c for c in preflight.readiness("HV1", unreachable, NOW, 0) if c.check == "backup_target"]
    assert check.status == "fail" and "cannot reach it" in check.detail and "delegation" in check.fix


def test_the_connection_checks_name_what_failed():
    unreachable = TransientHostError("HV1", "connection lost", "check port 5986", cause="unreachable")
    assert _statuses(preflight.connection("HV1", unreachable, "https://hv1:5986/wsman", None, NOW)) == {"reachable": "fail"}
    untrusted = PermanentHostError("HV1", "TLS verification failed", "put the CA in ca_trust_path", cause="tls")
    assert _statuses(preflight.connection("HV1", untrusted, "https://hv1:5986/wsman", None, NOW)) == {"reachable": "ok", "tls": "fail"}
    refused = PermanentHostError("HV1", "the host refused the credentials", "check the login", cause="credentials")
    assert _statuses(preflight.connection("HV1", refused, "http://hv1:5985/wsman", None, NOW))["credentials"] == "fail"
    soon = preflight.connection("HV1", None, "https://hv1:5986/wsman", NOW + timedelta(days=10), NOW)
    assert _statuses(soon) == {"reachable": "ok", "tls": "warn", "credentials": "ok"}
    unsealed = PermanentHostError("HV1", "the host refused the request (HTTP 400)", "leave message_encryption at auto", cause="refused")
    assert _statuses(preflight.connection("HV1", unsealed, "http://hv1:5985/wsman", None, NOW)) == {"reachable": "ok", "tls": "fail"}
    script = PermanentHostError("HV1", "Access is denied.", "PowerShell error category PermissionDenied")
    assert _statuses(preflight.connection("HV1", script, "http://hv1:5985/wsman", None, NOW))["powershell"] == "fail"


def test_a_name_the_host_lacks_fails_the_inventory_check():
    checks = preflight.vms("HV1", ["SQL1", "APP01"], ["GONE"], [], {})
    assert _statuses(checks)["inventory_vms"] == "fail" and "GONE" in checks[0].detail


def test_make_preflight_says_which_host_is_ready_and_what_to_fix_on_the_others(tmp_path):
    scenario = {"seed": 4, "speed": 60, "hosts": [
        {"name": "HVOK", "os": "2019", "transport": "ssl", "vms": [{"name": "WEB1", "disk_gb": 10}]},
        {"name": "HVBAD", "os": "2012 R2", "transport": "ntlm", "backup_target": "\\\\nas\\backups", "wsb_installed": False,
         "clock_skew_seconds": 400, "account_groups": ["Hyper-V Administrators"], "winrm": {"max_shells_per_user": 2},
         "vms": [{"name": "OLD1", "disk_gb": 10}]},
        {"name": "HVDEBRIS", "os": "2012", "transport": "ssl", "vms": [
            {"name": "LNX1", "generation": 1, "guest": "linux", "disk_gb": 10},
            {"name": "DB1", "generation": 1, "disk_gb": 10, "checkpoints": [{"name": "Backup checkpoint", "type": "Recovery"}]}]},
    ]}
    done, out = run_demo(tmp_path, scenario, "--preflight", timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads((out / "preflight.json").read_text())
    assert all(set(c) == {"host", "check", "status", "detail", "fix"} for c in checks)
    by_host = {host: {c["check"]: c["status"] for c in checks if c["host"] == host and c["check"] != "plan"}
               for host in ("HVOK", "HVBAD", "HVDEBRIS")}
    assert set(by_host["HVOK"].values()) == {"ok"} and set(by_host["HVOK"]) >= {
        "reachable", "tls", "credentials", "powershell", "hyperv", "windows_server_backup", "rights", "backup_target",
        "target_space", "clock", "winrm_limits", "inventory_vms", "recovery_checkpoints"}
    assert {k: by_host["HVBAD"][k] for k in ("reachable", "tls", "credentials", "windows_server_backup", "rights", "backup_target",
                                               "clock", "winrm_limits", "inventory_vms")} == {
        "reachable": "ok", "tls": "ok", "credentials": "ok", "windows_server_backup": "fail", "rights": "fail",
        "backup_target": "warn", "clock": "fail", "winrm_limits": "warn", "inventory_vms": "fail"}
    assert by_host["HVDEBRIS"]["recovery_checkpoints"] == "fail"
    plans = {c["detail"].split(":")[0]: c["status"] for c in checks if c["check"] == "plan"}
    assert plans == {"WEB1": "ok", "LNX1": "warn", "DB1": "ok"}  # Linux on 2012: Saved state
    assert "not ready: HVBAD, HVDEBRIS" in done.stdout
    assert (out / "sim-state.json").exists() and (out / "catalog.sqlite").exists()
    journal = [json.loads(line) for line in (out / "sim-journal.jsonl").read_text().splitlines() if line]
    assert not [e for e in journal if e["event"] == "job_started"]  # the preflight changes nothing on a host
