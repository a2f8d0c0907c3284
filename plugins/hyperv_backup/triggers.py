"""BackupJobTrigger: wait for a VM's Windows Server Backup job in the triggerer, not in a worker.

It only ever reads (Get-VMBackupStatus): a lost connection, a restarted triggerer or a
re-deferred task re-attaches to the same job and can never start a second one; starting a new
job is the step's decision, taken in the worker from the host's record. A job that
never ends (WSB hung on a target) is given up at `deadline_utc`, with an event that says so:
Airflow bounds a deferral only by the timeout given to defer(), not by execution_timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from .record import parse_time


class BackupJobTrigger(BaseTrigger):
    """Waits, in the triggerer, until the host's record changes in a way the copy step must decide on.

    `wait_for="job"`: until this VM's job of this backup (started at or after `since_utc`, host
    clock) no longer runs: it ended, failed, or the host restarted under it. `wait_for="host"`:
    until no Windows Server Backup job holds the host, so ours can be started again. Either way the
    event only says "look again": the step reads the record itself and decides (record.decide).
    """

    def __init__(self, winrm_conn_id: str, vm_id: str, vm_name: str, since_utc: str, poll_interval: float = 5.0,
                 deadline_utc: str | None = None, wait_for: str = "job"):
        super().__init__()
        self.winrm_conn_id, self.vm_id, self.vm_name = winrm_conn_id, vm_id, vm_name
        self.since_utc, self.poll_interval, self.deadline_utc, self.wait_for = since_utc, poll_interval, deadline_utc, wait_for

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__name__}",
                {"winrm_conn_id": self.winrm_conn_id, "vm_id": self.vm_id, "vm_name": self.vm_name, "since_utc": self.since_utc,
                 "poll_interval": self.poll_interval, "deadline_utc": self.deadline_utc, "wait_for": self.wait_for})

    def _past_deadline(self) -> bool:
        return self.deadline_utc is not None and datetime.now(UTC) >= datetime.fromisoformat(self.deadline_utc)

    def _settled(self, status) -> bool:
        """Whether the step must look again."""
        if self.wait_for == "host":
            return not status.host_busy()
        since = parse_time(self.since_utc)
        running = [j for j in status.jobs if j.running and self.vm_name in j.vms and j.start >= since]
        return not running or status.boot_time > running[-1].start

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from .errors import PermanentHostError, TransientHostError
        from .hooks import HyperVHook
        from .record import BackupStatus

        hook = HyperVHook(self.winrm_conn_id, keep_shell=True)  # one shell for the whole wait, deleted at its end
        last_percent = None
        try:
            while True:
                try:
                    status = BackupStatus.from_json(await sync_to_async(hook.run_script)("Get-VMBackupStatus", VMId=self.vm_id))
                except TransientHostError as error:
                    self.log.warning("%s; polling again", error)
                    await asyncio.sleep(self.poll_interval)
                    continue
                except PermanentHostError as error:
                    yield TriggerEvent({"status": "error", "message": str(error)})
                    return
                if self._settled(status):
                    yield TriggerEvent({"status": "changed", "clock_utc": status.clock.isoformat()})
                    return
                job = status.job if self.wait_for == "job" else status.host_job
                if self._past_deadline():
                    yield TriggerEvent({"status": "error", "message": (
                        f"the backup job {'of ' + self.vm_name if self.wait_for == 'job' else 'holding the host'} still runs at "
                        f"{self.deadline_utc[:16]}Z, past the time allowed ([hyperv_backup] job_timeout_hours), at "
                        f"{(job.operation if job else '') or 'an unknown step'}; it is left running: see `wbadmin get status` "
                        "on the host, and stop it with `wbadmin stop job` if it hangs")})
                    return
                percent = int(100 * job.bytes_transferred / job.bytes_total) if job and job.bytes_total else 0
                if percent != last_percent:
                    self.log.info("%s: %d%% copied (%s)", self.vm_name, percent, job.operation if job else "")
                    last_percent = percent
                await asyncio.sleep(self.poll_interval)
        finally:
            await sync_to_async(hook.close)()
