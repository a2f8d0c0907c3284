"""What one remote shell per step saves: a shell per command against one shell for many.

Runs the same script (Get-HvbVMBackupStatus, the call every poll makes) N times through
HyperVHook against a simulated host over HTTPS, first with a shell per command (Create,
Command, Receive, Signal, Delete, and a new TLS connection each time), then inside
`HyperVHook.session()` (one shell, one kept-alive connection), side by side, and prints
HTTP requests and milliseconds per call.

    .venv/bin/python -m bench.winrm_session [--calls 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # not a log line per call

from include.demo import connection_env
from simulator import harness
from simulator.scenario import load_scenario

SCENARIO = {"seed": 3, "speed": 60, "hosts": [{"name": "HVBENCH", "os": "2019", "transport": "ssl",
                                                "vms": [{"name": "VM01", "disk_gb": 20}]}]}


def measure(running: harness.RunningSimulator, calls: int, session: bool) -> tuple[float, float]:
    """(HTTP requests per call, milliseconds per call)."""
    from hyperv_backup.hooks import HyperVHook

    hook = HyperVHook("winrm_hvbench")
    vm_id = hook.run_script("Get-HvbHostVMs")["vms"][0]["id"]
    before = running.state()["hosts"][0]["requests"]
    began = time.perf_counter()
    if session:
        with hook.session():
            for _ in range(calls):
                hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)
    else:
        for _ in range(calls):
            hook.run_script("Get-HvbVMBackupStatus", VMId=vm_id)
    elapsed = time.perf_counter() - began
    return (running.state()["hosts"][0]["requests"] - before) / calls, 1000 * elapsed / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.winrm_session", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-winrm-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(yaml.safe_dump(SCENARIO))
        running = harness.start(path, Path(tmp) / "certs")
        try:
            os.environ.update(connection_env(load_scenario(path), running))
            results = {"a shell per command": measure(running, args.calls, session=False),
                       "one shell (session)": measure(running, args.calls, session=True)}
        finally:
            running.stop()
    print(f"{args.calls} calls of Get-HvbVMBackupStatus over HTTPS to a simulated 2019 host\n")
    print(f"{'':22} {'HTTP requests/call':>19} {'ms/call':>8}")
    for name, (requests, ms) in results.items():
        print(f"{name:22} {requests:>19.2f} {ms:>8.1f}")
    (per_command_requests, per_command_ms), (session_requests, session_ms) = results.values()
    print(f"\nsession / per command: {session_requests / per_command_requests:.2f}x the requests, "
          f"{session_ms / per_command_ms:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
