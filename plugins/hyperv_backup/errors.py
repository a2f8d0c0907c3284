"""The few ways a host can fail us, each with what the caller should do about it.

Pure: no Airflow import. The hook raises these; operators decide from the class alone
whether to retry (transient), wait (busy) or stop with the advice (permanent).
"""

from __future__ import annotations


class HostError(Exception):
    """A failure talking to, or on, a Hyper-V host. `advice` tells an admin what to do; `cause` names a failure
    to reach the host at all (`unreachable`, `tls`, `credentials`, `refused`, `plaintext`), for the preflight's checks."""

    def __init__(self, host: str, message: str, advice: str = "", script: str | None = None, cause: str | None = None):
        self.host, self.message, self.advice, self.script, self.cause = host, message, advice, script, cause
        where = f"{host}" + (f" ({script})" if script else "")
        super().__init__(f"{where}: {message}" + (f". {advice}" if advice else ""))


class TransientHostError(HostError):
    """Worth retrying with backoff: a dropped connection, a timeout, a VSS writer's transient error."""


class HostBusyError(HostError):
    """The host runs another Windows Server Backup job; wait and try again."""


class PermanentHostError(HostError):
    """Retrying will not help: wrong credentials, untrusted certificate, VM gone, full target."""


def classify_script_error(host: str, script: str, error: dict) -> HostError:
    """The wrapper's error document ({message, category, hresult, id}) as a typed error.

    PowerShell's error category is language-independent, unlike the message, which a
    Japanese host writes in Japanese: classify on the category.
    """
    message = str(error.get("message") or "the script failed without a message")
    category = str(error.get("category") or "")
    if category == "ResourceBusy":
        return HostBusyError(host, message, "another Windows Server Backup job is running; it is retried when the host is free", script)
    if category in ("ObjectNotFound",):
        return PermanentHostError(host, message, "check that the VM and the backup target still exist on the host", script)
    if category in ("OperationTimeout", "ConnectionError"):
        return TransientHostError(host, message, "", script)
    return PermanentHostError(host, message, f"PowerShell error category {category or 'unknown'}", script)
