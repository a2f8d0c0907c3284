"""The fleet page (docs/fleet-page.md): the plugin's pure lines, and the page itself in headless Chromium, driven
through the DevTools protocol, against the real api-server over the demo's Airflow home and catalog."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hyperv_backup import fleet

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_each_vm_line_says_its_age_against_the_rpo_its_impact_and_its_last_restore_test():
    base = {"dag_id": "hyperv_backup_hv01", "run_id": "scheduled__2026-11-20T22:00:00+00:00", "host": "HV01"}
    latest = [base | {"vm_name": "DB01", "status": "succeeded", "last_good": NOW - timedelta(hours=13), "mode": "saved",
                      "predicted_mode": "saved", "offline_seconds": 41.6, "restore_points": 3},
              base | {"vm_name": "OLD01", "status": "failed", "last_good": NOW - timedelta(hours=30), "mode": None, "error": "target full"},
              base | {"vm_name": "NEW01", "status": "running", "last_good": None, "job_started_at": NOW - timedelta(minutes=5)}]
    tests = {("HV01", "DB01"): {"status": "failed", "finished_at": NOW - timedelta(days=2), "error": "no heartbeat"}}
    lines = {line.vm_name: line for line in fleet.lines(latest, tests, {"HV01": 24}, NOW)}
    assert lines["DB01"].impact == "offline 42 s" and not lines["DB01"].past_rpo and lines["DB01"].age_hours == 13
    assert lines["DB01"].restore_test == "failed 2026-11-19 12:00: no heartbeat"
    assert lines["OLD01"].past_rpo and lines["NEW01"].past_rpo and lines["NEW01"].restore_test == "never"
    assert lines["NEW01"].running_since == NOW - timedelta(minutes=5)
    assert lines["DB01"].run_url == "/dags/hyperv_backup_hv01/runs/scheduled__2026-11-20T22%3A00%3A00%2B00%3A00"
    (host,) = fleet.hosts(list(lines.values()))
    assert (host.vms, host.past_rpo, host.failed, host.running) == (3, 2, 1, 1)


class Chromium:
    """Debian's headless Chromium, driven over the DevTools protocol (one page)."""

    def __init__(self, folder: Path):
        from websockets.sync.client import connect

        from include.cluster import free_port

        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
        port = free_port()
        self.process = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                                         f"--remote-debugging-port={port}", f"--user-data-dir={folder}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    page = next(t for t in json.loads(response.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                time.sleep(0.2)
        self.socket, self.next_id = connect(page["webSocketDebuggerUrl"], max_size=2**26), 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def open(self, url: str) -> str:
        """Load `url`; its text once loaded."""
        self.call("Page.navigate", url=url)
        for _ in range(200):
            if self.call("Runtime.evaluate", expression="document.readyState")["result"]["value"] == "complete":
                break
            time.sleep(0.1)
        return self.call("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def test_the_fleet_page_shows_the_demos_fleet_behind_airflows_login(demo, tmp_path):
    from include.cluster import free_port

    out, _ = demo
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "include.ui", "--out", str(out), "--port", str(port)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                          env=dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}"))
    browser = None
    try:
        password = ui.stdout.readline().split("login: admin / ")[1].split()[0]
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                login = urllib.request.Request(f"{url}/auth/token", data=json.dumps({"username": "admin", "password": password}).encode(),
                                               headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(login, timeout=30) as response:
                    token = json.loads(response.read())["access_token"]
                break
            except OSError:
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/hyperv-backup/fleet", timeout=30)
        assert refused.value.code == 401  # behind Airflow's own authentication

        browser = Chromium(tmp_path / "chromium")
        assert "Hyper-V fleet" not in browser.open(f"{url}/hyperv-backup/fleet")  # no session: no page
        browser.call("Network.setCookie", name="_token", value=token, url=url)  # the session cookie the UI's login sets
        text = browser.open(f"{url}/hyperv-backup/fleet")
        with sqlite3.connect(out / "catalog.sqlite") as db:
            rows = db.execute("SELECT host, vm_name, status, mode FROM vm_backups").fetchall()
        for host, vm, status, mode in rows:
            line = next(line for line in text.splitlines() if line.startswith(f"{host}\t{vm}\t"))
            assert status in line and (mode is None or mode in line), line
        assert all(f"{host}\n{len({r[1] for r in rows if r[0] == host})} VMs" in text for host, *_ in rows)  # the hosts' tiles
        links = browser.call("Runtime.evaluate", expression="[...document.querySelectorAll('#vms a')].map(a => a.getAttribute('href'))",
                             returnByValue=True)["result"]["value"]
        assert len(links) == len({(r[0], r[1]) for r in rows}) and all(link.startswith("/dags/hyperv_backup_") for link in links)
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "fleet.png").write_bytes(shot)
        assert len(shot) > 10_000
        # the UI lists the page in its navigation (the plugin's external view)
        request = urllib.request.Request(f"{url}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            views = [v for p in json.loads(response.read())["plugins"] for v in p["external_views"]]
        assert [(v["name"], v["href"], v["url_route"]) for v in views] == [("Hyper-V fleet", "/hyperv-backup/fleet", "hyperv-fleet")]
    finally:
        if browser is not None:
            browser.close()
        os.killpg(ui.pid, 15)
        ui.wait(timeout=60)
