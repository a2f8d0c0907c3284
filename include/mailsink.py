"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it receives as an .eml file.

The demo sends its report through Airflow's SMTP provider to this server, and the tests read
the messages back; nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from aiosmtpd.controller import Controller


def _free_port() -> int:
    """aiosmtpd's controller checks its server by connecting to the port it was given, so it needs a real one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _SaveMessages:
    def __init__(self, folder: Path):
        self.folder = folder

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        number = len(list(self.folder.glob("*.eml"))) + 1
        (self.folder / f"{number:03d}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(_SaveMessages(self.folder), hostname="127.0.0.1", port=_free_port())

    def __enter__(self) -> MailSink:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    def connection(self, from_email: str = "hyperv-backup@example.test") -> str:
        """The `smtp_default` Airflow connection for this server (plain SMTP on loopback: TLS off on purpose)."""
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"from_email": from_email, "disable_tls": True, "disable_ssl": True, "timeout": 10}})

    def messages(self) -> list[Path]:
        return sorted(self.folder.glob("*.eml"))
