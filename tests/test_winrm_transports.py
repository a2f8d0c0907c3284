"""The simulator through the real client: the provider's WinRMHook and pywinrm, on every transport."""

from __future__ import annotations

import time

import pytest
from airflow.providers.microsoft.winrm.hooks.winrm import WinRMHook
from hyperv_backup.errors import PermanentHostError, TransientHostError
from hyperv_backup.hooks import HyperVHook

from tests.conftest import use_connection, winrm_connection

SCENARIO = {
    "seed": 1,
    "speed": 600,
    "hosts": [
        {"name": "HVSSL", "os": "2022", "transport": "ssl", "vms": [{"name": "VM1", "disk_gb": 1}]},
        {"name": "HVPLAIN", "os": "2016", "transport": "plaintext", "password": "Pl@in'\"pass", "vms": [{"name": "VM1", "disk_gb": 1}]},
        {"name": "HVNTLM", "os": "2019", "transport": "ntlm", "vms": [{"name": "VM1", "disk_gb": 1}]},
    ],
}


@pytest.fixture
def fleet(start_fleet):
    return start_fleet(SCENARIO)


def test_provider_hook_runs_hostname_over_https_with_a_validated_certificate(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_ssl", winrm_connection(fleet.endpoints["HVSSL"], fleet.ca_path))
    code, stdout, stderr = WinRMHook(ssh_conn_id="hv_ssl").run("hostname")
    assert code == 0
    assert b"".join(stdout).decode().strip() == "HVSSL"
    assert WinRMHook(ssh_conn_id="hv_ssl").test_connection() == (True, "Connection successful.")


def test_plaintext_basic_over_http_works_when_opted_in(fleet, monkeypatch):
    endpoint = fleet.endpoints["HVPLAIN"]
    assert endpoint.url.startswith("http://")
    use_connection(monkeypatch, "hv_plain", winrm_connection(endpoint, None, password="Pl@in'\"pass"))
    assert HyperVHook("hv_plain").run_text("hostname")[1].strip() == "HVPLAIN"


def test_plaintext_is_refused_without_the_opt_in(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_plain", winrm_connection(fleet.endpoints["HVPLAIN"], None, allow_plaintext=False,
                                                             password="Pl@in'\"pass"))
    with pytest.raises(PermanentHostError, match="unencrypted HTTP"):
        HyperVHook("hv_plain").run_text("hostname")
    assert fleet.state()["hosts"][1]["requests"] == 0  # nothing was sent, so no password crossed the wire


