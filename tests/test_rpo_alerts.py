"""The RPO's alerts between reports (docs/alerts.md): a backup run's deadline at its host's window end, and the RPO
watch's one mail per breach. The decisions are tested alone; then both under the real scheduler and triggerer, with a
real scheduled run per host, a real SMTP server, and the simulator's hosts over WinRM."""

from __future__ import annotations

import email
import email.policy
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import winrm_connection
from hyperv_backup import rpo
from hyperv_backup.rpo_dag import WindowEnd
from hyperv_backup.windows import Window

from include.cluster import AirflowCluster
from include.mailsink import MailSink

NOW = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)


def _latest(name: str, last_good: datetime | None, host: str = "HV01", status: str = "succeeded") -> dict:
    return {"host": host, "vm_name": name, "last_good": last_good, "status": status, "error": None}


def test_a_closed_window_names_only_the_vms_whose_rpo_runs_out_before_their_next_chance():
    latest = [_latest("FRESH", NOW - timedelta(hours=1)), _latest("DONE", NOW - timedelta(hours=30)),
              _latest("NEVER", None, status="failed"), _latest("STALE", NOW - timedelta(hours=51)),
              _latest("NOTYET", NOW - timedelta(hours=20))]
    run = [{"vm_name": "DONE", "status": "succeeded", "error": None}, {"vm_name": "NEVER", "status": "failed", "error": "0x80070070"},
           {"vm_name": "STALE", "status": "running", "error": None}, {"vm_name": "FRESH", "status": "deferred", "error": None}]
    next_close = NOW + timedelta(hours=22)
    exposed = rpo.left_at_risk("HV01", latest, run, 24.0, next_close)
    # NEVER first (never backed up), then the oldest; FRESH's backup of an hour ago lasts past the next window: not named;
    # NOTYET has no row in the run yet (the run never got to it) and its RPO runs out before the next window closes
    assert [(e.vm_name, e.status) for e in exposed] == [("NEVER", "failed"), ("STALE", "running"), ("NOTYET", None)]
    assert [e.past(NOW) for e in exposed] == [True, True, False]
    lenient = rpo.left_at_risk("HV01", latest, run, 72.0, next_close)  # a 72 h RPO: a missed night is a risk only to
    assert [e.vm_name for e in lenient] == ["NEVER", "STALE"]  # the never backed up and the 51 h old (73 h at the next close)


def test_a_breach_is_one_episode_per_last_good_backup():
    latest = [_latest("A", NOW - timedelta(hours=25)), _latest("B", NOW - timedelta(hours=23)), _latest("C", None, host="HV02"),
              _latest("GONE", None, host="ELSEWHERE")]
    past = rpo.breaches(latest, {"HV01": 24.0, "HV02": 24.0}, NOW)
    assert [(e.host, e.vm_name) for e in past] == [("HV02", "C"), ("HV01", "A")]  # a host not in the inventory is not told
    again = rpo.breaches(latest, {"HV01": 24.0, "HV02": 24.0}, NOW + timedelta(hours=5))
    assert [e.episode for e in again][:2] == [e.episode for e in past]  # the same breaches an hour later: the same keys
    newer = rpo.breaches([_latest("A", NOW + timedelta(hours=1))], {"HV01": 24.0}, NOW + timedelta(hours=30))
    assert newer[0].episode != past[1].episode  # a newer backup grown too old is a new breach
    assert rpo.breach_mail_key(past) == rpo.breach_mail_key(list(reversed(past))) != rpo.breach_mail_key(past[:1])
    assert len(rpo.Exposure("H" * 200, "V" * 200, None, 24).episode) == 250  # the ledger's key column


@pytest.mark.parametrize(("moment", "expected"), [
    ("2026-03-28T23:30:00+00:00", "2026-03-29T04:00:00+00:00"),  # inside the window; the clocks go forward that night
    ("2026-03-29T10:00:00+00:00", "2026-03-30T04:00:00+00:00"),  # by day: the next night's end, summer time
    ("2026-10-25T05:00:00+00:00", "2026-10-26T05:00:00+00:00"),  # just after the window closed, the night clocks go back
])
def test_the_next_chance_is_the_end_of_the_next_window_in_the_hosts_time(moment, expected):
    window = Window(start="22:00", end="06:00", timezone="Europe/Berlin")
    assert window.next_close(datetime.fromisoformat(moment)).isoformat() == expected


