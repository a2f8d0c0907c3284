"""HTTP(S) listeners: one WinRM endpoint per simulated host, and the control port.

Each host listens on 127.0.0.1 with its own transport: `plaintext` (Basic over HTTP), `ssl`
(Basic over HTTPS) or `ntlm` (NTLM over HTTP, each connection authenticated once and its messages
sealed: `ntlm.py`). Scenario faults that live in the protocol (dropped connections,
slow replies, SOAP faults, refused credentials, a rebooting host: `faults.PROTOCOL`) are delivered
here, at the step the command belongs to. The WinRM service's shells live here too (`wsman.Shells`), one
registry per listener, so the state this layer shows (`observed`) adds each host's open shells.
"""

from __future__ import annotations

import base64
import hmac
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from hyperv_backup import invocation

from . import commands, faults, ntlm, wsman
from .exceptions import DropConnection, WSManFault
from .host import Fleet, Host


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class WinRMHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    host: Host  # set on the subclass made for each listener
    shells: wsman.Shells  # the host's WinRM service's, likewise

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    # -- HTTP ------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fleet = self.host.fleet
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        with fleet.lock:
            self.host.requests += 1
            self.host.tick()  # a restart planned on a job's timeline may have come due: then this request meets it
            down = time.monotonic() < self.host.down_until
        try:
            if down:
                raise DropConnection()
            if urlparse(self.path).path.lower() != "/wsman":
                self._send(404, b"", "text/html")
                return
            if self.host.spec.transport == "ntlm":
                payload = self._ntlm_request(payload)
                if payload is None:  # answered: the server's challenge, or a refusal
                    return
                if not payload:  # the empty request that set the connection's context up
                    self._send(200, b"")
                    return
            elif not self._authenticated():
                self._unauthorized()
                return
            message = wsman.parse(payload)
            status, body = self._dispatch(message)
            if status == 401:
                self._unauthorized()
                if self.host.spec.transport == "ntlm":  # the logon the client tries next is refused as well
                    self.__dict__["ntlm"] = ntlm.Session(refused=True)
            else:
                self._send(status, body)
        except DropConnection:
            self._drop()
        except WSManFault as fault:
            self._send(500, wsman.fault_response(fault, "", self.host.name))

    def do_GET(self) -> None:  # noqa: N802
        self._send(405, b"", "text/html")

    def _authenticated(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        spec = self.host.spec
        given = user.split("\\")[-1].lower()
        return hmac.compare_digest(given, spec.username.lower()) & hmac.compare_digest(password, spec.password)

    def _ntlm_request(self, payload: bytes) -> bytes | None:
        """The SOAP message of a request to an NTLM host (b"" for none), or None once answered: a handshake's
        401 with the server's challenge, or a refusal (401 for a failed logon, 400 for an unsealed message)."""
        session = self.__dict__.setdefault("ntlm", ntlm.Session())  # one per connection, as Windows keeps it
        try:
            header = self.headers.get("Authorization")
            if header:
                challenge = session.authenticate(header)
                if challenge is not None:
                    self._unauthorized(challenge)
                    return None
            return session.unseal(payload, self.headers.get("Content-Type", ""))
        except ntlm.Refused as refused:
            if refused.status == 401:
                self._unauthorized(refused.challenge)
            else:
                self._send(refused.status, refused.reason.encode(), "text/plain")
            return None

    def _unauthorized(self, challenge: str | None = None) -> None:
        if challenge is None:
            self.__dict__.pop("ntlm", None)  # a refused connection authenticates again from the start
        self.send_response(401)
        self.send_header("WWW-Authenticate", challenge or "Negotiate")
        if self.host.spec.transport != "ntlm":
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str = "application/soap+xml;charset=UTF-8") -> None:
        session = self.__dict__.get("ntlm")
        if session is not None and session.authenticated and body and content_type.startswith("application/soap+xml"):
            body, content_type = session.seal(body), ntlm.CONTENT_TYPE
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- WS-Management -----------------------------------------------------------------

    def _dispatch(self, message: wsman.Message) -> tuple[int, bytes]:
        relates = message.message_id
        if message.action == wsman.ACTION_CREATE:
            with self.host.fleet.lock:
                shell = self.shells.open(self.host.booted)
            scheme = "https" if self.host.spec.transport == "ssl" else "http"
            address = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/wsman"
            return 200, wsman.created_response(shell.id, address, relates)
        with self.host.fleet.lock:
            shell = self.shells.find(message.shell_id or "", self.host.booted)
        if shell is None:
            raise wsman.shell_not_found(message.shell_id or "")
        if message.action == wsman.ACTION_COMMAND:
            return self._command(shell, message)
        if message.action == wsman.ACTION_RECEIVE:
            return self._receive(shell, message)
        if message.action == wsman.ACTION_SIGNAL:
            command_id = message.body.get("CommandId") if message.body is not None else None
            shell.commands.pop(command_id or "", None)
            return 200, wsman.signal_response(relates)
        if message.action == wsman.ACTION_DELETE:
            with self.host.fleet.lock:
                self.shells.close(shell.id)
            return 200, wsman.delete_response(relates)
        raise WSManFault("a:ActionNotSupported", 2150858801, f"The action {message.action} is not supported.", "s:Sender")

    def _command(self, shell: wsman.Shell, message: wsman.Message) -> tuple[int, bytes]:
        line, _ = wsman.command_line(message.body)
        host = self.host
        command = wsman.Command(wsman.new_id(), line)
        with host.fleet.lock:
            host.tick()
            request = commands.classify(host, line)
            step, vm = request.step, request.vm
            fault = host.take_fault(step, faults.PROTOCOL, vm) if step else None
            if fault == "host_reboot":
                host.reboot()
                raise DropConnection()
            if fault == "auth_fail":
                return 401, b""
            if fault == "soap_fault":  # the host lost the shell (WinRM restarted, idle timeout): it is gone for good
                self.shells.close(shell.id)
                raise wsman.shell_not_found(shell.id)
            limit = invocation.MAX_COMMAND_LINE if message.options.get("WINRS_SKIP_CMD_SHELL", "").upper() == "TRUE" \
                else invocation.CMD_EXE_COMMAND_LINE
            if len(line) > limit:
                self._finish(command, commands.Outcome("", "The command line is too long.\r\n", 1), line, step)
            elif (wait := commands.status_wait(host, request)) is not None:
                command.pending = (request, *wait, host.booted)  # the script loops on the host: answered at Receive
            else:
                self._finish(command, commands.execute(host, request), line, step)
        command.ready_at = time.monotonic() + (message.operation_timeout + 1 if fault == "slow" else 0)
        command.drop_on_receive = fault == "connection_drop"
        shell.commands[command.id] = command
        return 200, wsman.command_response(command.id, message.message_id)

    def _finish(self, command: wsman.Command, outcome: commands.Outcome, line: str, step: str | None) -> None:
        self.host.journal("command", script=outcome.script or _command_word(line), params=outcome.params,
                          exit_code=outcome.exit_code, step=step)
        command.stdout = outcome.stdout.encode("utf-8")
        command.stderr = outcome.stderr.encode("utf-8")
        command.exit_code = outcome.exit_code

    def _run_pending(self, command: wsman.Command, timeout: float) -> bool:
        """A command that waits on the host (Get-HvbVMBackupStatus -WaitSeconds): True once it has answered, False
        when `timeout` real seconds passed first (Receive then answers TimedOut and the client asks again). A
        restart kills it with the connection, as it kills the shell."""
        request, until, seen, booted = command.pending
        deadline = time.monotonic() + timeout
        while True:
            with self.host.fleet.lock:
                self.host.tick()
                if self.host.booted != booted:
                    raise DropConnection()
                if commands.waited(self.host, request, until, seen):
                    self._finish(command, commands.execute(self.host, request), request.command, request.step)
                    command.pending = None
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _receive(self, shell: wsman.Shell, message: wsman.Message) -> tuple[int, bytes]:
        command = shell.commands.get(wsman.receive_command_id(message.body) or "")
        if command is None:
            raise WSManFault("w:InvalidParameter", 2150858843, "The command was not found in the shell.", "s:Sender")
        if command.drop_on_receive:
            command.drop_on_receive = False
            raise DropConnection()
        wait = command.ready_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, message.operation_timeout))
            if time.monotonic() < command.ready_at:
                raise wsman.timed_out()
        if command.pending is not None and not self._run_pending(command, message.operation_timeout):
            raise wsman.timed_out()
        return 200, wsman.receive_response(command.id, command.stdout, command.stderr, command.exit_code, message.message_id)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError):
            self.close_connection = True


