"""HyperVHook: run one include/powershell script on a Hyper-V host over WinRM, get typed results.

Built on the provider's WinRMHook (its connection handling and its pywinrm Protocol); it
adds what a backup needs: parameters passed as data (`invocation`), the script started
without cmd.exe so it may be longer than 8191 characters, one JSON document parsed back,
failures turned into TransientHostError / HostBusyError / PermanentHostError, and the
safety rules of this project: TLS validated unless the connection says otherwise, and
no plaintext WinRM without an explicit opt-in in the connection's extra.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
from airflow.providers.microsoft.winrm.hooks.winrm import WinRMHook
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMOperationTimeoutError, WinRMTransportError

from . import invocation
from .errors import HostError, PermanentHostError, TransientHostError, classify_script_error

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "include" / "powershell"
PLAINTEXT_OPT_IN = "allow_plaintext"


class HyperVHook(WinRMHook):
    """One Hyper-V host, reached through the Airflow connection `winrm_conn_id` (type winrm)."""

    def __init__(self, winrm_conn_id: str, scripts_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(ssh_conn_id=winrm_conn_id, **kwargs)
        self.winrm_conn_id = winrm_conn_id
        self.scripts_dir = scripts_dir or SCRIPTS_DIR

    @cached_property
    def host_label(self) -> str:
        connection = self.get_connection(self.winrm_conn_id)
        return connection.host or self.winrm_conn_id

    def get_conn(self):
        if self.winrm_protocol is None:
            connection = self.get_connection(self.winrm_conn_id)
            extra = connection.extra_dejson
            transport = str(extra.get("transport", "plaintext"))
            endpoint = str(extra.get("endpoint", ""))
            opted_in = str(extra.get(PLAINTEXT_OPT_IN, "false")).lower() == "true"
            if (transport in ("plaintext", "basic") or endpoint.startswith("http:")) and transport != "ntlm" and not opted_in:
                raise PermanentHostError(
                    connection.host or self.winrm_conn_id,
                    f"connection {self.winrm_conn_id!r} would send credentials over unencrypted HTTP (transport {transport!r})",
                    'use transport "ssl" with "ca_trust_path", or set "allow_plaintext": true in the extra if you accept the risk',
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

    def _execute(self, command: str, label: str, skip_cmd_shell: bool) -> tuple[int, str, str]:
        try:
            conn = self.get_conn()
            shell_id = conn.open_shell()
        except HostError:
            raise
        except Exception as error:
            raise self._transport_error(error, label) from None
        try:
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
            raise self._transport_error(error, label) from None
        finally:
            try:
                conn.close_shell(shell_id)
            except Exception:  # noqa: BLE001 - the shell expires on the host by itself
                self.log.debug("closing shell %s failed", shell_id)
        return int(code if code is not None else -1), b"".join(stdout).decode("utf-8", "replace"), b"".join(stderr).decode("utf-8", "replace")

    def _transport_error(self, error: Exception, label: str) -> HostError:
        host = self.host_label
        if isinstance(error, requests.exceptions.SSLError):
            return PermanentHostError(host, f"TLS verification failed: {error}",
                                      'put the CA that signed the host\'s WinRM HTTPS certificate in the connection extra "ca_trust_path"', label)
        if isinstance(error, InvalidCredentialsError):
            return PermanentHostError(host, "the host refused the credentials",
                                      f"check the login and password of connection {self.winrm_conn_id!r}", label)
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return TransientHostError(host, f"connection lost: {type(error).__name__}", "retried with backoff", label)
        if isinstance(error, (WinRMTransportError, WinRMError)):
            return TransientHostError(host, f"WinRM error: {error}", "retried with backoff", label)
        return PermanentHostError(host, f"{type(error).__name__}: {error}", "", label)
