"""Validation of YAML by walking its node tree, so that every error names the file, line and key.

Used by the simulator's scenario file and the backup inventory alike. Pure: no Airflow import.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator

# libyaml's parser when PyYAML has it (its wheels do): a 2,000-VM inventory composes in 0.02 s, not 0.24 s,
# and every DAG file parse and task start reads the inventory.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """A file that cannot be used; the message names the file, line and key."""


class Ctx:
    def __init__(self, source: str, error: type[YamlError] = YamlError):
        self.source = source
        self.error = error

    def fail(self, node: yaml.Node, message: str) -> YamlError:
        return self.error(f"{self.source}, line {node.start_mark.line + 1}: {message}")


# PyYAML resolves plain scalars by YAML 1.1, where `Off`, `NO` and `on` are booleans and `0123` is
# an octal number. These files are read by what each key means instead: a string key takes the
# text as written, a number key parses the text by YAML 1.2's core schema, a boolean key takes
# true/false (and 1.1's yes/no/on/off, which cannot be meant otherwise there).
NULLS = frozenset({"", "~", "null", "Null", "NULL"})
TRUE, FALSE = frozenset({"true", "yes", "on", "y"}), frozenset({"false", "no", "off", "n"})
INTEGER = re.compile(r"^[-+]?[0-9]+$")
FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _is_null(node: yaml.ScalarNode) -> bool:
    """A plain (unquoted) null: `~`, `null`, or nothing at all. PyYAML marks a plain scalar's style None,
    libyaml's parser ''; a quoted "" is a string."""
    return not node.style and node.value in NULLS


def scalar(ctx: Ctx, node: yaml.Node, key: str) -> str | None:
    """The scalar's text as written (None for a plain null)."""
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, f"`{key}` must be a single value")
    return None if _is_null(node) else node.value


