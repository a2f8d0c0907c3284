"""The RPO's alerts in Airflow (docs/alerts.md): each backup run's deadline at its host's window end, and the RPO watch.

- `WindowEnd`, a Deadline Alert reference (Airflow 3.1+): a scheduled backup run's deadline is the end of the window
  its jobs may start in, plus the grace (`windows.job_deadline`, the same moment the run itself starts no job after),
  in the host's time zone whatever daylight saving does. Manual runs and backfills have none: no window holds them.
  A run created after its window ends (its VMs are deferred) has none either. Airflow evaluates the reference when it
  creates the run, in the scheduler, which knows the class from the plugin (plugins/hyperv_backup_plugin.py). A run
  that succeeds before its deadline has it dropped by Airflow; a run still going or failed then has `window_closed`
  called in the triggerer.
- `window_closed` mails the administrators once (ledger key `deadline/<dag>/<run>`), naming the VMs at risk of
  their RPO (`rpo.left_at_risk`); nothing at risk, no mail.
- The DAG `hyperv_rpo_watch` looks at the catalog every hour (`[hyperv_backup] rpo_watch_schedule`) and mails each
  new breach of a VM's RPO once (`rpo.breaches`), whatever the runs did.

The deadline is on Airflow's clock, which on a real fleet is the hosts' (both kept by NTP); against the simulator,
whose clock runs `speed` times faster, it is real time.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import DAG, AsyncCallback, BaseDeadlineReference, DeadlineAlert, task
from airflow.sdk.exceptions import AirflowSkipException

from . import settings
from .inventory import HostEntry, load_inventory
from .windows import Window, job_deadline, run_kind

WATCH_DAG_ID = "hyperv_rpo_watch"
PLUGIN_FILE = "hyperv_backup_plugin.py"  # registers WindowEnd (plugins/hyperv_backup_plugin.py)


@dataclass
class WindowEnd(BaseDeadlineReference):
    """The end of the backup window (plus grace) of the host whose scheduled run this is (the run's logical time)."""

    window: dict[str, Any] = field(default_factory=dict)  # the host's `windows.Window`, as its fields

    required_kwargs: ClassVar[set[str]] = {"dag_id", "run_id"}

    def serialize_reference(self) -> dict[str, Any]:
        return super().serialize_reference() | {"window": self.window}

    @classmethod
    def deserialize_reference(cls, reference_data: dict[str, Any]) -> WindowEnd:
        return cls(reference_data["window"])

    def _evaluate_with(self, *, session, dag_id: str, run_id: str, **kwargs: Any) -> datetime | None:
        from airflow.models import DagRun
        from sqlalchemy import select

        run = session.execute(select(DagRun.run_type, DagRun.data_interval_end, DagRun.logical_date)
                              .where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one_or_none()
        if run is None:
            return None
        due = run.data_interval_end or run.logical_date
        end = job_deadline(Window(**self.window), run_kind(run.run_type), due, force=False)
        # A run created after its window (Airflow was down; a new DAG's first run is for the last slot missed) starts no
        # job and records its VMs deferred; a deadline already past would only alert at once about that, not in time.
        return end if end is not None and end > datetime.now(UTC) else None


def deadline(entry: HostEntry) -> DeadlineAlert | None:
    """A backup DAG's deadline: its host's window end, then `window_closed`. None where Airflow does not load this
    project's plugin, which registers `WindowEnd`: the scheduler could not create a run with a deadline it cannot
    read, and every run of the DAG would fail to start."""
    if not plugin_installed():
        return None
    return DeadlineAlert(reference=WindowEnd(asdict(entry.window)), interval=timedelta(0),
                         callback=AsyncCallback(window_closed, kwargs={"host": entry.name}), name="window end")


@cache
def plugin_installed() -> bool:
    """Whether the plugins folder holds the plugin (a look at one file: the DAG file's parse stays cheap)."""
    from airflow.configuration import conf

    folder = conf.get("core", "plugins_folder", fallback="")
    return bool(folder) and (Path(folder) / PLUGIN_FILE).is_file()


async def window_closed(host: str, context: dict[str, Any]) -> str:
    """The deadline's callback, run by the triggerer (the catalog and the mail are blocking, so off its event loop).
    Airflow calls it once, so a catalog or mail server out of reach is tried again here, as a task's retries would."""
    from sqlalchemy.exc import OperationalError

    from .retrying import spread_delay

    run, closed = context["dag_run"], context["deadline"]["deadline_time"]
    closed = (datetime.fromisoformat(closed) if isinstance(closed, str) else closed).astimezone(UTC)
    policy, attempt = settings.retry_policy(), 1
    while True:
        try:
            return await asyncio.to_thread(_window_closed, host, run["dag_id"], run["dag_run_id"], str(run["state"]), closed)
        except (OSError, OperationalError):
            if attempt > policy["retries"]:
                raise
            await asyncio.sleep(spread_delay(policy["retry_delay"], attempt, f"deadline#{run['dag_run_id']}").total_seconds())
            attempt += 1


def _window_closed(host: str, dag_id: str, run_id: str, run_state: str, closed: datetime) -> str:
    """Mail the VMs the run leaves at risk, once; what was done, for the callback's record in Airflow."""
    from . import catalog, mailer, rpo

    inventory = load_inventory()
    entry = next((h for h in inventory.hosts if h.name == host), None)
    if entry is None:
        return f"{host} is no longer in the inventory; nothing to tell"
    engine, next_close = settings.catalog_engine(), entry.window.next_close(closed)
    exposed = rpo.left_at_risk(host, _selected_latest([entry], engine), catalog.rows(engine, dag_id=dag_id, run_id=run_id),
                               entry.rpo_hours, next_close)
    if not exposed:
        return f"{host}: the window closed with the run {run_state}; no VM is at risk of its RPO"
    if not inventory.admin_recipients:
        return f"{host}: {len(exposed)} VM(s) at risk of their RPO, but the inventory names no recipients"
    subject = rpo.deadline_subject(host, closed, run_state, exposed)
    html = mailer.page("rpo.html.j2", subject=subject, exposed=exposed, now=closed, next_close=next_close,
                       run_id=run_id, dag_id=dag_id, window=entry.window.describe())
    return mailer.send_once(f"deadline/{dag_id}/{run_id}", subject, html, inventory.admin_recipients)


def _selected_latest(hosts: list[HostEntry], engine) -> list[dict[str, Any]]:
    """Each VM's newest catalog row with its last good backup, for the VMs these hosts' inventory entries select."""
    from . import catalog
    from .inventory import followed

    return followed(hosts, catalog.latest_per_vm(engine))


def build_rpo_watch_dag() -> DAG:
    """The RPO watch. It reads the inventory when it runs, so a wrong inventory does not stop it from loading."""
    with DAG(
        dag_id=WATCH_DAG_ID,
        schedule=settings.rpo_watch_schedule(),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,
        max_active_runs=1,
        tags=["hyperv", "backup", "rpo"],
        doc_md=__doc__,
        default_args=settings.yields_to_backups() | {"retries": 2, "retry_delay": timedelta(seconds=30)},
    ) as dag:

        @task
        def watch() -> str:
            """One mail naming every VM that passed its RPO since the last look; a breach already told is not told again."""
            from . import catalog, mailer, rpo

            inventory, engine, now = load_inventory(), settings.catalog_engine(), datetime.now(UTC)
            past = rpo.breaches(_selected_latest(inventory.hosts, engine), {h.name: h.rpo_hours for h in inventory.hosts}, now)
            told = catalog.mails_sent(engine, [e.episode for e in past])
            new = [e for e in past if e.episode not in told]
            print(f"{len(past)} VM(s) past their RPO, {len(new)} not told before")
            if not new:
                raise AirflowSkipException("no new breach of an RPO")
            if not inventory.admin_recipients:
                raise AirflowSkipException("the inventory names no recipients (mail: {admins: [...]} or {to: [...]})")
            subject = rpo.breach_subject(new)
            html = mailer.page("rpo.html.j2", subject=subject, exposed=new, now=now)
            return mailer.send_once(rpo.breach_mail_key(new), subject, html, inventory.admin_recipients,
                                    also=[e.episode for e in new])

        watch()
    return dag
