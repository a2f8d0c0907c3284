"""BackupJobTrigger: wait for a VM's Windows Server Backup job in the triggerer, not in a worker.

It only ever reads (Get-VMBackupStatus): a lost connection, a restarted triggerer or a
re-deferred task re-attaches to the same job and can never start a second one. A job that
never ends (WSB hung on a target) is given up at `deadline_utc`, with an event that says so:
Airflow bounds a deferral only by the timeout given to defer(), not by execution_timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class BackupJobTrigger(BaseTrigger):
    def __init__(self, winrm_conn_id: str, vm_id: str, vm_name: str, since_utc: str, poll_interval: float = 5.0,
                 deadline_utc: str | None = None):
        super().__init__()
        self.winrm_conn_id, self.vm_id, self.vm_name = winrm_conn_id, vm_id, vm_name
        self.since_utc, self.poll_interval, self.deadline_utc = since_utc, poll_interval, deadline_utc

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__name__}",
                {"winrm_conn_id": self.winrm_conn_id, "vm_id": self.vm_id, "vm_name": self.vm_name,
                 "since_utc": self.since_utc, "poll_interval": self.poll_interval, "deadline_utc": self.deadline_utc})

    def _past_deadline(self) -> bool:
        return self.deadline_utc is not None and datetime.now(UTC) >= datetime.fromisoformat(self.deadline_utc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from .errors import PermanentHostError, TransientHostError
        from .hooks import HyperVHook

        hook = HyperVHook(self.winrm_conn_id, keep_shell=True)  # one shell for the whole wait, deleted at its end
        last_percent = None
        try:
            while True:
                try:
                    status = await sync_to_async(hook.run_script)("Get-VMBackupStatus", VMId=self.vm_id)
                except TransientHostError as error:
                    self.log.warning("%s; polling again", error)
                    await asyncio.sleep(self.poll_interval)
                    continue
                except PermanentHostError as error:
                    yield TriggerEvent({"status": "error", "message": str(error)})
                    return
                job = status.get("job")
                ours = job and self.vm_name in job.get("vms", []) and job["start_time_utc"] >= self.since_utc
                if not ours:
                    yield TriggerEvent({"status": "error", "message": f"the backup job of {self.vm_name} is gone from the "
                                        "host (the host may have restarted); the VM is backed up again on retry"})
                    return
                if job["job_state"] != "Running":
                    yield TriggerEvent({"status": "done", "job": job})
                    return
                if self._past_deadline():
                    yield TriggerEvent({"status": "error", "message": (
                        f"the backup job of {self.vm_name} still runs at {self.deadline_utc[:16]}Z, past the time allowed "
                        f"([hyperv_backup] job_timeout_hours), at {job.get('operation') or 'an unknown step'}; it is left "
                        "running: see `wbadmin get status` on the host, and stop it with `wbadmin stop job` if it hangs")})
                    return
                total = job.get("bytes_total") or 0
                percent = int(100 * (job.get("bytes_transferred") or 0) / total) if total else 0
                if percent != last_percent:
                    self.log.info("%s: %d%% copied (%s)", self.vm_name, percent, job.get("operation"))
                    last_percent = percent
                await asyncio.sleep(self.poll_interval)
        finally:
            await sync_to_async(hook.close)()
