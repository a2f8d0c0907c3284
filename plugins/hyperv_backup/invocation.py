"""How a script of include/powershell travels to a host: as data, never as pasted text.

The parameters are serialized to JSON, base64-encoded, and decoded on the host into a
hashtable that is splatted onto the script block. Base64 has no quote, no `$` and no
backtick, so a VM named `x'; Remove-Item C:\\ -Recurse; '` reaches the script as the
string it is. The wrapper also forces UTF-8 output (the provider decodes UTF-8) and
turns any terminating error into one JSON document with the error's category, so the
caller can classify it without reading localized text.

Everything is sent as `powershell -EncodedCommand`, which doubles the text (UTF-16) and
grows it by a third (base64). Through cmd.exe a command line may hold 8191 characters,
too few for a real script, so the caller starts powershell directly (WinRM's
WINRS_SKIP_CMD_SHELL), where CreateProcess allows 32767; scripts also travel without
comments and indentation, and `encode_command` refuses what would not fit.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

MARKER = "# hyperv-backup script: "
MAX_COMMAND_LINE = 32767  # CreateProcess's limit, with WINRS_SKIP_CMD_SHELL
CMD_EXE_COMMAND_LINE = 8191  # cmd.exe's limit, when the command goes through cmd.exe
POWERSHELL = "powershell -NoProfile -NonInteractive -EncodedCommand "

_WRAPPER = """{marker}{name}
$ProgressPreference='SilentlyContinue'
$ErrorActionPreference='Stop'
[Console]::OutputEncoding=[Text.Encoding]::UTF8
trap {{ [Console]::Out.Write((ConvertTo-Json -Compress @{{error=@{{message=$_.Exception.Message;category="$($_.CategoryInfo.Category)";hresult=$_.Exception.HResult;id=$_.FullyQualifiedErrorId}}}})); exit 1 }}
$p=@{{}};(ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{params}')))).PSObject.Properties|ForEach-Object{{$p[$_.Name]=$_.Value}}
$r=& {{
{body}
}} @p
[Console]::Out.Write((ConvertTo-Json -Compress -Depth 8 $r))
"""

_PARAMS_RE = re.compile(r"FromBase64String\('([A-Za-z0-9+/=]*)'\)")
_BLOCK_COMMENT_RE = re.compile(r"<#.*?#>", re.DOTALL)


class InvocationTooLong(ValueError):
    pass


def minify(script: str) -> str:
    """Drop comments, indentation and blank lines: what the host needs, nothing more."""
    lines = []
    for line in _BLOCK_COMMENT_RE.sub("", script).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(stripped)
    return "\n".join(lines)


def render_script(name: str, script: str, params: dict[str, Any]) -> str:
    """The PowerShell text that runs `script` with `params` passed as data."""
    blob = base64.b64encode(json.dumps(params, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return _WRAPPER.format(marker=MARKER, name=name, params=blob, body=minify(script))


def encode_command(powershell_text: str) -> str:
    """The command line WinRM runs: powershell with the script as UTF-16LE base64."""
    encoded = base64.b64encode(powershell_text.encode("utf-16-le")).decode("ascii")
    command = POWERSHELL + encoded
    if len(command) > MAX_COMMAND_LINE:
        raise InvocationTooLong(
            f"the command line would be {len(command)} characters; Windows accepts {MAX_COMMAND_LINE}. "
            "Shorten the script or its parameters."
        )
    return command


def decode_command(command: str) -> str | None:
    """The PowerShell text of a `powershell ... -EncodedCommand B64` line, else None."""
    parts = command.split()
    if not parts or parts[0].lower() not in ("powershell", "powershell.exe"):
        return None
    for flag, value in zip(parts, parts[1:], strict=False):
        if flag.lower() in ("-encodedcommand", "-enc", "-e", "-ec"):
            return base64.b64decode(value).decode("utf-16-le")
    return None


def parse_script(text: str) -> tuple[str, dict[str, Any], str] | None:
    """(script name, parameters, script body) of a rendered script, or None if it is not one of ours."""
    first, _, rest = text.partition("\n")
    if not first.startswith(MARKER):
        return None
    match = _PARAMS_RE.search(rest)
    params = json.loads(base64.b64decode(match.group(1)).decode("utf-8")) if match else {}
    body = rest.split("$r=& {\n", 1)[-1].rsplit("\n} @p", 1)[0]
    return first[len(MARKER):].strip(), params, body


def declared_parameters(script: str) -> list[str]:
    """Names in the script's param() block (what PowerShell would bind)."""
    match = re.search(r"param\s*\((.*?)\)\s*(?:\n|$)", script, re.IGNORECASE | re.DOTALL)
    if not match:
        return []
    block = match.group(1)
    depth, top_level = 0, []
    for char in block:
        depth += char in "[(" and 1 or 0
        depth -= char in "])" and 1 or 0
        top_level.append(char if depth == 0 else " ")
    return re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", "".join(top_level))
