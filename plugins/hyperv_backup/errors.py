"""The few ways a host can fail us, each with what the caller should do about it.

Pure: no Airflow import. The hook raises these; operators decide from the class alone
whether to retry (transient), wait (busy) or stop with the advice (permanent).
"""

from __future__ import annotations

from .facts import Status


class HostError(Exception):
    """A failure talking to, or on, a Hyper-V host. `advice` tells an admin what to do; `cause` names a failure
    to reach the host at all (`unreachable`, `tls`, `credentials`, `refused`, `plaintext`), for the preflight's checks."""

    def __init__(self, host: str, message: str, advice: str = "", script: str | None = None, cause: str | None = None):
        self.host, self.message, self.advice, self.script, self.cause = host, message, advice, script, cause
        where = f"{host}" + (f" ({script})" if script else "")
        # the advice goes on the message's sentence ("...; check that ..."): it is written to follow one
        super().__init__(f"{where}: {message.rstrip('.')}; {advice}" if advice else f"{where}: {message}")

    @property
    def host_wide(self) -> bool:
        """The host could not be reached or refused us: every VM of it fails alike, the fault is the host's."""
        return self.cause is not None


def host_faults(rows: list[dict]) -> dict[str, list[dict]]:
    """A run's (or a night's) failed rows whose failure was their host's (`host_fault`), by host: told once per host
    with its error and the VMs it kept from their backup, not once per VM."""
    faults: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("host_fault") and row.get("status") == Status.FAILED:
            faults.setdefault(row["host"], []).append(row)
    return faults


def told_once(rows: list[dict]) -> list[str]:
    """Failed rows in an administrator's words: a host's fault once, with the VMs it hit; then each VM's own failure."""
    faults = host_faults(rows)
    lines = [f"{host}: {hit[0]['error']} (the host's fault: {len(hit)} VM(s) not backed up: {', '.join(r['vm_name'] for r in hit)})"
             for host, hit in sorted(faults.items())]
    return lines + [f"{r['vm_name']}: {r['error']}" for r in rows if not (r.get("host_fault") and r.get("status") == Status.FAILED)]


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
