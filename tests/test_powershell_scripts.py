"""Every script of include/powershell parses, calls only real cmdlets with real parameters,
and receives its parameters as data."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml
from hyperv_backup import invocation

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "include" / "powershell").glob("*.ps1"))
CATALOG = yaml.safe_load((Path(__file__).parent / "cmdlets.yaml").read_text())
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
HOSTILE = "x'; Remove-Item C:\\ -Recurse; '"


def _nodes(node, kind):
    if node.type == kind:
        yield node
    for child in node.children:
        yield from _nodes(child, kind)


def _syntax_errors(source: bytes) -> list[str]:
    tree = PARSER.parse(source)
    errors = [n for n in _nodes(tree.root_node, "ERROR")]
    errors += [n for n in _walk(tree.root_node) if n.is_missing]
    return [f"line {n.start_point[0] + 1}: {n.text[:60]!r}" for n in errors]


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


def _calls(source: bytes) -> list[tuple[str, list[str], int]]:
    tree = PARSER.parse(source)
    calls = []
    for command in _nodes(tree.root_node, "command"):
        name_node = next((c for c in command.children if c.type == "command_name"), None)
        if name_node is None:
            continue
        parameters = [p.text.decode().lstrip("-").rstrip(":") for p in _nodes(command, "command_parameter")
                      if _owner(p) == command]
        calls.append((name_node.text.decode(), parameters, command.start_point[0] + 1))
    return calls


def _owner(node):
    parent = node.parent
    while parent is not None and parent.type != "command":
        parent = parent.parent
    return parent


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_without_syntax_errors(script):
    assert _syntax_errors(script.read_bytes()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_calls_only_real_cmdlets_with_real_parameters(script):
    known = CATALOG["cmdlets"]
    common = set(CATALOG["common"])
    problems = []
    for name, parameters, line in _calls(script.read_bytes()):
        if name not in known:
            problems.append(f"line {line}: {name} is not a known cmdlet")
            continue
        allowed = {p.lower() for p in known[name]} | {p.lower() for p in common}
        for parameter in parameters:
            if parameter.lower() not in allowed:
                problems.append(f"line {line}: {name} has no parameter -{parameter}")
    assert problems == []


def test_the_checker_catches_a_misspelt_parameter():
    source = b"param([string]$VMName)\nGet-VMSnapshot -VMName $VMName -SnapshotTyp Recovery\n"
    names = [(n, p) for n, p, _ in _calls(source)]
    assert names == [("Get-VMSnapshot", ["VMName", "SnapshotTyp"])]
    assert "snapshottyp" not in {p.lower() for p in CATALOG["cmdlets"]["Get-VMSnapshot"]}


def test_the_checker_catches_a_syntax_error():
    assert _syntax_errors(b"param([string]$VMName)\nif ($VMName { Get-VM }\n")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_has_a_param_block_and_ends_in_one_document(script):
    text = script.read_text()
    assert re.search(r"^param\(", text, re.MULTILINE), "every script declares its parameters, if only as param()"
    rendered = invocation.render_script(script.stem, text, {name: HOSTILE for name in invocation.declared_parameters(text)})
    assert _syntax_errors(rendered.encode()) == []
    assert rendered.rstrip().endswith("[Console]::Out.Write((ConvertTo-Json -Compress -Depth 8 $r))")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_hostile_vm_name_reaches_the_host_as_data(script):
    text = script.read_text()
    params = {name: HOSTILE for name in invocation.declared_parameters(text)}
    command = invocation.encode_command(invocation.render_script(script.stem, text, params))
    powershell = invocation.decode_command(command)
    assert HOSTILE not in powershell and "Remove-Item C:\\ " not in powershell  # the script's own Remove-Item is no injection
    name, received, _ = invocation.parse_script(powershell)
    assert name == script.stem and received == params
    blob = powershell.split("FromBase64String('")[1].split("'")[0]
    assert json.loads(base64.b64decode(blob)) == params


def test_a_command_line_too_long_for_windows_is_refused():
    with pytest.raises(invocation.InvocationTooLong):
        invocation.encode_command(invocation.render_script("X", "param($A)\n$A", {"A": "y" * 20000}))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_an_advanced_script_with_help_for_every_parameter_and_its_output(script):
    """After dbatools: [CmdletBinding()], .PARAMETER for each parameter, .OUTPUTS; a project noun (Hvb), so no
    name reads like one of Hyper-V's cmdlets; what removes something supports -WhatIf and asks ShouldProcess."""
    text = script.read_text()
    help_block = text.split("#>", 1)[0]
    assert re.search(r"^\[CmdletBinding\([^)]*\)\]\nparam\(", text, re.MULTILINE)
    documented = set(re.findall(r"^\.PARAMETER (\w+)$", help_block, re.MULTILINE))
    assert documented == set(invocation.declared_parameters(text))
    assert re.search(r"^\.OUTPUTS\n\s+One JSON document", help_block, re.MULTILINE)
    verb, _, noun = script.stem.partition("-")
    assert noun.startswith("Hvb") and verb in {"Get", "Start", "Remove"}
    removes = any(name.startswith("Remove-") for name, _, _ in _calls(text.encode()))
    assert removes == ("SupportsShouldProcess" in text) == ("$PSCmdlet.ShouldProcess(" in text)
