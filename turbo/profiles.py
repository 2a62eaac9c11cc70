"""Serve profiles: read turbo/data/profiles.toml and merge one profile with every override.

Precedence, lowest first: pins (host, port, served name, model) < [defaults] < the profile <
the seed's environment names (MODEL, PORT, ...) < ``--set key=value`` < ``--port``/``--model``/
``--host``. Extra vLLM arguments (after ``--`` on the command line) are appended last, so vLLM's
own "last flag wins" parsing makes them the strongest of all.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from turbo import memfit, schema
from turbo.errors import TurboError, UsageError
from turbo.setting_values import (
    RULES,
    ArgValue,
    env_port,
    parse_value,
    typed_value,
)

__all__ = [
    "RULES",
    "ArgValue",
    "Overrides",
    "PinnedServe",
    "Profile",
    "ProfileBook",
    "describe",
    "env_port",
    "load_book",
    "parse_value",
    "profiles_path",
    "resolve",
    "typed_value",
]

PROFILES_RESOURCE = "profiles.toml"
KINDS = ("serve", "ray-head", "ray-worker")
# What a profile serves on: "cuda" (the Spark; GPU checks, [defaults] apply) or "cpu" (vLLM's
# CPU build: no GPU checks, memory fit on host RAM, and no GPU-only [defaults]).
DEVICES = ("cuda", "cpu")
# Settings that are not vLLM flags but fill "{...}" placeholders or drive the cluster setup.
CLUSTER_SETTINGS = ("head", "node-ip")


@dataclass(frozen=True)
class Profile:
    """One profile with every override applied: what ``serve`` turns into argv and env."""

    name: str
    kind: str
    description: str
    cluster: bool
    model: str
    args: dict[str, ArgValue]
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    # --set env.NAME=value: applied after everything else (None: remove the variable).
    env_set: dict[str, str | None] = field(default_factory=dict)
    device: str = "cuda"

    @property
    def host(self) -> str:
        return str(self.args.get("host", ""))

    @property
    def port(self) -> int:
        return int(self.args.get("port", 0))

    @property
    def served_name(self) -> str:
        return str(self.args.get("served-model-name", ""))


@dataclass(frozen=True)
class Overrides:
    """What the command line and environment may change."""

    port: int | None = None
    model: str | None = None
    host: str | None = None
    sets: Sequence[str] = ()
    extra: Sequence[str] = ()
    head: str | None = None
    node_ip: str | None = None


@dataclass(frozen=True)
class ProfileBook:
    """The parsed data file: shared defaults, raw profiles and tuning sections."""

    defaults_args: dict[str, ArgValue]
    defaults_env: dict[str, str]
    profiles: dict[str, dict[str, Any]]
    env_names: dict[str, str]
    sections: dict[str, dict[str, Any]]
    source: str

    def names(self) -> list[str]:
        return list(self.profiles)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.sections.get(name, {}))


def profiles_path() -> Path:
    return Path(str(resources.files("turbo.data").joinpath(PROFILES_RESOURCE)))


def _bad_file(path: Path, why: str) -> TurboError:
    return TurboError(f"profiles file {path}", why, "Restore turbo/data/profiles.toml from git.")


_FIX = "Fix it, or restore turbo/data/profiles.toml from git."
_FLAG = schema.matches(r"[A-Za-z0-9][A-Za-z0-9_-]*", "a vLLM flag name such as max-model-len")
_ENV = schema.matches(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name")
_ARGS = schema.MapOf(schema.Value((str, int, float, bool)), required=False, key_check=_FLAG)
_ENVS = schema.MapOf(schema.Value((str,)), required=False, key_check=_ENV)
_SECONDS = schema.Value((float,), required=False, check=schema.POSITIVE)

SCHEMA = schema.Table(
    {
        "defaults": schema.Table({"args": _ARGS, "env": _ENVS}, required=False),
        "profiles": schema.MapOf(
            schema.Table(
                {
                    "kind": schema.Value((str,), check=schema.one_of(*KINDS)),
                    "description": schema.Value((str,), required=False),
                    "cluster": schema.Value((bool,), required=False),
                    # What it serves on (DEVICES); a cpu profile takes no GPU [defaults].
                    "device": schema.Value((str,), required=False, check=schema.one_of(*DEVICES)),
                    "defaults": schema.Value((bool,), required=False),
                    "args": _ARGS,
                    "env": _ENVS,
                }
            ),
            key_check=schema.matches(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a profile name"),
            nonempty=True,
        ),
        "env_names": schema.MapOf(schema.Value((str,)), required=False, key_check=_ENV),
        "serve": schema.Table(
            {
                "health_timeout_s": _SECONDS,
                "health_interval_s": _SECONDS,
                "warmup_timeout_s": _SECONDS,
                "stop_timeout_s": _SECONDS,
            },
            required=False,
        ),
        "cluster": schema.Table(
            {
                "ray_port": schema.Value((int,), required=False, check=schema.PORT),
                "system_nccl": schema.Value((list,), required=False, item=(str,)),
                "nccl_debug": schema.Value(
                    (str,),
                    required=False,
                    check=schema.one_of("VERSION", "WARN", "INFO", "TRACE", "ABORT"),
                ),
                "nccl_debug_subsys": schema.Value((str,), required=False),
            },
            required=False,
        ),
        "memory": schema.Table(
            {
                "unified_gb": schema.Value((float,), required=False, check=schema.POSITIVE),
                "overhead_gb": schema.Value((float,), required=False, check=schema.at_least(0)),
                "max_safe_utilization": schema.Value(
                    (float,), required=False, check=schema.between(0, 1, open_low=True)
                ),
                "cpu_overhead_gb": schema.Value((float,), required=False, check=schema.at_least(0)),
            },
            required=False,
        ),
        "model_shape": schema.Table(
            {
                k: schema.Value((int,), check=schema.at_least(1))
                for k in memfit.ModelShape.__dataclass_fields__
            },
            required=False,
        ),
        "bench": schema.Table(
            {
                "seed": schema.MapOf(schema.Value((float,), check=schema.POSITIVE), False),
                "prompt_lens": schema.Value(
                    (list,), required=False, item=(int,), check=schema.at_least(1)
                ),
                "output_lens": schema.Value(
                    (list,), required=False, item=(int,), check=schema.at_least(1)
                ),
                "repeats": schema.Value((int,), required=False, check=schema.at_least(1)),
            },
            required=False,
        ),
    }
)


def _check_book(raw: dict[str, Any], p: Path) -> None:
    """What a schema cannot say: known settings within range, env_names naming a setting."""
    defaults = raw.get("defaults", {})
    tables = [("defaults.args", defaults.get("args", {}))]
    tables += [(f"profiles.{n}.args", pr.get("args", {})) for n, pr in raw["profiles"].items()]
    targets = {"model", "host", "port", "served-model-name", *CLUSTER_SETTINGS}
    for where, args in tables:
        targets.update(args)
        for key, value in args.items():
            rule = RULES.get(key)
            why = rule.problem(value) if rule else None
            if why:
                raise schema.DataFileError(f"{p}: {where}.{key}", f"{why}, not {value!r}", _FIX)
    for env_name, key in raw.get("env_names", {}).items():
        if key not in targets:
            near = schema.nearest(key, sorted(targets))
            hint = f"Did you mean {near!r}? " if near else ""
            raise schema.DataFileError(
                f"{p}: env_names.{env_name}",
                f"names {key!r}, which is no setting (it would pass --{key} to vLLM)",
                f"{hint}Settings: {', '.join(sorted(targets))}. {_FIX}",
            )


def load_book(path: Path | None = None) -> ProfileBook:
    """Parse and check the profiles file (the packaged one unless ``path`` is given)."""
    p = path or profiles_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _bad_file(p, f"cannot be read ({exc})") from exc
    schema.validate(raw, SCHEMA, p, _FIX)
    _check_book(raw, p)
    defaults = raw.get("defaults", {})
    sections = {k: v for k, v in raw.items() if k not in ("defaults", "profiles", "env_names")}
    return ProfileBook(
        defaults_args=dict(defaults.get("args", {})),
        defaults_env=dict(defaults.get("env", {})),
        profiles=dict(raw["profiles"]),
        env_names=dict(raw.get("env_names", {})),
        sections=sections,
        source=str(p),
    )


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _address(text: str, where: str) -> str:
    """A node's RoCE address (head, node-ip): an IP address, as NCCL and Ray are given it."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise UsageError(
            f"{where} {text!r}",
            "is not an IP address",
            "Give the node's RoCE address, e.g. 192.168.100.10 (`invoke cluster.detect`).",
        ) from None


