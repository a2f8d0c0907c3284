"""YAML read as written into pydantic models, every error naming the file, the line and the key.

Used by the simulator's scenario file and the backup inventory alike. Pure: no Airflow import.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator

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


NAME_RE = re.compile(r"^[^\x00-\x1f]{1,100}$")


def one_of(options: tuple[str, ...]) -> Any:
    """A string field that takes one of `options`, the error listing them (pydantic's Literal would too, less plainly)."""
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"is {value!r}; expected one of: {', '.join(options)}")
        return value

    return Annotated[str, AfterValidator(check)]


def error_at(loc: tuple, message: str) -> Exception:
    """A validator's error about an item below the field it validates (the VM at index 3 of `vms`), so that
    `validate` names that item's line: pydantic prefixes `loc` with the field's own location."""
    from pydantic import ValidationError

    return ValidationError.from_exception_data("item", [{"type": "value_error", "loc": loc, "input": None,
                                                         "ctx": {"error": ValueError(message)}}])


def checked_name(value: str) -> str:
    """A host, VM or connection name: 1 to 100 printable characters (what a pydantic field validates too)."""
    if not NAME_RE.match(value):
        raise ValueError("must be 1 to 100 printable characters")
    return value


Name = Annotated[str, AfterValidator(checked_name)]  # a host, VM, connection or account name
NULL_IS_EMPTY = BeforeValidator(lambda value: [] if value is None else value)  # `vms:` left empty is no VM, not an error


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
            ours = error["type"] == "value_error"
            if not keys or (ours and hasattr(_model_at(model, loc), "__pydantic_fields__")):  # a whole mapping's: says what
                message = text
            elif ours:  # a field's: the message names the value
                message = f"`{key}` {text}"
            elif error["type"] == "string_type" and error["input"] is None:  # `~`, `null` or nothing, unquoted
                where = f" (item {loc[-1] + 1})" if isinstance(loc[-1], int) else ""
                message = (f"`{key}`{where} is empty (YAML reads ~, null and nothing at all as no value): give it one, "
                           "in quotes if it is written so (\"~\")")
            elif error["type"] == "string_type":
                message = f"`{key}` must be a string"
            else:
                message = f"`{key}` is {error['input']!r}; {text[0].lower()}{text[1:]}"
            line = lines.get(loc)
        while line is None and loc:
            loc = loc[:-1]
            line = lines.get(loc)
        raise ctx.error(f"{ctx.source}, line {line}: {message}") from None
