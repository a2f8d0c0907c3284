"""NTLM over HTTP with message encryption, as a Windows WinRM listener speaks it (transport `ntlm`).

Windows authenticates the TCP connection, not each request (MS-WSMV 2.2.9.1.1, HTTP-SPNEGO):
the client's Negotiate message gets a 401 carrying the server's challenge, its Authenticate
message completes the context, and from then on every request on that connection carries no
Authorization header and a body sealed with the context's keys:

    --Encrypted Boundary\\r\\n
    \\tContent-Type: application/HTTP-SPNEGO-session-encrypted\\r\\n
    \\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=<plain length>\\r\\n
    --Encrypted Boundary\\r\\n
    \\tContent-Type: application/octet-stream\\r\\n
    <signature length, 4 bytes little-endian><signature><sealed message>--Encrypted Boundary--\\r\\n

Answers are sealed the same way. Basic is refused on such a host, as on a Windows host where only
Negotiate is enabled; a plain (unsealed) request on an authenticated connection is refused too
(AllowUnencrypted=false, the Windows default).

The acceptor is pyspnego's NTLM server, which looks credentials up in the file named by
`NTLM_USER_FILE` (`DOMAIN:USER:PASSWORD` lines): `credential_file` writes one for the fleet's NTLM
hosts, each account both with no domain and with the host's name as its domain.
"""

from __future__ import annotations

import base64
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'
SCHEMES = ("Negotiate", "NTLM")


class Refused(Exception):
    """The request cannot be served on this connection: answer 401 (with `challenge`, if any) or 400."""

    def __init__(self, status: int, reason: str, challenge: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.challenge = status, reason, challenge


def credential_file(hosts: list[Any], folder: str | None = None) -> str | None:
    """Write the NTLM accounts of the fleet's `ntlm` hosts to a credential file, point `NTLM_USER_FILE` at it,
    and return its path (None when no host speaks NTLM)."""
    lines = []
    for host in hosts:
        if host.transport == "ntlm":
            lines += [f":{host.username}:{host.password}", f"{host.name}:{host.username}:{host.password}"]
    if not lines:
        return None
    handle, path = tempfile.mkstemp(prefix="sim-ntlm-", suffix=".txt", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    os.environ["NTLM_USER_FILE"] = path
    return path


@dataclass
class Session:
    """One connection's NTLM context: the handshake, then sealing and unsealing of its messages."""

    context: Any = None
    authenticated: bool = field(default=False)
    refused: bool = False  # the next logon on this connection fails (an auth_fail fault: a locked account, a DC that said no)

    def authenticate(self, header: str) -> str | None:
        """Take an `Authorization: Negotiate <token>` header. Returns the challenge to send back with a 401, or None
        once the context is complete. Raises Refused for anything else (Basic, a bad token, wrong credentials)."""
        import spnego
        from spnego.exceptions import SpnegoError

        scheme, _, token = header.partition(" ")
        if scheme not in SCHEMES or not token:
            raise Refused(401, f"{scheme or 'no'} authentication is not accepted on this listener; use Negotiate")
        try:
            data = base64.b64decode(token)
            if self.context is None or self.authenticated:  # a new handshake on this connection
                self.context, self.authenticated = spnego.server(protocol="ntlm"), False
            answer = self.context.step(data)
        except (SpnegoError, ValueError) as error:
            self.context, self.authenticated = None, False
            raise Refused(401, f"the logon failed: {error}") from None
        if self.context.complete and self.refused:
            self.context, self.refused = None, False
            raise Refused(401, "the logon failed: the account was refused")
        if self.context.complete:
            self.authenticated = True
            return None
        return f"{scheme} {base64.b64encode(answer or b'').decode()}"

    def unseal(self, body: bytes, content_type: str) -> bytes:
        """The SOAP message inside a sealed request body."""
        if not self.authenticated:
            raise Refused(401, "the connection is not authenticated")
        if not body:
            return b""
        if PROTOCOL not in content_type:
            raise Refused(400, "unencrypted traffic is disabled on this listener (AllowUnencrypted=false)")
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        if len(parts) != 2:
            raise Refused(400, "a sealed message has a header part and a data part")
        header, payload = parts
        length = int(header.split(b"Length=")[1].split(b"\r\n")[0])
        payload = payload.removesuffix(BOUNDARY + b"--\r\n").removeprefix(b"\tContent-Type: application/octet-stream\r\n")
        signature_length = struct.unpack("<i", payload[:4])[0]
        try:
            message = self.context.unwrap(payload[4:4 + signature_length] + payload[4 + signature_length:]).data
        except Exception as error:  # noqa: BLE001 - any failure to unseal is the client's, answered 400
            raise Refused(400, f"the message could not be unsealed: {error}") from None
        if len(message) != length:
            raise Refused(400, "the sealed message's length does not match its header")
        return message

    def seal(self, message: bytes) -> bytes:
        """A sealed answer body (see the module's docstring)."""
        sealed = self.context.wrap(message, encrypt=True).data
        signature, data = sealed[:16], sealed[16:]
        return (BOUNDARY + b"\r\n\tContent-Type: " + PROTOCOL.encode() + b"\r\n"
                b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(message)).encode() + b"\r\n"
                + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n"
                + struct.pack("<i", len(signature)) + signature + data + BOUNDARY + b"--\r\n")
