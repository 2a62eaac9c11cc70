"""Command-line option checks: every option value is checked where invoke parses it.

invoke casts ``--port abc`` with ``int()`` inside its own parser, so a wrong type ends in a
traceback before any task code runs. ``task`` below is invoke's decorator with a Task class
whose arguments check their own values: a value that does not parse, an empty value, or one
out of range becomes one line on stderr and exit 2, through invoke's own ``Exit`` handling (so
the stock ``invoke`` command and ``pixi run`` behave the same). Only values given on the command
line are checked; a task's default (``port=0`` meaning "the pinned port") never is.

Short flags follow one convention in every task: ``-n`` is ``--dry-run`` (as in make and
rsync) and ``-j`` is ``--json``; no other option takes those letters.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.tasks import Task
from invoke.tasks import task as _invoke_task

from turbo.errors import UsageError
from turbo.paths import unwritable_reason
from turbo.task_help import full_doc, options_help

# One short flag per meaning, the same in every task.
FIXED_SHORT = {"dry_run": "n", "json": "j"}


class OptionError(ValueError):
    """A value the option cannot take: why, and what to pass instead."""

    def __init__(self, why: str, fix: str) -> None:
        self.why = why
        self.fix = fix
        super().__init__(f"{why}. {fix}")


Check = Callable[[Any], None]


def refuse(task: str, flag: str, value: object, err: OptionError) -> Exit:
    """The one line (and exit 2) for a refused option value."""
    fix = err.fix if err.fix.endswith((".", "?", ")")) else err.fix + "."
    line = UsageError(f"invoke {task} --{flag} {value!r}", err.why, fix).line()
    return Exit(message=f"error: {line}", code=UsageError.exit_code)


class CheckedArgument(Argument):
    """An invoke Argument that checks a value given on the command line before keeping it."""

    task_name: str = "?"
    check: Check | None = None
    allow_empty: bool = False

    def __repr__(self) -> str:
        # invoke puts this into its own one-line errors ("Flag --port needed value and was
        # not given one!"); the flag as typed reads better than the class name.
        return f"--{self.names[0]}"

    def set_value(self, value: Any, cast: bool = True) -> None:
        if cast and self.kind is not bool and not self.incrementable:
            try:
                self._check(value)
            except OptionError as err:
                raise refuse(self.task_name, self.names[0], value, err) from None
        super().set_value(value, cast)

    def _check(self, value: Any) -> None:
        text = str(value)
        if self.kind is int:
            parsed: Any = whole_number(text)
        elif self.kind is float:
            parsed = number(text)
        else:
            if text.strip() == "" and not self.allow_empty:
                raise OptionError(
                    "is empty", f"Give a value, or leave --{self.names[0]} out for its default"
                )
            parsed = text
        if self.check is not None and (parsed != "" or not self.allow_empty):
            self.check(parsed)


if TYPE_CHECKING:
    _TaskBase = Task[Any]
else:
    _TaskBase = Task


class CheckedTask(_TaskBase):
    """An invoke Task whose options check their values (``checks``: option name -> check).

    Its help past the docstring's summary line is its table in turbo/data/help.toml
    (``turbo.task_help``).
    ``allow_empty`` names the string options for which an empty value means something."""

    def __init__(
        self,
        body: Callable[..., Any],
        *args: Any,
        checks: Mapping[str, Check] | None = None,
        allow_empty: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        # The help after the summary line, and each option's, come from turbo/data/help.toml
        # unless the task passes its own.
        if kwargs.get("help") is None:
            kwargs["help"] = options_help(body.__name__)
        body.__doc__ = full_doc(body.__doc__, body.__name__)
        super().__init__(body, *args, **kwargs)
        self.checks = dict(checks or {})
        self.allow_empty = frozenset(allow_empty)
        params = set(self.argspec(body).parameters)
        unknown = (set(self.checks) | self.allow_empty) - params
        if unknown:
            raise TypeError(f"checks for options task {self.name} does not have: {unknown}")

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        fixed = FIXED_SHORT.get(name)
        if fixed is None:
            opts = super().arg_opts(name, default, taken_names | set(FIXED_SHORT.values()))
            # invoke falls back to '_' once a name's letters are taken, shown as a bare "--".
            opts["names"] = [n for n in opts["names"] if len(n) > 1 or n.isalpha()]
            return opts
        # Every letter counts as taken so invoke picks none; then the fixed one is added.
        opts = super().arg_opts(name, default, taken_names | set("abcdefghijklmnopqrstuvwxyz"))
        opts["names"] = [opts["names"][0], fixed]
        return opts

    def get_arguments(self, *args: Any, **kwargs: Any) -> list[Argument]:
        # invoke pops each help text as it uses it; keep them so every call sees them all.
        saved = dict(self.help)
        try:
            arguments: list[Argument] = super().get_arguments(*args, **kwargs)
        finally:
            self.help = saved
        for arg in arguments:
            attr = arg.attr_name or arg.name or ""
            arg.__class__ = CheckedArgument
            assert isinstance(arg, CheckedArgument)
            arg.task_name = self.name
            arg.check = self.checks.get(attr)
            arg.allow_empty = attr in self.allow_empty
        return arguments


def task(**kwargs: Any) -> Callable[[Callable[..., None]], CheckedTask]:
    """invoke's ``@task(...)`` with option checks (``checks=``, ``allow_empty=``) and option help
    read from turbo/data/help.toml."""
    kwargs.setdefault("klass", CheckedTask)
    decorate: Callable[[Callable[..., None]], CheckedTask] = _invoke_task(**kwargs)
    return decorate


# --------------------------------------------------------------------------- value checks
def whole_number(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise OptionError("is not a whole number", "Pass digits only, e.g. 8") from None


def number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise OptionError("is not a number", "Pass digits, e.g. 0.8 or 273") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise OptionError("is not a finite number", "Pass digits, e.g. 0.8 or 273")
    return value


def int_range(lo: int, hi: int | None = None, unit: str = "") -> Check:
    """A whole number from ``lo`` to ``hi`` (inclusive; no upper bound when ``hi`` is None)."""
    span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"

    def check(value: int) -> None:
        if value < lo or (hi is not None and value > hi):
            raise OptionError(
                f"is out of range (a number {span}{' ' + unit if unit else ''})",
                "Pass a value in that range, or leave the option out for its default",
            )

    return check


PORT = int_range(1, 65535)
SECONDS = int_range(1, 7 * 24 * 3600, "seconds")


def one_of(*choices: str) -> Check:
    def check(value: str) -> None:
        if value not in choices:
            raise OptionError(
                "is not a choice here",
                f"Choose one of: {', '.join(c or '(empty)' for c in choices)}",
            )

    return check


def list_of(choices: Iterable[str]) -> Check:
    """A comma-separated list whose items are each one of ``choices``."""
    allowed = tuple(choices)

    def check(value: str) -> None:
        items = [v.strip() for v in value.split(",")]
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise OptionError(
                f"has {', '.join(repr(b) for b in bad)}, not one of {', '.join(allowed)}",
                f"Pass a comma-separated list, e.g. {allowed[0]}",
            )

    return check


def int_list(lo: int = 1, hi: int | None = None) -> Check:
    """A comma-separated list of whole numbers, each within ``[lo, hi]``."""
    one = int_range(lo, hi)

    def check(value: str) -> None:
        try:
            nums = [int(v) for v in value.split(",")]
        except ValueError:
            raise OptionError(
                "is not a comma-separated list of whole numbers", "For example 128,2048"
            ) from None
        for n in nums:
            one(n)

    return check


_ARCH = re.compile(r"\d+\.\d+[af]?(\+PTX)?")


def arch_list(value: str) -> None:
    """TORCH_CUDA_ARCH_LIST: compute capabilities separated by ';' or spaces, e.g. 12.1a."""
    items = [v for v in re.split(r"[;\s]+", value.strip()) if v]
    bad = [v for v in items if not _ARCH.fullmatch(v)]
    if bad or not items:
        raise OptionError(
            f"is not a CUDA arch list ({', '.join(repr(b) for b in bad) or 'no entries'})",
            "Pass compute capabilities like 12.1a or 9.0;12.1a (an optional a/f suffix, +PTX)",
        )


def sm_targets(value: str) -> None:
    """nvcc targets as digits with an optional a/f suffix, comma-separated: 121a,90."""
    bad = [v for v in value.split(",") if not re.fullmatch(r"\d{2,3}[af]?", v.strip())]
    if bad:
        raise OptionError(
            f"has {', '.join(repr(b) for b in bad)}, not of the form 90, 121, 121a or 120f",
            "Pass compute capability digits with an optional a/f suffix",
        )


def ip_address(value: str) -> None:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        raise OptionError("is not an IP address", "Pass the address, e.g. 192.168.100.10") from None


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*")


def host(value: str) -> None:
    """An address to bind or reach: an IP address or a host name."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    # A dotted all-digit name is a mistyped IPv4 address, never a host name.
    if not _HOSTNAME.fullmatch(value) or re.fullmatch(r"[\d.]+", value):
        raise OptionError(
            "is neither an IP address nor a host name", "Pass e.g. 127.0.0.1 or 0.0.0.0"
        )