def test_the_deadline_reference_survives_serialization():
    reference = WindowEnd({"start": "23:30", "end": "01:15", "timezone": "Asia/Kolkata", "grace_minutes": 20})
    data = reference.serialize_reference()
    assert data["window"] == {"start": "23:30", "end": "01:15", "timezone": "Asia/Kolkata", "grace_minutes": 20}
    assert WindowEnd.deserialize_reference(data) == reference


def _messages(sink: MailSink) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sink.messages()]


def test_a_run_failed_at_its_window_end_mails_the_vms_at_risk_once_and_a_breach_is_told_once(start_fleet, tmp_path):
    """HV01's scheduled run fails (its target is full), HV02's succeeds before its window ends. At HV01's window end one
    mail names its two VMs; HV02's run, over in time, has none. The RPO watch then tells HV01's two breaches once."""
    running = start_fleet({"seed": 5, "speed": 1, "hosts": [  # the host keeps real time: its window is Airflow's
        {"name": "HV01", "os": "2019", "vms": [{"name": "DB01", "disk_gb": 1}, {"name": "WEB01", "disk_gb": 1}],
         "faults": [{"kind": "target_full", "at": "copy", "times": 10}]},
        {"name": "HV02", "os": "2019", "vms": [{"name": "FS01", "disk_gb": 1}]}]})
    zone = ZoneInfo("Asia/Kolkata")  # +05:30: a window in a host's own time, half an hour off UTC's
    # 150-210 s from now: Airflow's start, with make test's other lane busy beside it, comes first
    fire = (datetime.now(UTC) + timedelta(seconds=210)).replace(second=0, microsecond=0).astimezone(zone)
    closes = fire + timedelta(minutes=2)
    window = f"{{start: '{fire - timedelta(minutes=1):%H:%M}', end: '{closes:%H:%M}', timezone: Asia/Kolkata}}"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n" + "".join(
        f"  - {{name: {h}, connection: winrm_{h.lower()}, schedule: '{fire.minute} {fire.hour} * * *', window: {window}}}\n"
        for h in ("HV01", "HV02")) + "mail: {admins: [admins@example.test]}\n")
    with MailSink(tmp_path / "mail") as sink:
        env = {"HYPERV_BACKUP_INVENTORY": str(inventory), "AIRFLOW__HYPERV_BACKUP__REPORTS_PATH": str(tmp_path / "reports"),
               "AIRFLOW__HYPERV_BACKUP__POLL_SECONDS": "0.2", "AIRFLOW__HYPERV_BACKUP__RETRIES": "0",
               "AIRFLOW__HYPERV_BACKUP__RPO_WATCH_SCHEDULE": "",  # run by the test alone
               "AIRFLOW_CONN_SMTP_DEFAULT": sink.connection(),
               "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "catalog.sqlite")}),
               "AIRFLOW_CONN_WINRM_HV01": winrm_connection(running.endpoints["HV01"], running.ca_path),
               "AIRFLOW_CONN_WINRM_HV02": winrm_connection(running.endpoints["HV02"], running.ca_path)}
        with AirflowCluster(tmp_path / "airflow", env) as cluster:
            cluster.wait_for_dags(["hyperv_backup_hv01", "hyperv_backup_hv02", "hyperv_rpo_watch"])
            assert datetime.now(UTC) < fire, "the cluster came up too late for the scheduled runs this test needs"

            def ended(dag_id):  # the run at `fire` (a first run for yesterday's slot came at once, deferred every VM)
                runs = [r for r in cluster.api(f"dags/{dag_id}/dagRuns")["dag_runs"] if datetime.fromisoformat(r["run_after"]) >= fire]
                return runs and runs[0]["state"] in ("success", "failed") and runs[0]
            hv01 = cluster.wait(lambda: ended("hyperv_backup_hv01"), "HV01's scheduled run", timeout=420, every=2)
            hv02 = cluster.wait(lambda: ended("hyperv_backup_hv02"), "HV02's scheduled run", timeout=120, every=2)
            assert (hv01["run_type"], hv01["state"], hv02["run_type"], hv02["state"]) == ("scheduled", "failed", "scheduled", "success")
            assert datetime.fromisoformat(hv02["end_date"]) < closes, "HV02's run must end before its window does"
            deadline_mail = cluster.wait(lambda: _messages(sink), "the deadline's mail", timeout=180, every=2)
            assert datetime.now(UTC) >= closes, deadline_mail[0]["Subject"]

            for _ in range(2):  # the watch twice: the second finds the breaches told
                run_id = cluster.trigger("hyperv_rpo_watch")
                state = cluster.wait(lambda r=run_id: (s := cluster.run_state("hyperv_rpo_watch", r)) in ("success", "failed") and s,
                                     "the RPO watch", timeout=180)
                assert state == "success"
            watch = cluster.api(f"dags/hyperv_rpo_watch/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances")
            assert [t["state"] for t in watch["task_instances"]] == ["skipped"]
        mails = _messages(sink)
    assert len(mails) == 2, [m["Subject"] for m in mails]
    deadline, breach = (next(m for m in mails if word in m["Subject"]) for word in ("window closed", "past their RPO"))
    assert deadline_mail[0]["Subject"] == deadline["Subject"]
    assert "HV01's window closed" in deadline["Subject"] and "with its run failed" in deadline["Subject"]
    assert "2 VM(s) at risk of their RPO: DB01, WEB01" in deadline["Subject"]
    body = deadline.get_body(("plain",)).get_content()
    assert "0x80070070" in body and "FS01" not in body and "hyperv_backup_hv01" in body
    assert breach["Subject"] == "Hyper-V backup: 2 VM(s) past their RPO: HV01/DB01, HV01/WEB01"
    assert deadline["To"] == breach["To"] == "admins@example.test"


