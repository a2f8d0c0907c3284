"""The daily checkpoint audit over the whole fleet, with opt-in remediation.

One mapped task per host of the inventory (read when the DAG runs, so a wrong inventory does not
stop this DAG from loading): Get-HvbHostVMs, then `hygiene.audit_host`. With remediation on (Param
`remediate: true`, or `clean_recovery_checkpoints: true` on the host), the Recovery checkpoints a backup
left are removed and merged; nothing else is ever touched. With `remediate: ask`, the task `approve`
lists them for an administrator (Airflow's Human-in-the-loop: the UI's "Required actions", or the REST
API), and `remove_approved` removes only the approved ones; no answer within `[hyperv_backup]
approval_timeout_hours` removes nothing. The findings and what was done are
written as JSON to the reports location and returned (the task's XCom), and a host with findings
left makes its task fail, so the UI shows where debris waits for an administrator. Then one mail
to the inventory's administrators (`mail: {admins: [...]}`, else `to`) says what was found and
done, when there is anything to say.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from . import hygiene, mailer, settings
from .errors import PermanentHostError
from .inventory import load_inventory

DAG_ID = "hyperv_checkpoint_audit"
NOTHING = "Remove nothing"


class RemovalApproval(HITLOperator):
    """An administrator's decision on the Recovery checkpoints the audit found (`remediate: ask`): one option per
    checkpoint (hygiene.approval_options), several may be chosen; "Remove nothing" is the default, which a timeout
    takes. The options are this run's findings, so they are made when the task runs and again when it resumes."""

    def __init__(self, **kwargs):
        super().__init__(subject="Remove these Recovery checkpoints left by backups?", options=[NOTHING], defaults=[NOTHING],
                         multiple=True, response_timeout=settings.approval_timeout(), **kwargs)

    def _offer(self, context) -> dict:
        offered = hygiene.approval_options(_results(context))
        self.options = [NOTHING, *offered]
        self.body = ("Each is a Recovery checkpoint a backup left behind; removing it merges its .avhdx back into the VM's disk "
                     "(the host refuses any other kind of checkpoint).\n\n" + "\n".join(f"- {label}" for label in offered))
        return offered

    def execute(self, context):
        if context["params"].get("remediate") != "ask":
            raise AirflowSkipException("remediate is not `ask`: nothing to approve")
        if not self._offer(context):
            raise AirflowSkipException("no Recovery checkpoint left by a backup: nothing to approve")
        return super().execute(context)

    def execute_complete(self, context, event):
        self._offer(context)
        return super().execute_complete(context, event)


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
        default_args=settings.retry_policy() | settings.yields_to_backups() | {"execution_timeout": timedelta(hours=1)},
        params={"remediate": Param(False, type=["boolean", "string", "null"], enum=[False, True, "ask", None],
                                   description="true: remove the Recovery checkpoints backups left, on every host (never other "
                                               "types); ask: list them for an administrator to approve, then remove those")},
    ) as dag:

        @task
        def hosts() -> list[dict]:
            return [{"name": h.name, "connection": h.connection, "clean": h.clean_recovery_checkpoints}
                    for h in load_inventory().hosts]

        @task(map_index_template="{{ host_name }}", multiple_outputs=False)  # no XCom per key (dag_factory.probe)
        def audit(host: dict, params=None) -> dict:
            from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

            context = get_current_context()
            context["host_name"] = host["name"]
            result = {"host": host["name"], "run_id": context["dag_run"].run_id, "at": datetime.now().astimezone().isoformat(),
                      "remediated": [], "findings": [], "error": None}
            hook = HyperVHook(host["connection"], keep_shell=True)  # one shell for the audit, deleted at its end
            try:
                findings = hygiene.audit_host(hook.run_script("Get-HvbHostVMs"))
                if params.get("remediate") is True or (host["clean"] and params.get("remediate") != "ask"):
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
                _result_file(host["name"], _day(context)).write_text(json.dumps(result, indent=2))
            for entry in result["remediated"]:
                print(f"removed {entry['removed']!r} of {entry['vm_name']}; merged: {entry['merged']}")
            if params.get("remediate") == "ask":  # what may be removed waits for the administrator's approval
                findings = [f for f in findings if not f.removable]
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
                path = _result_file(host["name"], _day(context))
                result = json.loads(path.read_text()) if path.exists() else {}
                if result.get("run_id") != run_id:  # the task never got to the host (or the file is an earlier run's)
                    result = {"host": host["name"], "error": "the audit task did not finish; see its log"}
                results.append(result)
            summary = hygiene.AuditSummary(_day(context), results)
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

        @task(trigger_rule="none_failed")
        def remove_approved() -> list[dict]:
            """Remove the checkpoints the administrator approved (`remediate: ask`), and only those; the ones declined
            (also by a timeout, which answers "Remove nothing") are left and fail this task, as debris left does."""
            from .hooks import HyperVHook

            context = get_current_context()
            decision = context["ti"].xcom_pull(task_ids="approve")
            if decision is None:
                raise AirflowSkipException("no approval was asked (remediate is not `ask`, or nothing was found)")
            chosen = set(decision.get("chosen_options") or []) - {NOTHING}
            offered, removed = hygiene.approval_options(_results(context)), []
            for host in sorted({offered[label][0] for label in chosen if label in offered}):
                findings = [offered[label][1] for label in chosen if label in offered and offered[label][0] == host]
                entry = next(h for h in load_inventory().hosts if h.name == host)
                with HyperVHook(entry.connection).session() as hook:
                    done = hygiene.remediate(hook.run_script, findings, poll=settings.poll_seconds())
                path = _result_file(host, _day(context))  # the administrators' mail reads what was removed from here
                result, gone = json.loads(path.read_text()), {f.checkpoint_id for f in findings}
                path.write_text(json.dumps(result | {"remediated": result.get("remediated", []) + done, "findings": [
                    f for f in result.get("findings", []) if f.get("checkpoint_id") not in gone]}, indent=2))
                removed += [d | {"host": host} for d in done]
            for entry in removed:
                print(f"{entry['host']}: removed {entry['removed']!r} of {entry['vm_name']} (approved); merged: {entry['merged']}")
            left = [label for label in offered if label not in chosen]
            if left:
                raise AirflowFailException(f"left as the administrator decided ({', '.join(sorted(chosen)) or NOTHING}): " + "; ".join(left))
            return removed

        listed = hosts()
        audited, verdict = audit.expand(host=listed), every_host_clean()
        approval, removal = RemovalApproval(task_id="approve", trigger_rule="all_done"), remove_approved()
        audited >> approval >> removal >> mail_administrators(listed) >> verdict
        audited >> verdict
        removal >> verdict
    return dag


def _day(context) -> str:
    """The run's day, `YYYY-MM-DD`: its logical date's, else (a manual run from the UI or the REST API has none) the
    day it was asked for."""
    return f"{context.get('logical_date') or context['dag_run'].run_after:%Y-%m-%d}"


def _results(context) -> list[dict]:
    """This run's audit results, one per host that wrote one (the audit tasks' files)."""
    results = []
    for host in load_inventory().hosts:
        path = _result_file(host.name, _day(context))
        result = json.loads(path.read_text()) if path.exists() else {}
        if result.get("run_id") == context["dag_run"].run_id:
            results.append(result)
    return results


def _result_file(host: str, day: str):
    folder = settings.reports_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"checkpoint-audit-{host}-{day}.json"