def _parse_set(item: str) -> tuple[str, str]:
    key, eq, value = item.partition("=")
    key = key.strip().removeprefix("--")
    if not eq or not key:
        raise UsageError(
            f"--set {item!r}",
            "is not key=value",
            "Write it as --set gpu-memory-utilization=0.8 (empty value removes the flag).",
        )
    return key, value


class _ServeLocation(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def served_name(self) -> str: ...


class _ModelLocation(Protocol):
    @property
    def path(self) -> str: ...


class PinnedServe(Protocol):
    """What :func:`resolve` needs of the pins (:class:`turbo.pins.Pins` has it): the serve
    address and name, and the model's path. A protocol, not an import, so the profiles stand
    beside the pins rather than above them."""

    @property
    def serve(self) -> _ServeLocation: ...
    @property
    def model(self) -> _ModelLocation: ...


@dataclass
class _Draft:
    """A profile while the overrides are applied, lowest precedence first."""

    args: dict[str, ArgValue]
    env: dict[str, str]
    model: str
    settings: dict[str, str] = field(default_factory=dict)
    env_set: dict[str, str | None] = field(default_factory=dict)


def resolve(
    name: str,
    pins: PinnedServe,
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
    book: ProfileBook | None = None,
) -> Profile:
    """The profile ``name`` with pins, defaults, environment names and overrides merged."""
    b = book or load_book()
    ov = overrides or Overrides()
    if name not in b.profiles:
        raise UsageError(
            f"profile {name!r}", "is not defined", f"Choose one of: {', '.join(b.names())}."
        )
    raw = b.profiles[name]
    kind = str(raw["kind"])
    draft = _from_book(b, raw, kind, pins)
    _apply_env_names(draft, b, os.environ if environ is None else environ)
    _apply_sets(draft, name, ov.sets)
    _apply_overrides(draft, ov)
    _check_port(draft.args.get("port"))
    return Profile(
        name=name,
        kind=kind,
        description=str(raw.get("description", "")),
        cluster=bool(raw.get("cluster", False)),
        model=draft.model,
        args=draft.args,
        env=draft.env,
        extra=list(ov.extra),
        settings=draft.settings,
        env_set=draft.env_set,
        device=str(raw.get("device", "cuda")),
    )


def _from_book(b: ProfileBook, raw: Mapping[str, Any], kind: str, pins: PinnedServe) -> _Draft:
    """The pins, then [defaults] (serve profiles that do not opt out), then the profile."""
    args: dict[str, ArgValue] = {
        "host": pins.serve.host,
        "port": pins.serve.port,
        "served-model-name": pins.serve.served_name,
    }
    # `defaults = false`: a profile (cpu) for which the Spark's [defaults] are wrong.
    inherit = kind == "serve" and raw.get("defaults", True) is not False
    if inherit:
        args.update(b.defaults_args)
    args.update(raw.get("args", {}))
    env = dict(b.defaults_env) if inherit else {}
    env.update({k: str(v) for k, v in raw.get("env", {}).items()})
    return _Draft(args, env, pins.model.path)


def _apply_env_names(draft: _Draft, b: ProfileBook, env_src: Mapping[str, str]) -> None:
    """The seed's environment names: only those that are set, each mapped to one known key."""
    for env_name, key in b.env_names.items():
        value = env_src.get(env_name)
        if not value:
            continue
        if key == "model":
            draft.model = value
        elif key in CLUSTER_SETTINGS:
            draft.settings[key] = _address(value, f"{env_name} (environment)")
        else:
            draft.args[key] = typed_value(
                key, value, draft.args.get(key), f"{env_name} (environment)", env_name
            )


def _apply_sets(draft: _Draft, name: str, sets: Sequence[str]) -> None:
    """``--set key=value`` (``env.NAME=value`` for the server's environment)."""
    valid = sorted({*draft.args, "model", *CLUSTER_SETTINGS})
    for item in sets:
        key, value = _parse_set(item)
        if key.startswith("env."):
            # Any variable may be set for the server; an empty value removes the profile's.
            var = key[4:]
            if not ENV_NAME.fullmatch(var):
                raise UsageError(
                    f"--set {key}",
                    "is not an environment variable name",
                    "Write it as --set env.NAME=value, e.g. env.NCCL_DEBUG=WARN.",
                )
            draft.env_set[var] = value or None
            continue
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"Did you mean {near[0]}? " if near else ""
            raise UsageError(
                f"--set {key}",
                f"is not a setting of profile {name}",
                f"{hint}Valid keys: {', '.join(valid)}, env.NAME; pass other vLLM flags after --.",
            )
        if key == "model":
            draft.model = value
        elif key in CLUSTER_SETTINGS:
            draft.settings[key] = _address(value, f"--set {key}")
        elif value == "":
            del draft.args[key]
        else:
            draft.args[key] = typed_value(key, value, draft.args.get(key), f"--set {key}")


def _apply_overrides(draft: _Draft, ov: Overrides) -> None:
    """--model, --port, --host, --head, --node-ip: the strongest of the named settings."""
    if ov.model:
        draft.model = ov.model
    if ov.port is not None:
        draft.args["port"] = ov.port
    if ov.host:
        draft.args["host"] = ov.host
    if ov.head:
        draft.settings["head"] = ov.head
    if ov.node_ip:
        draft.settings["node-ip"] = ov.node_ip


def _check_port(value: ArgValue | None) -> None:
    try:
        port = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise UsageError(
            f"port {value!r}",
            "is not a TCP port number",
            "Pass --port with a number between 1 and 65535.",
        )


def describe(book: ProfileBook | None = None) -> list[tuple[str, str, str]]:
    """(name, kind, description) for every profile, for help text and listings."""
    b = book or load_book()
    return [(n, str(p["kind"]), str(p.get("description", ""))) for n, p in b.profiles.items()]
