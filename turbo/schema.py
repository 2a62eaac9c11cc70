"""Schemas for the data files: every key a file may hold, its type and range.

A data file is checked once, where it is read (``load_pins``, ``load_book``), so the rest of
the code can trust what it gets. An unknown key is refused, not ignored: a typo such as
``[profiles.mtp.argz]`` would otherwise silently drop MTP. Every refusal is one line naming
the file, the key and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from turbo.errors import TurboError

# A check returns why a value is refused, or None when it is fine.
Check = Callable[[Any], str | None]


class DataFileError(TurboError):
    """A data file that does not match its schema (exit 2: the input is wrong, not the code)."""

    exit_code = 2


@dataclass(frozen=True)
class Value:
    """A leaf: one of ``kinds`` (an int is accepted where a float is wanted), plus a check."""

    kinds: tuple[type, ...]
    required: bool = True
    check: Check | None = None
    item: tuple[type, ...] = ()  # for lists: the type of each item


@dataclass(frozen=True)
class Table:
    """A TOML table with known keys."""

    keys: Mapping[str, Value | Table | MapOf]
    required: bool = True


@dataclass(frozen=True)
class MapOf:
    """A TOML table whose keys are names (profiles, flags, variables), each value one schema."""

    value: Value | Table
    required: bool = True
    key_check: Check | None = None
    nonempty: bool = False


Node = Value | Table | MapOf

_WORDS = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


# --------------------------------------------------------------------------- checks
def at_least(lo: float, *, open_: bool = False) -> Check:
    def check(v: Any) -> str | None:
        bad = v <= lo if open_ else v < lo
        return f"must be {'above' if open_ else 'at least'} {lo:g}" if bad else None

    return check


def between(lo: float, hi: float, *, open_low: bool = False) -> Check:
    def check(v: Any) -> str | None:
        bad = (v <= lo if open_low else v < lo) or v > hi
        low = f"above {lo:g}" if open_low else f"from {lo:g}"
        return f"must be {low} to {hi:g}" if bad else None

    return check


def matches(pattern: str, what: str) -> Check:
    rx = re.compile(pattern)

    def check(v: Any) -> str | None:
        return None if rx.fullmatch(str(v)) else f"must be {what}"

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


PORT = between(1, 65535)
POSITIVE = at_least(0, open_=True)


# --------------------------------------------------------------------------- validation
def nearest(word: str, options: list[str]) -> str | None:
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    return found[0] if found else None


def validate(data: Mapping[str, Any], schema: Table, source: Path | str, fix: str) -> None:
    """Raise ``DataFileError`` (one line: file, key, why, nearest valid key) on the first
    mismatch between ``data`` and ``schema``."""
    _table(data, schema, [], str(source), fix)


def _where(path: list[str]) -> str:
    return ".".join(path) if path else "(top level)"


def _fail(source: str, path: list[str], why: str, fix: str) -> DataFileError:
    return DataFileError(f"{source}: {_where(path)}", why, fix)


def _table(data: Any, schema: Table, path: list[str], source: str, fix: str) -> None:
    if not isinstance(data, dict):
        raise _fail(source, path, f"must be a table, not {_word(data)}", fix)
    valid = list(schema.keys)
    for key in data:
        if key not in schema.keys:
            near = nearest(key, valid)
            hint = f"Did you mean {'.'.join([*path, near])}? " if near else ""
            raise _fail(
                source,
                [*path, key],
                "is not a known key",
                f"{hint}Valid here: {', '.join(valid)}. {fix}",
            )
    for key, node in schema.keys.items():
        if key not in data:
            if node.required:
                raise _fail(source, [*path, key], "is missing", fix)
            continue
        _node(data[key], node, [*path, key], source, fix)


def _node(value: Any, node: Node, path: list[str], source: str, fix: str) -> None:
    if isinstance(node, Table):
        _table(value, node, path, source, fix)
    elif isinstance(node, MapOf):
        if not isinstance(value, dict):
            raise _fail(source, path, f"must be a table, not {_word(value)}", fix)
        if node.nonempty and not value:
            raise _fail(source, path, "is empty", fix)
        for key, item in value.items():
            if node.key_check is not None:
                why = node.key_check(key)
                if why:
                    raise _fail(source, [*path, key], f"is not a valid name ({why})", fix)
            _node(item, node.value, [*path, key], source, fix)
    else:
        _value(value, node, path, source, fix)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    return _WORDS.get(type(value), type(value).__name__) + (
        f" ({value!r})" if isinstance(value, str | int | float) else ""
    )


def _value(value: Any, node: Value, path: list[str], source: str, fix: str) -> None:
    if not _is(value, node.kinds):
        want = " or ".join(_WORDS.get(k, k.__name__) for k in node.kinds)
        raise _fail(source, path, f"must be {want}, not {_word(value)}", fix)
    if isinstance(value, list) and node.item:
        for i, item in enumerate(value):
            if not _is(item, node.item):
                want = " or ".join(_WORDS.get(k, k.__name__) for k in node.item)
                raise _fail(source, [*path, str(i)], f"must be {want}, not {_word(item)}", fix)
            if node.check is not None:
                why = node.check(item)
                if why:
                    raise _fail(source, [*path, str(i)], f"{why}, not {item!r}", fix)
        return
    if node.check is not None:
        why = node.check(value)
        if why:
            raise _fail(source, path, f"{why}, not {value!r}", fix)


# --------------------------------------------------------------------------- from dataclasses
def from_dataclass(cls: type, checks: Mapping[str, Check] | None = None) -> Table:
    """The table a dataclass is built from: one key per field, typed by its annotation,
    required unless it has a default. One source of truth for the file and the code."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Node] = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        keys[f.name] = _from_hint(hints[f.name], required, (checks or {}).get(f.name))
    return Table(keys)


def _from_hint(hint: Any, required: bool, check: Check | None) -> Node:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is dict:
        return MapOf(_from_hint(args[1], True, check), required=required)  # type: ignore[arg-type]
    if origin is list:
        return Value((list,), required, check, item=_kinds(args[0]))
    return Value(_kinds(hint), required, check)


def _kinds(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(k for a in typing.get_args(hint) for k in _kinds(a))
    return (hint,)
