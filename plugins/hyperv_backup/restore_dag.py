"""The restore-test DAG `hyperv_restore_test` (docs/restore-tests.md): proves that backups can be restored.

Weekly by default (`[hyperv_backup] restore_test_schedule`). `plan` reads the inventory and the catalog, removes
what an earlier test left on each host, and picks the VMs: those asked (Param `vms`), else a rotation that
tests every VM with a good backup within its host's `restore_test_days`. One task per VM then recovers the
backup as files into a folder of its own, imports them as a new, disconnected VM, starts it, and waits for
its heartbeat; the copy and its files are removed whatever happened, and the test is recorded in the
catalog's `restore_tests`. The original VM is never named in a command that changes anything.

A task's waits (for a host busy with a backup, for the recovery, for the heartbeat) are deferred to
`RestoreTestTrigger`, which waits on the host (Get-HvbRestoreTest -WaitSeconds) until its record changes;
each limit is on the host's clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import DAG, BaseOperator, Param, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import TriggerEvent

from . import restore, settings
from .inventory import load_inventory
from .record import parse_time
from .restore import Phase, TestStatus
from .triggers import KeptShellTrigger, off_loop

DAG_ID = "hyperv_restore_test"


class RestoreTestTrigger(KeptShellTrigger):
    """Waits in the triggerer until a restore test's phase is over on the host's record (restore.wait_over), on one
    kept shell, deleted before the event is yielded and by `cleanup()`. A host that does not answer at all is given
    up after `silence_seconds` (real time: a silent host has no clock). `test` (the test's name, folder, start, ...)
    travels back in the event: the next phase needs it, and the event is what every way of running a trigger
    hands back. No event comes sooner than `settle_seconds` after the wait began (KeptShellTrigger)."""

    def __init__(self, winrm_conn_id: str, test: dict[str, Any], phase: str, deadline: str, host_wait_seconds: float = 60,
                 poll_interval: float = 5.0, silence_seconds: float = 1800, settle_seconds: float = 0):
        super().__init__()
        self.winrm_conn_id, self.test, self.phase, self.deadline = winrm_conn_id, test, Phase(phase), deadline
        self.host_wait_seconds, self.poll_interval, self.silence_seconds = host_wait_seconds, poll_interval, silence_seconds
        self.settle_seconds = settle_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__name__}",
                {"winrm_conn_id": self.winrm_conn_id, "test": self.test, "phase": str(self.phase), "deadline": self.deadline,
                 "host_wait_seconds": self.host_wait_seconds, "poll_interval": self.poll_interval,
                 "silence_seconds": self.silence_seconds, "settle_seconds": self.settle_seconds})

    def _status(self, hook, seen: str) -> dict[str, Any]:
        wait = {"WaitSeconds": int(self.host_wait_seconds), "Seen": seen} if seen and self.host_wait_seconds >= 1 else {}
        return hook.run_script("Get-HvbRestoreTest", Folder=self.test["folder"], CopyName=self.test["name"],
                               SinceUtc=self.test["since"], **wait)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from .errors import PermanentHostError, TransientHostError
        from .hooks import HyperVHook

        self.begin()
        self._hook = hook = HyperVHook(self.winrm_conn_id, keep_shell=True)
        deadline, seen, silent_since = parse_time(self.deadline), "", None

        async def event(payload: dict[str, Any]) -> TriggerEvent:
            return await self.answer({"test": self.test} | payload)

        try:
            while True:
                try:
                    answer = await off_loop(self._status)(hook, seen)
                except TransientHostError as error:
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since >= self.silence_seconds:
                        yield await event({"error": f"{error.message}; {error.advice}".rstrip("; ")})
                        return
                    seen = ""
                    await asyncio.sleep(self.poll_interval)
                    continue
                except PermanentHostError as error:
                    yield await event({"error": str(error)})
                    return
                silent_since = None
                status = TestStatus.from_json(answer)
                if restore.wait_over(self.phase, status, deadline):
                    yield await event({"status": answer})
                    return
                seen = status.change_key
                if not seen or self.host_wait_seconds < 1:
                    await asyncio.sleep(self.poll_interval)
        finally:
            await self.cleanup()


class RestoreTestOperator(BaseOperator):
    """One VM's restore test on its host: recover, import as an isolated copy, boot, wait for the heartbeat, remove
    the copy and its files, record. Each wait is deferred; what a later phase needs travels through the trigger."""

    template_fields = ("host_name", "vm_name", "version")

    def __init__(self, *, host_name: str, vm_name: str, version: str = "", **kwargs):
        super().__init__(**kwargs)
        self.host_name, self.vm_name, self.version = host_name, vm_name, version

    # -- the phases ----------------------------------------------------------------------------

    def execute(self, context) -> dict:
        name = restore.copy_name(self.vm_name, datetime.now(UTC))
        test = {"name": name, "folder": restore.folder(self._entry.restore_test_path, name), "since": None}
        return self._start(context, test)

    def resume_host(self, context, event: dict) -> dict:
        test, status = self._answer(context, event)
        if status.host_busy:
            return self._finish(context, test, f"the host ran another Windows Server Backup operation until the limit "
                                               f"({settings.job_timeout().total_seconds() / 3600:g} h, host time); run the test again later")
        return self._start(context, test)

    def resume_recovery(self, context, event: dict) -> dict:
        test, status = self._answer(context, event)
        if status.recovered is None:
            return self._finish(context, test, "the recovery ran longer than [hyperv_backup] job_timeout_hours (host time); "
                                               "see `wbadmin get status` on the host")
        if not status.recovered:
            job = status.recovery or {}
            return self._finish(context, test, f"Windows Server Backup could not recover the VM: {job.get('error_description') or 'no reason given'} "
                                               f"(HRESULT {int(job.get('hresult') or 0) & 0xFFFFFFFF:#010x}); check the backup target")
        try:
            answer = self._run("Start-HvbRestoreCopy", Folder=test["folder"], CopyName=test["name"])
        except Exception as error:  # noqa: BLE001 - recorded with what to check, after the clean-up
            return self._finish(context, test, f"the recovered VM could not be imported and started: {error}")
        copy, clock = answer["copy"], parse_time(answer["clock_utc"])
        test |= {"vm_id": answer.get("source_id"), "copy_started": (clock - timedelta(seconds=int(copy.get("uptime_seconds") or 0))).isoformat()}
        self.log.info("%s: recovered; its copy %s (id %s, network disconnected: %s) started at %s (host clock)", self.vm_name,
                      copy["name"], copy["id"], not copy.get("network_connected"), test["copy_started"])
        deadline = parse_time(test["copy_started"]) + settings.restore_heartbeat()
        return self._defer(context, test, Phase.BOOT, deadline, "resume_boot")

    def resume_boot(self, context, event: dict) -> dict:
        test, status = self._answer(context, event)
        seconds, error = restore.boot_verdict(status, parse_time(test["copy_started"]), settings.restore_heartbeat())
        test["heartbeat_seconds"] = seconds
        if seconds is not None:
            self.log.info("%s: the copy's heartbeat answered %.0f s after its start (host time)", self.vm_name, seconds)
        return self._finish(context, test, error)

    # -- the steps they share ------------------------------------------------------------------

    def _answer(self, context, event: dict) -> tuple[dict, TestStatus]:
        """The trigger's event: the test and the host's answer. A wait that failed (the host silent, or refusing)
        ends the test here, cleaned up and recorded."""
        if "error" in event:
            self._finish(context, event["test"], event["error"])  # raises: the test failed
        return event["test"], TestStatus.from_json(event["status"])

    def _start(self, context, test: dict) -> dict:
        try:
            answer = self._run("Start-HvbRestoreTest", VMName=self.vm_name, VersionId=self.version, Folder=test["folder"])
        except Exception as error:  # noqa: BLE001 - recorded with what to check, then the task fails
            return self._finish(context, test, str(error))
        clock = parse_time(answer["clock_utc"])
        if not answer["started"]:
            self.log.info("%s: the host runs another Windows Server Backup operation; waiting for it (deferred)", self.vm_name)
            test["since"] = test["since"] or clock.isoformat()
            return self._defer(context, test, Phase.HOST, clock + settings.job_timeout(), "resume_host")
        test |= {"since": answer["job"]["start_time_utc"], "version": answer["version_id"]}
        self.log.info("%s: recovering version %s (backed up %s) into %s", self.vm_name, answer["version_id"], answer["backup_time_utc"],
                      test["folder"])
        return self._defer(context, test, Phase.RECOVERY, parse_time(test["since"]) + settings.job_timeout(), "resume_recovery")

    def _defer(self, context, test: dict, phase: Phase, deadline: datetime, method: str):
        from .operators import triggers_inline  # dag.test runs the trigger itself: no race to settle

        self.defer(trigger=RestoreTestTrigger(self._entry.connection, test, str(phase), deadline.isoformat(),
                                              settings.host_wait().total_seconds(), settings.poll_seconds(),
                                              settings.host_silence().total_seconds(), 0 if triggers_inline(context) else settings.resume_after_seconds()),
                   method_name=method)

    def _finish(self, context, test: dict, error: str | None) -> dict:
        """Remove the copy and its files (whatever happened), read back that they are gone, record the test; a failed
        test fails its task after its row is written."""
        from . import catalog

        cleaned, finished = None, None
        try:
            removed = self._run("Remove-HvbRestoreCopy", Root=self._entry.restore_test_path, Name=test["name"])
            after = TestStatus.from_json(self._run("Get-HvbRestoreTest", Folder=test["folder"], CopyName=test["name"],
                                                   SinceUtc=test["since"] or removed["clock_utc"]))
            cleaned, finished = after.copy is None and after.files == 0, after.clock
            if not cleaned:
                error = (error + "; " if error else "") + f"the copy {test['name']} or its files are still on the host: remove them by hand"
        except Exception as failure:  # noqa: BLE001 - the host's answer decides; without one, say what is left
            error = (error + "; " if error else "") + (f"the clean-up failed ({failure}); remove the VM {test['name']} and the folder "
                                                       f"{test['folder']} on {self.host_name} by hand if they exist")
        row = {"vm_id": test.get("vm_id"), "backup_version": test.get("version") or self.version or None, "restored_as": test["name"],
               "started_at": parse_time(test.get("since")), "finished_at": finished, "heartbeat_seconds": test.get("heartbeat_seconds"),
               "status": "failed" if error else "succeeded", "error": error, "cleaned_up": cleaned}
        run = context["dag_run"]
        catalog.record_restore_test(settings.catalog_engine(), {"dag_id": run.dag_id, "run_id": run.run_id, "host": self.host_name,
                                                                 "vm_name": self.vm_name}, row, datetime.now(UTC))
        if error:
            raise AirflowFailException(f"{self.host_name} {self.vm_name}: the restore test failed: {error}")
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}

    @cached_property
    def _entry(self):
        """The host's inventory entry, read once per task process (each phase of a test is one)."""
        return next(h for h in load_inventory().hosts if h.name == self.host_name)

    def _run(self, script: str, **params) -> dict:
        from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

        with HyperVHook(self._entry.connection).session() as hook:
            return hook.run_script(script, **params)


def plan_tests(inventory, engine, asked: list[str], version: str, now: datetime, run_script,
               per_host: int | None = None) -> tuple[list[dict], list[str]]:
    """The tests of one run: (one {host_name, vm_name, version} per VM, the names asked that match no VM with a good
    backup). The rotation picks `per_host` VMs of each host, else its share (restore.choose). Each host's leftovers
    of earlier tests are removed first (`run_script(entry, script, **params)`)."""
    from . import catalog

    every = restore.period(settings.restore_test_schedule(), now)
    tests, matched = [], set()
    for entry in inventory.hosts:
        names = entry.selected(list(catalog.last_good(engine, entry.name)))  # only VMs with a good backup
        if asked:
            chosen = [n for n in names if n in asked or f"{entry.name}/{n}" in asked]
            matched |= {a for a in asked for n in chosen if a in (n, f"{entry.name}/{n}")}
        else:
            chosen = restore.choose(names, catalog.last_tested(engine, entry.name), entry.restore_test_days, every, per_host)
        if chosen:
            run_script(entry, "Remove-HvbRestoreCopy", Root=entry.restore_test_path)
        tests += [{"host_name": entry.name, "vm_name": n, "version": version} for n in chosen]
    return tests, [a for a in asked if a not in matched]


def build_restore_test_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        schedule=settings.restore_test_schedule(),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,  # deployed means wanted: not left paused in the UI
        max_active_runs=1,
        tags=["hyperv", "backup", "restore"],
        doc_md=__doc__,
        default_args=settings.yields_to_backups() | {"retries": 0, "execution_timeout": settings.step_timeout()},
        params={
            "vms": Param([], type=["array", "null"], items={"type": "string"},
                         description="VM names (or HOST/VM) to test now; empty: the rotation (every VM within restore_test_days)"),
            "version": Param("", type=["string", "null"],
                             description="the backup version to restore (wbadmin's identifier, MM/dd/yyyy-HH:mm); empty: each VM's newest"),
            "per_host": Param(None, type=["integer", "null"], minimum=1,
                              description="with the rotation, test this many VMs per host; empty: enough to test each within restore_test_days"),
        },
    ) as dag:

        @task
        def plan(params=None) -> list[dict]:
            from .hooks import HyperVHook

            def run_script(entry, script, **kwargs):
                try:
                    with HyperVHook(entry.connection).session() as hook:
                        return hook.run_script(script, **kwargs)
                except Exception as error:  # noqa: BLE001 - the host's own test fails with the reason
                    print(f"{entry.name}: could not remove earlier tests' leftovers: {error}")

            asked = [str(v) for v in (params.get("vms") or [])]
            tests, unknown = plan_tests(load_inventory(), settings.catalog_engine(), asked, str(params.get("version") or ""),
                                        datetime.now(UTC), run_script, params.get("per_host"))
            for t in tests:
                print(f"{t['host_name']:12} {t['vm_name']}")
            if unknown:
                raise AirflowFailException(f"no VM with a good backup in the catalog is named {', '.join(unknown)}: check the names "
                                           "(a VM, or HOST/VM) and that the VM has been backed up")
            return tests

        RestoreTestOperator.partial(task_id="restore_test", map_index_template="{{ task.host_name }} {{ task.vm_name }}",
                                    outlets=[settings.catalog_asset()]).expand_kwargs(plan())
    return dag
