"""Start and stop `python -m simulator` as a child process (for the demo and the tests).

The child prints one line per listener and then READY; this reads those lines, so callers
learn the real ports even when the scenario asks for any free one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Endpoint:
    host: str
    transport: str
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


@dataclass
class RunningSimulator:
    process: subprocess.Popen
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    control_url: str = ""
    ca_path: str | None = None

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.control_url + path, timeout=10) as response:
            return response.read()

    def state(self) -> dict:
        return json.loads(self.get("/_sim/state"))

    def journal(self) -> list[dict]:
        return [json.loads(line) for line in self.get("/_sim/journal").decode().splitlines() if line]

    def advance(self, seconds: float) -> None:
        request = urllib.request.Request(f"{self.control_url}/_sim/advance?seconds={seconds}", method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def reboot(self, host: str) -> None:
        """The host restarts now (POST /_sim/reboot), whatever a client is doing."""
        request = urllib.request.Request(f"{self.control_url}/_sim/reboot?host={host}", method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(scenario: Path, cert_dir: Path, dump: Path | None = None, control_port: int = 0) -> RunningSimulator:
    command = [sys.executable, "-m", "simulator", "--scenario", str(scenario), "--cert-dir", str(cert_dir),
               "--control-port", str(control_port)]
    if dump is not None:
        command += ["--dump", str(dump)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = RunningSimulator(process)
    for line in process.stdout:
        words = line.split()
        if words[:1] == ["host"]:
            running.endpoints[words[1]] = Endpoint(words[1], words[2], words[3])
        elif words[:1] == ["control"]:
            running.control_url = words[1]
        elif words[:1] == ["ca"]:
            running.ca_path = words[1]
        elif words == ["READY"]:
            return running
    process.wait()
    raise RuntimeError(f"the simulator did not start: {process.stderr.read().strip()}")