def test_without_the_plugin_a_backup_dag_has_no_deadline_and_says_so(monkeypatch, tmp_path):
    """A deadline the scheduler cannot read (its class unregistered) would keep every run of the DAG from starting."""
    from hyperv_backup import dag_factory, rpo_dag
    from hyperv_backup.inventory import parse_inventory

    inventory = parse_inventory("hosts:\n  - {name: HV01, connection: winrm_hv01}\n", "inventory.yaml")
    for folder, has_deadline in ((tmp_path, False), (Path(rpo_dag.__file__).parents[1], True)):
        monkeypatch.setenv("AIRFLOW__CORE__PLUGINS_FOLDER", str(folder))
        rpo_dag.plugin_installed.cache_clear()
        dag = dag_factory.build_dag(inventory.hosts[0], inventory)
        assert bool(dag.deadline) is has_deadline
        assert ("No deadline at the window's end" in dag.doc_md) is not has_deadline
    rpo_dag.plugin_installed.cache_clear()


def test_the_alerts_the_fleet_page_and_the_report_agree_where_the_rpo_runs_out():
    """A last good backup exactly as old as the RPO is not yet past it; a second older is, for all three."""
    import pandas as pd
    from hyperv_backup import fleet, report

    good = NOW - timedelta(hours=24)
    for when, past in ((NOW, False), (NOW + timedelta(seconds=1), True)):
        latest = [{"host": "HV01", "vm_name": "A", "last_good": good, "status": "succeeded", "dag_id": "d", "run_id": "r"}]
        assert rpo.Exposure("HV01", "A", good, 24.0).past(when) is past
        assert fleet.lines(latest, {}, {"HV01": 24.0}, when)[0].past_rpo is past
        assert bool(report.rpo_table(pd.DataFrame(latest), when, {"HV01": 24.0})["breach"].iloc[0]) is past
        assert [e.vm_name for e in rpo.breaches(latest, {"HV01": 24.0}, when)] == (["A"] if past else [])


