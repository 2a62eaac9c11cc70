"""What a serve setting's value must be, and reading one from text (``--set``, ``PORT``).

Settings with a known meaning (port, host, memory share, parallel sizes) have a :class:`Rule`;
any other keeps the type of the value it replaces. Imports nothing of ours but the errors, so
the profiles file's check and every client task's ``PORT`` read share one reading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from turbo.errors import UsageError

ArgValue = str | int | float | bool


def parse_value(text: str) -> ArgValue:
    """``--set`` values: true/false become flags, numbers stay numbers, the rest is text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be: its type and, for numbers, its range."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    note: str = ""
    pattern: str = ""  # for text: what the whole value must match

    def problem(self, value: object) -> str | None:
        """Why a value from a data file does not fit, or None."""
        want = self.note or KIND_WORDS.get(self.kind, self.kind.__name__)
        if isinstance(value, bool) != (self.kind is bool):
            return f"must be {want}{_span(self)}"
        if self.kind is bool:
            return None
        if self.kind is str:
            ok = isinstance(value, str) and re.fullmatch(self.pattern or ".*", value)
            return None if ok else f"must be {want}"
        if self.kind in (int, float) and not isinstance(value, int | float):
            return f"must be {want}{_span(self)}"
        if self.kind is int and not isinstance(value, int):
            return f"must be {want}{_span(self)}"
        if isinstance(value, int | float):
            low = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
            if low or (self.hi is not None and value > self.hi):
                return f"must be {want}{_span(self)}"
        return None


# Settings with a known meaning and range. Others keep the type of the value they replace.
RULES: dict[str, Rule] = {
    "port": Rule(int, 1, 65535, note="a TCP port number"),
    # An IPv4/IPv6 address or a host name: what vLLM can bind.
    "host": Rule(str, note="an address to bind", pattern=r"[A-Za-z0-9.:%-]+"),
    "served-model-name": Rule(str, note="a model name without spaces", pattern=r"\S+"),
    "gpu-memory-utilization": Rule(float, 0, 1, lo_open=True, note="a share of memory"),
    "max-model-len": Rule(int, 1),
    "max-num-seqs": Rule(int, 1),
    "max-num-batched-tokens": Rule(int, 1),
    "tensor-parallel-size": Rule(int, 1, 64),
    "pipeline-parallel-size": Rule(int, 1, 64),
    "nnodes": Rule(int, 1, 64),
    "node-rank": Rule(int, 0, 63),
}
KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def typed_value(
    key: str, text: str, current: ArgValue | None, where: str, name: str = ""
) -> ArgValue:
    """``text`` as a value for setting ``key``, or one line saying why it cannot be.

    ``where`` names the source for the message (``--set port``, ``PORT (environment)``) and
    ``name`` what the user writes (``PORT``; default ``key``)."""
    rule = RULES.get(key) or (Rule(type(current)) if current is not None else None)
    if rule is None:
        return parse_value(text)
    value = text if rule.kind is str else parse_value(text)
    ok = (
        (rule.kind is bool and isinstance(value, bool))
        or (rule.kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (rule.kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or rule.kind is str
    )
    span = _span(rule)
    what = rule.note or KIND_WORDS.get(rule.kind, rule.kind.__name__)
    if not ok:
        raise UsageError(
            f"{where} {text!r}",
            f"is not {what}{span}",
            f"Pass {KIND_WORDS.get(rule.kind, 'a value')}{span}, "
            f"e.g. {name or key}={_example(rule, current)}.",
        )
    if rule.pattern and not re.fullmatch(rule.pattern, str(value)):
        raise UsageError(
            f"{where} {text!r}",
            f"is not {what}",
            f"Pass e.g. {name or key}={_example(rule, current)}.",
        )
    if rule.kind is float:
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        low_bad = rule.lo is not None and (value < rule.lo or (rule.lo_open and value == rule.lo))
        if low_bad or (rule.hi is not None and value > rule.hi):
            raise UsageError(
                f"{where} {text!r}",
                f"is out of range for {key} ({what}{span})",
                f"Pass a value{span}, e.g. {name or key}={_example(rule, current)}.",
            )
    return value


def _span(rule: Rule) -> str:
    lo, hi = rule.lo, rule.hi
    if lo is None:
        return ""
    if hi is None:
        return f" {'above' if rule.lo_open else 'of at least'} {lo:g}"
    return f" {'above' if rule.lo_open else 'from'} {lo:g} {'up ' if rule.lo_open else ''}to {hi:g}"


def _example(rule: Rule, current: ArgValue | None) -> str:
    if current is not None and current != "":
        return str(current).lower() if isinstance(current, bool) else str(current)
    return {bool: "true", int: str(int(rule.lo or 1)), float: "0.8"}.get(rule.kind, "x")


def env_port(environ: Mapping[str, str], default: int) -> int:
    """PORT from the environment (the seed's name), checked, else ``default``."""
    text = environ.get("PORT", "")
    if not text.strip():
        return default
    return int(typed_value("port", text.strip(), default, f"PORT={text!r}", "PORT"))
