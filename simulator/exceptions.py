"""What the simulated host answers when it refuses: each exception is an answer Windows would give, raised by
the layer that gives it and turned into that answer at its edge (a cmdlet's error record, a WS-Man fault, a cut
connection)."""

from __future__ import annotations

from hyperv_backup.yamlcheck import YamlError


class ScenarioError(YamlError):
    """A scenario file that cannot be used; the message names the file, line and key."""


class JobAlreadyRunning(Exception):
    """Windows Server Backup runs one operation at a time: a second Start-WBBackup or recovery is refused."""

    def __init__(self, job_id: int):
        super().__init__(f"another backup operation is already running (job {job_id})")
        self.job_id = job_id


class ScriptError(Exception):
    """A terminating error of a script or cmdlet: what PowerShell writes to the error stream, with its category
    and HResult, and exit code 1 (`commands.py` turns it into the script's output)."""

    def __init__(self, message: str, category: str, hresult: int = -2146233087, error_id: str = ""):
        super().__init__(message)
        self.category = category
        self.hresult = hresult
        self.error_id = error_id


class WSManFault(Exception):
    """A fault Windows would send: HTTP 500 with a SOAP Fault and a WSManFault detail (`wsman.fault_response`)."""

    def __init__(self, subcode: str, code: int, message: str, value: str = "s:Receiver"):
        super().__init__(message)
        self.subcode, self.code, self.message, self.value = subcode, code, message, value


class DropConnection(Exception):
    """The host cuts the TCP connection without an answer (connection_drop, a host that restarts or is down)."""
