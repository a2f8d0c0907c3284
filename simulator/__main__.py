"""`python -m simulator --scenario FILE`: serve a simulated Hyper-V fleet over WinRM.

Prints one line per listener, then `READY` once every port listens. On SIGTERM or SIGINT
it writes the final state and the journal to `--dump DIR` (sim-state.json, sim-journal.jsonl).
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))

from . import ntlm  # noqa: E402
from .certs import make_certificates  # noqa: E402
from .host import Fleet  # noqa: E402
from .scenario import ScenarioError, load_scenario  # noqa: E402
from .server import observed, serve_control, serve_host  # noqa: E402


def dump(fleet: Fleet, listeners: list, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = observed(fleet, listeners)
    (directory / "sim-state.json").write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
    with open(directory / "sim-journal.jsonl", "w", encoding="utf-8") as out:
        for line in fleet.journal_lines():
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, help="the scenario YAML file")
    parser.add_argument("--control-port", type=int, default=None, help="observation port (0 = any free port)")
    parser.add_argument("--cert-dir", default=None, help="where to write ca.pem (and the server certificate)")
    parser.add_argument("--dump", default=None, help="write sim-state.json and sim-journal.jsonl here on exit")
    args = parser.parse_args(argv)

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    fleet = Fleet(scenario)
    cert_dir = Path(args.cert_dir) if args.cert_dir else Path(tempfile.mkdtemp(prefix="hyperv-sim-"))
    ca_path = None
    tls = None
    if any(host.transport == "ssl" for host in scenario.hosts):
        ca_path, cert, key = make_certificates(cert_dir, [host.name for host in scenario.hosts])
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(cert, key)

    # the NTLM hosts' accounts, for pyspnego's acceptor: a private temporary file (never in DEMO_OUT), removed on exit
    ntlm_users = ntlm.credential_file(scenario.hosts)
    servers = []
    try:
        for spec in scenario.hosts:
            server = serve_host(fleet.host(spec.name), spec.port, tls if spec.transport == "ssl" else None)
            servers.append(server)
            port = server.server_address[1]
            fleet.ports[spec.name] = port
            scheme = "https" if spec.transport == "ssl" else "http"
            print(f"host {spec.name} {spec.transport} {scheme}://127.0.0.1:{port}/wsman", flush=True)
        control_port = args.control_port if args.control_port is not None else scenario.control_port
        hosts = list(servers)
        control = serve_control(fleet, control_port, ca_path, hosts)
        servers.append(control)
        print(f"control http://127.0.0.1:{control.server_address[1]}", flush=True)
        if ca_path:
            print(f"ca {ca_path}", flush=True)
    except OSError as error:
        print(f"error: cannot listen: {error}", file=sys.stderr)
        return 2

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()
    if ntlm_users:
        Path(ntlm_users).unlink(missing_ok=True)
    if args.dump:
        dump(fleet, hosts, Path(args.dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
