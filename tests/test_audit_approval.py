"""Approval before clean-up (`remediate: ask`): the checkpoint audit lists the Recovery checkpoints backups left, waits
for an administrator's decision through Airflow's Human-in-the-loop (answered here through the real REST API, under
the real scheduler), and removes only what was approved; no answer in time removes nothing."""

from __future__ import annotations

import json
import time
import urllib.parse

from conftest import winrm_connection

from include.cluster import AirflowCluster
from include.mailsink import MailSink

DAG = "hyperv_checkpoint_audit"
FLEET = {"seed": 8, "speed": 600, "hosts": [{"name": "HV01", "os": "2019", "vms": [
    {"name": "DB01", "checkpoints": [{"name": "DB01 - Backup - (11/20/2026 - 10:02:11 PM)", "type": "Recovery"},
                                     {"name": "DB01 - Backup - (11/21/2026 - 10:03:40 PM)", "type": "Recovery"},
                                     {"name": "before-upgrade", "type": "Standard"}]},
    {"name": "WEB01", "checkpoints": [{"name": "WEB01 - Backup - (11/21/2026 - 10:05:02 PM)", "type": "Recovery"}]}]}]}


def _checkpoints(running) -> dict[str, list[str]]:
    return {vm["name"]: sorted(c["name"] for c in vm["checkpoints"]) for vm in running.state()["hosts"][0]["vms"]}


def _audit_asking(cluster, answer) -> tuple[str, dict, dict]:
    """One audit run with `remediate: ask`; `answer(details)` returns the options to choose, or None for no answer.
    Returns (the run's state, its task states, the approval as the API first showed it).

    Each try of the approval that asks is answered, as an administrator would answer the question asked again: Airflow
    3.3 fails a deferred task whose trigger fires before the scheduler has read the worker's exit from the deferral
    (apache/airflow#72716; on a loaded machine an answer 5 s after the question can meet it), and its retry asks again,
    forgetting the answer."""
    run_id = cluster.trigger(DAG, {"remediate": "ask"})
    run = f"dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    hitl = f"{run}/taskInstances/approve/-1/hitlDetails"
    asked: dict[int, dict] = {}

    def answered_until_over():
        state = cluster.run_state(DAG, run_id)
        if state in ("success", "failed"):
            return state
        approve = next((t for t in cluster.api(f"{run}/taskInstances?limit=100")["task_instances"] if t["task_id"] == "approve"), {})
        if approve.get("state") == "awaiting_input" and approve["try_number"] not in asked:
            asked[approve["try_number"]] = details = cluster.api(hitl)
            chosen = answer(details)
            time.sleep(5)  # an administrator answers in minutes, not at once
            if chosen is not None:
                cluster.api(hitl, {"chosen_options": chosen, "params_input": {}}, method="PATCH")
        return None

    state = cluster.wait(answered_until_over, "the audit", timeout=480, every=1)
    assert asked, "the approval was never asked"
    return state, {t["task_id"]: t["state"] for t in cluster.api(f"{run}/taskInstances?limit=100")["task_instances"]}, asked[min(asked)]


def test_only_what_an_administrator_approved_is_removed_and_no_answer_removes_nothing(start_fleet, tmp_path):
    running = start_fleet(FLEET)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - {name: HV01, connection: winrm_hv01}\nmail: {to: [admins@example.test]}\n")
    approved = "HV01 / DB01: DB01 - Backup - (11/20/2026 - 10:02:11 PM)"
    with MailSink(tmp_path / "mail") as mail:
        env = {"HYPERV_BACKUP_INVENTORY": str(inventory), "AIRFLOW__HYPERV_BACKUP__REPORTS_PATH": str(tmp_path / "reports"),
               "AIRFLOW__HYPERV_BACKUP__POLL_SECONDS": "0.2", "AIRFLOW__HYPERV_BACKUP__APPROVAL_TIMEOUT_HOURS": str(45 / 3600),
               "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", "AIRFLOW_CONN_SMTP_DEFAULT": mail.connection(),
               "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "catalog.sqlite")}),
               "AIRFLOW_CONN_WINRM_HV01": winrm_connection(running.endpoints["HV01"], running.ca_path)}
        with AirflowCluster(tmp_path / "airflow", env) as cluster:
            cluster.wait_for_dags([DAG])
            state, tasks, details = _audit_asking(cluster, lambda details: [approved])
            assert details["options"] == ["Remove nothing", approved, "HV01 / DB01: DB01 - Backup - (11/21/2026 - 10:03:40 PM)",
                                          "HV01 / WEB01: WEB01 - Backup - (11/21/2026 - 10:05:02 PM)"]  # never the Standard one
            assert details["defaults"] == ["Remove nothing"] and details["multiple"] is True
            left = {"DB01": ["DB01 - Backup - (11/21/2026 - 10:03:40 PM)", "before-upgrade"],
                    "WEB01": ["WEB01 - Backup - (11/21/2026 - 10:05:02 PM)"]}
            assert _checkpoints(running) == left
            assert tasks["audit"] == "success" and tasks["approve"] == "success"  # the removable findings waited for the decision
            assert tasks["remove_approved"] == "failed" and state == "failed"  # the two declined are left: the run says so

            state, tasks, details = _audit_asking(cluster, lambda details: None)  # nobody answers within the 45 s allowed
            assert len(details["options"]) == 3 and _checkpoints(running) == left  # nothing removed
            assert tasks["approve"] == "success" and tasks["remove_approved"] == "failed" and state == "failed"
        mails = sorted(mail.messages())
    assert len(mails) == 2 and b"DB01 - Backup - (11/20/2026 - 10:02:11 PM)" in mails[0].read_bytes()  # the removal, told