def test_the_rpo_is_followed_only_for_what_the_inventory_still_backs_up():
    """A host taken out of the inventory, or a VM its entry no longer selects, is no one's RPO: the watch, the report's
    RPO and restore tables and the fleet page read the catalog's rows through inventory.followed."""
    from hyperv_backup.inventory import followed, parse_inventory

    hosts = parse_inventory("hosts:\n  - name: HV01\n    connection: c\n    exclude: ['OLD*']\n", "inventory.yaml").hosts
    rows = [_latest("A", NOW), _latest("OLD1", None), _latest("B", NOW, host="HV99"), _latest("N", None)]
    assert [(r["host"], r["vm_name"]) for r in followed(hosts, rows)] == [("HV01", "A"), ("HV01", "N")]
    assert followed([], rows) == []


def test_the_report_counts_past_their_rpo_only_the_vms_the_inventory_still_backs_up(tmp_path):
    """The report DAG (dag.test) over a catalog whose VMs were last backed up three days ago: HV01's A is past its RPO;
    HV99 was taken out of the inventory, OLD1 is excluded by it, and GONE was retired by HV01's last run (its host no
    longer lists it): none of them is counted, nor listed in the RPO table."""
    import os
    import re

    from conftest import dag_test
    from hyperv_backup import catalog

    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    backed_up = NOW - timedelta(days=3)
    for host, vm in (("HV01", "A"), ("HV01", "OLD1"), ("HV99", "B"), ("HV01", "GONE")):
        key = {"dag_id": f"hyperv_backup_{host.lower()}", "run_id": "scheduled__1", "host": host, "vm_name": vm}
        catalog.upsert(engine, key, {"status": "succeeded", "job_started_at": backed_up, "interval_end": backed_up}, backed_up)
    catalog.upsert(engine, {"dag_id": "hyperv_backup_hv01", "run_id": "scheduled__2", "host": "HV01", "vm_name": "GONE"},
                   {"status": "skipped", "retired": True, "interval_end": NOW - timedelta(days=2)}, NOW - timedelta(days=2))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  - {name: HV01, connection: winrm_hv01, exclude: ['OLD*']}\n")
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"), HYPERV_BACKUP_INVENTORY=str(inventory),
               AIRFLOW__HYPERV_BACKUP__REPORTS_PATH=str(tmp_path / "reports"),
               AIRFLOW_CONN_HYPERV_BACKUP_CATALOG=json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "catalog.sqlite")}))
    done = dag_test(Path(__file__).resolve().parent.parent / "dags", "hyperv_backup_report", env,
                    {"interval_start": (NOW - timedelta(days=1)).isoformat(), "interval_end": NOW.isoformat(), "send_mail": False})
    assert done.stdout.splitlines()[-1] == "STATE success", done.stdout[-3000:] + done.stderr[-3000:]
    (page,) = (tmp_path / "reports").glob("*[0-9].html")
    html = page.read_text(encoding="utf-8")
    assert re.search(r"<title>Hyper-V backups [^<]*: nothing ran, 1 VM past RPO</title>", html), html[:400]
    assert "OLD1" not in html and "HV99" not in html and "GONE" not in html and ">A<" in html


def test_a_fleet_past_its_rpo_is_mailed_as_the_most_exposed_vms_and_a_count_of_the_others():
    from hyperv_backup import mailer

    latest = [_latest(f"VM{i:04d}", NOW - timedelta(hours=30 + i)) for i in range(150)] + [_latest("NEW", None, status="failed")]
    past = rpo.breaches([{**r, "host": "HV01"} for r in latest], {"HV01": 24.0}, NOW)
    page = mailer.page("rpo.html.j2", subject=rpo.breach_subject(past), exposed=past, now=NOW)
    rows = page.count("<tr><td>HV01</td>")
    assert (len(past), rows) == (151, mailer.TABLE_ROWS)
    assert "never" in page and "VM0149" in page and "VM0051" in page and "VM0050" not in page  # never, then the oldest
    assert "51 more VM(s), with more recent backups, are not listed; every VM is on the fleet page." in page
