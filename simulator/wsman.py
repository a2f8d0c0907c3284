"""WS-Management's Windows Remote Shell, as much of it as pywinrm speaks, shaped like Windows' replies.

Create (a shell), Command, Receive, Signal (terminate) and Delete. A Receive waits for
output up to the request's OperationTimeout and then answers with the `w:TimedOut` fault
(WSManFault code 2150858793) the way Windows does, so the client's retry path runs.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from .exceptions import WSManFault

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND = f"{SHELL_URI}/Command"
ACTION_RECEIVE = f"{SHELL_URI}/Receive"
ACTION_SIGNAL = f"{SHELL_URI}/Signal"
ACTION_SEND = f"{SHELL_URI}/Send"
FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"

TIMED_OUT_CODE = 2150858793
SHELL_NOT_FOUND_CODE = 2150858843


def timed_out() -> WSManFault:
    return WSManFault("w:TimedOut", TIMED_OUT_CODE,
                      "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.")


def shell_not_found(shell_id: str) -> WSManFault:
    return WSManFault(
        "w:InvalidSelectors", SHELL_NOT_FOUND_CODE,
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found on "
        "the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the "
        "server. Provide the correct ShellId or create a new shell and retry the operation.", value="s:Sender")


@dataclass
class Message:
    action: str
    message_id: str
    shell_id: str | None
    operation_timeout: float
    options: dict[str, str]
    body: ET.Element | None


_DURATION_RE = re.compile(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?")


def parse(payload: bytes) -> Message:
    try:
        root = ET.fromstring(payload)
    except ET.ParseError as error:
        raise WSManFault("w:SchemaValidationError", 2150858817, f"The SOAP XML in the message does not match the schema: {error}",
                         value="s:Sender") from None
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)

    def text(path: str) -> str | None:
        node = header.find(path, NS) if header is not None else None
        return node.text if node is not None else None

    timeout = 60.0
    match = _DURATION_RE.fullmatch(text("w:OperationTimeout") or "")
    if match and (match.group(1) or match.group(2)):
        timeout = float(match.group(1) or 0) * 60 + float(match.group(2) or 0)
    shell_id = None
    options: dict[str, str] = {}
    if header is not None:
        for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
            if selector.get("Name") == "ShellId":
                shell_id = selector.text
        for option in header.iterfind("w:OptionSet/w:Option", NS):
            options[option.get("Name", "")] = option.text or ""
    return Message(text("a:Action") or "", text("a:MessageID") or "", shell_id, timeout, options,
                   body[0] if body is not None and len(body) else None)


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{NS["x"]}" '
        f'xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" xmlns:p="{NS["p"]}">'
        f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_response(fault: WSManFault, relates_to: str, machine: str) -> bytes:
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.value}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.message)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{fault.code}" '
        f'Machine="{escape(machine)}"><f:Message>{escape(fault.message)}</f:Message></f:WSManFault></s:Detail></s:Fault>'
    )
    return _envelope(FAULT_ACTION, relates_to, body)


def created_response(shell_id: str, address: str, relates_to: str) -> bytes:
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{SHELL_URI}/cmd</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>'
        f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>{SHELL_URI}/cmd</rsp:ResourceUri>"
        f"<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
    )
    return _envelope(f"{ACTION_CREATE}Response", relates_to, body)


def command_response(command_id: str, relates_to: str) -> bytes:
    return _envelope(f"{ACTION_COMMAND}Response", relates_to,
                     f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>")


def receive_response(command_id: str, stdout: bytes, stderr: bytes, exit_code: int, relates_to: str,
                     chunk: int = 8192) -> bytes:
    streams = []
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        for start in range(0, len(data), chunk):
            encoded = base64.b64encode(data[start:start + chunk]).decode("ascii")
            streams.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}">{encoded}</rsp:Stream>')
        streams.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}" End="true"></rsp:Stream>')
    state = (f'<rsp:CommandState CommandId="{command_id}" State="{SHELL_URI}/CommandState/Done">'
             f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>")
    return _envelope(f"{ACTION_RECEIVE}Response", relates_to,
                     f'<rsp:ReceiveResponse SequenceID="0">{"".join(streams)}{state}</rsp:ReceiveResponse>')


def signal_response(relates_to: str) -> bytes:
    return _envelope(f"{ACTION_SIGNAL}Response", relates_to, "<rsp:SignalResponse/>")


def delete_response(relates_to: str) -> bytes:
    return _envelope(f"{ACTION_DELETE}Response", relates_to, "")


@dataclass
class Command:
    id: str
    line: str
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    ready_at: float = 0.0  # monotonic time from which the output can be received
    drop_on_receive: bool = False
    pending: Any = None  # a command still running on the host: (request, until, seen, boot time), see server._run_pending


@dataclass
class Shell:
    id: str
    commands: dict[str, Command] = field(default_factory=dict)


class Shells:
    """The shells a host's WinRM service holds open, by ShellId. A restarted service knows none of before:
    the first request after the host's boot finds the service's shells gone, as on Windows."""

    def __init__(self) -> None:
        self._by_id: dict[str, Shell] = {}
        self._booted: datetime | None = None

    def _since(self, booted: datetime) -> dict[str, Shell]:
        if booted != self._booted:  # the host restarted: its WinRM service started with no shell
            self._by_id.clear()
            self._booted = booted
        return self._by_id

    def open(self, booted: datetime) -> Shell:
        shell = Shell(new_id())
        self._since(booted)[shell.id] = shell
        return shell

    def find(self, shell_id: str, booted: datetime) -> Shell | None:
        return self._since(booted).get(shell_id)

    def close(self, shell_id: str) -> None:
        self._by_id.pop(shell_id, None)

    def count(self, booted: datetime) -> int:
        return len(self._since(booted))


def command_line(body: ET.Element | None) -> tuple[str, bool]:
    """The command and arguments of a Command body, as one line."""
    if body is None:
        return "", False
    command = body.findtext("rsp:Command", default="", namespaces=NS) or ""
    arguments = [node.text or "" for node in body.iterfind("rsp:Arguments", NS)]
    return " ".join([command.strip(), *arguments]).strip(), True


def receive_command_id(body: ET.Element | None) -> str | None:
    if body is None:
        return None
    stream = body.find("rsp:DesiredStream", NS)
    return stream.get("CommandId") if stream is not None else None


def new_id() -> str:
    return str(uuid.uuid4()).upper()
