"""The daily checkpoint audit over the whole fleet, with opt-in remediation.

One mapped task per host of the inventory (read when the DAG runs, so a wrong inventory does not
stop this DAG from loading): Get-HvbHostVMs, then `hygiene.audit_host`. With remediation on (Param
`remediate`, or `clean_recovery_checkpoints: true` on the host), the Recovery checkpoints a backup
left are removed and merged; nothing else is ever touched. The findings and what was done are
written as JSON to the reports location and returned (the task's XCom), and a host with findings
left makes its task fail, so the UI shows where debris waits for an administrator. Then one mail
to the inventory's administrators (`mail: {admins: [...]}`, else `to`) says what was found and
done, when there is anything to say.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from . import hygiene, mailer, settings
from .errors import PermanentHostError
from .inventory import load_inventory

DAG_ID = "hyperv_checkpoint_audit"


def build_audit_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        schedule="30 12 * * *",  # midday: far from the backup windows, so no job holds a checkpoint
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,  # deployed means wanted: not left paused in the UI
        max_active_runs=1,
        tags=["hyperv", "backup", "hygiene"],
        doc_md=__doc__,
        default_args=settings.retry_policy() | {"execution_timeout": timedelta(hours=1)},
        params={"remediate": Param(False, type=["boolean", "null"],
                                   description="remove the Recovery checkpoints backups left, on every host (never other types)")},
    ) as dag:

        @task
        def hosts() -> list[dict]:
            return [{"name": h.name, "connection": h.connection, "clean": h.clean_recovery_checkpoints}
                    for h in load_inventory().hosts]

        @task(map_index_template="{{ host_name }}")
        def audit(host: dict, params=None) -> dict:
            from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

            context = get_current_context()
            context["host_name"] = host["name"]
            result = {"host": host["name"], "run_id": context["dag_run"].run_id, "at": datetime.now().astimezone().isoformat(),
                      "remediated": [], "findings": [], "error": None}
            hook = HyperVHook(host["connection"], keep_shell=True)  # one shell for the audit, deleted at its end
            try:
                findings = hygiene.audit_host(hook.run_script("Get-HvbHostVMs"))
                if params.get("remediate") or host["clean"]:
                    result["remediated"] = hygiene.remediate(hook.run_script, findings, poll=settings.poll_seconds())
                    findings = hygiene.audit_host(hook.run_script("Get-HvbHostVMs"))
                result["findings"] = [f.to_dict() for f in findings]
            except PermanentHostError as error:  # credentials, certificate: a retry cannot help
                result["error"] = str(error)
                raise AirflowFailException(str(error)) from None
            except Exception as error:  # recorded for the mail, then raised: the host shows as not audited
                result["error"] = str(error)
                raise
            finally:
                hook.close()
                _result_file(host["name"], context["ds"]).write_text(json.dumps(result, indent=2))
            for entry in result["remediated"]:
                print(f"removed {entry['removed']!r} of {entry['vm_name']}; merged: {entry['merged']}")
            if findings:
                raise AirflowFailException(f"{host['name']}: {len(findings)} finding(s) need an administrator:\n" + "\n".join(
                    f"{f.vm_name}: {f.kind} {f.subject} -> {f.what_to_do}" for f in findings))
            return result

        @task(trigger_rule="all_done")
        def mail_administrators(hosts: list[dict]) -> str:
            """One mail per audit run, only when there is something to say: findings, a host not audited,
            a checkpoint removed. Sent once (a retry finds it in the ledger)."""
            context = get_current_context()
            run_id = context["dag_run"].run_id
            results = []
            for host in hosts:
                path = _result_file(host["name"], context["ds"])
                result = json.loads(path.read_text()) if path.exists() else {}
                if result.get("run_id") != run_id:  # the task never got to the host (or the file is an earlier run's)
                    result = {"host": host["name"], "error": "the audit task did not finish; see its log"}
                results.append(result)
            summary = hygiene.AuditSummary(context["ds"], results)
            print(summary.subject)
            if not summary.worth_mailing:
                raise AirflowSkipException("nothing for an administrator: no finding, every host audited, nothing removed")
            recipients = load_inventory().admin_recipients
            if not recipients:
                raise AirflowSkipException("the inventory names no recipients (mail: {admins: [...]} or {to: [...]})")
            from .render import render_audit  # Jinja, pandas: imported by the task, not by the DAG file

            return mailer.send_once(f"checkpoint-audit/{run_id}", summary.subject, render_audit(summary), recipients)

        @task(trigger_rule="none_failed")
        def every_host_clean() -> str:
            """The run's verdict: it runs only when every host was audited and left clean, so a host with
            debris or out of reach makes the run fail (upstream failed), after the mail has gone out."""
            return "every host audited, no debris left"

        listed = hosts()
        audited, verdict = audit.expand(host=listed), every_host_clean()
        audited >> mail_administrators(listed) >> verdict
        audited >> verdict
    return dag


def _result_file(host: str, day: str):
    folder = settings.reports_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"checkpoint-audit-{host}-{day}.json"
