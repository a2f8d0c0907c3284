"""`make ui`: the Airflow UI over the demo's Airflow home (DEMO_OUT/airflow), on 127.0.0.1.

Starts `airflow api-server` for the runs the demo made, prints the URL and the login (Airflow's
simple auth manager, user `admin`, its password generated into the Airflow home), and serves
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from include.cluster import PASSWORDS  # noqa: E402


def environment(home: Path, out: Path, port: int) -> dict[str, str]:
    return dict(os.environ) | {
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin", "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port), "HYPERV_BACKUP_INVENTORY": str(out / "inventory.yaml"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),  # the fleet page
        "AIRFLOW_CONN_HYPERV_BACKUP_CATALOG": json.dumps({"conn_type": "sqlite", "host": str(out / "catalog.sqlite")}),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make ui")
    parser.add_argument("--out", default=str(ROOT / "demo-output"))
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    home = out / "airflow"
    if not (home / "airflow.db").exists():
        print(f"error: {home} holds no Airflow metadata database: run `make demo DEMO_OUT={out}` first", file=sys.stderr)
        return 2
    log = home / "api-server.log"
    with log.open("ab") as output:
        server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(args.port)],
                                  env=environment(home, out, args.port), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (home / PASSWORDS).exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print(f"error: the api-server did not start; see {log}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        password = json.loads((home / PASSWORDS).read_text())["admin"]
        print(f"Airflow UI for the demo's runs: http://127.0.0.1:{args.port}/  login: admin / {password}  (Ctrl-C stops it; "
              f"server log: {log})", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