def _command_word(line: str) -> str:
    return " ".join(line.split()[:3]) if line.lower().startswith("wbadmin") else (line.split() or [""])[0]


def serve_host(host: Host, port: int, tls: ssl.SSLContext | None) -> ThreadingHTTPServer:
    handler = type(f"WinRM_{host.name}", (WinRMHandler,), {"host": host, "shells": wsman.Shells()})
    server = _Server(("127.0.0.1", port), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"winrm-{host.name}", daemon=True).start()
    return server


def observed(fleet: Fleet, listeners: list[ThreadingHTTPServer]) -> dict:
    """The fleet's state (`Fleet.state`) with each host's open WinRM shells, which this layer keeps."""
    with fleet.lock:
        state = fleet.state()
        handlers = {server.RequestHandlerClass.host.name: server.RequestHandlerClass for server in listeners}
        for host in state["hosts"]:
            handler = handlers[host["name"]]
            host["open_shells"] = handler.shells.count(handler.host.booted)
        return state


def serve_control(fleet: Fleet, port: int, ca_pem: Path | None, listeners: list[ThreadingHTTPServer]) -> ThreadingHTTPServer:
    """Observation: /_sim/state, /_sim/journal, /_sim/ca.pem; POST /_sim/advance?seconds=N, and POST
    /_sim/reboot?host=NAME: the host restarts now, whatever a client is doing (a power cut, an update's restart),
    as a test needs it at a moment no request marks (a Recovery checkpoint exists only during the shadow copy)."""

    class Control(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path == "/_sim/state":
                self._send(200, json.dumps(observed(fleet, listeners), ensure_ascii=False).encode(), "application/json")
            elif path == "/_sim/journal":
                lines = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in fleet.journal_lines())
                self._send(200, lines.encode(), "application/x-ndjson")
            elif path == "/_sim/ca.pem" and ca_pem is not None:
                self._send(200, ca_pem.read_bytes(), "application/x-pem-file")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path == "/_sim/advance":
                seconds = float(parse_qs(url.query).get("seconds", ["0"])[0])
                with fleet.lock:
                    fleet.clock.advance(seconds)
                    fleet.journal(None, "clock_advanced", seconds=seconds)
                self._send(200, json.dumps({"clock_utc": fleet.state()["clock_utc"]}).encode(), "application/json")
            elif url.path == "/_sim/reboot":
                name = parse_qs(url.query).get("host", [""])[0]
                if name.upper() not in fleet.hosts:
                    self._send(404, f"no host {name!r} in the scenario\n".encode(), "text/plain")
                    return
                with fleet.lock:
                    host = fleet.host(name)
                    host.tick()
                    host.reboot()
                self._send(200, json.dumps({"boot_time_utc": host.booted.isoformat()}).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

    server = _Server(("127.0.0.1", port), Control)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server
