"""The report DAG: build the report of an interval from the catalog, write it, then e-mail it.

It runs daily (the interval is the day before 07:00 UTC) and whenever a backup run marks the
catalog Asset; an asset-triggered run refreshes the files of the last 24 hours and mails only
when `[hyperv_backup] mail_on_catalog_update` is true, so stakeholders get one mail a day, not
one per host. A manual run may name any past interval (Params), to rebuild that report.
Files are written before any mail goes out; a retry of the send finds its report in the
`report_mails` ledger and does not send it twice.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.interval import CronDataIntervalTimetable

from . import settings
from .inventory import load_inventory
from .windows import run_kind

if TYPE_CHECKING:
    from .report import Interval

DAG_ID = "hyperv_backup_report"


def _interval(context, params) -> Interval:
    from . import report

    if params.get("interval_start") and params.get("interval_end"):
        start, end = (datetime.fromisoformat(params[k]).astimezone(UTC) for k in ("interval_start", "interval_end"))
        return report.Interval(start, end, nightly=False)
    dag_run = context["dag_run"]
    if run_kind(dag_run.run_type) in ("scheduled", "backfill"):
        start, end = context["data_interval_start"], context["data_interval_end"]
        return report.Interval(start.astimezone(UTC), end.astimezone(UTC))
    end = dag_run.run_after  # asset-triggered or manual: the 24 hours up to the run
    return report.Interval((end - timedelta(days=1)).astimezone(UTC), end.astimezone(UTC), nightly=False)


def build_report_dag() -> DAG:
    """The report DAG. It reads the inventory when it runs, not when it is parsed, so a wrong
    inventory stays the one import error of the backup DAG file and this DAG keeps loading."""
    with DAG(
        dag_id=DAG_ID,
        schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("0 7 * * *", timezone="UTC"), assets=[settings.catalog_asset()]),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,  # deployed means wanted: not left paused in the UI
        max_active_runs=1,
        tags=["hyperv", "backup", "report"],
        doc_md=__doc__,
        default_args=settings.yields_to_backups() | {"retries": 2, "retry_delay": timedelta(seconds=30)},
        params={
            "interval_start": Param("", type=["string", "null"], description="rebuild the report of this interval (ISO 8601); empty: the run's"),
            "interval_end": Param("", type=["string", "null"], description="end of that interval (ISO 8601)"),
            "send_mail": Param(True, type=["boolean", "null"], description="e-mail the report (asset-triggered runs follow the configuration)"),
        },
    ) as dag:

        @task(multiple_outputs=False)  # the whole dict is what send_report reads: no XCom per key (dag_factory.probe)
        def build_report(params=None) -> dict:
            """Build from the catalog alone and write the files; returns what the mail needs."""
            import pandas as pd

            from . import render, report  # pandas and matplotlib: imported by the task, not by the DAG file
            from .inventory import followed

            context = get_current_context()
            interval = _interval(context, params)
            inventory = load_inventory()
            windows = {h.name: h.window for h in inventory.hosts}
            rpo = {h.name: h.rpo_hours for h in inventory.hosts}
            inputs = report.read(settings.catalog_engine(), interval)
            inputs.vms = pd.DataFrame(followed(inventory.hosts, inputs.vms.to_dict("records")), columns=inputs.vms.columns)
            built = report.build(inputs, interval, windows, rpo,
                                 {h.name: h.min_restore_points for h in inventory.hosts},
                                 {h.name: h.restore_test_days for h in inventory.hosts}, {h.name: h.backup_target for h in inventory.hosts})
            prefix = report.file_prefix(interval)
            with tempfile.TemporaryDirectory(prefix="hyperv-report-") as staging:
                rendered = render.render(built, Path(staging), prefix)
                mail_html = rendered.html.with_suffix(".mail.html")
                mail_html.write_text(rendered.email_html, encoding="utf-8")
                folder = _publish([rendered.html, *rendered.attachments, mail_html], settings.reports_folder())
            print(f"{built.summary.subject}\nwritten to {folder}")
            return {"key": f"{prefix}/{interval.start.isoformat()}/{interval.end.isoformat()}", "subject": built.summary.subject,
                    "folder": folder, "mail_html": mail_html.name, "attachments": [p.name for p in rendered.attachments]}

        @task
        def send_report(built: dict, params=None) -> str:
            context = get_current_context()
            asset_triggered = run_kind(context["dag_run"].run_type) == "asset_triggered"
            if not params.get("send_mail") or (asset_triggered and not settings.mail_on_catalog_update()):
                raise AirflowSkipException("mail not wanted for this run; the report files are written")
            recipients = load_inventory().mail_to
            if not recipients:
                raise AirflowSkipException("the inventory names no recipients (mail: {to: [...]})")
            return _send_once(built, recipients)

        send_report(build_report())
    return dag


def _publish(paths: list[Path], target) -> str:
    """Copy the files to the reports location (a folder, or any ObjectStoragePath URL): the mail is sent from there."""
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (target / path.name).write_bytes(path.read_bytes())
    return str(target)


def _send_once(built: dict, recipients: list[str]) -> str:
    """Mail the report from the reports location: the provider attaches local files, so they are fetched first."""
    from . import mailer

    folder = settings.storage(built["folder"])
    with tempfile.TemporaryDirectory(prefix="hyperv-mail-") as local:
        files = []
        for name in built["attachments"]:
            files.append(Path(local) / name)
            files[-1].write_bytes((folder / name).read_bytes())
        html = (folder / built["mail_html"]).read_text(encoding="utf-8")
        return mailer.send_once(built["key"], built["subject"], html, recipients, files)
