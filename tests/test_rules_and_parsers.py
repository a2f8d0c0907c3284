"""Pure tests: the mode prediction of every row of the table and every name variant, and wbadmin text."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hyperv_backup.facts import HOST_VERSIONS, Mode
from hyperv_backup.parsers import parse_wbadmin_versions
from hyperv_backup.rules import Prediction, actual_mode, predict_mode, vss_service

VSS_NAMES = ["Backup (volume snapshot)", "Backup (volume checkpoint)", "Backup (volume shadow copy)", "VSS",
             "バックアップ (ボリューム スナップショット)", "バックアップ (ボリューム チェックポイント)", "バックアップ (ボリューム シャドウ コピー)"]
NTFS = json.dumps([{"fs": "NTFS", "role": "boot", "dynamic": False}])


def _vm(state="Running", guest="Windows Server 2019", vss=True, status="OK", volumes=NTFS, name="VSS", service_id="x"):
    return {"state": state, "guest_os": guest, "guest_volumes": volumes,
            "integration_services": [{"name": name, "id": service_id, "enabled": vss, "primary_status": status}]}


@pytest.mark.parametrize("name", VSS_NAMES)
def test_every_display_name_of_the_backup_service_is_recognised(name):
    assert vss_service([{"name": "Heartbeat", "id": "h"}, {"name": name, "id": "other"}])["name"] == name


def test_the_language_independent_id_wins():
    service = {"name": "whatever", "id": "Microsoft:5CED1297-4598-4915-A5FC-AD21BB4D02A4"}
    assert vss_service([service]) is service


@pytest.mark.parametrize("version", HOST_VERSIONS)
def test_the_mode_table(version):
    old = version in ("2008 R2", "2012")
    fallback = Mode.SAVED if old else Mode.CHECKPOINT
    assert predict_mode(version, _vm(state="Off")).mode == Mode.OFFLINE
    assert predict_mode(version, _vm(state="Saved")).mode == Mode.OFFLINE
    assert predict_mode(version, _vm()).mode == Mode.ONLINE
    assert predict_mode(version, _vm(vss=False)).mode == fallback
    assert predict_mode(version, _vm(status="No Contact")).mode == fallback
    assert predict_mode(version, _vm(guest="FreeBSD 14.1")).mode == fallback
    assert predict_mode(version, _vm(guest="Ubuntu 24.04 LTS")).mode == (Mode.SAVED if old else Mode.ONLINE)
    fat = json.dumps([{"fs": "FAT32", "role": "efi"}, {"fs": "NTFS"}])
    assert predict_mode(version, _vm(volumes=fat)).mode == (Mode.SAVED if old else Mode.ONLINE)
    dynamic = json.dumps([{"fs": "NTFS", "dynamic": True}])
    assert predict_mode(version, _vm(volumes=dynamic)).mode == (Mode.SAVED if old else Mode.ONLINE)


def test_reasons_tell_the_admin_what_to_fix():
    reasons = " ".join(predict_mode("2019", _vm(vss=False)).reasons)
    assert "enable it" in reasons and "uptime restarts" in reasons
    assert "hv_vss_daemon" in " ".join(predict_mode("2019", _vm(guest="Ubuntu", status="No Contact")).reasons)


def test_event_10150_means_not_online_even_after_success():
    online = Prediction(Mode.ONLINE, ["guest VSS takes part"])
    mode, reasons = actual_mode(online, "2019", [{"id": 10150}], False, False)
    assert mode == Mode.CHECKPOINT and "10150" in reasons[0]
    assert actual_mode(online, "2012", [{"id": 10150}], True, False)[0] == Mode.SAVED
    assert actual_mode(online, "2019", [{"id": 4}], False, False)[0] == Mode.ONLINE


ENGLISH = """wbadmin 1.0 - Backup command-line tool\r
(C) Copyright Microsoft Corporation. All rights reserved.\r
\r
Backup time: 4/18/2025 10:12 PM\r
Backup location: Fixed Disk labeled E:\r
Version identifier: 04/18/2025-22:12\r
Can recover: Volume(s), File(s), Application(s), Bare Metal Recovery, System State\r
Snapshot ID: {8b4b7f3c-0000-4000-8000-000000000001}\r
\r
Backup time: 4/19/2025 9:05 AM\r
Backup location: Fixed Disk labeled E:\r
Version identifier: 04/19/2025-09:05\r
Can recover: Application(s)\r
\r
"""
JAPANESE = """wbadmin 1.0 - バックアップ コマンドライン ツール
(C) Copyright Microsoft Corporation. All rights reserved.

バックアップ時間: 2025/04/19 9:05
バックアップの場所: 固定ディスク (ラベル E:)
バージョン識別子: 04/19/2025-00:05
回復できる項目: ボリューム, アプリケーション

バックアップ時間: 2025/04/18 22:12
バックアップの場所: 固定ディスク (ラベル E:)
バージョン識別子: 04/18/2025-13:12
回復できる項目: アプリケーション
"""


def test_wbadmin_versions_in_english():
    versions = parse_wbadmin_versions(ENGLISH)
    assert [v.version_identifier for v in versions] == ["04/18/2025-22:12", "04/19/2025-09:05"]
    assert versions[0].backup_time == datetime(2025, 4, 18, 22, 12)
    assert versions[1].backup_time == datetime(2025, 4, 19, 9, 5)
    assert versions[0]["can_recover"] == ["Volume(s)", "File(s)", "Application(s)", "Bare Metal Recovery", "System State"]
    assert versions[0].backup_location == "Fixed Disk labeled E:"


def test_wbadmin_versions_in_japanese_oldest_first():
    versions = parse_wbadmin_versions(JAPANESE)
    assert [v.version_identifier for v in versions] == ["04/18/2025-13:12", "04/19/2025-00:05"]
    assert versions[0].backup_time == datetime(2025, 4, 18, 22, 12)
    assert versions[1].can_recover == ["ボリューム", "アプリケーション"]


def test_no_backups_gives_an_empty_list():
    assert parse_wbadmin_versions("wbadmin 1.0 - Backup command-line tool\r\n\r\n") == []
    assert parse_wbadmin_versions("") == []


def test_a_hosts_error_reads_as_one_sentence_then_the_advice():
    """The host's own message often ends with a period (PowerShell's do): the advice, written to follow a sentence,
    goes on it after a semicolon, never as a sentence of its own that starts in lower case."""
    from hyperv_backup.errors import classify_script_error

    gone = classify_script_error("HV01", "Get-HvbVMBackupStatus", {
        "message": 'Hyper-V was unable to find a virtual machine with ID "02C7".', "category": "ObjectNotFound"})
    assert str(gone) == ('HV01 (Get-HvbVMBackupStatus): Hyper-V was unable to find a virtual machine with ID "02C7"; '
                         "check that the VM and the backup target still exist on the host")
    bare = classify_script_error("HV01", "Start-HvbVMBackup", {"message": "no such target", "category": "ObjectNotFound"})
    assert str(bare).startswith("HV01 (Start-HvbVMBackup): no such target; check")
