"""The inventory is a pydantic model read from YAML: each mistake is one error naming the file, the line
and the key, and what is written is what is read (YAML 1.1 would mangle `Off`, `0123` and `22:00`)."""

from __future__ import annotations

import pytest
from hyperv_backup.inventory import HostEntry, InventoryError, parse_inventory
from hyperv_backup.windows import Window

HOST = "hosts:\n  - name: HV01\n    connection: c\n"


@pytest.mark.parametrize(("text", "expected"), [
    (HOST + "    windw: {start: '22:00'}\n", r"line 4: unknown key `windw` in a host; allowed: name, connection,"),
    ("hosts:\n  - name: HV01\n", r"line 2: a host needs `connection`"),
    ("mail: {to: [a@b.test]}\n", r"line 1: the inventory needs `hosts`"),
    (HOST + "    window: {grace_minutes: -5}\n", r"line 4: `grace_minutes` is '-5'; input should be greater than or equal to 0"),
    (HOST + "    window:\n      start: 25:00\n", r"line 5: `start` '25:00' is not a time of day; expected HH:MM"),
    (HOST + "    window: {timezone: Mars/Base}\n", r"line 4: `timezone` 'Mars/Base' is not a known time zone"),
    (HOST + "    window: {start: '22:00', bogus: 1}\n", r"line 4: unknown key `bogus` in a window; allowed: start, end"),
    (HOST + "    schedule: nightly\n", r"line 4: `schedule` 'nightly' is not a cron expression"),
    (HOST + "    rpo_hours: lots\n", r"line 4: `rpo_hours` must be a number, not 'lots'"),
    (HOST + "    priority: {SQL01: 5000}\n", r"line 4: `SQL01` is '5000'; input should be less than or equal to 1000"),
    (HOST + "    clean_recovery_checkpoints: maybe\n", r"line 4: `clean_recovery_checkpoints` must be true or false, not 'maybe'"),
    (HOST + "    name: HV02\n", r"line 4: `name` is given twice"),
    # the walker's rules, not pydantic's lax ones: no `5.0` for an integer, no `t` or `1` for true
    (HOST + "    priority: {SQL01: 5.0}\n", r"line 4: `SQL01` must be an integer, not '5.0'"),
    (HOST + "    window: {grace_minutes: 1.5}\n", r"line 4: `grace_minutes` must be an integer, not '1.5'"),
    (HOST + "    clean_recovery_checkpoints: t\n", r"line 4: `clean_recovery_checkpoints` must be true or false, not 't'"),
    (HOST + "  - {name: hv01, connection: d}\n", r"line 1: a host is listed twice"),
    (HOST + "mail: {to: [a@b.test], cc: [x]}\n", r"line 4: unknown key `cc` in mail; allowed: to, admins"),
    ("- HV01\n", r"line 1: the inventory must be a mapping"),
    ("", r"the inventory is empty"),
    ("hosts:\n  - name: ''\n    connection: c\n", r"line 2: `name` must be 1 to 100 printable characters"),
    ("hosts:\n  - name: HV 01\n    connection: c\n", r"line 2: `name` 'HV 01' is not a host name \(letters, digits"),
    ("hosts:\n  - name: hv/03\n    connection: c\n", r"line 2: `name` 'hv/03' is not a host name"),
    (HOST + "    vms: [DC01, ~, SQL01]\n", r"line 4: `vms` \(item 2\) is empty \(YAML reads ~, null and nothing at all as no value\)"),
])
def test_a_mistake_names_the_file_the_line_and_the_key(text, expected):
    with pytest.raises(InventoryError, match=r"^inv\.yaml(, |: )" + f".*{expected}"):
        parse_inventory(text, "inv.yaml")


def test_what_is_written_is_read_and_omitted_fields_take_their_declared_defaults():
    inventory = parse_inventory(HOST + "    window: {start: 21:30, timezone: Europe/Berlin}\n    vms:\n    exclude: [Off, 0123]\n"
                                "    rpo_hours: 1e1\n    clean_recovery_checkpoints: on\nmail: {to: [r@x.test]}\n", "inv.yaml")
    (host,) = inventory.hosts
    assert host.window == Window("21:30", "06:00", "Europe/Berlin") and host.vms == [] and host.exclude == ["Off", "0123"]
    assert (host.rpo_hours, host.clean_recovery_checkpoints, host.schedule, host.backup_target) == (10.0, True, "0 22 * * *", "E:")
    assert inventory.mail_to == inventory.admin_recipients == ["r@x.test"]
    assert HostEntry(name="HV01", connection="c").window == Window()


def test_require_gives_each_vm_the_modes_every_matching_pattern_allows():
    entry = parse_inventory("hosts:\n  - name: HV1\n    connection: c\n    require: {'SQL*': [online, checkpoint], SQL01: [online],"
                            " NO: [saved]}\n", "i.yaml").hosts[0]
    assert entry.allowed_modes("SQL01") == ["online"] and entry.allowed_modes("SQL02") == ["online", "checkpoint"]
    assert entry.allowed_modes("NO") == ["saved"]  # a YAML 1.1 boolean word stays a VM name
    assert entry.allowed_modes("WEB") is None  # not named: any mode
    with pytest.raises(InventoryError, match=r"i.yaml, line 4: `SQL` is 'fast'"):
        parse_inventory("hosts:\n  - name: HV1\n    connection: c\n    require: {SQL: [fast]}\n", "i.yaml")
