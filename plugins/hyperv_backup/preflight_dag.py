"""The preflight DAG: asks every host of the inventory whether it is ready for its first backup.

Manual (no schedule): run it after adding a host or changing a connection, before the first night.
One mapped task per host reads the host (Get-HvbHostReadiness, Get-HvbHostVMs, one probe per VM
the inventory selects; nothing is changed on the host), `preflight` decides each check, the task
log shows them as a table, and the task returns them (its XCom: what `make preflight` writes to
preflight.json). A host that fails a check fails its task, so the UI shows which host to fix.
"""

from __future__ import annotations

import ssl
import urllib.parse
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from . import preflight, settings
from .errors import HostError
from .inventory import load_inventory

DAG_ID = "hyperv_backup_preflight"


def certificate_expiry(endpoint: str) -> datetime | None:
    """When the certificate an HTTPS endpoint presents expires (None over HTTP, or when it cannot be read;
    whether it is trusted is the WinRM call's to say)."""
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme != "https" or not url.hostname:
        return None
    try:
        pem = ssl.get_server_certificate((url.hostname, url.port or 5986), timeout=10)
    except OSError:
        return None
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def check_host(entry, hook, now: datetime) -> list[preflight.Check]:
    """Every check of one host (`entry`, an inventory.HostEntry), through `hook` (a HyperVHook)."""
    endpoint = str(hook.get_connection(entry.connection).extra_dejson.get("endpoint") or "")
    try:
        answer = hook.run_script("Get-HvbHostReadiness", BackupTarget=entry.backup_target)
    except HostError as error:  # not reached, not trusted, not logged on, or the script failed: nothing more to ask
        return preflight.connection(entry.name, error, endpoint, None, now)
    checks = preflight.connection(entry.name, None, endpoint, certificate_expiry(endpoint), now)
    try:
        listed = hook.run_script("Get-HvbHostVMs")["vms"] if answer["features"]["hyperv"] else []
    except HostError as error:  # e.g. no Windows Server Backup, or no right to ask it: the checks below say which
        return checks + preflight.readiness(entry.name, answer, now, 0) + [
            preflight.Check(entry.name, "inventory_vms", preflight.FAIL, f"the host's VMs could not be listed: {error.message}",
                            "fix the checks above that failed, then run the preflight again")]
    names = [vm["name"] for vm in listed]
    chosen, missing = entry.selected(names), [v for v in entry.vms if v not in entry.patterns and v not in names]
    probes, size = {}, 0
    for name in chosen:
        try:
            probes[name] = probe = hook.run_script("Get-HvbVMBackupProbe", VMName=name, BackupTarget=entry.backup_target)
            size += sum(int(d.get("size_bytes") or 0) for vm in probe["vms"] for d in vm["disks"])
        except HostError as error:
            checks.append(preflight.Check(entry.name, "plan", preflight.FAIL, f"{name}: {error.message}", error.advice))
    return checks + preflight.readiness(entry.name, answer, now, size) + preflight.vms(entry.name, chosen, missing, listed, probes)


def build_preflight_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,
        tags=["hyperv", "backup", "preflight"],
        doc_md=__doc__,
        default_args=settings.yields_to_backups() | {"retries": 0, "execution_timeout": timedelta(minutes=15)},
    ) as dag:

        @task
        def hosts() -> list[str]:
            return [h.name for h in load_inventory().hosts]

        @task(map_index_template="{{ host_name }}")
        def check(host_name: str) -> list[dict]:
            from .hooks import HyperVHook  # WinRM is imported by the task that uses it, not by the DAG file

            get_current_context()["host_name"] = host_name
            entry = next(h for h in load_inventory().hosts if h.name == host_name)
            hook = HyperVHook(entry.connection, keep_shell=True)
            try:
                checks = check_host(entry, hook, datetime.now(UTC))
            finally:
                hook.close()
            for c in checks:
                print(f"{c.status.upper():5} {c.check:22} {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else ""))
            result = [c.to_json() for c in checks]
            get_current_context()["ti"].xcom_push(key="checks", value=result)  # also when it fails: make preflight reads every host's
            failed = [c for c in checks if c.status == preflight.FAIL]
            if failed:
                raise AirflowFailException(f"{host_name} is not ready: " + "; ".join(f"{c.check}: {c.detail}" for c in failed))
            return result

        check.expand(host_name=hosts())
    return dag