def string(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = scalar(ctx, node, key)
    if value is None:
        raise ctx.fail(node, f"`{key}` must be a string")
    return value


def choice(options: tuple[str, ...]) -> Callable[[Ctx, yaml.Node, str], str]:
    def read(ctx: Ctx, node: yaml.Node, key: str) -> str:
        value = string(ctx, node, key)
        if value not in options:
            raise ctx.fail(node, f"`{key}` is {value!r}; expected one of: {', '.join(options)}")
        return value

    return read


def number_text(text: str | None, integer: bool = False) -> float | int:
    """A number as written, by YAML 1.2's core schema (`0123` is 123, `1e3` is 1000.0); ValueError otherwise."""
    digits = (text or "").replace("_", "")
    if INTEGER.match(digits):
        return int(digits, 10)
    if FLOAT.match(digits) and not integer:
        return float(digits)
    raise ValueError(f"must be {'an integer' if integer else 'a number'}, not {text!r}")


def boolean_text(text: str | None) -> bool:
    """true/false as written (and YAML 1.1's yes/no/on/off, which cannot be meant otherwise); ValueError otherwise."""
    lowered = (text or "").lower()
    if lowered in TRUE or lowered in FALSE:
        return lowered in TRUE
    raise ValueError(f"must be true or false, not {text!r}")


def number(minimum: float, maximum: float | None = None, integer: bool = False):
    def read(ctx: Ctx, node: yaml.Node, key: str) -> float | int:
        try:
            value = number_text(scalar(ctx, node, key), integer)
        except ValueError as problem:
            raise ctx.fail(node, f"`{key}` {problem}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ctx.fail(node, f"`{key}` is {value}; it must be {bound}")
        return value

    return read


def boolean(ctx: Ctx, node: yaml.Node, key: str) -> bool:
    try:
        return boolean_text(scalar(ctx, node, key))
    except ValueError as problem:
        raise ctx.fail(node, f"`{key}` {problem}") from None


NAME_RE = re.compile(r"^[^\x00-\x1f]{1,100}$")


def checked_name(value: str) -> str:
    """A host, VM or connection name: 1 to 100 printable characters (what a pydantic field validates too)."""
    if not NAME_RE.match(value):
        raise ValueError("must be 1 to 100 printable characters")
    return value


def name(ctx: Ctx, node: yaml.Node, key: str) -> str:
    value = string(ctx, node, key)
    try:
        return checked_name(value)
    except ValueError as problem:
        raise ctx.fail(node, f"`{key}` {problem}") from None


def mapping(ctx: Ctx, node: yaml.Node, what: str, fields: dict[str, Callable], required=()) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, f"{what} must be a mapping of keys to values")
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in fields:
            raise ctx.fail(key_node, f"unknown key `{key}` in {what}; allowed: {', '.join(fields)}")
        if key in out:
            raise ctx.fail(key_node, f"`{key}` is given twice in {what}")
        out[key] = fields[key](ctx, value_node, key)
    for key in required:
        if key not in out:
            raise ctx.fail(node, f"{what} needs `{key}`")
    return out


def sequence(item: Callable[[Ctx, yaml.Node, str], Any]):
    def read(ctx: Ctx, node: yaml.Node, key: str) -> list[Any]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.fail(node, f"`{key}` must be a list")
        return [item(ctx, child, key) for child in node.value]

    return read




def compose(text: str, source: str, error: type[YamlError] = YamlError) -> tuple[Ctx, yaml.Node | None]:
    try:
        return Ctx(source, error), yaml.compose(text, Loader=LOADER)
    except yaml.YAMLError as problem:
        hint = ('; a value that ends in a colon, such as the drive E:, must be quoted: "E:"'
                if "mapping values are not allowed" in str(problem) else "")
        raise error(f"{source}: not valid YAML: {problem}{hint}") from None


# -- YAML into a pydantic model, errors still naming file, line and key ------------------------------


def plain(ctx: Ctx, node: yaml.Node, lines: dict[tuple, int], path: tuple = ()) -> Any:
    """The node as plain data, every scalar as the text written (None for a plain null), so the model's
    types read it by what each key means (`Off` stays a name, `0123` a string, `22:00` a time).
    `lines` gets each path's line; a duplicate key is an error here, where YAML would keep the last."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                raise ctx.fail(key_node, f"`{key}` is given twice")
            out[key] = plain(ctx, value_node, lines, (*path, key))
            lines[(*path, key, "<key>")] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [plain(ctx, child, lines, (*path, index)) for index, child in enumerate(node.value)]
    return None if _is_null(node) else node.value


# The same rules for a model's fields as for the walker's: a scalar's text is read by what the key means,
# not by pydantic's lax coercions (which would take `5.0` as an integer and `t` or `1` as true).
Integer = Annotated[int, BeforeValidator(lambda value: number_text(value, integer=True) if isinstance(value, str) else value)]
Number = Annotated[float, BeforeValidator(lambda value: number_text(value) if isinstance(value, str) else value)]
Boolean = Annotated[bool, BeforeValidator(lambda value: boolean_text(value) if isinstance(value, str) else value)]


def _model_at(model: type, loc: tuple) -> type:
    """The pydantic model (or pydantic dataclass) a location's last key belongs to."""
    import typing

    def unwrap(annotation: Any) -> Any:
        while typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType, list, dict):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if typing.get_origin(annotation) is typing.Annotated else args[-1]
        return annotation

    current: Any = model
    for part in loc:
        current = unwrap(current)
        fields = getattr(current, "__pydantic_fields__", None)
        if isinstance(part, int) or fields is None:
            continue
        if part not in fields:
            return current
        current = fields[part].annotation
    return unwrap(current)


def validate(model: type, ctx: Ctx, root: yaml.Node, what: str, **extra: Any):
    """`model` from the YAML under `root`; the first error as the file, the line and the key, in words."""
    from pydantic import ValidationError

    lines: dict[tuple, int] = {}
    data = plain(ctx, root, lines)
    if not isinstance(data, dict):
        raise ctx.error(f"{ctx.source}, line {lines[()]}: {what} must be a mapping of keys to values")
    try:
        return model.model_validate(data | extra)
    except ValidationError as problem:
        error = problem.errors()[0]
        loc = tuple(error["loc"])
        keys = [part for part in loc if isinstance(part, str)]
        key = keys[-1] if keys else what
        owner = _model_at(model, loc[:-1])
        title = (getattr(owner, "model_config", None) or getattr(owner, "__pydantic_config__", {})).get("title") or what
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = ", ".join(name for name in owner.__pydantic_fields__ if name not in extra)
            message, line = f"unknown key `{key}` in {title}; allowed: {allowed}", lines.get((*loc, "<key>"))
        elif error["type"] == "missing":
            message, line = f"{title} needs `{key}`", lines.get(loc[:-1])
        else:
            text = error["msg"].removeprefix("Value error, ")
            if not keys:  # about the whole file
                message = text
            elif error["type"] == "value_error":  # ours: the message names the value
                message = f"`{key}` {text}"
            else:
                message = f"`{key}` is {error['input']!r}; {text[0].lower()}{text[1:]}"
            line = lines.get(loc)
        while line is None and loc:
            loc = loc[:-1]
            line = lines.get(loc)
        raise ctx.error(f"{ctx.source}, line {line}: {message}") from None
