"""The scenario file is validated: every error names the key and its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_fleet_loads_with_defaults_filled_in():
    scenario = load_scenario(ROOT / "include" / "demo-fleet.yaml")
    assert [h.name for h in scenario.hosts] == ["HV2012", "HV2012R2", "HV2019"]
    dc01 = scenario.hosts[1].vms[0]
    assert dc01.name == "DC01" and dc01.integration_services.model_dump() == {"vss": True, "heartbeat": True}
    assert [v.fs for v in dc01.volumes] == ["FAT32", "NTFS"]  # generation 2: the EFI system partition is FAT32


def test_only_name_is_required():
    scenario = parse_scenario("hosts:\n  - name: HV01\n    vms:\n      - name: A\n")
    host = scenario.hosts[0]
    assert (scenario.seed, scenario.speed, host.os, host.transport, host.vms[0].state) == (7, 60.0, "2022", "ssl", "Running")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hosts:\n  - name: HV01\n    vms:\n      - name: A\n        guest_vs: ok\n", r"line 5: unknown key `guest_vs` in a VM"),
        ("hosts:\n  - name: HV01\n    os: '2003'\n", r"line 3: `os` is '2003'; expected one of"),
        ("seed: 1\nspeeed: 3\n", r"line 2: unknown key `speeed` in the scenario"),
        ("hosts:\n  - name: HV01\n    os: '2012'\n    vms:\n      - {name: A, generation: 2}\n",
         r"line 5: VM 'A' is generation 2, which needs a host of 2012 R2 or newer"),
        ("hosts:\n  - name: HV01\n    vms:\n      - name: A\n        faults: [{kind: gremlins, at: copy}]\n",
         r"line 5: `kind` is 'gremlins'"),
        ("hosts:\n  - name: HV01\n    vms:\n      - name: A\n        disk_gb: -1\n", r"line 5: `disk_gb` is '-1'; input should be greater than or equal to 0.001"),
        ("hosts:\n  - {name: HV01}\n  - {name: hv01}\n", r"host name\(s\) given more than once: HV01"),
        ("hosts: [\n", r"not valid YAML"),
        ("hosts:\n  - name: HV01\n    backup_target: E:\n", r"such as the drive E:, must be quoted"),
        ("hosts:\n  - name: HV01\n    faults:\n      - {kind: target_full, at: probe}\n",
         r"line 4: a `target_full` fault cannot strike at `probe`; it strikes at copy"),
        ("hosts:\n  - name: HV01\n    faults: [{kind: vss_transient, at: verify}]\n", r"strikes at snapshot or copy"),
        # a plain null is no string, whichever YAML parser composed it (libyaml marks plain scalars '', PyYAML None)
        ("hosts:\n  - name: HV01\n    os:\n", r"line 3: `os` is empty \(YAML reads ~, null"),
        ("hosts:\n  - name: ~\n", r"line 2: `name` is empty"),
        ("hosts:\n  - name: HV01\n    vms: [{name: A}, {name: ~}]\n", r"line 3: `name` is empty"),
    ],
)
def test_errors_name_the_key_and_line(text, expected):
    with pytest.raises(ScenarioError, match=expected) as caught:
        parse_scenario(text, "fleet.yaml")
    assert str(caught.value).startswith("fleet.yaml")


def test_a_fault_without_at_gets_the_step_its_kind_belongs_to():
    scenario = parse_scenario("hosts:\n  - name: HV01\n    faults: [{kind: merge_stuck}]\n")
    fault = scenario.hosts[0].faults[0]
    assert (fault.at, fault.times) == ("merge", 1)


def test_values_yaml_1_1_would_mangle_stay_as_written():
    """`Off`, `NO`, `on`, `yes`, `0123`, `1e3` unquoted: YAML 1.1 makes booleans and numbers of them."""
    text = ("hosts:\n  - name: NO\n    os: 2012 R2\n    backup_target: 'E:'\n    password: 0123\n    vms:\n"
            "      - {name: Off, state: Off}\n      - {name: on, state: Saved}\n      - {name: yes}\n"
            "      - {name: 0123, disk_gb: 1e3}\n      - name: 1e3\n        integration_services: {vss: off, heartbeat: yes}\n")
    host = parse_scenario(text).hosts[0]
    assert (host.name, host.os, host.password) == ("NO", "2012 R2", "0123")
    assert [v.name for v in host.vms] == ["Off", "on", "yes", "0123", "1e3"]
    assert [v.state for v in host.vms[:2]] == ["Off", "Saved"] and host.vms[3].disk_gb == 1000
    assert host.vms[4].integration_services.model_dump() == {"vss": False, "heartbeat": True}


def test_an_inventory_with_such_names_and_an_unquoted_window_reads_as_written(tmp_path):
    from hyperv_backup.inventory import parse_inventory

    text = ("hosts:\n  - name: NO\n    connection: winrm_no\n    backup_target: 'E:'\n    schedule: 0 22 * * *\n"
            "    window: {start: 22:00, end: 06:00, timezone: UTC}\n    vms: [Off, 0123, on]\n    priority: {Off: 1}\n")
    entry = parse_inventory(text, "inventory.yaml").hosts[0]
    assert (entry.name, entry.window.start, entry.window.end) == ("NO", "22:00", "06:00")
    assert entry.vms == ["Off", "0123", "on"] and entry.priority == {"Off": 1}


def test_ntlm_hosts_that_share_a_user_name_must_share_its_password():
    host = "  - {{name: {name}, transport: ntlm, username: backup-svc, password: '{password}'}}\n"
    same = "hosts:\n" + host.format(name="A", password="x1") + host.format(name="B", password="x1")
    assert [h.transport for h in parse_scenario(same, "s.yaml").hosts] == ["ntlm", "ntlm"]
    with pytest.raises(ScenarioError, match="share the user name.*backup-svc"):
        parse_scenario("hosts:\n" + host.format(name="A", password="x1") + host.format(name="B", password="x2"), "s.yaml")


def test_the_fault_table_in_the_docs_is_the_registry():
    """docs/scenario.md's table of fault kinds says what `simulator.faults.KINDS` declares: each kind's effect
    and the steps where it can strike, and no kind more or less."""
    from hyperv_backup.facts import STEPS

    from simulator.faults import KINDS

    table = (ROOT / "docs" / "scenario.md").read_text().split("## Faults", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0].strip("` "): [c.strip() for c in cells[1:]]
            for line in table.splitlines() if line.startswith("| `")
            for cells in [line.strip("|").split("|")]}
    assert set(rows) == set(KINDS)
    for name, kind in KINDS.items():
        effect, steps = rows[name]
        assert effect == kind.effect, name
        assert steps == ("any step" if kind.steps == STEPS else ", ".join(kind.steps)), name


def test_each_layer_is_given_only_the_kinds_that_strike_there():
    from simulator import faults

    assert faults.striking(faults.HOST, "copy") == ("host_reboot", "vss_transient", "target_full")
    assert faults.striking(faults.COMMAND, "snapshot") == ("job_running", "vm_removed")
    assert faults.striking(faults.HOST, "verify") == ()
    assert set(faults.striking(faults.PROTOCOL, "verify")) == {"connection_drop", "slow", "soap_fault", "auth_fail", "host_reboot"}
    # a restart during the job's phases is the host's own moment, planned on the job's timeline; at a command elsewhere
    assert faults.striking(faults.HOST, "merge") == ("host_reboot", "merge_stuck")
    assert "host_reboot" not in faults.striking(faults.PROTOCOL, "copy")


@pytest.mark.parametrize(("text", "expected"), [
    ("hosts:\n  - name: HV01\n    faults: {kind: slow}\n", r"line 3: `faults` is \{'kind': 'slow'\}; input should be a valid list"),
    ("hosts: HV01\n", r"line 1: `hosts` is 'HV01'; input should be a valid list"),
    ("hosts:\n  - name: HV01\n    winrm: {max_shells: 5}\n", r"line 3: unknown key `max_shells` in winrm; allowed: max_shells_per_user"),
    ("hosts:\n  - name: HV01\n    vms:\n      - name: A\n        integration_services: {vss: maybe}\n",
     r"line 5: `vss` must be true or false, not 'maybe'"),
    ("hosts:\n  - name: HV01\n    os: '2012'\n    vms:\n      - {name: A, generation: 1}\n      - {name: B}\n",
     r"line 6: VM 'B' is generation 2"),  # the VM's own line, not its host's
    ("hosts:\n  - name: HV01\n    vms:\n      - name: A\n        faults: [{at: copy}]\n", r"line 5: a fault needs `kind`"),
])
def test_a_value_of_the_wrong_shape_names_its_key_and_line(text, expected):
    with pytest.raises(ScenarioError, match=expected):
        parse_scenario(text, "fleet.yaml")