def test_bad_credentials_are_refused_with_401(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_bad", winrm_connection(fleet.endpoints["HVSSL"], fleet.ca_path, password="wrong"))
    with pytest.raises(PermanentHostError, match="refused the credentials") as caught:
        HyperVHook("hv_bad").run_script("Get-HvbVMBackupProbe", VMName="VM1", BackupTarget="E:")
    assert "wrong" not in str(caught.value)
    ok, message = WinRMHook(ssh_conn_id="hv_bad").test_connection()
    assert not ok and "credentials" in message


def test_an_untrusted_certificate_is_refused(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_untrusted", winrm_connection(fleet.endpoints["HVSSL"], None))
    with pytest.raises(PermanentHostError, match="TLS verification failed") as caught:
        HyperVHook("hv_untrusted").run_text("hostname")
    assert "ca_trust_path" in caught.value.advice


def test_unknown_commands_fail_as_on_windows(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_ssl", winrm_connection(fleet.endpoints["HVSSL"], fleet.ca_path))
    code, stdout, stderr = HyperVHook("hv_ssl").run_text("format c:")
    assert code == 1 and stdout == ""
    assert "'format' is not recognized" in stderr


def test_wbadmin_without_backups_writes_to_stderr(fleet, monkeypatch):
    use_connection(monkeypatch, "hv_ssl", winrm_connection(fleet.endpoints["HVSSL"], fleet.ca_path))
    code, stdout, stderr = HyperVHook("hv_ssl").run_text("wbadmin get versions")
    assert "Backup command-line tool" in stdout
    assert "No backups were found" in stderr


def _host(fleet, name="HVSSL"):
    return next(h for h in fleet.state()["hosts"] if h["name"] == name)


def test_a_session_runs_its_commands_on_one_shell_and_deletes_it(fleet, monkeypatch):
    """Without a session each command opens and deletes a shell: 5 requests (Create, Command,
    Receive, Signal, Delete); in one, 3 a command plus one Create and one Delete."""
    use_connection(monkeypatch, "hv_ssl", winrm_connection(fleet.endpoints["HVSSL"], fleet.ca_path))
    hook = HyperVHook("hv_ssl")
    before = _host(fleet)["requests"]
    for _ in range(4):
        hook.run_script("Get-HvbHostVMs")
    alone = _host(fleet)["requests"] - before
    with hook.session():
        for _ in range(4):
            hook.run_script("Get-HvbHostVMs")
        assert _host(fleet)["open_shells"] == 1
    together = _host(fleet)["requests"] - before - alone
    assert (alone, together) == (4 * 5, 4 * 3 + 2)
    assert _host(fleet)["open_shells"] == 0


def test_a_session_replaces_a_shell_the_host_lost(start_fleet, monkeypatch):
    """The host forgets the kept shell (here: a fault answers 'shell not found' to the next Command,
    as after an idle timeout): the command runs once, in a new shell, and the caller sees nothing."""
    running = start_fleet({"seed": 1, "speed": 600, "hosts": [{"name": "HV01", "os": "2022", "transport": "ssl", "vms": [
        {"name": "VM1", "disk_gb": 1, "faults": [{"kind": "soap_fault", "at": "snapshot"}]}]}]})
    use_connection(monkeypatch, "hv", winrm_connection(running.endpoints["HV01"], running.ca_path))
    with HyperVHook("hv").session() as hook:
        vm_id = hook.run_script("Get-HvbVMBackupProbe", VMName="VM1", BackupTarget="E:")["vms"][0]["id"]
        assert hook.run_script("Start-HvbVMBackup", VMId=vm_id, BackupTarget="E:")["started"]
    starts = [e for e in running.journal() if e["event"] == "command" and e.get("script") == "Start-HvbVMBackup"]
    assert len(starts) == 1 and _host(running, "HV01")["open_shells"] == 0


def test_ntlm_over_http_seals_every_message_and_runs_the_scripts(fleet, monkeypatch):
    """NTLM (Negotiate) with message encryption over HTTP, as most Windows hosts speak it: the real client
    (the provider's hook, pywinrm, requests-ntlm) authenticates the connection once and seals each message."""
    endpoint = fleet.endpoints["HVNTLM"]
    assert endpoint.transport == "ntlm" and endpoint.url.startswith("http://")
    use_connection(monkeypatch, "hv_ntlm", winrm_connection(endpoint, None))
    hook = HyperVHook("hv_ntlm")
    with hook.session():
        assert hook.run_text("hostname")[1].strip() == "HVNTLM"
        probe = hook.run_script("Get-HvbVMBackupProbe", VMName="VM1", BackupTarget="E:")
    assert probe["vms"][0]["name"] == "VM1"
    assert WinRMHook(ssh_conn_id="hv_ntlm").test_connection() == (True, "Connection successful.")
    host = next(h for h in fleet.state()["hosts"] if h["name"] == "HVNTLM")
    assert host["open_shells"] == 0


def test_ntlm_refuses_a_wrong_password_basic_and_unsealed_messages(fleet, monkeypatch):
    endpoint = fleet.endpoints["HVNTLM"]
    use_connection(monkeypatch, "hv_ntlm_bad", winrm_connection(endpoint, None, password="wrong"))
    with pytest.raises(PermanentHostError, match="refused the credentials") as caught:
        HyperVHook("hv_ntlm_bad").run_text("hostname")
    assert "wrong" not in str(caught.value)
    # Basic is not accepted on a Negotiate-only listener (opted in to plaintext, the password would be sent: refused)
    use_connection(monkeypatch, "hv_ntlm_basic", winrm_connection(endpoint, None, transport="plaintext", allow_plaintext=True))
    with pytest.raises(PermanentHostError, match="refused the credentials"):
        HyperVHook("hv_ntlm_basic").run_text("hostname")
    # NTLM without sealing over HTTP: the hook refuses it before sending anything, unless opted in; the host refuses it then
    requests_before = next(h for h in fleet.state()["hosts"] if h["name"] == "HVNTLM")["requests"]
    use_connection(monkeypatch, "hv_ntlm_clear", winrm_connection(endpoint, None, message_encryption="never"))
    with pytest.raises(PermanentHostError, match="unencrypted over HTTP"):
        HyperVHook("hv_ntlm_clear").run_text("hostname")
    assert next(h for h in fleet.state()["hosts"] if h["name"] == "HVNTLM")["requests"] == requests_before
    use_connection(monkeypatch, "hv_ntlm_clear", winrm_connection(endpoint, None, message_encryption="never", allow_plaintext=True))
    with pytest.raises(PermanentHostError):
        HyperVHook("hv_ntlm_clear").run_text("hostname")


@pytest.mark.parametrize(("transport", "endpoint", "encryption", "risk"), [
    ("ssl", "https://hv01:5986/wsman", "auto", None),
    ("ntlm", "https://hv01:5986/wsman", "never", None),  # TLS protects it
    ("ntlm", "http://hv01:5985/wsman", "auto", None),  # sealed with the logon's keys
    ("kerberos", "http://hv01:5985/wsman", "always", None),
    ("ntlm", "http://hv01:5985/wsman", "never", "every WinRM message"),
    ("plaintext", "http://hv01:5985/wsman", "auto", "credentials"),
    ("basic", "", "auto", "credentials"),
    ("ssl", "http://hv01:5985/wsman", "auto", "credentials"),  # Basic, whatever the name says, over HTTP
])
def test_what_a_connection_would_expose_in_clear_text(transport, endpoint, encryption, risk):
    from hyperv_backup.hooks import plaintext_risk

    found = plaintext_risk(transport, endpoint, encryption)
    assert (found is None) if risk is None else found.startswith(risk)


@pytest.mark.parametrize("cut", ["reboot", "connection_drop"])
def test_a_kept_ntlm_hook_logs_on_again_after_the_host_restarts_or_cuts_the_connection(start_fleet, monkeypatch, cut):
    """An NTLM logon lives as long as its TCP connection. After a host's restart, or a connection cut mid-request,
    a hook kept across polls (a trigger's) must log on again: sealed with the lost logon's keys, its next message
    cannot be read by the host (HTTP 400), and taking that for a wrong setting failed healthy backups for good."""
    faults = [{"kind": "connection_drop", "at": "snapshot"}] if cut == "connection_drop" else []
    running = start_fleet({"seed": 1, "speed": 600, "hosts": [{"name": "HVN", "os": "2019", "transport": "ntlm",
                                                                "faults": faults, "vms": [{"name": "VM1", "disk_gb": 1}]}]})
    use_connection(monkeypatch, "hv_n", winrm_connection(running.endpoints["HVN"], None))
    hook = HyperVHook("hv_n", keep_shell=True)
    vm_id = hook.run_script("Get-HvbVMBackupProbe", VMName="VM1", BackupTarget="E:")["vms"][0]["id"]
    if cut == "reboot":
        running.reboot("HVN")
    answers, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            answers.append(hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)["clock_utc"])
            break
        except TransientHostError as error:  # the host is still down, or the cut itself: the caller polls again
            answers.append(error.message)
            time.sleep(0.5)
    assert answers[-1].startswith("20"), answers  # an answer (its clock), not an error
    assert len(answers) > 1, answers  # the cut was seen: a transient error came first
    hook.close()
    assert _host(running, "HVN")["open_shells"] == 0
