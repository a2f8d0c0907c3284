"""The fleet page as a FastAPI app that Airflow's api-server mounts (the plugin in plugins/hyperv_backup_plugin.py):
`/hyperv-backup/fleet` (HTML, linked from the UI's navigation) and `/hyperv-backup/fleet.json`.

Read-only, built from the catalog at each request (two grouped reads and the restore tests), and behind Airflow's own
authentication: the caller needs read access to DAGs, from a bearer token or the UI's session cookie, as the REST
API asks. Nothing heavy is imported until a page is asked for.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

app = FastAPI(title="Hyper-V backup fleet", docs_url=None, redoc_url=None, openapi_url=None)


def _auth():
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET"))


def _fleet() -> tuple[list, list, datetime]:
    from . import catalog, fleet, settings
    from .inventory import followed, load_inventory

    engine, now, hosts = settings.catalog_engine(), datetime.now(UTC), load_inventory().hosts
    tests = {(r["host"], r["vm_name"]): r for r in catalog.last_restore_tests(engine)}
    vm_lines = fleet.lines(followed(hosts, catalog.latest_per_vm(engine)), tests, {h.name: h.rpo_hours for h in hosts}, now)
    return fleet.hosts(vm_lines), vm_lines, now


@app.get("/fleet", response_class=HTMLResponse, dependencies=[_auth()])
def fleet_page() -> str:
    from .render import environment

    host_lines, vm_lines, now = _fleet()
    return environment().get_template("fleet.html.j2").render(hosts=host_lines, vms=vm_lines, now=now)


@app.get("/fleet.json", dependencies=[_auth()])
def fleet_json() -> dict[str, Any]:
    host_lines, vm_lines, now = _fleet()
    return {"at": now.isoformat(), "hosts": [asdict(h) for h in host_lines], "vms": [asdict(v) for v in vm_lines]}
