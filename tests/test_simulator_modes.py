"""The mode table of docs/domain.md, reproduced by the simulator for every host version and both
locales, observed only through the real client (HyperVHook on the provider's WinRMHook)."""

from __future__ import annotations

import time

import pytest
from hyperv_backup.facts import HOST_VERSIONS
from hyperv_backup.hooks import HyperVHook
from hyperv_backup.parsers import parse_wbadmin_versions

from tests.conftest import use_connection, winrm_connection

# name -> VM spec; the expected mode per host age is written out below, from the table, not computed.
VMS = {
    "WIN": {"guest": "windows"},
    "OFF": {"guest": "windows", "state": "Off"},
    "SAVED": {"guest": "windows", "state": "Saved"},
    "LNX": {"guest": "linux", "guest_vss": "ok"},
    "LNX-NOVSS": {"guest": "linux", "guest_vss": "missing"},
    "BSD": {"guest": "freebsd"},
    "NOSVC": {"guest": "windows", "integration_services": {"vss": False, "heartbeat": True}},
    "VSSFAIL": {"guest": "windows", "guest_vss": "fails"},
    "FAT": {"guest": "windows", "generation": 1, "volumes": [{"fs": "NTFS", "role": "boot"}, {"fs": "FAT32"}]},
    "DYN": {"guest": "windows", "generation": 1, "volumes": [{"fs": "NTFS", "role": "boot", "dynamic": True}]},
}
OLD = {"WIN": "online", "OFF": "offline", "SAVED": "offline", "LNX": "saved", "LNX-NOVSS": "saved", "BSD": "saved",
       "NOSVC": "saved", "VSSFAIL": "saved", "FAT": "saved", "DYN": "saved"}
NEW = {"WIN": "online", "OFF": "offline", "SAVED": "offline", "LNX": "online", "LNX-NOVSS": "checkpoint",
       "BSD": "checkpoint", "NOSVC": "checkpoint", "VSSFAIL": "checkpoint", "FAT": "online", "DYN": "online"}
EXPECTED = {version: OLD if version in ("2008 R2", "2012") else NEW for version in HOST_VERSIONS}


def _host_name(version: str, locale: str) -> str:
    return ("H" + version.replace(" ", "") + locale[:2]).upper()


SCENARIO = {
    "seed": 3,
    "speed": 1200,
    "hosts": [
        {
            "name": _host_name(version, locale), "os": version, "locale": locale, "transport": "ssl",
            "vms": [{"name": name, "disk_gb": 2, "generation": 2 if version not in ("2008 R2", "2012") else 1} | spec
                    for name, spec in VMS.items()],
        }
        for version in HOST_VERSIONS
        for locale in ("en-US", "ja-JP")
    ],
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    import yaml

    from simulator import harness

    path = tmp_path_factory.mktemp("modes") / "modes.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    running = harness.start(path, path.parent / "certs")
    yield running
    running.stop()


def _backup(hook: HyperVHook, name: str) -> dict:
    probe = hook.run_script("Get-HvbVMBackupProbe", VMName=name, BackupTarget="E:")
    vm = probe["vms"][0]
    started = hook.run_script("Start-HvbVMBackup", VMId=vm["id"], BackupTarget="E:")
    assert started["started"] is True
    deadline = time.monotonic() + 30
    while True:
        status = hook.run_script("Get-HvbVMBackupStatus", VMId=vm["id"])
        if status["job"]["job_state"] != "Running":
            break
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.05)
    result = hook.run_script("Get-HvbVMBackupResult", VMId=vm["id"], VMName=name, SinceUtc=started["job"]["start_time_utc"])
    return {"probe": vm, "status": status, "result": result, "start": started}


@pytest.mark.parametrize("version", HOST_VERSIONS)
@pytest.mark.parametrize("locale", ["en-US", "ja-JP"])
def test_every_row_of_the_mode_table(fleet, monkeypatch, version, locale):
    host = _host_name(version, locale)
    use_connection(monkeypatch, "hv", winrm_connection(fleet.endpoints[host], fleet.ca_path))
    hook = HyperVHook("hv")
    outcomes = {name: _backup(hook, name) for name in VMS}

    state = next(h for h in fleet.state()["hosts"] if h["name"] == host)
    journal = [line for line in fleet.journal() if line["host"] == host]
    modes = {line["vms"][0]: line["mode"] for line in journal if line["event"] == "job_started"}
    assert modes == EXPECTED[version]

    for name, expected in EXPECTED[version].items():
        created = [line for line in journal if line["event"] == "checkpoint_created" and line["vm"] == name]
        removed = [line for line in journal if line["event"] == "checkpoint_removed" and line["vm"] == name]
        saved = [line for line in journal if line["event"] == "vm_state" and line["vm"] == name]
        events_10150 = [e for e in outcomes[name]["result"]["events"] if e["id"] == 10150]
        assert outcomes[name]["status"]["job"]["hresult"] == 0, name
        if expected == "checkpoint":
            assert [c["type"] for c in created] == ["Recovery"] and len(removed) == 1, name
            assert saved == []
        elif expected == "saved":
            assert [(s["from"], s["to"]) for s in saved] == [("Running", "Saved"), ("Saved", "Running")], name
            assert created == []
        else:
            assert created == [] and saved == [], name
        # A guest whose VSS failed is the case a "success" hides: only event 10150 tells.
        assert bool(events_10150) == (name == "VSSFAIL"), name
        # The uptime restarts with a recovery checkpoint or a Saved state, never online.
        uptime_before = outcomes[name]["start"]["vm"]["uptime_seconds"]
        uptime_after = outcomes[name]["status"]["vm"]["uptime_seconds"]
        if expected in ("checkpoint", "saved"):
            assert uptime_after < uptime_before, name
        elif expected == "online":
            assert uptime_after > uptime_before, name

    assert all(not [c for c in vm["checkpoints"] if c["type"] == "Recovery"] for vm in state["vms"])
    assert all(vm["disks"][0]["path"].endswith(".vhdx") for vm in state["vms"])
    assert state["max_concurrent_jobs"] == 1

    # The display name of the backup integration service is the host's own, in its language.
    services = outcomes["WIN"]["probe"]["integration_services"]
    vss = next(s for s in services if s["id"].endswith("5CED1297-4598-4915-A5FC-AD21BB4D02A4"))
    expected_name = {
        ("en-US", "old"): "Backup (volume snapshot)", ("en-US", "2012 R2"): "Backup (volume checkpoint)",
        ("en-US", "new"): "Backup (volume shadow copy)", ("ja-JP", "old"): "バックアップ (ボリューム スナップショット)",
        ("ja-JP", "2012 R2"): "バックアップ (ボリューム チェックポイント)", ("ja-JP", "new"): "バックアップ (ボリューム シャドウ コピー)",
    }[(locale, "old" if version in ("2008 R2", "2012") else "2012 R2" if version == "2012 R2" else "new")]
    assert vss["name"] == expected_name

    # wbadmin lists one version per successful job, in the host's language.
    code, stdout, _ = hook.run_text("wbadmin get versions")
    versions = parse_wbadmin_versions(stdout)
    assert code == 0 and len(versions) == len(VMS)
    assert ("バージョン識別子" in stdout) == (locale == "ja-JP")
    assert [v.version_identifier for v in versions] == [v["version_id"] for v in state["backup_versions"]]
