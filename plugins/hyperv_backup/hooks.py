"""HyperVHook: run one include/powershell script on a Hyper-V host over WinRM, get typed results.

Built on the provider's WinRMHook (its connection handling and its pywinrm Protocol); it
adds what a backup needs: parameters passed as data (`invocation`), the script started
without cmd.exe so it may be longer than 8191 characters, one JSON document parsed back,
failures turned into TransientHostError / HostBusyError / PermanentHostError, one remote
shell for many commands (`session`), and the safety rules of this project: TLS validated
unless the connection says otherwise, and no plaintext WinRM without an explicit opt-in in
the connection's extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
from airflow.providers.microsoft.winrm.hooks.winrm import WinRMHook
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from . import invocation
from .errors import HostError, PermanentHostError, TransientHostError, classify_script_error

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "include" / "powershell"
PLAINTEXT_OPT_IN = "allow_plaintext"
SHELL_NOT_FOUND = 2150858843  # WSManFault code: the ShellId is unknown to the host


SEALING = ("ntlm", "kerberos", "credssp")  # the transports that seal WinRM messages over HTTP themselves


def plaintext_risk(transport: str, endpoint: str, message_encryption: str = "auto") -> str | None:
    """What a connection would expose in clear text, or None. Over HTTPS nothing is; over HTTP, Basic sends
    the password and every message as they are, while NTLM, Kerberos and CredSSP seal each message with the
    logon's keys unless `message_encryption` is "never" (pywinrm's "auto" seals over HTTP)."""
    over_http = transport in ("plaintext", "basic") or endpoint.lower().startswith("http:")
    if not over_http:
        return None
    if transport not in SEALING:
        return f"credentials over unencrypted HTTP (transport {transport!r})"
    if message_encryption.lower() == "never":
        return f"every WinRM message unencrypted over HTTP (transport {transport!r} with message_encryption 'never')"
    return None


class HyperVHook(WinRMHook):
    """One Hyper-V host, reached through the Airflow connection `winrm_conn_id` (type winrm)."""

    def __init__(self, winrm_conn_id: str, scripts_dir: Path | None = None, keep_shell: bool = False, **kwargs: Any) -> None:
        """`keep_shell`: run every command on one remote shell until `close()` (see `session`)."""
        super().__init__(ssh_conn_id=winrm_conn_id, **kwargs)
        self.winrm_conn_id = winrm_conn_id
        self.scripts_dir = scripts_dir or SCRIPTS_DIR
        self.keep_shell, self._shell_id = keep_shell, None
        self._answered = False  # whether the current logon (winrm_protocol) has had an answer

    @cached_property
    def host_label(self) -> str:
        connection = self.get_connection(self.winrm_conn_id)
        return connection.host or self.winrm_conn_id

    def get_conn(self):
        if self.winrm_protocol is None:
            connection = self.get_connection(self.winrm_conn_id)
            extra = connection.extra_dejson
            risk = plaintext_risk(str(extra.get("transport", "plaintext")), str(extra.get("endpoint", "")),
                                  str(extra.get("message_encryption", "auto")))
            if risk and str(extra.get(PLAINTEXT_OPT_IN, "false")).lower() != "true":
                raise PermanentHostError(
                    connection.host or self.winrm_conn_id, f"connection {self.winrm_conn_id!r} would send {risk}",
                    'use transport "ssl" with "ca_trust_path", or "ntlm" or "kerberos" with message encryption; or set '
                    '"allow_plaintext": true in the extra if you accept the risk', cause="plaintext",
                )
        return super().get_conn()

    # -- running ---------------------------------------------------------------------

    def run_script(self, name: str, **params: Any) -> dict[str, Any]:
        """Run include/powershell/<name>.ps1 with `params`; return its JSON document."""
        try:
            script = (self.scripts_dir / f"{name}.ps1").read_text(encoding="utf-8")
        except OSError as error:
            raise PermanentHostError(self.host_label, f"script {name}.ps1 is missing: {error.strerror}", script=name) from None
        command = invocation.encode_command(invocation.render_script(name, script, params))
        self.log.info("%s: running %s %s", self.host_label, name, ", ".join(f"{k}={v!r}" for k, v in params.items()))
        code, stdout, stderr = self._execute(command, name, skip_cmd_shell=True)
        try:
            document = json.loads(stdout) if stdout.strip() else None
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and "error" in document and code != 0:
            raise classify_script_error(self.host_label, name, document["error"])
        if code != 0 or not isinstance(document, dict):
            detail = (stderr or stdout).strip()[:500] or "no output"
            raise PermanentHostError(self.host_label, f"exit code {code}: {detail}", "see the host's PowerShell event log", name)
        return document

    def run_text(self, command: str) -> tuple[int, str, str]:
        """Run a plain command (e.g. `wbadmin get versions`); return (exit code, stdout, stderr)."""
        return self._execute(command, command.split()[0], skip_cmd_shell=False)

    @contextmanager
    def session(self) -> Iterator[HyperVHook]:
        """Run the commands inside on one remote shell and one kept-alive HTTPS connection, as
        Ansible's WinRM connection does: 3 HTTP requests a command instead of 5, and no TLS
        handshake each time (bench/winrm_session.py). The shell is deleted on the way out, so none
        is left to count against the host's MaxShellsPerUser; one the host lost meanwhile (a
        reboot, its idle timeout) is replaced once, before the command runs."""
        kept, self.keep_shell = self.keep_shell, True
        try:
            yield self
        finally:
            self.keep_shell = kept
            if not kept:
                self.close()

    def close(self) -> None:
        """Delete the kept shell, if any (after `keep_shell=True` or inside `session`)."""
        if self._shell_id is not None:  # on a new logon if a failure cost the last one (_log_on_again)
            self._close_shell(self.get_conn(), self._shell_id)

    def _shell(self, conn) -> tuple[str, bool]:
        """The shell to run in, and whether it was opened earlier (and so may be gone)."""
        if self._shell_id is not None:
            return self._shell_id, True
        shell_id = conn.open_shell()
        if self.keep_shell:
            self._shell_id = shell_id
        return shell_id, False

    def _close_shell(self, conn, shell_id: str) -> None:
        if shell_id == self._shell_id:
            self._shell_id = None
        try:
            conn.close_shell(shell_id)
        except Exception:  # noqa: BLE001 - the shell expires on the host by itself
            self.log.debug("closing shell %s failed", shell_id)

    def _execute(self, command: str, label: str, skip_cmd_shell: bool) -> tuple[int, str, str]:
        shell_id = None
        try:
            conn = self.get_conn()
            shell_id, kept = self._shell(conn)
            try:
                command_id = conn.run_command(shell_id, command, skip_cmd_shell=skip_cmd_shell)
            except WSManFaultError as fault:
                if not (kept and fault.wsman_fault_code == SHELL_NOT_FOUND):
                    raise
                self._shell_id = shell_id = None  # the host lost the kept shell; the command never started: a new one
                shell_id, _ = self._shell(conn)
                command_id = conn.run_command(shell_id, command, skip_cmd_shell=skip_cmd_shell)
            stdout, stderr = [], []
            done, code = False, None
            while not done:
                try:
                    out, err, code, done = conn.get_command_output_raw(shell_id, command_id)
                except WinRMOperationTimeoutError:
                    continue  # the host is still working: Windows answers a long Receive with TimedOut
                stdout.append(out)
                stderr.append(err)
            try:
                conn.cleanup_command(shell_id, command_id)
            except Exception:  # noqa: BLE001 - output is in hand; a failed clean-up changes nothing
                self.log.debug("cleanup of command %s failed", command_id)
        except HostError:
            raise
        except Exception as error:
            failure = self._transport_error(error, label)  # first: whether this logon had answered tells a lost one (400)
            self._log_on_again()  # the failure may have cost the logon; the next command must not reuse it
            if shell_id is not None:  # a shell that saw a failure is not used again
                self._close_shell(self.get_conn(), shell_id)
            raise failure from None
        self._answered = True
        if not self.keep_shell:
            self._close_shell(conn, shell_id)
        return int(code if code is not None else -1), b"".join(stdout).decode("utf-8", "replace"), b"".join(stderr).decode("utf-8", "replace")

    def _log_on_again(self) -> None:
        """Forget the logon, so that the next command makes a new one (a new pywinrm Protocol and HTTP session).

        An NTLM or Kerberos logon over HTTP lives as long as its TCP connection, and seals every message with
        its keys. When the connection is cut (a host's restart, a dropped connection, a closed idle one), the
        HTTP session connects again by itself, and pywinrm sends the next message sealed with the lost logon's
        keys: the host answers 401, the client logs on again and resends the same sealed body, and the host,
        whose new logon has other keys, cannot read it (400). Over HTTPS nothing is lost but a TLS handshake."""
        self.winrm_protocol, self._answered = None, False

    def _transport_error(self, error: Exception, label: str) -> HostError:
        host = self.host_label
        if isinstance(error, requests.exceptions.SSLError):
            return PermanentHostError(host, f"TLS verification failed: {error}",
                                      'put the CA that signed the host\'s WinRM HTTPS certificate in the connection extra "ca_trust_path"', label,
                                      cause="tls")
        if isinstance(error, InvalidCredentialsError):
            return PermanentHostError(host, "the host refused the credentials",
                                      f"check the login and password of connection {self.winrm_conn_id!r}", label, cause="credentials")
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return TransientHostError(host, "connection lost (refused, cut or timed out)",
                                      f"check that the host is up, that its WinRM service runs (Test-WSMan from another machine) "
                                      f"and that {self._endpoint_words()} is open in its firewall", label, cause="unreachable")
        if isinstance(error, WinRMTransportError) and error.code == 400 and self._answered:
            return TransientHostError(host, "the host could not read a sealed message: the connection's logon was lost "
                                      "(the host restarted, or it closed the connection)", "the next try logs on again", label)
        if isinstance(error, WinRMTransportError) and error.code == 400:
            return PermanentHostError(host, "the host refused the request (HTTP 400)",
                                      "a host refuses unencrypted messages over HTTP (WinRM's AllowUnencrypted is false by default): "
                                      'leave the connection\'s "message_encryption" at "auto", or use HTTPS', label, cause="refused")
        if isinstance(error, WSManFaultError) and error.wsman_fault_code == SHELL_NOT_FOUND:
            return TransientHostError(host, "the host's WinRM service no longer knew our remote shell (WinRM restarted, or closed "
                                      "the shell as idle)", "if it repeats, see the host's Microsoft-Windows-WinRM/Operational "
                                      "event log, and its shell idle timeout (winrm get winrm/config/winrs)", label)
        if isinstance(error, WSManFaultError):
            said = " ".join(str(error.reason or error).split()).split(". ")[0].rstrip(".")  # its first sentence: what went wrong
            return TransientHostError(host, f"WinRM refused the request (fault {error.wsman_fault_code}: {said})",
                                      "see the host's Microsoft-Windows-WinRM/Operational event log", label)
        if isinstance(error, (WinRMTransportError, WinRMError)):
            return TransientHostError(host, f"WinRM answered with an error: {error}",
                                      "see the host's Microsoft-Windows-WinRM/Operational event log", label)
        return PermanentHostError(host, f"unexpected failure talking to the host: {error}",
                                  "see the task log; this is a defect worth reporting if it repeats", label)

    def _endpoint_words(self) -> str:
        """`port 5986` (from the connection's endpoint or port), for advice an administrator can act on."""
        connection = self.get_connection(self.winrm_conn_id)
        endpoint = str(connection.extra_dejson.get("endpoint") or "")
        port = endpoint.rsplit(":", 1)[-1].split("/")[0] if endpoint.count(":") >= 2 else connection.port
        return f"port {port}" if port else "the WinRM port (5985 HTTP, 5986 HTTPS)"
