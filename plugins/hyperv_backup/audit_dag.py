"""The daily checkpoint audit over the whole fleet, with opt-in remediation.

One mapped task per host of the inventory (read when the DAG runs, so a wrong inventory does not
stop this DAG from loading): Get-HostVMs, then `hygiene.audit_host`. With remediation on (Param
`remediate`, or `clean_recovery_checkpoints: true` on the host), the Recovery checkpoints a backup
left are removed and merged; nothing else is ever touched. The findings and what was done are
written as JSON to the reports location and returned (the task's XCom), and a host with findings
left makes its task fail, so the UI shows where debris waits for an administrator.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from . import hygiene
from .dag_factory import poll_seconds
from .hooks import HyperVHook
from .inventory import load_inventory
from .report_dag import reports_location, storage

DAG_ID = "hyperv_checkpoint_audit"


def build_audit_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        schedule="30 12 * * *",  # midday: far from the backup windows, so no job holds a checkpoint
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["hyperv", "backup", "hygiene"],
        doc_md=__doc__,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=1)},
        params={"remediate": Param(False, type="boolean",
                                   description="remove the Recovery checkpoints backups left, on every host (never other types)")},
    ):

        @task
        def hosts() -> list[dict]:
            return [{"name": h.name, "connection": h.connection, "clean": h.clean_recovery_checkpoints}
                    for h in load_inventory().hosts]

        @task(map_index_template="{{ host_name }}")
        def audit(host: dict, params=None) -> dict:
            context = get_current_context()
            context["host_name"] = host["name"]
            hook = HyperVHook(host["connection"])
            findings = hygiene.audit_host(hook.run_script("Get-HostVMs"))
            done = []
            if params.get("remediate") or host["clean"]:
                done = hygiene.remediate(hook.run_script, findings, poll=poll_seconds())
                findings = hygiene.audit_host(hook.run_script("Get-HostVMs"))
            result = {"host": host["name"], "at": datetime.now().astimezone().isoformat(), "remediated": done,
                      "findings": [f.to_dict() for f in findings]}
            folder = storage(reports_location())
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"checkpoint-audit-{host['name']}-{context['ds']}.json").write_text(json.dumps(result, indent=2))
            for entry in done:
                print(f"removed {entry['removed']!r} of {entry['vm_name']}; merged: {entry['merged']}")
            if findings:
                raise AirflowFailException(f"{host['name']}: {len(findings)} finding(s) need an administrator:\n" + "\n".join(
                    f"{f.vm_name}: {f.kind} {f.subject} -> {f.what_to_do}" for f in findings))
            return result

        audit.expand(host=hosts())