def url(value: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise OptionError("is not an http(s) URL", "Pass e.g. http://127.0.0.1:8011")


def word(value: str) -> None:
    """A name with no whitespace or control characters (refs, revisions, model names), that
    does not start with '-' (git and pip would read it as an option)."""
    if re.search(r"[\s\x00-\x1f]", value):
        raise OptionError("contains whitespace", "Pass a single word")
    if value.startswith("-"):
        raise OptionError("starts with '-'", "Pass the name itself, not an option")


def git_ref(value: str) -> None:
    """A commit, tag, branch or version: a word without '..' (git's range syntax)."""
    word(value)
    if ".." in value:
        raise OptionError("is a range, not one revision", "Pass one commit, tag or branch")


def version_list(value: str) -> None:
    """Comma-separated release versions such as 0.16.0,0.17.0."""
    bad = [v for v in value.split(",") if not re.fullmatch(r"\d+(\.\d+)+[A-Za-z0-9.+]*", v)]
    if bad:
        raise OptionError(
            f"has {', '.join(repr(b) for b in bad)}, not a release version",
            "Pass versions such as 0.16.0,0.17.0",
        )


def unit_name(value: str) -> None:
    """The NAME of a vllm-turbo-NAME.service unit: letters, digits, '-', '_' and '.'."""
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", value) or ".." in value:
        raise OptionError(
            "is not a unit name", "Use letters, digits, '-', '_' and '.', e.g. mtp-8012"
        )


def netdev(value: str) -> None:
    """A Linux network interface name (at most 15 characters, no '/' or whitespace)."""
    if len(value) > 15 or re.search(r"[/\s:]", value):
        raise OptionError("is not a network interface name", "Pass e.g. enp1s0f1np1")


def name_list(value: str) -> None:
    bad = [v for v in value.split(",") if not re.fullmatch(r"[A-Za-z0-9_.-]+", v)]
    if bad:
        raise OptionError(
            f"has {', '.join(repr(b) for b in bad)}, not a device name",
            "Pass comma-separated names, e.g. rocep1s0f1,roceP2p1s0f1",
        )


def existing_dir(value: str) -> None:
    p = Path(value).expanduser()
    if not p.is_dir():
        raise OptionError(
            "is not a directory" if p.exists() else "does not exist", "Pass an existing directory"
        )


def existing_file(value: str) -> None:
    p = Path(value).expanduser()
    if not p.is_file():
        raise OptionError(
            "is not a file" if p.exists() else "does not exist", "Pass an existing file"
        )


def file_or_url(value: str) -> None:
    if value.startswith(("http://", "https://")):
        url(value)
    else:
        existing_file(value)


def dir_target(value: str) -> None:
    """A directory to write into: it may not exist yet, but it must not be a file."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise OptionError("is a file, not a directory", "Pass a directory (it may be new)")
    why = unwritable_reason(p)
    if why:
        raise OptionError(why, "Pass a directory you can write, or fix its permissions")


def file_target(value: str) -> None:
    """A file to write: it may not exist yet, but it must not be a directory."""
    p = Path(value).expanduser()
    if p.is_dir():
        raise OptionError("is a directory", "Pass a file name")
    why = unwritable_reason(p, directory=False)
    if why:
        raise OptionError(why, "Pass a file name in a directory you can write")


def executable(value: str) -> None:
    import os
    import shutil

    found = shutil.which(value) if os.sep not in value else value
    if not found or not os.access(found, os.X_OK) or Path(found).is_dir():
        raise OptionError(
            "is not an executable", "Pass a Python interpreter, e.g. .venv/bin/python"
        )


def set_item(value: str) -> None:
    """``--set key=value``: the key is checked against the profile when it is resolved."""
    key, eq, _ = value.partition("=")
    if not eq or not key.strip().removeprefix("--"):
        raise OptionError("is not key=value", "Write it as --set gpu-memory-utilization=0.8")


def multiple_of(n: int, lo: int) -> Check:
    def check(value: int) -> None:
        if value < lo or value % n:
            raise OptionError(f"is not a multiple of {n} (at least {lo})", f"Pass e.g. {lo * 2}")

    return check


def remainder_words(remainder: str, argv: Sequence[str] | None = None) -> list[str]:
    """The words after ``--`` exactly as the user gave them.

    invoke hands tasks those words joined with spaces, which loses their quoting (a JSON value
    with spaces falls apart). The process's own argv still has them; the joined text is only
    re-split (shell rules) when argv does not hold it, e.g. when invoke runs in-process."""
    import shlex
    import sys

    words = list(sys.argv if argv is None else argv)
    if "--" in words:
        after = words[words.index("--") + 1 :]
        if " ".join(after) == remainder:
            return after
    try:
        return shlex.split(remainder)
    except ValueError as exc:
        raise UsageError(
            f"arguments after -- ({remainder!r})",
            f"cannot be split into words ({exc})",
            "Quote each vLLM flag value as one word.",
        ) from None
